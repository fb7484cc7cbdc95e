"""The authors' checkpoint files: one `.pth`/`.ckpt` per model, in the module names of haoheliu/AudioLDM2.

The authors publish each model as `haoheliu/<name>/<name>.pth` on the hub (the speech ones in
`haoheliu/audioldm2-speech`), and their training code writes the same format: a dict whose `state_dict`
holds every tensor of their `LatentDiffusion` module, named by its module tree:

    model.diffusion_model.*          the UNet (`openaimodel.UNetModel`)
    first_stage_model.encoder/decoder/quant_conv/post_quant_conv.*   the VAE (`autoencoder.AutoencoderKL`)
    first_stage_model.vocoder.*      the HiFi-GAN (`hifigan.models.Generator`, weight norm removed)
    cond_stage_models.<i>.*          the conditioners, in the order of the config's `cond_stage_config`
    clap.*                           a second CLAP, which ranks candidates (its audio tower is read for ranking)
    betas, alphas_cumprod, ..., scale_factor, logvar   the DDPM schedule and the VAE's latent scale

This module recognises which model a file holds from its tensor names and shapes (`recognise`), builds
our stages' hub-layout configs from the authors' config values (`AUTHORS_CONFIGS`, the values of their
`audioldm2/utils.py`) and from the shapes, renames the tensors to the hub layout with one small table per
stage (the tables: authors_names.py; `authors_to_hub`), and then loads each stage strictly exactly as a hub
folder's would be loaded (`load_authors_stages`). authors_export.py writes the same result as a hub folder.

The authors' code takes the configs (and tokenizers) of its text models from the hub ids `roberta-base`
(CLAP's text tower), `google/flan-t5-large` and `gpt2`; so does this module (`text_model_folder`): a
folder of that name in the working directory first (as transformers does), then a folder given as an
option, then the hub cache.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.hub_config import CheckpointError
from ..models import unet_film, vocoder, vocoder_48k
from .authors_names import (
    CLAP_TEXT_PAIRS, PROJECTION_OWN, PROJECTION_PAIRS, WHOLE, clap_audio_pairs, rename, split_qkv,
    unet_layout_of_authors, unet_pairs, vae_pairs, vocoder_pairs,
)
from .hub import _hub_reachable
from .loading import STAGES, Stage, assign_strict, build_config

# ----------------------------------------------------------------------------------------------
# The models, and the authors' values that the tensors do not show


# The files on the hub: <repo>/<name>.pth.
AUTHORS_FILES = {
    "audioldm2-full": "haoheliu/audioldm2-full",
    "audioldm2-music-665k": "haoheliu/audioldm2-music-665k",
    "audioldm2-full-large-1150k": "haoheliu/audioldm2-full-large-1150k",
    "audioldm2-speech-gigaspeech": "haoheliu/audioldm2-speech",
    "audioldm2-speech-ljspeech": "haoheliu/audioldm2-speech",
    "audioldm_48k": "haoheliu/audioldm_48k",
    "audioldm_16k_crossattn_t5": "haoheliu/audioldm_16k_crossattn_t5",
}


@dataclass(frozen=True)
class AuthorsConfig:
    """What the authors' config says and a checkpoint's shapes do not (audioldm2/utils.py, utilities/model.py)."""

    family: str  # "audioldm2" (CLAP + T5 -> GPT-2, and T5), "film" (CLAP embedding as FiLM), "t5" (T5 only)
    sampling_rate: int
    n_fft: int  # preprocessing.stft.filter_length (= win_length)
    mel_fmin: float
    mel_fmax: float
    latent_t_size: int  # the UNet's default latent length: 10.24 s
    # per spatial-transformer position after the extra self-attention: which sequence it reads (None: itself)
    cross_attention: tuple[str | None, ...]
    vocoder_upsample_rates: tuple[int, ...]
    vocoder_dilations: tuple[tuple[int, ...], ...]
    num_head_channels: int = 32  # unet_config.params.num_head_channels: every head 32 channels wide
    linear_start: float = 0.0015  # model.params: the DDPM's scaled-linear betas
    linear_end: float = 0.0195
    timesteps: int = 1000
    sequence_gen_length: int = 8  # SequenceGenAudioMAECond: GPT-2's generated states


VOCODER_16K = dict(vocoder_upsample_rates=(5, 4, 2, 2, 2), vocoder_dilations=((1, 3, 5),) * 3)  # get_vocoder_config
VOCODER_48K = dict(vocoder_upsample_rates=(6, 5, 4, 2, 2), vocoder_dilations=((1, 3, 5),) * 4)  # ..._config_48k
FRONT_END_16K = dict(sampling_rate=16000, n_fft=1024, mel_fmin=0.0, mel_fmax=8000.0, latent_t_size=256)

AUTHORS_CONFIGS = {
    # get_basic_config(): context_dim [768, 1024] (GPT-2's states, T5's states)
    "audioldm2": AuthorsConfig("audioldm2", cross_attention=("gpt2", "t5"), **FRONT_END_16K, **VOCODER_16K),
    # default_audioldm_config("...-large-..."): context_dim [768, 1024, None], transformer_depth 2
    "audioldm2-large": AuthorsConfig("audioldm2", cross_attention=("gpt2", "t5", None), **FRONT_END_16K,
                                     **VOCODER_16K),
    # get_audioldm_48k_config(): extra_film_condition_dim 512, context_dim [None]; 256 mels, 20 Hz-24 kHz
    "audioldm_48k": AuthorsConfig("film", sampling_rate=48000, n_fft=2048, mel_fmin=20.0, mel_fmax=24000.0,
                                  latent_t_size=128, cross_attention=(None,), **VOCODER_48K),
    # get_audioldm_crossattn_t5_config(): context_dim [1024]
    "audioldm_16k_crossattn_t5": AuthorsConfig("t5", cross_attention=("t5",), **FRONT_END_16K, **VOCODER_16K),
}

# The hub ids the authors' code reads its text models' configs and tokenizers from.
TEXT_MODELS = {"clap_text": "roberta-base", "t5": "google/flan-t5-large", "gpt2": "gpt2"}

# Prefixes of each stage in the authors' state_dict, per family. Every LatentDiffusion also holds `clap.model.`, the
# CLAP that ranks candidates (RANKING_CLAP): its audio tower goes beside the text tower in `text_encoder`. The T5-only
# model has no other CLAP, so its text tower is read from there too.
RANKING_CLAP = "clap.model."
PREFIXES = {
    "audioldm2": dict(
        unet="model.diffusion_model.", vae="first_stage_model.", vocoder="first_stage_model.vocoder.",
        clap="cond_stage_models.0.cond_stage_models.0.model.", gpt2="cond_stage_models.0.model.",
        projection="cond_stage_models.0.", t5="cond_stage_models.1.model.",
    ),
    "film": dict(unet="model.diffusion_model.", vae="first_stage_model.", vocoder="first_stage_model.vocoder.",
                 clap="cond_stage_models.0.model."),
    "t5": dict(unet="model.diffusion_model.", vae="first_stage_model.", vocoder="first_stage_model.vocoder.",
               t5="cond_stage_models.0.model.", clap=RANKING_CLAP),
}

# Tensors of an authors' file that inference does not use, each with its reason.
IGNORED = (
    # the DDPM schedule as buffers: the scheduler recomputes it from linear_start / linear_end (checked below)
    r"(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_\w+|log_one_minus_alphas_cumprod|posterior_\w+|logvar)",
    r"scale_factor",  # read into the VAE config's scaling_factor
    r"model_ema\..*",  # EMA copies kept by training; the file's plain weights are the ones its authors run
    r"first_stage_model\.loss\..*",  # the VAE's training discriminator / perceptual loss
    # inside the CLAP conditioner: the audio tower (the ranking CLAP's is read instead); in both CLAPs the training
    # loss's MLPs and temperatures
    r"cond_stage_models\..*model\.(audio_\w+)(\..*)?",
    r".*model\.(audio_transform|text_transform|logit_scale_[at])(\..*)?",
    # HTSAT's own STFT and mel filters (fixed functions of its config: audio_features.py computes the log-mel), its
    # AudioSet classifier (not in the embedding), each shifted block's mask (computed in forward)
    r"clap\.model\.audio_branch\.(spectrogram_extractor|logmel_extractor|tscam_conv|head)\..*",
    r"clap\.model\.audio_branch\.layers\.\d+\.blocks\.\d+\.attn_mask",
    r".*text_branch\.embeddings\.(position_ids|token_type_ids)",  # index tables recomputed in forward
    r"(clap|cond_stage_models\.\d)\.(cond_stage_models\.0\.)?mel_transform\..*",  # CLAP's audio front end (audio mode)
    r"cond_stage_models\.0\.cond_stage_models\.1\..*",  # the GPT-2 conditioner's T5 copy (see load_authors)
    r"cond_stage_models\.0\.cond_stage_models\.2\..*",  # AudioMAE: only training reads real audio's features
    r"cond_stage_models\.0\.model\.lm_head\..*",
)


def recognise(state_dict: dict, file: str) -> str:
    """The key of AUTHORS_CONFIGS that a file's tensors describe; a CheckpointError naming the file if none."""
    has = lambda key: key in state_dict
    if not any(k.startswith("model.diffusion_model.") for k in state_dict):
        raise CheckpointError(f"{file} is not an AudioLDM checkpoint of the authors' code: it has no "
                              f"'model.diffusion_model.*' tensors (the UNet). Expected one of {sorted(AUTHORS_FILES)}.")
    if has("model.diffusion_model.film_emb.weight"):
        return "audioldm_48k"
    if any(k.startswith("cond_stage_models.0.model.h.0.") for k in state_dict):  # GPT-2
        if not any(k.startswith("cond_stage_models.1.") for k in state_dict):  # speech: no T5 beside GPT-2's input
            raise CheckpointError(f"{file} is an AudioLDM 2 speech checkpoint; audioldm2_lite does not read the "
                                  f"speech files of the authors yet: use anhnct/audioldm2_gigaspeech or "
                                  f"anhnct/audioldm2_ljspeech (hub layout).")
        transformers = {m.group(1) for k in state_dict
                        if (m := re.match(r"model\.diffusion_model\.middle_block\.(\d+)\.norm\.weight", k))}
        return "audioldm2-large" if len(transformers) == 4 else "audioldm2"
    if any(k.startswith("cond_stage_models.0.model.encoder.block.0.") for k in state_dict):
        return "audioldm_16k_crossattn_t5"
    raise CheckpointError(f"{file} holds a UNet but none of the conditioners of the authors' models "
                          f"(CLAP + GPT-2, FiLM CLAP, Flan-T5); it is not one of {sorted(AUTHORS_FILES)}.")


