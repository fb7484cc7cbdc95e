"""long_audio.py's windows and tiles on their own, and the pipeline's switch between one pass and tiles
(memory.py); the VAE and vocoder tests check the tiled and windowed paths through their blocks against one pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import max_rel_error

from audioldm2_lite import AudioLDM2Pipeline, load_component
from audioldm2_lite.generation import memory
from audioldm2_lite.generation import pipeline as pipeline_module
from audioldm2_lite.generation.editing import encode_audio
from audioldm2_lite.models.long_audio import (
    RunningMoments, TimeTiles, decode_in_tiles, receptive_field, run_in_windows, windows,
)


def test_windows_cover_every_frame_once_with_clamped_overlap():
    for frames, chunk, overlap in [(10, 4, 2), (8, 4, 3), (3, 5, 2), (1, 1, 0), (100, 7, 50)]:
        kept = []
        for w in windows(frames, chunk, overlap):
            assert 0 <= w.start <= w.start + w.keep_start < w.start + w.keep_stop <= w.stop <= frames
            assert w.keep_start == min(overlap, w.start + w.keep_start)  # as much context as there is, up to overlap
            assert w.stop - (w.start + w.keep_stop) == min(overlap, frames - (w.start + w.keep_stop))
            kept += range(w.start + w.keep_start, w.start + w.keep_stop)
        assert kept == list(range(frames))
        assert [w.last for w in windows(frames, chunk, overlap)][-1:] == [True]
        assert sum(w.last for w in windows(frames, chunk, overlap)) == 1


def test_run_in_windows_of_a_convolution_is_one_pass():
    """A 1-d conv stack reaching 3 frames, x2 upsampled with a 1-sample tail, in windows with overlap 3."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(2, 2, 7, padding=3, dtype=torch.float64)

    def fn(x):  # (B, C, T) -> (B, C, 2 T + 1)
        y = conv(x).repeat_interleave(2, dim=2)
        return torch.cat([y, y[:, :, -1:]], dim=2)

    x = torch.randn(1, 2, 50, dtype=torch.float64)
    chunked = run_in_windows(fn, x, dim=2, chunk_frames=8, overlap=3, per_frame=2, keep_tail=True)
    assert torch.allclose(chunked, fn(x), rtol=0, atol=1e-12)
    short = run_in_windows(fn, x, dim=2, chunk_frames=8, overlap=2, per_frame=2, keep_tail=True)
    assert not torch.allclose(short, fn(x), rtol=0, atol=1e-6)  # less overlap than the reach: seams differ


def test_receptive_field_sums_each_layers_reach_in_input_frames():
    assert receptive_field([(1, 1), (1, 2), (1, 4)]) == 2  # 1.75, rounded up
    assert receptive_field([(3, 1), (1, 3), (2, 3)]) == 4  # exactly 4: no float rounding up to 5


def test_running_moments_combine_to_the_whole():
    x = torch.randn(2, 3, 100, dtype=torch.float64)
    moments = RunningMoments()
    for part in x.split([10, 1, 89], dim=-1):
        moments.add(part)
    mean, inv_std = moments.mean_and_inv_std(eps=0.0)
    assert torch.allclose(mean, x.mean(-1)) and torch.allclose(inv_std, x.var(-1, unbiased=False).rsqrt())


# ----------------------------------------------------------------------------------------------
# Tiles


