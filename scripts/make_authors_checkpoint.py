"""Build a tiny random checkpoint in the authors' own file format (haoheliu/AudioLDM2), offline, in seconds.

    python scripts/make_authors_checkpoint.py KIND OUT.pth [--text-models DIR] [--seed 0]

KIND is audioldm2-full, audioldm_48k or audioldm_16k_crossattn_t5. The file is a dict with `state_dict` in
the authors' module names (model.diffusion_model.*, first_stage_model.*, cond_stage_models.*), as their
training code writes it, with the DDPM schedule buffers and `scale_factor` beside the weights. The sizes are
tiny but keep the authors' structure: GroupNorm of 32 groups and heads of 32 channels (so widths are
multiples of 32), two ResBlocks per level, the extra self-attention before each cross-attention, the
official vocoder strides and kernels. `--text-models DIR` also writes DIR/roberta-base, DIR/google/flan-t5-large
and DIR/gpt2: the configs and tokenizers of tiny text models, which the authors' code (and
`audioldm2_lite.generation.authors_checkpoint`) reads from those hub ids.

Every file also holds `clap.model.*`, the CLAP that ranks candidates (a copy of the conditioning CLAP's text tower,
or the T5-only model's own, and a tiny HTSAT audio tower with its STFT, mel and classifier tensors as zeros).

The UNet, VAE, vocoder and audio tower weights are drawn for our own modules and renamed to the authors' names with
the name tables of `authors_names.py` read backwards. tests/test_authors_checkpoint.py checks that they are the
authors' names: `tests/data/authors_reference.pt`, made from the authors' own modules, holds the names and shapes
of their UNetModel, HiFi-GAN and HTSAT (`test_tiny_authors_files_use_the_authors_names`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from make_tiny_checkpoint import build_roberta_tokenizer, build_t5_tokenizer, perturb_vectors  # noqa: E402

KINDS = ("audioldm2-full", "audioldm_48k", "audioldm_16k_crossattn_t5")
TINY_CLAP_MAX_LENGTH = 40
TINY_T5_MAX_LENGTH = 24
TINY_TEXT = dict(  # the text models' tiny sizes (the authors read these from roberta-base, flan-t5-large, gpt2)
    roberta=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                 max_position_embeddings=TINY_CLAP_MAX_LENGTH + 2, layer_norm_eps=1e-5, type_vocab_size=1),
    t5=dict(d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
            relative_attention_num_buckets=8, relative_attention_max_distance=16),
    gpt2=dict(n_embd=24, n_layer=2, n_head=4, n_positions=64, vocab_size=50, bos_token_id=0, eos_token_id=0),
)
CLAP_PROJECTION_DIM = 16  # the official CLAP's joint space is 512
# the ranking CLAP's HTSAT: the real front end (64 mels, 256 x 256 image, 4 x 4 patches, windows of 8), 16 -> 128
# channels (128 -> 1024 in HTSAT-base) and an AudioSet head of 10 classes (527)
TINY_HTSAT = dict(patch_embeds_hidden_size=16, depths=(2, 2, 2, 2), num_attention_heads=(1, 2, 4, 8), hidden_size=128,
                  projection_dim=CLAP_PROJECTION_DIM)
TINY_HTSAT_CLASSES = 10


def make_text_models(out: Path) -> Path:
    """DIR/roberta-base, DIR/google/flan-t5-large and DIR/gpt2: tiny configs and tokenizers under the hub ids."""
    from transformers import GPT2Config, RobertaConfig, T5Config

    roberta = build_roberta_tokenizer(out / "roberta-base", TINY_CLAP_MAX_LENGTH)
    RobertaConfig(vocab_size=len(roberta), pad_token_id=1, bos_token_id=0, eos_token_id=2,
                  **TINY_TEXT["roberta"]).save_pretrained(out / "roberta-base")
    t5 = build_t5_tokenizer(out / "google" / "flan-t5-large", TINY_T5_MAX_LENGTH)
    T5Config(vocab_size=len(t5), **TINY_TEXT["t5"]).save_pretrained(out / "google" / "flan-t5-large")
    GPT2Config(**TINY_TEXT["gpt2"]).save_pretrained(out / "gpt2")
    return out


def tiny_stage_configs(kind: str):
    """Our configs of the tiny UNet, VAE and vocoder of `kind`, in the authors' structure."""
    from audioldm2_lite.generation.authors_checkpoint import AUTHORS_CONFIGS
    from audioldm2_lite.models.unet_film import FilmUNetConfig
    from audioldm2_lite.models.vae import VAEConfig
    from audioldm2_lite.models.vocoder import HifiGanConfig

    authors = AUTHORS_CONFIGS["audioldm2" if kind == "audioldm2-full" else kind]
    width = {"gpt2": TINY_TEXT["gpt2"]["n_embd"], "t5": TINY_TEXT["t5"]["d_model"], None: None}
    wide = kind == "audioldm_48k"
    channels = (32, 32, 64, 64)
    unet = FilmUNetConfig(
        sample_size=authors.latent_t_size, in_channels=16 if wide else 8, out_channels=16 if wide else 8,
        block_out_channels=channels, layers_per_block=2, num_heads=tuple(max(c // 32, 1) for c in channels),
        cross_attention_dim=((None, *(width[r] for r in authors.cross_attention)),) * 4,
        film_condition_dim=CLAP_PROJECTION_DIM if wide else None,
    )
    vae = VAEConfig(latent_channels=unet.in_channels, block_out_channels=(32, 32, 64, 64) if wide else (32, 32, 64),
                    layers_per_block=2, norm_num_groups=32, scaling_factor=0.6)
    vocoder = HifiGanConfig(
        model_in_dim=256 if wide else 64, sampling_rate=authors.sampling_rate, upsample_initial_channel=32,
        upsample_rates=authors.vocoder_upsample_rates,
        upsample_kernel_sizes=(12, 10, 8, 4, 4) if wide else (16, 16, 8, 4, 4),
        resblock_kernel_sizes=(3, 7, 11, 15) if wide else (3, 7, 11), resblock_dilation_sizes=authors.vocoder_dilations,
    )
    return authors, unet, vae, vocoder


def tiny_htsat() -> dict:
    """The ranking CLAP's audio side in the authors' names (open_clip CLAP: `audio_branch` = htsat.py
    HTSAT_Swin_Transformer, `audio_projection`): our ClapAudioTower's random weights renamed, with the tensors
    of HTSAT that the conversion leaves (its STFT and mel filters, shift masks, AudioSet classifier: zeros)
    and the position indices transformers reads."""
    import torch

    from audioldm2_lite.generation.authors_names import clap_audio_pairs, fuse_qkv, rename
    from audioldm2_lite.models.clap_audio import ClapAudioConfig, ClapAudioTower, relative_position_index

    config = ClapAudioConfig(**TINY_HTSAT)
    tower = ClapAudioTower(config)
    with torch.no_grad():
        for name, parameter in tower.named_parameters():  # left uninitialised (torch.empty): always loaded
            if name.endswith("relative_position_bias_table"):
                parameter.normal_(0, 0.02)
    tower = perturb_vectors(tower)
    with torch.no_grad():  # BatchNorm statistics on the scale of log-mels in dB
        tower.audio_model.audio_encoder.batch_norm.running_mean.normal_(-20, 10)
        tower.audio_model.audio_encoder.batch_norm.running_var.uniform_(50, 150)
    state = rename(fuse_qkv(tower.state_dict()), "", clap_audio_pairs(list(config.depths)), "tiny", "CLAP audio",
                   to_hub=False)
    window, bins = config.window_size, 1024 // 2 + 1  # HTSAT-*.json: STFT window 1024
    state["audio_branch.spectrogram_extractor.stft.conv_real.weight"] = torch.zeros(bins, 1, 1024)
    state["audio_branch.spectrogram_extractor.stft.conv_imag.weight"] = torch.zeros(bins, 1, 1024)
    state["audio_branch.logmel_extractor.melW"] = torch.zeros(bins, config.num_mel_bins)
    last = config.stage_resolutions()[-1] // config.freq_ratio  # the classifier's kernel height
    state["audio_branch.tscam_conv.weight"] = torch.zeros(TINY_HTSAT_CLASSES, config.hidden_size, last, 3)
    state["audio_branch.tscam_conv.bias"] = torch.zeros(TINY_HTSAT_CLASSES)
    state["audio_branch.head.weight"] = torch.zeros(TINY_HTSAT_CLASSES, TINY_HTSAT_CLASSES)
    state["audio_branch.head.bias"] = torch.zeros(TINY_HTSAT_CLASSES)
    for i, (depth, side) in enumerate(zip(config.depths, config.stage_resolutions())):
        for j in range(depth):
            block = f"audio_branch.layers.{i}.blocks.{j}."
            state[block + "attn.relative_position_index"] = relative_position_index(window)
            if j % 2 and side > window:  # shifted windows, where the grid is larger than one window
                state[block + "attn_mask"] = torch.zeros((side // window) ** 2, window ** 2, window ** 2)
    return state


def make_authors_checkpoint(kind: str, out_file: str | Path, text_models: str | Path | None = None,
                            seed: int = 0) -> Path:
    import torch
    from transformers import GPT2Config, GPT2Model, RobertaConfig, RobertaModel, T5Config, T5EncoderModel

    from audioldm2_lite.generation.authors_checkpoint import PREFIXES, RANKING_CLAP
    from audioldm2_lite.generation.authors_names import (
        CLAP_TEXT_PAIRS, PROJECTION_PAIRS, rename, unet_pairs, vae_pairs, vocoder_pairs,
    )
    from audioldm2_lite.models.unet_film import FilmUNet
    from audioldm2_lite.models.vae import AutoencoderKL
    from audioldm2_lite.models.vocoder import HifiGan

    if kind not in KINDS:
        raise SystemExit(f"KIND must be one of {KINDS}")
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    text_models = Path(text_models) if text_models else out_file.parent
    make_text_models(text_models)
    torch.manual_seed(seed)
    authors, unet_config, vae_config, vocoder_config = tiny_stage_configs(kind)
    prefixes = PREFIXES[authors.family]
    state = {}

    def put(prefix: str, tensors: dict):
        state.update({prefix + k: v.detach().clone() for k, v in tensors.items()})

    # UNet, VAE, vocoder: our modules' random weights under the authors' names
    unet = perturb_vectors(FilmUNet(unet_config))
    levels = len(unet_config.block_out_channels)
    layout = dict(levels=levels, layers_per_block=2, attention=[False] + [True] * (levels - 1),
                  per_resnet=len(unet_config.cross_attention_dim[0]))
    put(prefixes["unet"], rename(unet.state_dict(), "", unet_pairs(**layout), "tiny", "UNet", to_hub=False))
    vae = perturb_vectors(AutoencoderKL(vae_config)).state_dict()
    vae = {k: v[:, :, None, None] if k.endswith("weight") and ".attentions.0.to_" in k else v  # linear -> 1x1 conv
           for k, v in vae.items()}
    put(prefixes["vae"], rename(vae, "", vae_pairs(len(vae_config.block_out_channels), 2), "tiny", "VAE", to_hub=False))
    vocoder = {k: v for k, v in perturb_vectors(HifiGan(vocoder_config)).state_dict().items() if k not in ("mean", "scale")}
    stages, blocks = len(vocoder_config.upsample_rates), len(vocoder_config.upsample_rates) * len(vocoder_config.resblock_kernel_sizes)
    put(prefixes["vocoder"], rename(vocoder, "", vocoder_pairs(stages, blocks), "tiny", "vocoder", to_hub=False))

    # the text models: transformers' own modules, as in the authors' code, configured from the folders
    if "clap" in prefixes:
        roberta = perturb_vectors(RobertaModel(RobertaConfig.from_pretrained(text_models / "roberta-base")))
        hidden = roberta.config.hidden_size
        projection = torch.nn.Sequential(torch.nn.Linear(hidden, CLAP_PROJECTION_DIM), torch.nn.ReLU(),
                                         torch.nn.Linear(CLAP_PROJECTION_DIM, CLAP_PROJECTION_DIM))
        hub = {f"text_model.{k}": v for k, v in roberta.state_dict().items()}
        hub.update({f"text_projection.linear{i}.{p}": projection[2 * (i - 1)].state_dict()[p]
                    for i in (1, 2) for p in ("weight", "bias")})
        for prefix in dict.fromkeys([prefixes["clap"], RANKING_CLAP]):  # the ranking CLAP holds a copy
            put(prefix, rename(hub, "", CLAP_TEXT_PAIRS, "tiny", "CLAP", to_hub=False))
            put(prefix, {"logit_scale_a": torch.tensor(2.0), "logit_scale_t": torch.tensor(2.0)})
    put(RANKING_CLAP, tiny_htsat())
    if "t5" in prefixes:
        t5 = perturb_vectors(T5EncoderModel(T5Config.from_pretrained(text_models / "google" / "flan-t5-large")))
        put(prefixes["t5"], t5.state_dict())
    if "gpt2" in prefixes:
        gpt2 = perturb_vectors(GPT2Model(GPT2Config.from_pretrained(text_models / "gpt2")))
        put(prefixes["gpt2"], gpt2.state_dict())
        n_embd = gpt2.config.n_embd
        linears = {"projection.weight": torch.randn(n_embd, CLAP_PROJECTION_DIM) * 0.2,
                   "projection.bias": torch.randn(n_embd) * 0.1,
                   "projection_1.weight": torch.randn(n_embd, TINY_TEXT["t5"]["d_model"]) * 0.2,
                   "projection_1.bias": torch.randn(n_embd) * 0.1}
        put(prefixes["projection"], rename(linears, "", PROJECTION_PAIRS, "tiny", "projection", to_hub=False))
        put(prefixes["projection"], {"start_of_sequence_tokens.weight": torch.randn(32, n_embd),
                                     "end_of_sequence_tokens.weight": torch.randn(32, n_embd)})

    # the DDPM schedule buffers and the latents' scale, as LatentDiffusion registers them
    betas = torch.linspace(authors.linear_start ** 0.5, authors.linear_end ** 0.5, authors.timesteps,
                           dtype=torch.float64) ** 2
    state["betas"] = betas.float()
    state["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    state["logvar"] = torch.zeros(authors.timesteps)
    state["scale_factor"] = torch.tensor(vae_config.scaling_factor)
    torch.save({"state_dict": state, "global_step": 0}, out_file)
    return out_file


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("out_file")
    parser.add_argument("--text-models", help="where to write roberta-base/, google/flan-t5-large/, gpt2/ "
                                              "(default: beside the file)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_authors_checkpoint(args.kind, args.out_file, args.text_models, args.seed))


if __name__ == "__main__":
    main()