# ----------------------------------------------------------------------------------------------
# Reading a file


def read_authors_file(file: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The `state_dict` of an authors' file (a truncated or foreign file is one CheckpointError naming it)."""
    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"checkpoint file {file} does not exist.")
    try:
        # weights_only: an untrusted .pth cannot run code; the authors' files hold tensors, ints and strings
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read {file} as a PyTorch checkpoint ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:200]}); the file is truncated or not a checkpoint: "
                              f"download it again.") from None
    state_dict = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{file} is not a checkpoint of the authors' code: expected a dict with a "
                              f"'state_dict' of tensors.")
    return state_dict


def resolve_authors_file(model: str | os.PathLike) -> Path:
    """A local `.pth`/`.ckpt` path, or `haoheliu/<name>` (or `<name>`) downloaded into the hub cache."""
    path = Path(model).expanduser()
    if path.is_file() or path.suffix in (".pth", ".ckpt"):
        return path
    name = str(model).removeprefix("haoheliu/")
    if name not in AUTHORS_FILES:
        raise CheckpointError(f"'{model}' is neither a checkpoint file nor one of the authors' models "
                              f"{sorted(AUTHORS_FILES)}.")
    from huggingface_hub import hf_hub_download

    offline = _hub_reachable()
    try:  # hf_hub_download shows its own progress bar while it downloads
        return Path(hf_hub_download(AUTHORS_FILES[name], f"{name}.pth", local_files_only=offline is not None))
    except Exception as error:
        reason = offline or f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        raise CheckpointError(f"could not download {name}.pth from {AUTHORS_FILES[name]} ({reason}) and it is "
                              f"not in the hub cache; pass a local .pth file instead.") from None


