"""Run the authors' own modules (haoheliu/AudioLDM2, audioldm2 0.1.0) on tiny configs and store what they compute.

    python scripts/make_authors_references.py AUTHORS_SOURCE [--out tests/data/authors_reference.pt]

AUTHORS_SOURCE is a folder holding the authors' `audioldm2` package source (the package index's 0.1.0, or
the repository; the files used here are identical in both). Only plain-torch module files are imported,
each by its path, so the authors' application dependencies (their pinned transformers, matplotlib,
torchaudio, ...) are not needed: `openaimodel.py` (UNetModel) with the `attention.py` and `util.py` it
imports, `hifigan/models.py` (the HiFi-GAN generator the 48 kHz model uses), `utilities/audio/stft.py`
(TacotronSTFT, with `audio_processing.py`; librosa >= 0.10 takes `filters.mel`'s and `util.pad_center`'s
arguments by keyword only, so the authors' positional calls are forwarded by keyword).

What is stored, per case: the module's constructor arguments, each tensor's name and shape (the weights
themselves are redrawn in the test by `draw_weights`, so the file stays small), the inputs and the output.
tests/test_authors_checkpoint.py loads each case into our stage through the name tables of
`audioldm2_lite/generation/authors_checkpoint.py` and compares.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import torch

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
    return openaimodel, hifigan, stft


def run_case(module: torch.nn.Module, arguments: dict, inputs: dict, call) -> dict:
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    module.load_state_dict(draw_weights(shapes))
    with torch.no_grad():
        output = call(module.eval(), **inputs)
    return {"arguments": arguments, "shapes": shapes, "inputs": inputs, "output": output}


def make_references(source: Path, out: Path) -> Path:
    openaimodel, hifigan, stft = authors_modules(source)
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