def test_time_tiles_run_layers_across_resolutions_as_one_pass():
    """A GroupNorm-then-conv layer, a x2 upsampler and a stride-2 downsampler (as the VAE's), each over
    tiles of 5 latent frames at 4 rows per frame: float64, so any seam or statistics error would show."""
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(2, 4, dtype=torch.float64)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1, dtype=torch.float64)
    down = torch.nn.Conv2d(4, 4, 3, stride=2, dtype=torch.float64)

    def normed_conv(x, statistics=None):  # GroupNorm with given statistics: x * scale + shift per channel
        if statistics is None:
            return conv(norm(x))
        mean, inv_std = (s.repeat_interleave(2, dim=1)[:, :, None, None] for s in statistics)  # (B, C, 1, 1)
        return conv((x - mean) * inv_std * norm.weight[:, None, None] + norm.bias[:, None, None])

    def upsample(x):
        return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

    def downsample(x):
        return down(F.pad(x, (0, 1, 0, 1)))

    x = torch.randn(2, 4, 4 * 23, 6, dtype=torch.float64)  # 23 latent frames at 4 rows each
    x[:, :, :40] *= 10  # loud, then quiet: a tile's own statistics would be far off
    tiles = TimeTiles(frames=23, tile_frames=5)
    for layer, norm_of_layer in ((normed_conv, norm), (upsample, None), (downsample, None)):
        tiled = tiles.map(layer, x, norm=norm_of_layer)
        assert max_rel_error(tiled, layer(x)) <= 1e-12  # float64 rounding only
    # the test can fail: without the overlap, every tile's edge rows see zero padding
    assert max_rel_error(TimeTiles(frames=23, tile_frames=5, overlap=0).map(upsample, x), upsample(x)) > 1e-3


def test_time_tiles_statistics_are_the_whole_inputs():
    x = torch.randn(3, 8, 44, 5, dtype=torch.float64)
    x[:, :, 20:] += 3.0
    norm = torch.nn.GroupNorm(4, 8, eps=0.0)
    mean, inv_std = TimeTiles(frames=11, tile_frames=3).statistics(x, norm)
    groups = x.reshape(3, 4, -1)
    assert torch.allclose(mean, groups.mean(-1), rtol=1e-12, atol=0)  # float64 rounding
    assert torch.allclose(inv_std, groups.var(-1, unbiased=False).rsqrt(), rtol=1e-12, atol=0)


@torch.no_grad()
def test_the_tiled_path_runs_the_vaes_own_blocks(tiny_checkpoint, monkeypatch):
    """The tiled path walks the VAE's own blocks: change a block's layer and the tiled decode changes with it."""
    ours = load_component(tiny_checkpoint, "vae", dtype=torch.float64)
    latents = torch.randn(1, 4, 40, 16, dtype=torch.float64)
    before = decode_in_tiles(ours, latents, tile_frames=8)
    resnet = ours.decoder.up_blocks[1].resnets[0]
    resnet.conv_shortcut = torch.nn.Conv2d(resnet.conv1.in_channels, resnet.conv1.out_channels, 1).double()
    one_pass, tiled = ours.decode(latents), decode_in_tiles(ours, latents, tile_frames=8)
    assert max_rel_error(tiled, one_pass) <= 1e-12  # float64: still the same network
    assert max_rel_error(tiled, before) > 1e-3  # and not the one before the change


# ----------------------------------------------------------------------------------------------
# The switch: estimates and plans


@pytest.fixture(scope="module")
def stages(tiny_checkpoint):
    return load_component(tiny_checkpoint, "vae"), load_component(tiny_checkpoint, "vocoder")


def test_estimates_scale_with_length_batch_and_dtype(stages):
    vae, vocoder = stages
    one = memory.decode_bytes(vae, vocoder, 1, 1000, 4, torch.float32)
    assert memory.decode_bytes(vae, vocoder, 1, 2000, 4, torch.float32) == pytest.approx(2 * one, rel=1e-6)
    assert memory.decode_bytes(vae, vocoder, 3, 1000, 4, torch.float32) == pytest.approx(3 * one, rel=1e-6)
    assert memory.decode_bytes(vae, vocoder, 1, 1000, 4, torch.float16) == pytest.approx(one / 2, rel=1e-6)
    # past about 3.4 tiles, tiles hold less than one pass, and ever less of it as the audio grows
    tiled = [memory.decode_bytes(vae, vocoder, 1, frames, 4, torch.float32, 256) /
             memory.decode_bytes(vae, vocoder, 1, frames, 4, torch.float32) for frames in (1024, 4096, 16384)]
    assert 1 > tiled[0] > tiled[1] > tiled[2] > memory.VAE_TILED_FULL_LENGTH / memory.VAE_ONE_PASS
    encode = memory.encode_bytes(vae, 1, 1000, 4, torch.float32)
    assert memory.encode_bytes(vae, 1, 4000, 4, torch.float32, 256) < 4 * encode


