"""Checkpoint I/O: the one place that touches the Hugging Face hub and the file system.

An AudioLDM 2 checkpoint in hub layout (cvssp/audioldm2, -large, -music) is a folder with a
`model_index.json` and one sub-folder per component (`unet/config.json` plus
`unet/diffusion_pytorch_model.safetensors`, ...). This module

- resolves a checkpoint given as a hub id or a local folder (`resolve_checkpoint`), downloading from
  the hub only the files the requested components need (configs and one weight format);
- reads configs and weights (safetensors preferred, `.bin` only through `torch.load(weights_only=True)`,
  sharded `*.index.json` supported, `variant="fp16"` files as diffusers names them) and casts them to the
  requested dtype;
- builds our module for a component from its config and loads the weights strictly
  (`load_component`): every checkpoint tensor is used or matches the stage's `UNUSED_KEYS`, and a
  missing, unexpected or misshapen tensor is an error naming the component, the file, the key and
  both shapes.

The contract with a stage module (`audioldm2_lite/models/<stage>.py`, named in `STAGES`) is small:
  - `<Config>.from_hub(config: dict)` builds the stage's dataclass config from the hub `config.json`,
    reading every field with `hub_field` (which refuses values the stage does not implement);
  - `<Model>(config)` is the `nn.Module`; it registers no non-persistent buffers (derived tables are
    computed in `forward`), so the model can be built on the meta device and filled by assignment;
  - optional `convert_hub_state_dict(state_dict, config) -> state_dict` for hub layouts that need a
    reshape or rename (GPT-2's Conv1D, weight norm), each change commented with its reason;
  - optional `UNUSED_KEYS`: regular expressions (full match) of hub tensors deliberately not used;
  - optional `KEEP_FP32_KEYS`: regular expressions of our tensors that stay float32 whatever the
    requested dtype (for layers that overflow in float16).

Every failure a user can cause (offline with nothing cached, a missing folder or component, a
truncated weight file, a config of the wrong class) raises `CheckpointError` with what is wrong and
what to do about it. A config value a stage does not implement raises its subclass
`UnsupportedConfigError`, always in one shape: file, field, value, what is supported.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from urllib.parse import urlparse

import torch

from ..models import clap, clap_audio, gpt2, projection, t5, unet, vae, vits, vocoder
from .authors import apply_reference, resolve_reference
from ..models.hub_config import CheckpointError, HubConfig, UnsupportedConfigError, hub_field, unsupported_config

DEFAULT_CHECKPOINT = "cvssp/audioldm2"


@dataclass(frozen=True)
class Stage:
    module: ModuleType  # the network's file: its optional convert_hub_state_dict, UNUSED_KEYS, KEEP_FP32_KEYS
    config: type  # its dataclass config, built by `config.from_hub(hub config dict)`
    model: type  # its nn.Module, built from that config
    hub_classes: tuple[str, ...]  # accepted `_class_name` / `architectures[0]` of config.json


# Components of the hub layout that are neural networks, and the stage that implements each.
STAGES: dict[str, Stage] = {
    "text_encoder": Stage(clap, clap.ClapConfig, clap.ClapModel, ("ClapModel",)),
    "text_encoder_2": Stage(t5, t5.T5Config, t5.T5Encoder, ("T5EncoderModel",)),
    "projection_model": Stage(projection, projection.ProjectionConfig, projection.ProjectionModel,
                              ("AudioLDM2ProjectionModel",)),
    "language_model": Stage(gpt2, gpt2.GPT2Config, gpt2.GPT2Generator, ("GPT2Model", "GPT2LMHeadModel")),
    "unet": Stage(unet, unet.UNetConfig, unet.UNet, ("AudioLDM2UNet2DConditionModel",)),
    "vae": Stage(vae, vae.VAEConfig, vae.AutoencoderKL, ("AutoencoderKL",)),
    "vocoder": Stage(vocoder, vocoder.HifiGanConfig, vocoder.HifiGan, ("SpeechT5HifiGan",)),
}
# Stages stored inside another component's folder and loaded on their own: CLAP's audio tower, which
# only candidate ranking needs (the pipeline loads it when it first ranks).
PART_STAGES: dict[str, tuple[str, Stage]] = {
    "clap_audio": ("text_encoder", Stage(clap_audio, clap_audio.ClapAudioConfig, clap_audio.ClapAudioTower,
                                         ("ClapModel",))),
}
# Stages that replace a component's usual one when its config names their hub class: the text-to-speech
# checkpoints store a VITS model as `text_encoder_2` where the others store Flan-T5.
ALTERNATIVE_STAGES: dict[str, tuple[Stage, ...]] = {
    "text_encoder_2": (Stage(vits, vits.VitsConfig, vits.VitsTextEncoder, ("VitsModel",)),),
}
# Components that are configuration or tokenizer files only.
FILE_COMPONENTS = ("tokenizer", "tokenizer_2", "scheduler", "feature_extractor")

CONFIG_NAMES = ("config.json", "scheduler_config.json", "preprocessor_config.json")
# Weight files in order of preference: the first format present in a component folder is used.
WEIGHT_FORMATS = (
    ("model.safetensors", "diffusion_pytorch_model.safetensors"),
    ("pytorch_model.bin", "diffusion_pytorch_model.bin"),
)
TOKENIZER_FILES = (
    "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "vocab.json", "merges.txt",
    "spiece.model", "added_tokens.json",
)


# ----------------------------------------------------------------------------------------------
# Resolving a checkpoint to a local folder


HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def _offline_message(repo_id: str, cause: str) -> str:
    return (
        f"could not download '{repo_id}' from the Hugging Face hub ({cause}) and it is not fully in the "
        f"local cache. Connect to the internet and try again, or pass a local checkpoint folder in hub "
        f"layout instead, e.g. `--model weights/{repo_id.split('/')[-1]}` "
        f"(see weights/README.md: `python scripts/download_weights.py {repo_id}` on a machine with internet)."
    )


def _hub_reachable(timeout: float = 5.0) -> str | None:
    """None if the hub's host answers a TCP connection, else the reason. Avoids minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a proxy decides; let huggingface_hub try
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as error:
        return f"no connection to {host}: {error}"
    return None


