"""Parity of audioldm2_lite.models.vocoder (HiFi-GAN) with transformers' SpeechT5HifiGan, and its chunked path
(models/long_audio.py)."""

from __future__ import annotations

import gc
import json
import shutil

import pytest
import torch
from reference import max_rel_error

from audioldm2_lite import load_component
from audioldm2_lite.models.long_audio import receptive_field_frames, vocode_in_windows
from audioldm2_lite.models.vocoder import HifiGanConfig


def reference_vocoder(checkpoint):
    from transformers import SpeechT5HifiGan

    return SpeechT5HifiGan.from_pretrained(f"{checkpoint}/vocoder").eval()


@pytest.fixture(scope="module")
def tiny_vocoders(tiny_checkpoint):
    return load_component(tiny_checkpoint, "vocoder"), reference_vocoder(tiny_checkpoint)


@torch.no_grad()
def test_matches_transformers(tiny_vocoders):
    ours, reference = tiny_vocoders
    assert ours.config.normalize_before  # the tiny checkpoint stores non-trivial mean / scale: they are applied
    mel = torch.randn(2, 37, ours.config.model_in_dim)  # (B, T, bins), as the pipeline passes it
    audio = ours(mel)
    assert audio.shape == (2, 160 * 37 + 32)  # x160 per frame, plus the transposed convs' 32-sample tail
    # same convolutions in the same order: float32 rounding only
    assert max_rel_error(audio, reference(mel)) <= 1e-5


def test_config_reads_every_official_checkpoint():
    from conftest import CONFIGS

    for folder in sorted(CONFIGS.glob("*/vocoder")):
        hub = json.loads((folder / "config.json").read_text())
        config = HifiGanConfig.from_hub(hub)
        assert config == HifiGanConfig()  # all three official vocoders are the cvssp/audioldm2 one
        assert receptive_field_frames(config) == 27


@pytest.mark.parametrize("style", ["weight_norm", "parametrizations"])
@torch.no_grad()
def test_weight_norm_checkpoint_is_folded(tiny_checkpoint, tmp_path, style):
    """A checkpoint saved with weight norm still applied (g, v pairs) loads to the same weights."""
    from safetensors.torch import load_file, save_file

    (tmp_path / "vocoder").mkdir()
    shutil.copy(tiny_checkpoint / "model_index.json", tmp_path)
    shutil.copy(tiny_checkpoint / "vocoder" / "config.json", tmp_path / "vocoder")
    state = load_file(str(tiny_checkpoint / "vocoder" / "model.safetensors"))
    converted = {}
    for key, tensor in state.items():
        if key.endswith(".weight"):  # every conv weight, split into magnitude (per dim-0 slice) and direction
            g = tensor.flatten(1).norm(dim=1).reshape(-1, *[1] * (tensor.ndim - 1))
            v = tensor * 3.0  # any positive multiple: only the direction is kept
            stem = key[: -len(".weight")]
            names = ((f"{stem}.weight_g", f"{stem}.weight_v") if style == "weight_norm" else
                     (f"{stem}.parametrizations.weight.original0", f"{stem}.parametrizations.weight.original1"))
            converted.update(zip(names, (g, v)))
        else:
            converted[key] = tensor
    save_file(converted, str(tmp_path / "vocoder" / "model.safetensors"))
    ours = load_component(tmp_path, "vocoder")
    folded = ours.state_dict()
    assert folded.keys() == state.keys()
    for key, tensor in state.items():
        # g * v / |v| restores the stored weight up to float32 rounding of the norm (a few ulps)
        assert max_rel_error(folded[key], tensor) <= 1e-6, key


