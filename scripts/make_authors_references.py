"""Run the authors' own modules (haoheliu/AudioLDM2, audioldm2 0.1.0) on tiny configs and store what they compute.

    python scripts/make_authors_references.py AUTHORS_SOURCE [--out tests/data/authors_reference.pt]

AUTHORS_SOURCE is a folder holding the authors' `audioldm2` package source (the package index's 0.1.0, or
the repository; the files used here are identical in both). Only plain-torch module files are imported,
each by its path, so the authors' application dependencies (their pinned transformers, matplotlib,
torchaudio, ...) are not needed: `openaimodel.py` (UNetModel) with the `attention.py` and `util.py` it
imports, `hifigan/models.py` (the HiFi-GAN generator the 48 kHz model uses), `utilities/audio/stft.py`
(TacotronSTFT, with `audio_processing.py`; librosa >= 0.10 takes `filters.mel`'s and `util.pad_center`'s
arguments by keyword only, so the authors' positional calls are forwarded by keyword), and CLAP's audio tower
`clap/open_clip/htsat.py` (HTSAT_Swin_Transformer, with the `utils.py` and `feature_fusion.py` it imports; it needs
torchlibrosa, and utils.py imports torchvision, whose two fake-kernel schemas are defined first as in
authors_reference.py). The authors' venv of scripts/authors_env.sh has all of these.

What is stored, per case: the module's constructor arguments, each tensor's name and shape (the weights
themselves are redrawn in the test by `draw_weights`, so the file stays small), the inputs and the output.
tests/test_authors_checkpoint.py loads each case into our stage through the name tables of
`audioldm2_lite/generation/authors_checkpoint.py` and compares.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

SEED = 0
# tiny configs in the authors' structure (GroupNorm of 32: widths are multiples of 32; heads of 32 channels)
UNET_48K = dict(image_size=64, extra_film_condition_dim=16, context_dim=[None], in_channels=16, out_channels=16,
                model_channels=32, attention_resolutions=[8, 4, 2], num_res_blocks=2, channel_mult=[1, 1, 2, 2],
                num_head_channels=32, use_spatial_transformer=True, transformer_depth=1)
UNET_T5 = dict(UNET_48K, extra_film_condition_dim=None, context_dim=[32], in_channels=8, out_channels=8)
VOCODER_48K = dict(resblock="1", upsample_rates=[6, 5, 4, 2, 2], upsample_kernel_sizes=[12, 10, 8, 4, 4],
                   upsample_initial_channel=32, resblock_kernel_sizes=[3, 7, 11, 15],
                   resblock_dilation_sizes=[[1, 3, 5]] * 4, num_mels=256)
STFT_48K = dict(filter_length=2048, hop_length=480, win_length=2048, n_mel_channels=256, sampling_rate=48000,
                mel_fmin=20, mel_fmax=24000)
# CLAP's audio side: a tiny HTSAT (unfused, as in every AudioLDM model) with the real front end (48 kHz, 64 mels,
# 10 s folded into a 256 x 256 image), then CLAP's audio_projection (Linear, ReLU, Linear) into a 16-d joint space
HTSAT_TINY = dict(spec_size=256, patch_size=4, patch_stride=(4, 4), num_classes=10, embed_dim=16,
                  depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=8)
HTSAT_AUDIO_CFG = dict(sample_rate=48000, window_size=1024, hop_size=480, mel_bins=64, fmin=50, fmax=14000)
CLAP_JOINT = 16
# HTSAT's buffers that are functions of its config (STFT, mel filters, position indices, shift masks): not redrawn
HTSAT_FIXED = ("spectrogram_extractor.", "logmel_extractor.", "relative_position_index", "attn_mask",
               "num_batches_tracked")


def draw_weights(shapes: dict[str, tuple[int, ...]], seed: int = SEED) -> dict[str, torch.Tensor]:
    """Random weights for every named tensor, drawn in sorted name order from one seeded generator: norm
    weights near 1, biases near 0, other tensors N(0, 0.05^2) (0.2 for the vocoder's 1-d convs, so its
    output is not near silence)."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name in sorted(shapes):
        noise = torch.randn(shapes[name], generator=generator)
        if len(shapes[name]) == 1:
            weights[name] = (1 + 0.1 * noise) if name.endswith("weight") else 0.1 * noise
        else:
            weights[name] = noise * (0.2 if len(shapes[name]) == 3 else 0.05)
    return weights


