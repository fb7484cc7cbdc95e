"""long_audio.py's window arithmetic, on its own (the VAE and vocoder chunk tests check the decoding)."""

from __future__ import annotations

import torch

from audioldm2_lite.models.long_audio import RunningMoments, receptive_field, run_in_windows, windows


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
