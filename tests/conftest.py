"""Session fixtures: checkpoints built offline, once per test session.

- `tiny_checkpoint`: a tiny random AudioLDM 2 in hub layout (scripts/make_tiny_checkpoint.py), seconds.
- `fusion_checkpoint`: the same with `--fusion-features` (CLAP's front end as in diffusers' test checkpoints).
- `tiny_speech_checkpoint`: the same in the text-to-speech layout (scripts/make_tiny_speech_checkpoint.py).
- `full_checkpoint(variant, components)`: full-size random weights from the official configs
  (scripts/make_random_checkpoint.py) for tests marked `slow`; each (variant, component) is built once.
  Set AUDIOLDM2_LITE_TEST_CACHE=DIR to keep them between runs (they take minutes and GBs to build).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).parent))

from make_random_checkpoint import make_random_checkpoint  # noqa: E402
from make_tiny_checkpoint import make_tiny_checkpoint  # noqa: E402
from make_tiny_speech_checkpoint import make_tiny_speech_checkpoint  # noqa: E402

CONFIGS = ROOT / "scripts" / "checkpoint_configs"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "audioldm2-tiny")


@pytest.fixture(scope="session")
def tiny_authors_checkpoint(tmp_path_factory) -> Path:
    """The tiny checkpoint with UNet levels of 32, 32, 64 and 96 channels: the authors' heads of 32 channels split
    them (1, 1, 2, 3 heads), where diffusers reads `attention_head_dim` 2 as two heads everywhere."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-authors") / "audioldm2-tiny-authors",
                                unet_channels=(32, 32, 64, 96))


@pytest.fixture(scope="session")
def fusion_checkpoint(tmp_path_factory) -> Path:
    """The tiny checkpoint with the CLAP front end of diffusers' test checkpoints ("fusion" features, 4 channels)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-fusion") / "audioldm2-tiny-fusion", fusion_features=True)


@pytest.fixture(scope="session")
def tiny_speech_checkpoint(tmp_path_factory) -> Path:
    """The tiny checkpoint in the text-to-speech layout (VITS text_encoder_2; scripts/make_tiny_speech_checkpoint.py)."""
    return make_tiny_speech_checkpoint(tmp_path_factory.mktemp("tiny-speech") / "audioldm2-speech-tiny")


@pytest.fixture(scope="session")
def full_checkpoint(tmp_path_factory):
    """full_checkpoint(variant="audioldm2", components=(...)) -> folder holding at least those components."""
    cache = os.environ.get("AUDIOLDM2_LITE_TEST_CACHE")
    root = Path(cache) if cache else tmp_path_factory.mktemp("full")

    def build(variant: str = "audioldm2", components=None) -> Path:
        from make_random_checkpoint import ALL_COMPONENTS

        out = root / f"{variant}-random"
        wanted = ALL_COMPONENTS if components is None else components
        missing = [c for c in wanted if not (out / c / ".complete").exists()]
        if missing:
            make_random_checkpoint(CONFIGS / variant, out, missing)
            for c in missing:
                (out / c / ".complete").touch()
        return out

    return build