def is_authors_checkpoint(model: str | os.PathLike) -> bool:
    """Whether `model` names an authors' file (a .pth/.ckpt path or one of their model names), not a hub folder."""
    text = str(model)
    return Path(text).suffix in (".pth", ".ckpt") or text.removeprefix("haoheliu/") in AUTHORS_FILES


# ----------------------------------------------------------------------------------------------
# The text models' configs and tokenizers (roberta-base, google/flan-t5-large, gpt2)


TEXT_MODEL_FILES = ("config.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
                    "vocab.json", "merges.txt", "spiece.model")


def text_model_folder(repo_id: str, text_models_dir: str | os.PathLike | None = None) -> Path:
    """The folder with `repo_id`'s config and tokenizer: `./<repo_id>` first (as transformers' from_pretrained),
    then `<text_models_dir>/<repo_id>` (or its last part), then the hub cache (downloaded when online)."""
    candidates = [Path(repo_id)]
    if text_models_dir is not None:
        candidates += [Path(text_models_dir) / repo_id, Path(text_models_dir) / repo_id.split("/")[-1]]
    for folder in candidates:
        if (folder / "config.json").is_file():
            return folder
    from huggingface_hub import snapshot_download

    offline = _hub_reachable()
    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(TEXT_MODEL_FILES),
                                      local_files_only=offline is not None))
    except Exception:
        raise CheckpointError(f"the authors' model needs the config and tokenizer of '{repo_id}': no folder "
                              f"'{repo_id}' here{' or in ' + str(text_models_dir) if text_models_dir else ''}, "
                              f"and {offline or 'the hub did not answer'}.") from None