def test_plan_is_one_pass_when_it_fits_and_tiles_past_it(stages):
    vae, vocoder = stages
    shape = (1, 4, 4096, 4)
    need = memory.decode_bytes(vae, vocoder, 1, 4096, 4, torch.float32)
    assert memory.plan_decode(vae, vocoder, shape, torch.float32, "cpu", need).one_pass
    plan = memory.plan_decode(vae, vocoder, shape, torch.float32, "cpu", need - 1)
    assert (plan.tile_frames, plan.storage, plan.vocoder_chunk_frames) == (256, None, memory.VOCODER_CHUNK_FRAMES)
    assert plan.estimate <= need - 1
    smaller = memory.plan_decode(vae, vocoder, shape, torch.float32, "cpu", int(0.7 * need))
    assert smaller.tile_frames < 256 and smaller.estimate <= 0.7 * need
    # nothing fits: on the CPU the smallest tiles; on a GPU, tiles whose full-length tensors live in CPU memory
    assert memory.plan_decode(vae, vocoder, shape, torch.float32, "cpu", 0).tile_frames == memory.MIN_TILE_FRAMES
    on_gpu = memory.plan_decode(vae, vocoder, shape, torch.float16, "cuda", 0)
    assert (on_gpu.tile_frames, on_gpu.storage) == (256, torch.device("cpu"))
    assert memory.available_memory("cpu") > 0  # MemAvailable, on Linux


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return AudioLDM2Pipeline.from_pretrained(tiny_checkpoint, device="cpu", dtype=torch.float32)  # float32 rounding below


@torch.no_grad()
def test_pipeline_decodes_in_tiles_past_max_memory_as_in_one_pass(pipe, monkeypatch):
    """12 s: in one pass, and with the memory bound at nothing (tiles of 16 latent frames, vocoder windows)."""
    latents = torch.randn(1, 4, 300, pipe.vocoder.config.model_in_dim // 4)
    one_pass = pipe.decode(latents, 192000, max_memory=2**62)
    plans = []
    monkeypatch.setattr(pipeline_module, "decode_in_tiles", lambda vae, latents, tile_frames, storage:
                        plans.append((tile_frames, storage)) or decode_in_tiles(vae, latents, tile_frames, storage))
    monkeypatch.setattr(pipe, "max_memory", 0)
    monkeypatch.setattr(memory, "VOCODER_CHUNK_FRAMES", 500)  # 1200 mel frames: three windows
    tiled = pipe.decode(latents, 192000)
    assert plans == [(memory.MIN_TILE_FRAMES, None)]  # pipe.max_memory was heeded
    # the same layers, in tiles and windows: float32 rounding in their other summation orders
    assert max_rel_error(tiled, one_pass) <= 1e-5


@torch.no_grad()
def test_encoding_a_long_input_in_tiles_matches_one_pass(pipe, monkeypatch):
    """An input to edit of 12 s, encoded in one pass and with the memory bound at nothing (tiles)."""
    waveform = 0.3 * torch.randn(12 * 16000, generator=torch.Generator().manual_seed(1))
    one_pass, samples = encode_audio(pipe, waveform, 16000)
    monkeypatch.setattr(pipe, "max_memory", 0)
    assert not memory.plan_encode(pipe.vae, (1, 1, 1200, 16), pipe.dtype, pipe.device, pipe.max_memory).one_pass
    tiled, _ = encode_audio(pipe, waveform, 16000)
    assert samples == 12 * 16000 and tiled.shape == one_pass.shape == (1, 4, 300, 4)
    assert max_rel_error(tiled, one_pass) <= 1e-5  # float32 rounding in the tiles' summation orders
