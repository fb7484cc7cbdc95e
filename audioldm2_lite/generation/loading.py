"""Checkpoint I/O from disk: an AudioLDM 2 checkpoint in hub layout is a folder with a `model_index.json` and one
sub-folder per component (`unet/config.json`, `unet/diffusion_pytorch_model.safetensors`, ...). This module
finds one (`local_checkpoint`: a folder, or a hub id in the local cache; hub.py downloads), reads configs and
weights (safetensors first, `.bin` through `torch.load(weights_only=True)`, shards, `variant="fp16"` files), and
builds a component's module with its weights loaded strictly (`load_component`): every tensor used or matching
the stage's `UNUSED_KEYS`, a missing, unexpected or misshapen one an error naming component, file, key, shapes.

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
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from ..models import clap, gpt2, projection, t5, unet, vae, vocoder
from ..models.hub_config import CheckpointError, HubConfig, UnsupportedConfigError, hub_field, unsupported_config
from .authors import apply_reference, resolve_reference

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


def is_hub_id(checkpoint: str | os.PathLike) -> bool:
    """Whether `checkpoint` names a hub repository (owner/name), not a local folder (weights/audioldm2)."""
    path = Path(str(checkpoint)).expanduser()
    return not path.is_dir() and bool(HUB_ID.fullmatch(str(checkpoint))) and not (
        path.parent != Path(".") and path.parent.is_dir())


def local_checkpoint(checkpoint: str | os.PathLike, components=None, variant: str | None = None) -> Path:
    """A local folder in hub layout for `checkpoint`: a folder, or a hub id already in the Hugging Face cache.

    `components` and `variant`: what hub.py's version (`resolve_checkpoint`) fetches; here a cached hub id is
    read as it is, and a missing component is named where it is loaded.
    """
    path = Path(str(checkpoint)).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise CheckpointError(
                f"'{path}' is not a checkpoint in hub layout: it has no model_index.json. Point to the folder "
                f"that holds model_index.json and the component folders (unet/, vae/, ...)."
            )
        return path
    if not is_hub_id(checkpoint):  # not a hub id, or one whose first part is a folder here: a folder not made yet
        raise CheckpointError(
            f"checkpoint folder '{checkpoint}' does not exist. Pass an existing folder in hub layout or a hub id "
            f"such as '{DEFAULT_CHECKPOINT}'."
        )
    from huggingface_hub import snapshot_download

    try:  # the cache only: hub.resolve_checkpoint (what the pipeline loads through) downloads
        return Path(snapshot_download(str(checkpoint), local_files_only=True))
    except Exception:
        raise CheckpointError(f"'{checkpoint}' is not fully in the local cache, and the core does not download "
                              f"(AudioLDM2Pipeline.from_pretrained does): pass a local checkpoint folder") from None


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
    root = local_checkpoint(checkpoint, [name], variant)
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


def build_config(name: str, hub_config: dict, source: Path | str = "config.json", stage: Stage | None = None):
    """Our dataclass config for component `name` (built as `stage`, default STAGES[name]) from its hub config
    dict (checks the class)."""
    if stage is None and name not in STAGES:
        raise CheckpointError(f"unknown component '{name}'; the neural components are {sorted(STAGES)}.")
    stage = stage or STAGES[name]
    found = hub_class_name(hub_config)
    if found not in stage.hub_classes:
        raise CheckpointError(
            f"{source} describes a '{found}', but component '{name}' must be one of {list(stage.hub_classes)}. "
            f"Is the folder layout mixed up?"
        )
    return stage.config.from_hub(hub_config)


def load_component(
    checkpoint: str | os.PathLike,
    name: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    variant: str | None = None,
    stage: Stage | None = None,
    reference: str | None = None,
) -> torch.nn.Module:
    """Our module for component `name` of `checkpoint`, weights loaded strictly, in eval mode. `variant`
    ("fp16") reads the component's weight files of that variant where it has them. `stage` builds another
    network than STAGES[name] from the folder: a part of it (CLAP's audio tower, ranking.py) or another model
    stored under that name (the speech checkpoints' VITS encoder, speech.py). `reference` ("authors" or
    "diffusers"; default: the checkpoint's) decides the UNet's heads and CLAP's LayerNorm eps (authors.py)."""
    folder = component_folder(checkpoint, name, variant)
    hub_config = read_json(folder / "config.json")
    stage = stage or STAGES.get(name)
    config = build_config(name, hub_config, folder / "config.json", stage)
    if name in ("unet", "text_encoder") and stage in (None, STAGES.get(name)):
        config = apply_reference(name, config, checkpoint_reference(checkpoint, reference))
    module = stage.module
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
    checkpoint (recognised by its UNet config, of a folder or of a hub id in the cache) and "diffusers" else."""
    file = Path(str(checkpoint)).expanduser() / "unet" / "config.json"
    if reference is None and not file.is_file() and is_hub_id(checkpoint):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(checkpoint), "unet/config.json")
        file = Path(cached) if isinstance(cached, str) else file
    return resolve_reference(reference, read_json(file) if reference is None and file.is_file() else {})


def load_tokenizer(checkpoint: str | os.PathLike, name: str = "tokenizer"):
    """The transformers fast tokenizer stored in component folder `name` (tokenizer or tokenizer_2)."""
    from transformers import AutoTokenizer

    folder = component_folder(checkpoint, name)
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as error:
        raise CheckpointError(f"cannot load the tokenizer in {folder}: {type(error).__name__}: {error}") from None