def read_text_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


# ----------------------------------------------------------------------------------------------
# Building each stage's hub config and tensors


def authors_to_hub(state_dict: dict, file: str, text_models_dir=None, kind: str | None = None) -> dict:
    """{component: (hub config dict, hub-layout state_dict)} for every stage of an authors' file, plus
    "scheduler": (its config, None) and "model": ({kind, sampling_rate}, None)."""
    kind = kind or recognise(state_dict, file)
    authors = AUTHORS_CONFIGS[kind]
    prefixes = PREFIXES[authors.family]
    ignored = [re.compile(p) for p in IGNORED]
    if prefixes.get("clap") != RANKING_CLAP:  # the ranking CLAP's text tower: a copy of the conditioning one
        ignored.append(re.compile(re.escape(RANKING_CLAP) + r"text_(branch|projection)\..*"))
    used = {k: v for k, v in state_dict.items() if not any(p.fullmatch(k) for p in ignored)}
    stages = {"model": ({"kind": kind, "sampling_rate": authors.sampling_rate}, None)}

    # the UNet
    unet_keys = [k[len(prefixes["unet"]):] for k in used if k.startswith(prefixes["unet"])]
    layout = unet_layout_of_authors(unet_keys)
    unet = rename(used, prefixes["unet"], unet_pairs(**layout), file, "UNet")
    stages["unet"] = (unet_config(unet, layout, authors), unet)

    # the VAE and the vocoder, both inside first_stage_model
    vae_tensors = {k: v for k, v in used.items() if k.startswith(prefixes["vae"]) and not k.startswith(prefixes["vocoder"])}
    levels = len({k.split(".")[3] for k in vae_tensors if k.startswith("first_stage_model.encoder.down.")})
    per_level = len({k.split(".")[5] for k in vae_tensors if k.startswith("first_stage_model.encoder.down.0.block.")})
    vae = rename(vae_tensors, prefixes["vae"], vae_pairs(levels, per_level), file, "VAE")
    vae = {k: v[:, :, 0, 0] if ATTENTION_1X1.fullmatch(k) else v for k, v in vae.items()}  # 1x1 conv -> linear
    stages["vae"] = (vae_config(vae, levels, per_level, state_dict, file), vae)
    vocoder_keys = [k for k in used if k.startswith(prefixes["vocoder"])]
    count = lambda part: len({k.split(".")[3] for k in vocoder_keys if k.startswith(prefixes["vocoder"] + part)})
    vocoder = rename(used, prefixes["vocoder"], vocoder_pairs(count("ups."), count("resblocks.")), file, "vocoder")
    config = vocoder_config(vocoder, authors)
    vocoder["mean"] = torch.zeros(config["model_in_dim"])  # normalize_before is off: stored as zeros and ones
    vocoder["scale"] = torch.ones(config["model_in_dim"])
    stages["vocoder"] = (config, vocoder)

    # the text stages: transformers' own modules, configured from the hub ids the authors' code reads
    if "clap" in prefixes:
        text = {k: v for k, v in used.items() if not k.startswith(RANKING_CLAP + "audio_")}
        clap = rename(text, prefixes["clap"], CLAP_TEXT_PAIRS, file, "CLAP text tower")
        roberta = read_text_config(text_model_folder(TEXT_MODELS["clap_text"], text_models_dir))
        config = {"architectures": ["ClapModel"], "text_config": roberta,
                  "projection_dim": clap["text_projection.linear2.weight"].shape[0], "projection_hidden_act": "relu"}
        if any(k.startswith(RANKING_CLAP + "audio_branch.") for k in used):
            config["audio_config"], audio = clap_audio_to_hub(used, file)
            clap.update(audio)
        stages["text_encoder"] = (config, clap)
    if "t5" in prefixes:
        t5 = rename(used, prefixes["t5"], WHOLE, file, "Flan-T5 encoder")
        config = read_text_config(text_model_folder(TEXT_MODELS["t5"], text_models_dir))
        stages["text_encoder_2"] = ({**config, "architectures": ["T5EncoderModel"]}, t5)
    if "gpt2" in prefixes:
        gpt2 = rename(used, prefixes["gpt2"], WHOLE, file, "GPT-2")
        config = read_text_config(text_model_folder(TEXT_MODELS["gpt2"], text_models_dir))
        stages["language_model"] = ({**config, "architectures": ["GPT2Model"],
                                     "max_new_tokens": authors.sequence_gen_length}, gpt2)
        stages["projection_model"] = projection_to_hub(used, prefixes["projection"], file)

    owners = [p for stage, p in prefixes.items() if stage != "projection"] + [RANKING_CLAP + "audio_"]
    if "projection" in prefixes:  # the conditioner's own layers, not everything under it
        owners += [prefixes["projection"] + name for name in PROJECTION_OWN]
    claimed = {k for k in used if any(k.startswith(p) for p in owners)}
    if set(used) - claimed:
        raise CheckpointError(f"{file}: tensors {sorted(set(used) - claimed)[:5]} belong to no stage of {kind}; "
                              f"is it another model?")
    stages["scheduler"] = ({"_class_name": "DDIMScheduler", "num_train_timesteps": authors.timesteps,
                            "beta_start": authors.linear_start, "beta_end": authors.linear_end,
                            "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False,
                            "steps_offset": 1, "prediction_type": "epsilon"}, None)
    check_schedule(state_dict, authors, file)
    return stages