def _component_patterns(components) -> list[str]:
    patterns = ["model_index.json"]
    for name in components:
        patterns += [f"{name}/{f}" for f in CONFIG_NAMES + TOKENIZER_FILES]
    return patterns


def weight_file_names(variant: str | None = None) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(single-file names, shard index names) of each weight format, in order of preference.

    A variant is diffusers' and transformers' naming: `model.fp16.safetensors`, indexes
    `model.safetensors.index.fp16.json` (and the legacy `model.safetensors.fp16.index.json`).
    """
    formats = []
    for names in WEIGHT_FORMATS:
        if variant is None:
            formats.append((names, tuple(n + ".index.json" for n in names)))
        else:
            singles = tuple(f"{stem}.{variant}.{ext}" for stem, ext in (n.rsplit(".", 1) for n in names))
            formats.append((singles, tuple(f"{n}.index.{variant}.json" for n in names)
                            + tuple(f"{n}.{variant}.index.json" for n in names)))
    return formats


def _choose_hub_files(repo_files: list[str], components, variant: str | None = None) -> list[str]:
    """Configs of each component plus one weight format (safetensors first; shards with their index); with a
    variant, its files where the component has them, else the component's plain files (as diffusers)."""
    chosen = ["model_index.json"]
    for name in components:
        inside = [f[len(name) + 1:] for f in repo_files if f.startswith(name + "/") and f.count("/") == 1]
        chosen += [f"{name}/{f}" for f in inside if f in CONFIG_NAMES + TOKENIZER_FILES]
        if name in FILE_COMPONENTS:
            continue
        formats = (weight_file_names(variant) if variant else []) + weight_file_names()
        for single_names, index_names in formats:
            single = [f for f in inside if f in single_names]
            index = [f for f in inside if f in index_names]
            if single or index:
                chosen += [f"{name}/{f}" for f in single[:1]]
                if not single:  # sharded: the index and every shard it names
                    shard = _shard_name_pattern(index[0])
                    chosen += [f"{name}/{index[0]}"] + [f"{name}/{f}" for f in inside if shard.fullmatch(f)]
                break
    return chosen


def _shard_name_pattern(index_name: str) -> re.Pattern:
    """The names of the shards an index file lists: `model-00001-of-00002.safetensors` for
    `model.safetensors.index.json`, `model.fp16-00001-of-00002.safetensors` for `...index.fp16.json` and
    the legacy `model-00001-of-00002.fp16.safetensors` for `...fp16.index.json`."""
    stem, ext, *rest = index_name.split(".")
    variant = next((part for part in rest if part not in ("index", "json")), None)
    if variant is None:
        return re.compile(rf"{stem}-\d+-of-\d+\.{ext}")
    if rest[0] == "index":
        return re.compile(rf"{stem}\.{variant}-\d+-of-\d+\.{ext}")
    return re.compile(rf"{stem}-\d+-of-\d+\.{variant}\.{ext}")


