"""Session fixtures: checkpoints built offline, once per test session.

- `tiny_checkpoint`: a tiny random AudioLDM 2 in hub layout (scripts/make_tiny_checkpoint.py), seconds.
- `fusion_checkpoint`: the same with `--fusion-features` (CLAP's front end as in diffusers' test checkpoints).
- `tiny_speech_checkpoint`: the same in the text-to-speech layout (scripts/make_tiny_speech_checkpoint.py).
- `full_checkpoint(variant, components)`: full-size random weights from the official configs
  (scripts/make_random_checkpoint.py) for tests marked `slow`. Set AUDIOLDM2_LITE_TEST_CACHE=DIR to keep them
  between runs (they take minutes and GBs to build). Without it one variant at a time stays on disk (see below).
"""

from __future__ import annotations

import errno
import os
import shutil
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
    """full_checkpoint(variant="audioldm2", components=(...)) -> folder holding at least those components.

    Without the cache, asking for one variant deletes the others: all of audioldm2 is 4.9 GB, -large's UNet 2.7 GB
    and the speech model's 2.1 GB, and a CI machine's free disk varies. A component costs 5 to 20 s to build again.
    A disk too full for the files skips the test and says so (a fault of the machine, not of the code)."""
    cache = os.environ.get("AUDIOLDM2_LITE_TEST_CACHE")
    root = Path(cache) if cache else tmp_path_factory.mktemp("full")

    def build(variant: str = "audioldm2", components=None) -> Path:
        from make_random_checkpoint import ALL_COMPONENTS

        out = root / f"{variant}-random"
        if not cache:
            for other in root.glob("*-random"):
                if other != out:
                    shutil.rmtree(other)
        wanted = ALL_COMPONENTS if components is None else components
        missing = [c for c in wanted if not (out / c / ".complete").exists()]
        if missing:
            try:
                make_random_checkpoint(CONFIGS / variant, out, missing)
            except Exception as error:
                if not (getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error)):
                    raise
                for c in missing:
                    shutil.rmtree(out / c, ignore_errors=True)
                free = shutil.disk_usage(root).free / 2**30
                pytest.skip(f"no space left under {root} for the full-size {variant} {', '.join(missing)} "
                            f"({free:.1f} GiB free after cleaning up)")
            for c in missing:
                (out / c / ".complete").touch()
        return out

    return build