@torch.no_grad()
def test_receptive_field_bounds_the_influence_of_a_frame(tiny_checkpoint):
    """Perturbing one frame changes only samples within receptive_field_frames of it (float64, exact)."""
    ours = load_component(tiny_checkpoint, "vocoder", dtype=torch.float64)
    frames, hop, middle = 80, ours.hop_length, 40
    mel = torch.randn(1, frames, ours.config.model_in_dim, dtype=torch.float64)
    bumped = mel.clone()
    bumped[:, middle] += 1.0
    changed = ((ours(bumped) - ours(mel)).abs()[0] > 1e-12).nonzero()[:, 0]
    reach = receptive_field_frames(ours.config)
    first, last = changed.min().item() / hop, changed.max().item() / hop
    assert middle - reach <= first and last <= middle + 1 + reach, (first, last, reach)
    assert last - first > 4  # the perturbation did spread: the check above was not vacuous


@torch.no_grad()
def test_chunked_30_seconds_matches_one_pass(tiny_checkpoint):
    """30 s (3000 frames) in chunks of 500 with the default overlap (the receptive field).

    Run on the tiny vocoder: the full-size one needs about 2.5 minutes of 2-core CPU for one pass of
    3000 frames, more than the whole slow-test budget.
    """
    ours = load_component(tiny_checkpoint, "vocoder")
    ours64 = load_component(tiny_checkpoint, "vocoder", dtype=torch.float64)
    mel = torch.randn(1, 3000, ours.config.model_in_dim)
    one_pass, chunked = ours(mel), vocode_in_windows(ours, mel, 500)
    exact = ours64(mel.double())
    # In float64 the chunked result is the one-pass result (every layer is a convolution, the overlap
    # covers its reach), so any float32 difference is rounding.
    assert max_rel_error(vocode_in_windows(ours64, mel.double(), 500), exact) <= 1e-12
    # In float32 the windows' different lengths change the summation order; the tiny model's large
    # weights (init 0.2, activations in the hundreds) amplify rounding to ~1e-4, which is also how far
    # its one float32 pass is from float64. The chunked result must be as close to float64 as that.
    noise_floor = max_rel_error(one_pass, exact)
    assert max_rel_error(chunked, exact) <= 2 * noise_floor
    assert max_rel_error(chunked, one_pass) <= 2 * noise_floor


@torch.no_grad()
def test_too_little_overlap_is_detected(tiny_checkpoint):
    """The chunk test can fail: with an overlap of a few frames the seams differ from one pass."""
    ours = load_component(tiny_checkpoint, "vocoder", dtype=torch.float64)
    mel = torch.randn(1, 120, ours.config.model_in_dim, dtype=torch.float64)
    # in float64 enough overlap agrees to ~1e-15; 4 frames of overlap leave ~1e-4 at the seams
    assert max_rel_error(vocode_in_windows(ours, mel, 30, 4), ours(mel)) > 1e-6


@pytest.mark.slow
@torch.no_grad()
def test_full_size_matches_transformers_and_chunks(full_checkpoint):
    """Official sizes, random weights: one pass and a chunked pass of 1 s (100 frames, 4 chunks)."""
    checkpoint = full_checkpoint("audioldm2", ["vocoder"])
    ours, reference = load_component(checkpoint, "vocoder"), reference_vocoder(checkpoint)
    mel = torch.randn(1, 100, 64)
    audio = ours(mel)
    assert max_rel_error(audio, reference(mel)) <= 1e-5  # same ops: float32 rounding only
    del reference
    gc.collect()
    # overlap 27 frames (the receptive field): float32 rounding only
    assert max_rel_error(vocode_in_windows(ours, mel, 32), audio) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_half_precision_runs(tiny_checkpoint, dtype):
    """Weights and activations stay in the requested dtype, chunked path included, and stay finite."""
    ours = load_component(tiny_checkpoint, "vocoder", dtype=dtype)
    mel = torch.randn(1, 40, ours.config.model_in_dim, dtype=dtype)
    for audio in (ours(mel), vocode_in_windows(ours, mel, 16)):
        assert audio.dtype == dtype and torch.isfinite(audio).all()