def resolve_checkpoint(checkpoint: str | os.PathLike, components=None, variant: str | None = None) -> Path:
    """A local folder in hub layout for `checkpoint` (a folder, or a hub id fetched into the HF cache).

    `components` limits a hub download to those components' files (default: every component
    named in model_index.json); `variant` ("fp16") fetches those weight files where a component has them.
    """
    checkpoint = str(checkpoint)
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise CheckpointError(
                f"'{path}' is not a checkpoint in hub layout: it has no model_index.json. Point to the folder "
                f"that holds model_index.json and the component folders (unet/, vae/, ...)."
            )
        return path
    if not HUB_ID.fullmatch(checkpoint) or (path.parent != Path(".") and path.parent.is_dir()):
        # not a hub id, or one whose first part is a folder here (weights/audioldm2): a local folder not made yet
        raise CheckpointError(
            f"checkpoint folder '{checkpoint}' does not exist. Pass an existing folder in hub layout or a hub id "
            f"such as '{DEFAULT_CHECKPOINT}'."
        )
    return _fetch_from_hub(checkpoint, components, variant)


def download_from_hub(repo_id: str, components=None, local_dir=None, variant: str | None = None) -> Path:
    """Fetch the configs and one weight format of `components` (default: all) from the hub; no error handling."""
    from huggingface_hub import HfApi, snapshot_download

    wanted = list(components) if components is not None else list(STAGES) + list(FILE_COMPONENTS)
    files = _choose_hub_files(HfApi().list_repo_files(repo_id), wanted, variant)
    return Path(snapshot_download(repo_id, allow_patterns=files, local_dir=local_dir))


def _fetch_from_hub(repo_id: str, components, variant: str | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    wanted = list(components) if components is not None else list(STAGES) + list(FILE_COMPONENTS)
    offline = _hub_reachable()
    if offline is None:
        try:
            return download_from_hub(repo_id, wanted, variant=variant)
        except RepositoryNotFoundError:
            raise CheckpointError(
                f"'{repo_id}' is neither a local folder nor a repository on the Hugging Face hub "
                f"(official checkpoints: cvssp/audioldm2, cvssp/audioldm2-large, cvssp/audioldm2-music)."
            ) from None
        except GatedRepoError:
            raise CheckpointError(f"'{repo_id}' is gated on the hub: log in with `hf auth login`.") from None
        except Exception as error:  # network trouble mid-way: fall back to the cache below
            offline = f"{type(error).__name__}: {error}"
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=_component_patterns(wanted), local_files_only=True))
    except Exception:
        raise CheckpointError(_offline_message(repo_id, offline)) from None
    missing = [c for c in wanted if c in STAGES and not _weight_files(folder / c, variant)]
    if missing or not (folder / "model_index.json").is_file():
        raise CheckpointError(_offline_message(repo_id, offline))
    return folder


# ----------------------------------------------------------------------------------------------
# Reading config fields: what every stage's `from_hub` uses


# ----------------------------------------------------------------------------------------------
# Reading configs and weights


def read_json(file: Path) -> dict:
    """A JSON file's object; a config's fields come back as a HubConfig that names the file in errors."""
    try:
        data = json.loads(Path(file).read_text())
        return HubConfig(data, str(file)) if isinstance(data, dict) else data
    except FileNotFoundError:
        raise CheckpointError(f"missing file {file}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{file} is not valid JSON ({error}); the download may be incomplete.") from None


def component_folder(checkpoint: str | os.PathLike, name: str, variant: str | None = None) -> Path:
    root = resolve_checkpoint(checkpoint, [name], variant)
    folder = root / name
    if not folder.is_dir():
        index = read_json(root / "model_index.json")
        listed = sorted(k for k in index if not k.startswith("_"))
        raise CheckpointError(
            f"checkpoint '{root}' has no component '{name}' (folder {folder} is missing; model_index.json "
            f"lists {listed})."
        )
    return folder


def load_config(checkpoint: str | os.PathLike, name: str) -> dict:
    """The parsed config file of one component (config.json, scheduler_config.json, ...)."""
    folder = component_folder(checkpoint, name)
    for config_name in CONFIG_NAMES + ("tokenizer_config.json",):
        if (folder / config_name).is_file():
            return read_json(folder / config_name)
    raise CheckpointError(f"component folder {folder} has no config file (looked for {CONFIG_NAMES}).")


def _weight_files(folder: Path, variant: str | None = None) -> list[Path]:
    """The weight files of a component folder: the variant's if asked for and present, else the plain ones
    (diffusers too falls back to a component's plain files when it has no files of the variant)."""
    for single_names, index_names in (weight_file_names(variant) if variant else []) + weight_file_names():
        for name in single_names:
            if (folder / name).is_file():
                return [folder / name]
        for name in index_names:
            if (folder / name).is_file():
                shards = sorted(set(read_json(folder / name).get("weight_map", {}).values()))
                return [folder / shard for shard in shards]
    return []