ATTENTION_1X1 = re.compile(r"(encoder|decoder)\.mid_block\.attentions\.0\.to_(q|k|v|out\.0)\.weight")


def unet_config(unet: dict, layout: dict, authors: AuthorsConfig) -> dict:
    """diffusers' AudioLDM2UNet2DConditionModel config of the authors' UNetModel, from its shapes and config."""
    levels = layout["levels"]
    channels = [unet[f"down_blocks.{level}.resnets.0.conv1.weight"].shape[0] for level in range(levels)]
    attention = layout["attention"]
    attention_levels = [level for level in range(levels) if attention[level]]
    if layout["per_resnet"] != len(authors.cross_attention) + 1:  # the extra self-attention first (extra_sa_layer)
        raise CheckpointError(f"the UNet has {layout['per_resnet']} transformers per ResBlock; the authors' config "
                              f"of this model has {len(authors.cross_attention) + 1}.")
    widths = [None]
    for i, reads in enumerate(authors.cross_attention, start=1):
        key = f"down_blocks.{attention_levels[0]}.attentions.{i}.transformer_blocks.0.attn2.to_k.weight"
        widths.append(None if reads is None else unet[key].shape[1])
    depth = len({k.split(".")[5] for k in unet if k.startswith(f"down_blocks.{attention_levels[0]}.attentions.0.")
                 and ".transformer_blocks." in k})
    config = {
        "_class_name": "AudioLDM2UNet2DConditionModel",
        "sample_size": authors.latent_t_size,
        "in_channels": unet["conv_in.weight"].shape[1], "out_channels": unet["conv_out.weight"].shape[0],
        "block_out_channels": channels,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in attention[::-1]],
        "layers_per_block": layout["layers_per_block"], "transformer_layers_per_block": depth,
        "cross_attention_dim": [widths] * levels,
        # num_head_channels 32: every transformer splits its channels into heads of 32 (issue 32), which
        # diffusers reads as this list of head counts per level (its mid block takes the last)
        "attention_head_dim": [max(c // authors.num_head_channels, 1) for c in channels],
        "norm_num_groups": 32, "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0,
    }
    if authors.cross_attention[0] == "t5":  # T5-only: position 1 reads T5 (audioldm2_lite's routing field)
        config["first_t5_position"] = 1
    if "class_embedding.weight" in unet:  # FiLM (extra_film_condition_dim) = diffusers' concatenated projection
        config.update(class_embed_type="simple_projection", class_embeddings_concat=True,
                      projection_class_embeddings_input_dim=unet["class_embedding.weight"].shape[1])
    return config


def vae_config(vae: dict, levels: int, per_level: int, state_dict: dict, file: str) -> dict:
    """diffusers' AutoencoderKL config of the authors' AutoencoderKL (ddconfig: ch, ch_mult, num_res_blocks)."""
    if "scale_factor" not in state_dict:
        raise CheckpointError(f"{file} has no 'scale_factor' (the latents' scale, scale_by_std); "
                              "it is not a LatentDiffusion checkpoint.")
    return {
        "_class_name": "AutoencoderKL", "in_channels": vae["encoder.conv_in.weight"].shape[1],
        "out_channels": vae["decoder.conv_out.weight"].shape[0],
        "latent_channels": vae["post_quant_conv.weight"].shape[1],
        "block_out_channels": [vae[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(levels)],
        "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
        "layers_per_block": per_level,
        "norm_num_groups": 32, "act_fn": "silu", "scaling_factor": float(state_dict["scale_factor"]),
    }


def vocoder_config(vocoder: dict, authors: AuthorsConfig) -> dict:
    """transformers' SpeechT5HifiGan config of the authors' HiFi-GAN: widths and kernels from the shapes, the
    strides, dilations and rate from the authors' vocoder config; the mel front end's STFT beside them."""
    stages = len({k.split(".")[1] for k in vocoder if k.startswith("upsampler.")})
    blocks = len({k.split(".")[1] for k in vocoder if k.startswith("resblocks.")})
    kernels = [vocoder[f"resblocks.{j}.convs1.0.weight"].shape[2] for j in range(blocks // stages)]
    if stages != len(authors.vocoder_upsample_rates):
        raise CheckpointError(f"the vocoder has {stages} upsampling stages; the authors' config of this model has "
                              f"{len(authors.vocoder_upsample_rates)} ({authors.vocoder_upsample_rates}).")
    return {
        "architectures": ["SpeechT5HifiGan"], "model_in_dim": vocoder["conv_pre.weight"].shape[1],
        "sampling_rate": authors.sampling_rate,
        "upsample_initial_channel": vocoder["conv_pre.weight"].shape[0],
        "upsample_rates": list(authors.vocoder_upsample_rates),
        "upsample_kernel_sizes": [vocoder[f"upsampler.{i}.weight"].shape[2] for i in range(stages)],
        "resblock_kernel_sizes": kernels, "resblock_dilation_sizes": [list(d) for d in authors.vocoder_dilations],
        "normalize_before": False, "leaky_relu_slope": 0.1,
        # the mel front end the VAE and vocoder were trained on (preprocessing.stft / .mel); transformers keeps
        # unknown fields, diffusers' pipelines ignore them, audioldm2_lite's MelConfig reads them
        "n_fft": authors.n_fft, "mel_fmin": authors.mel_fmin, "mel_fmax": authors.mel_fmax,
    }


def clap_audio_to_hub(used: dict, file: str) -> tuple[dict, dict]:
    """The ranking CLAP's audio tower and projection: transformers' ClapAudioConfig (widths, depths, heads and
    window from the shapes; 64 mels folded into a 256 x 256 image in every HTSAT of open_clip) and its tensors."""
    branch = RANKING_CLAP + "audio_branch."
    stages = len({k.split(".")[4] for k in used if k.startswith(branch + "layers.")})
    depths = [len({k.split(".")[6] for k in used if k.startswith(f"{branch}layers.{i}.blocks.")}) for i in range(stages)]
    tables = [used[f"{branch}layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(stages)]
    patch = used[branch + "patch_embed.proj.weight"]  # (channels, 1, patch, patch)
    config = {"depths": depths, "num_attention_heads": [t.shape[1] for t in tables],
              "window_size": (round(tables[0].shape[0] ** 0.5) + 1) // 2,  # a (2 w - 1)^2-row bias table
              "patch_embeds_hidden_size": patch.shape[0], "patch_size": patch.shape[2], "patch_stride": patch.shape[2],
              "hidden_size": used[branch + "norm.weight"].shape[0], "num_mel_bins": used[branch + "bn0.weight"].shape[0],
              "spec_size": 256, "enable_fusion": False}
    audio = {k: v for k, v in used.items() if k.startswith(RANKING_CLAP + "audio_")}
    return config, split_qkv(rename(audio, RANKING_CLAP, clap_audio_pairs(depths), file, "CLAP audio tower"))


def projection_to_hub(used: dict, prefix: str, file: str) -> tuple[dict, dict]:
    """diffusers' AudioLDM2ProjectionModel of SequenceGenAudioMAECond's projections and start / end vectors."""
    hub = rename({k: v for k, v in used.items() if k.startswith(prefix + "input_sequence_embed_linear.")},
                 prefix, PROJECTION_PAIRS, file, "projection")
    # one learned start / end vector per input sequence (nn.Embedding rows): row 0 CLAP's, row 1 T5's
    for row, suffix in ((0, ""), (1, "_1")):
        hub[f"sos_embed{suffix}"] = used[prefix + "start_of_sequence_tokens.weight"][row]
        hub[f"eos_embed{suffix}"] = used[prefix + "end_of_sequence_tokens.weight"][row]
    config = {"_class_name": "AudioLDM2ProjectionModel", "text_encoder_dim": hub["projection.weight"].shape[1],
              "text_encoder_1_dim": hub["projection_1.weight"].shape[1],
              "langauge_model_dim": hub["projection.weight"].shape[0]}  # sic: diffusers' spelling
    return config, hub


def check_schedule(state_dict: dict, authors: AuthorsConfig, file: str) -> None:
    """The file's stored betas must be the schedule the scheduler config describes."""
    if "betas" not in state_dict:
        return
    betas = torch.linspace(authors.linear_start ** 0.5, authors.linear_end ** 0.5, authors.timesteps,
                           dtype=torch.float64) ** 2
    if state_dict["betas"].shape != betas.shape or not torch.allclose(state_dict["betas"].double(), betas, rtol=1e-5):
        raise CheckpointError(f"{file}: its DDPM betas are not the authors' scaled-linear schedule "
                              f"({authors.linear_start}-{authors.linear_end}, {authors.timesteps} steps).")


# ----------------------------------------------------------------------------------------------
# Loading


def load_authors_stages(model: str | os.PathLike, components=None, dtype=torch.float32, device="cpu",
                        text_models_dir=None) -> dict:
    """Our modules for `components` (default: every stage of the file) of an authors' file or model name,
    each loaded strictly as its hub-layout twin would be; nothing is returned unless every stage loads."""
    file = resolve_authors_file(model)
    stages = authors_to_hub(read_authors_file(file), str(file), text_models_dir)
    wanted = [c for c in stages if stages[c][1] is not None] if components is None else list(components)
    modules = {}
    for name in wanted:
        if name not in stages:
            raise CheckpointError(f"{file} ({stages['model'][0]['kind']}) has no component '{name}'.")
        hub_config, state_dict = stages[name]
        modules[name] = build_stage(name, hub_config, state_dict, file, dtype, device)
    return modules


# The stages an authors' model is built with, where they are not STAGES': the UNet with its FiLM condition and T5
# routing (models/unet_film.py), the vocoder with its mel front end in its config (models/vocoder_48k.py).
AUTHORS_STAGES = {
    "unet": Stage(unet_film, unet_film.FilmUNetConfig, unet_film.FilmUNet, STAGES["unet"].hub_classes),
    "vocoder": Stage(vocoder, vocoder_48k.MelHifiGanConfig, vocoder.HifiGan, STAGES["vocoder"].hub_classes),
}


def authors_stage(name: str) -> Stage:
    return AUTHORS_STAGES.get(name) or STAGES[name]


def build_stage(name: str, hub_config: dict, state_dict: dict, file, dtype=torch.float32, device="cpu"):
    """One of our stages from a hub config dict and hub-layout tensors (what load_component does for a folder)."""
    stage = authors_stage(name)
    config = build_config(name, hub_config, file, stage)
    convert = getattr(stage.module, "convert_hub_state_dict", None)
    if convert is not None:
        state_dict = convert(dict(state_dict), config)
    origin = dict.fromkeys(state_dict, Path(file))
    with torch.device("meta"):
        model = stage.model(config)
    assign_strict(model, state_dict, origin, name, getattr(stage.module, "UNUSED_KEYS", ()), dtype, device,
                  getattr(stage.module, "KEEP_FP32_KEYS", ()))
    return model.eval().requires_grad_(False)
