"""Fetching a checkpoint from the Hugging Face hub: the one place that goes to the network.

`resolve_checkpoint` gives a local folder in hub layout for a folder or a hub id: it downloads, from the hub,
only the files the requested components need (their configs and one weight format: safetensors first, a
variant's files where asked), falls back to the local cache when the hub cannot be reached, and turns every
failure into a CheckpointError that says what to do. The core reads checkpoints from disk
(`loading.local_checkpoint`); the pipeline and the programs resolve through here.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from . import loading
from .loading import (
    CONFIG_NAMES, FILE_COMPONENTS, STAGES, TOKENIZER_FILES, CheckpointError, _weight_files, is_hub_id,
    local_checkpoint, read_json, weight_file_names,
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
    if not is_hub_id(checkpoint):
        return local_checkpoint(checkpoint, components, variant)
    return _fetch_from_hub(str(checkpoint), components, variant)


def download_from_hub(repo_id: str, components=None, local_dir=None, variant: str | None = None) -> Path:
    """Fetch the configs and one weight format of `components` (default: all) from the hub; no error handling."""
    from huggingface_hub import HfApi, snapshot_download

    wanted = list(components) if components is not None else list(STAGES) + list(FILE_COMPONENTS)
    files = _choose_hub_files(HfApi().list_repo_files(repo_id), wanted, variant)
    return Path(snapshot_download(repo_id, allow_patterns=files, local_dir=local_dir))


def _fetch_from_hub(repo_id: str, components, variant: str | None = None) -> Path:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    offline = _hub_reachable()
    if offline is None:
        try:
            return download_from_hub(repo_id, components, variant=variant)
        except RepositoryNotFoundError:
            raise CheckpointError(
                f"'{repo_id}' is neither a local folder nor a repository on the Hugging Face hub "
                f"(official checkpoints: cvssp/audioldm2, cvssp/audioldm2-large, cvssp/audioldm2-music)."
            ) from None
        except GatedRepoError:
            raise CheckpointError(f"'{repo_id}' is gated on the hub: log in with `hf auth login`.") from None
        except Exception as error:  # network trouble mid-way: fall back to the cache
            offline = f"{type(error).__name__}: {error}"
    return cached_checkpoint(repo_id, components, variant, offline)


def _offline_message(repo_id: str, cause: str) -> str:
    return (
        f"could not download '{repo_id}' from the Hugging Face hub ({cause}) and it is not fully in the "
        f"local cache. Connect to the internet and try again, or pass a local checkpoint folder in hub "
        f"layout instead, e.g. `--model weights/{repo_id.split('/')[-1]}` "
        f"(see weights/README.md: `python scripts/download_weights.py {repo_id}` on a machine with internet)."
    )


def _component_patterns(components) -> list[str]:
    patterns = ["model_index.json"]
    for name in components:
        patterns += [f"{name}/{f}" for f in CONFIG_NAMES + TOKENIZER_FILES]
    return patterns


def cached_checkpoint(repo_id: str, components, variant: str | None, cause: str) -> Path:
    """The folder of `repo_id` in the local Hugging Face cache, holding `components`; else a CheckpointError
    that names `cause` (why it was not downloaded)."""
    from huggingface_hub import snapshot_download

    wanted = list(components) if components is not None else list(STAGES) + list(FILE_COMPONENTS)
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=_component_patterns(wanted), local_files_only=True))
    except Exception:
        raise CheckpointError(_offline_message(repo_id, cause)) from None
    missing = [c for c in wanted if c in STAGES and not _weight_files(folder / c, variant)]
    if missing or not (folder / "model_index.json").is_file():
        raise CheckpointError(_offline_message(repo_id, cause))
    return folder


def has_variant(folder: Path, variant: str) -> bool:
    """Whether a component folder holds weight files of `variant`."""
    names = [name for single_names, index_names in weight_file_names(variant) for name in single_names + index_names]
    return any((folder / name).is_file() for name in names)


def load_component(checkpoint, name: str, reference: str | None = None, **kwargs):
    """`loading.load_component` on a folder or a hub id, fetching the component's files (and, to tell an
    official checkpoint, its UNet config) from the hub first: every stage loads alone, as
    `audioldm2_lite.load_component("cvssp/audioldm2", "unet")`."""
    if is_hub_id(checkpoint) and reference is None and name in ("unet", "text_encoder"):
        from huggingface_hub import hf_hub_download

        try:  # the UNet config alone (a small file) says whether it is an official checkpoint (authors.py)
            local = _hub_reachable() is not None
            unet_config = read_json(Path(hf_hub_download(str(checkpoint), "unet/config.json", local_files_only=local)))
            reference = loading.resolve_reference(None, unet_config)
        except Exception:  # not reachable nor cached: the component's own fetch below says so
            pass
    root = resolve_checkpoint(checkpoint, [name], kwargs.get("variant"))
    return loading.load_component(root, name, reference=reference, **kwargs)