def has_variant(folder: Path, variant: str) -> bool:
    """Whether a component folder holds weight files of `variant`."""
    names = [name for single_names, index_names in weight_file_names(variant) for name in single_names + index_names]
    return any((folder / name).is_file() for name in names)


def _read_weight_file(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise CheckpointError(f"weight shard {file} is missing (named in the folder's *.index.json).")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file), device="cpu")
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"cannot read weight file {file}: {type(error).__name__}: {error}. The file is truncated or corrupt: "
            f"delete it and download it again."
        ) from None


def read_weights(folder: Path, variant: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """All tensors of a component folder, and which file each key came from."""
    files = _weight_files(folder, variant)
    if not files:
        variants = sorted({f.name.split(".")[-2] for f in folder.glob("*.*.*") if f.suffix in (".safetensors", ".bin")})
        hint = f" It holds the variant(s) {variants}: pass variant='{variants[0]}'." if variants else ""
        raise CheckpointError(
            f"no weights in {folder}: expected one of {[n for names in WEIGHT_FORMATS for n in names]} "
            f"(or a sharded *.index.json).{hint}"
        )
    state_dict, origin = {}, {}
    for file in files:
        tensors = _read_weight_file(file)
        state_dict.update(tensors)
        origin.update(dict.fromkeys(tensors, file))
    return state_dict, origin


# ----------------------------------------------------------------------------------------------
# Building a stage and loading its weights strictly


def hub_class_name(config: dict) -> str | None:
    return config.get("_class_name") or (config.get("architectures") or [None])[0]


def find_stage(name: str, hub_config: dict | None = None) -> tuple[str, Stage]:
    """(component folder, stage) of a neural component or of a stage in PART_STAGES; an ALTERNATIVE_STAGES
    stage where the component's hub config names its class."""
    if name in PART_STAGES:
        return PART_STAGES[name]
    if name not in STAGES:
        raise CheckpointError(
            f"unknown component '{name}'; the neural components are {sorted(STAGES)} (and {sorted(PART_STAGES)})."
        )
    found = hub_class_name(hub_config or {})
    return name, next((s for s in ALTERNATIVE_STAGES.get(name, ()) if found in s.hub_classes), STAGES[name])


def build_config(name: str, hub_config: dict, source: Path | str = "config.json"):
    """Our dataclass config for component `name` from its hub config dict (checks the class)."""
    stage = find_stage(name, hub_config)[1]
    found = hub_class_name(hub_config)
    if found not in stage.hub_classes:
        accepted = [c for s in (stage, *ALTERNATIVE_STAGES.get(name, ())) for c in s.hub_classes]
        raise CheckpointError(
            f"{source} describes a '{found}', but component '{name}' must be one of {accepted}. "
            f"Is the folder layout mixed up?"
        )
    return stage.config.from_hub(hub_config)


def load_component(
    checkpoint: str | os.PathLike,
    name: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    variant: str | None = None,
    reference: str | None = None,
) -> torch.nn.Module:
    """Our module for component `name` of `checkpoint` (or a stage in PART_STAGES), weights loaded strictly,
    in eval mode. `variant` ("fp16") reads the component's weight files of that variant where it has them.
    `reference` ("authors" or "diffusers"; default: the checkpoint's, `checkpoint_reference`) decides the
    UNet's heads and CLAP's text LayerNorm epsilon (authors.py)."""
    folder = component_folder(checkpoint, find_stage(name)[0], variant)
    hub_config = read_json(folder / "config.json")
    stage = find_stage(name, hub_config)[1]
    module = stage.module
    config = build_config(name, hub_config, folder / "config.json")
    if name in ("unet", "text_encoder"):
        config = apply_reference(name, config, checkpoint_reference(checkpoint, reference))
    state_dict, origin = read_weights(folder, variant)
    convert = getattr(module, "convert_hub_state_dict", None)
    if convert is not None:
        renamed = convert(dict(state_dict), config)
        # keep track of which file each converted key came from (a converted key inherits any source)
        origin = {k: origin.get(k, next(iter(origin.values()))) for k in renamed}
        state_dict = renamed
    with torch.device("meta"):
        model = stage.model(config)
    assign_strict(
        model, state_dict, origin, name, getattr(module, "UNUSED_KEYS", ()), dtype, device,
        getattr(module, "KEEP_FP32_KEYS", ()),
    )
    return model.eval().requires_grad_(False)


def assign_strict(model, state_dict, origin, name, unused_patterns, dtype, device, fp32_patterns=()) -> None:
    """Fill a meta-device `model` with `state_dict`; every mismatch is listed in one CheckpointError."""
    expected = model.state_dict()
    unused = [re.compile(p) for p in unused_patterns]
    problems = []
    for key, tensor in expected.items():
        if key not in state_dict:
            problems.append(f"missing tensor '{key}' (expected shape {tuple(tensor.shape)})")
        elif state_dict[key].shape != tensor.shape:
            problems.append(
                f"tensor '{key}' in {origin[key].name} has shape {tuple(state_dict[key].shape)}, "
                f"expected {tuple(tensor.shape)}"
            )
    for key in state_dict.keys() - expected.keys():
        if not any(p.fullmatch(key) for p in unused):
            problems.append(f"unexpected tensor '{key}' in {origin[key].name} (shape {tuple(state_dict[key].shape)})")
    if problems:
        folder = next(iter(origin.values())).parent
        shown = "\n  ".join(sorted(problems)[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise CheckpointError(
            f"component '{name}' ({folder}) does not match its config:\n  {shown}\n"
            f"The weights and config.json must come from the same checkpoint."
        )
    keep_fp32 = [re.compile(p) for p in fp32_patterns]

    def target_dtype(key, tensor):
        if not tensor.is_floating_point():
            return None
        return torch.float32 if any(p.fullmatch(key) for p in keep_fp32) else dtype

    tensors = {k: state_dict[k].to(device=device, dtype=target_dtype(k, state_dict[k])) for k in expected}
    model.load_state_dict(tensors, strict=True, assign=True)
    left_on_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left_on_meta:
        raise RuntimeError(f"stage '{name}' has tensors the checkpoint does not fill: {left_on_meta[:5]}")


def checkpoint_reference(checkpoint: str | os.PathLike, reference: str | None = None) -> str:
    """The model a checkpoint runs as (authors.py): `reference` if given, else "authors" for an official
    checkpoint (recognised by its UNet config) and "diffusers" for any other."""
    if reference is not None:
        return resolve_reference(reference, {})
    file = Path(checkpoint).expanduser() / "unet" / "config.json"
    if not Path(checkpoint).expanduser().is_dir() and HUB_ID.fullmatch(str(checkpoint)):
        try:  # a hub id: its UNet config alone (a small file, cached like the rest)
            from huggingface_hub import hf_hub_download

            file = Path(hf_hub_download(str(checkpoint), "unet/config.json", local_files_only=_hub_reachable() is not None))
        except Exception:  # offline and not cached: the component's own load says so
            pass
    return resolve_reference(None, read_json(file) if file.is_file() else {})


def load_tokenizer(checkpoint: str | os.PathLike, name: str = "tokenizer"):
    """The transformers fast tokenizer stored in component folder `name` (tokenizer or tokenizer_2)."""
    from transformers import AutoTokenizer

    folder = component_folder(checkpoint, name)
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as error:
        raise CheckpointError(f"cannot load the tokenizer in {folder}: {type(error).__name__}: {error}") from None


def checkpoint_limits(checkpoint: str | os.PathLike):
    """What a request is checked against (request.ModelLimits), read from a local checkpoint's config files alone:
    nothing downloaded, no weights read, so the checks run before any model loads. A hub id not on disk as a
    folder gets the official checkpoints' values (the pipeline checks again once loaded)."""
    from .request import ModelLimits
    from .samplers import SchedulerConfig

    folder = Path(checkpoint).expanduser()
    if not (folder / "model_index.json").is_file():
        return ModelLimits()

    def config(name: str, file: str = "config.json") -> dict:
        return read_json(folder / name / file) if (folder / name / file).is_file() else {}

    unet, vocoder, speech = config("unet"), config("vocoder"), config("text_encoder_2")
    rate = int(vocoder.get("sampling_rate", 16000))
    hop = 1
    for factor in vocoder.get("upsample_rates", (5, 4, 2, 2, 2)):
        hop *= factor
    vae_factor = 2 ** (len(config("vae").get("block_out_channels", (128, 256, 384))) - 1)
    return ModelLimits(
        scheduler=SchedulerConfig.from_hub(config("scheduler", "scheduler_config.json")), sampling_rate=rate,
        samples_per_latent_frame=hop * vae_factor, samples_per_mel_frame=hop, mel_top_hz=rate / 2,
        default_seconds=unet.get("sample_size", 256) * vae_factor * hop / rate,
        speech=hub_class_name(speech) == "VitsModel",
    )