def draw_htsat_weights(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """draw_weights for the learned tensors of the CLAP audio case, with BatchNorm statistics of the scale of
    log-mels in dB (means about -20, deviations about 10)."""
    weights = draw_weights({k: s for k, s in shapes.items() if not any(f in k for f in HTSAT_FIXED)})
    weights["audio_branch.bn0.running_mean"] = 100 * weights["audio_branch.bn0.running_mean"] - 20
    weights["audio_branch.bn0.running_var"] = (10 + 10 * weights["audio_branch.bn0.running_var"]) ** 2
    return weights


def htsat_waveform(seed: int = SEED + 2) -> torch.Tensor:
    """The CLAP audio case's input (2, 480000): 10 s at 48 kHz, a chord over noise and noise alone."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(480000, dtype=torch.float64) / 48000
    chord = sum(torch.sin(2 * math.pi * f * t) for f in (220.0, 277.2, 329.6)).float() / 3
    return torch.stack([0.5 * chord + 0.05 * torch.randn(480000, generator=generator),
                        0.3 * torch.randn(480000, generator=generator)])


def import_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def authors_modules(source: Path):
    """The authors' module files, imported by path under their own package names (empty parent packages)."""
    root = source / "audioldm2"
    for package in ("audioldm2", "audioldm2.latent_diffusion", "audioldm2.latent_diffusion.modules",
                    "audioldm2.latent_diffusion.modules.diffusionmodules", "audioldm2.utilities",
                    "audioldm2.utilities.audio", "audioldm2.hifigan"):
        sys.modules.setdefault(package, types.ModuleType(package))
    import_file("audioldm2.latent_diffusion.util", root / "latent_diffusion" / "util.py")
    import_file("audioldm2.latent_diffusion.modules.diffusionmodules.util",
                root / "latent_diffusion" / "modules" / "diffusionmodules" / "util.py")
    import_file("audioldm2.latent_diffusion.modules.attention", root / "latent_diffusion" / "modules" / "attention.py")
    openaimodel = import_file("audioldm2.latent_diffusion.modules.diffusionmodules.openaimodel",
                              root / "latent_diffusion" / "modules" / "diffusionmodules" / "openaimodel.py")
    hifigan = import_file("audioldm2.hifigan.models", root / "hifigan" / "models.py")
    import librosa.filters
    import librosa.util

    # librosa >= 0.10 takes these arguments by keyword only; the authors' code (written for 0.9) passes them
    # by position: forward them unchanged
    mel, pad_center = librosa.filters.mel, librosa.util.pad_center
    librosa.filters.mel = lambda sr, n_fft, n_mels, fmin, fmax, **kw: mel(
        sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, **kw)
    librosa.util.pad_center = lambda data, size, **kw: pad_center(data, size=size, **kw)
    import_file("audioldm2.utilities.audio.audio_processing", root / "utilities" / "audio" / "audio_processing.py")
    stft = import_file("audioldm2.utilities.audio.stft", root / "utilities" / "audio" / "stft.py")
    for op in ("nms", "qnms"):  # see the docstring: utils.py imports torchvision
        try:
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:
            pass  # already defined (a working torchvision)
    open_clip = root / "clap" / "open_clip"
    for package in ("audioldm2.clap", "audioldm2.clap.open_clip"):
        sys.modules.setdefault(package, types.ModuleType(package))
    import_file("audioldm2.clap.open_clip.utils", open_clip / "utils.py")
    import_file("audioldm2.clap.open_clip.feature_fusion", open_clip / "feature_fusion.py")
    htsat = import_file("audioldm2.clap.open_clip.htsat", open_clip / "htsat.py")
    return openaimodel, hifigan, stft, htsat


def run_case(module: torch.nn.Module, arguments: dict, inputs: dict, call) -> dict:
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    module.load_state_dict(draw_weights(shapes))
    with torch.no_grad():
        output = call(module.eval(), **inputs)
    return {"arguments": arguments, "shapes": shapes, "inputs": inputs, "output": output}


def make_references(source: Path, out: Path) -> Path:
    openaimodel, hifigan, stft, htsat = authors_modules(source)
    generator = torch.Generator().manual_seed(SEED + 1)
    cases = {}
    # the FiLM UNet of audioldm_48k: y is the (B, 512) CLAP embedding, here 16-d
    cases["unet_48k"] = run_case(
        openaimodel.UNetModel(**UNET_48K), UNET_48K,
        dict(x=torch.randn(2, 16, 16, 8, generator=generator), timesteps=torch.tensor([10, 700]),
             y=torch.randn(2, 16, generator=generator)),
        lambda m, x, timesteps, y: m(x, timesteps, y=y, context_list=[], context_attn_mask_list=[]))
    # the T5-only UNet of audioldm_16k_crossattn_t5: one masked cross-attention
    mask = torch.ones(2, 5)
    mask[1, 3:] = 0
    cases["unet_t5"] = run_case(
        openaimodel.UNetModel(**UNET_T5), UNET_T5,
        dict(x=torch.randn(2, 8, 16, 8, generator=generator), timesteps=torch.tensor([10, 700]),
             context=torch.randn(2, 5, 32, generator=generator), mask=mask),
        lambda m, x, timesteps, context, mask: m(x, timesteps, context_list=[context], context_attn_mask_list=[mask]))
    # the 48 kHz HiFi-GAN (weight norm removed, as the authors' get_vocoder does before loading)
    vocoder = hifigan.Generator(type("AttrDict", (dict,), {"__getattr__": dict.__getitem__})(VOCODER_48K))
    vocoder.remove_weight_norm()
    cases["vocoder_48k"] = run_case(vocoder, VOCODER_48K, dict(mel=torch.randn(1, 256, 12, generator=generator)),
                                    lambda m, mel: m(mel))
    # the 256-mel front end: TacotronSTFT.mel_spectrogram of a 0.25 s waveform in [-0.5, 0.5]
    front_end = stft.TacotronSTFT(**STFT_48K)
    waveform = 0.5 * torch.tanh(torch.randn(1, 12000, generator=generator))
    with torch.no_grad():
        mel = front_end.mel_spectrogram(waveform)[0]  # (1, 256, frames) natural-log mel magnitudes
    cases["stft_48k"] = {"arguments": STFT_48K, "inputs": {"waveform": waveform}, "output": mel}
    # CLAP's audio embedding: open_clip CLAP.get_audio_embedding = the HTSAT's "embedding" (the mean of its last
    # tokens), audio_projection, L2 norm. The waveform is regenerated in the test (htsat_waveform); its first
    # samples are stored to check that it is the same
    clap = torch.nn.Module()
    clap.audio_branch = htsat.HTSAT_Swin_Transformer(**HTSAT_TINY, config=types.SimpleNamespace(**HTSAT_AUDIO_CFG))
    width = HTSAT_TINY["embed_dim"] * 2 ** (len(HTSAT_TINY["depths"]) - 1)
    clap.audio_projection = torch.nn.Sequential(torch.nn.Linear(width, CLAP_JOINT), torch.nn.ReLU(),
                                                torch.nn.Linear(CLAP_JOINT, CLAP_JOINT))
    shapes = {k: tuple(v.shape) for k, v in clap.state_dict().items()}
    clap.load_state_dict({**clap.state_dict(), **draw_htsat_weights(shapes)})
    waveform = htsat_waveform()
    with torch.no_grad():
        branch = clap.eval().audio_branch({"waveform": waveform}, mixup_lambda=None, device=waveform.device)
        embedding = F.normalize(clap.audio_projection(branch["embedding"]), dim=-1)
    cases["clap_audio"] = {"arguments": {**HTSAT_TINY, "audio_cfg": HTSAT_AUDIO_CFG, "joint": CLAP_JOINT}, "shapes": shapes,
                           "inputs": {"waveform_head": waveform[:, :16].clone()}, "output": embedding}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(cases, out)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("authors_source", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "data"
                        / "authors_reference.pt")
    args = parser.parse_args()
    print(make_references(args.authors_source, args.out))


if __name__ == "__main__":
    main()
