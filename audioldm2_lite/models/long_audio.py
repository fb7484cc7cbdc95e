"""Long audio: the VAE decoder's up path and the vocoder run on overlapping windows of the time axis,
so their largest activations exist for one window at a time, and the result still matches one pass.

A stack of convolutions along time changes an output frame only from input frames within its
receptive field (`receptive_field`). So the input is cut into chunks, each chunk is run with
`overlap` >= that many extra frames on either side, and each window keeps the output of its own chunk
(`windows`, `run_in_windows`). Used by `HifiGan.forward(mel, chunk_frames=...)` as it is.

The VAE's up path also has GroupNorms, which normalise with the mean and variance of the whole time
axis: a window alone does not know them. `decode_up_path_in_windows` first computes them, then
decodes:

1. statistics pass: for each GroupNorm in the order they run, one sweep over the windows runs the up
   path up to that GroupNorm (earlier GroupNorms use their whole-input statistics, known by then) and
   adds the window's kept frames to a running mean and variance (Chan et al.'s pairwise combination);
2. decoding pass: every window runs to the end with all statistics known, as `run_in_windows`.

Cost: sweep k runs the windows up to GroupNorm k, so the up path runs about (GroupNorms + 1) / 2
times (about 10 for the official decoder), plus the overlaps; `AutoencoderKL.decode` gives measured
times. Use it when memory, not time, is what runs out.

Why not each window's own statistics, as tiled image decoders do: on random weights that was 3% to
11% off one pass for a steady latent and up to 75% for one whose loudness changes along time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------
# Windows


def receptive_field(layers) -> int:
    """Input frames on either side of a frame that a stack of convolutions reaches (an upper bound).

    `layers`: (reach, samples per input frame) per layer, where reach is how many of its own input
    samples the layer sees on either side of one (a conv of kernel k: (k - 1) / 2 times its dilation).
    """
    return math.ceil(sum(Fraction(reach) / samples_per_frame for reach, samples_per_frame in layers))


@dataclass(frozen=True)
class Window:
    start: int  # first input frame the window runs on
    stop: int  # end of the input frames it runs on
    keep_start: int  # first frame of its chunk, counted from `start`
    keep_stop: int  # end of its chunk, counted from `start`
    last: bool  # the chunk ends the input

    def crop(self, output: torch.Tensor, dim: int, per_frame: int, keep_tail: bool = False) -> torch.Tensor:
        """The chunk's part of the window's output, which has `per_frame` entries per input frame along
        `dim`; with `keep_tail`, the last window also keeps what follows its last frame's entries."""
        end = None if keep_tail and self.last else self.keep_stop * per_frame
        index = (slice(None),) * dim + (slice(self.keep_start * per_frame, end),)
        return output[index]


def windows(frames: int, chunk_frames: int, overlap: int) -> list[Window]:
    """Chunks of `chunk_frames` frames, each in a window with up to `overlap` more frames on either side."""
    result = []
    for first in range(0, frames, chunk_frames):
        end = min(first + chunk_frames, frames)
        start, stop = max(first - overlap, 0), min(end + overlap, frames)
        result.append(Window(start, stop, first - start, end - start, last=end == frames))
    return result


def run_in_windows(fn, x: torch.Tensor, dim: int, chunk_frames: int, overlap: int, per_frame: int,
                   keep_tail: bool = False) -> torch.Tensor:
    """fn(x), computed window by window along `dim` and concatenated; exact when `overlap` covers fn's
    receptive field and fn commutes with a shift by one frame (every layer a convolution)."""
    pieces = []
    for window in windows(x.shape[dim], chunk_frames, overlap):
        output = fn(x.narrow(dim, window.start, window.stop - window.start))
        pieces.append(window.crop(output, dim, per_frame, keep_tail))
    return torch.cat(pieces, dim=dim)


# ----------------------------------------------------------------------------------------------
# The VAE's up path with whole-input GroupNorm statistics


class RunningMoments:
    """Mean and sum of squared deviations per (batch, group), added to part by part (Chan et al. 1979)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, None, None

    def add(self, x: torch.Tensor) -> None:
        """x (B, G, N): N more values of each group."""
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        count, mean = x.shape[-1], x.mean(dim=-1)  # (B, G)
        m2 = (x - mean[..., None]).square().sum(dim=-1)
        if self.mean is not None:
            delta = mean - self.mean
            mean = self.mean + delta * (count / (self.count + count))
            m2 = self.m2 + m2 + delta.square() * (self.count * count / (self.count + count))
            count += self.count
        self.count, self.mean, self.m2 = count, mean, m2

    def mean_and_inv_std(self, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean, torch.rsqrt(self.m2 / self.count + eps)  # biased variance, as F.group_norm


def group_norm_with(norm: nn.GroupNorm, x: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor) -> torch.Tensor:
    """`norm(x)` with the given statistics (B, G) instead of x's own."""
    batch, groups = x.shape[0], norm.num_groups
    mean, inv_std = (t[..., None].to(x.dtype) for t in (mean, inv_std))  # (B, G, 1)
    normalized = ((x.reshape(batch, groups, -1) - mean) * inv_std).reshape(x.shape)  # (B, C, H, W)
    return normalized * norm.weight[:, None, None] + norm.bias[:, None, None]


def up_path_group_norms(decoder) -> list[nn.GroupNorm]:
    """The up path's GroupNorms in the order they run (modules are registered in that order)."""
    return [m for m in (*decoder.up_blocks.modules(), decoder.conv_norm_out) if isinstance(m, nn.GroupNorm)]


def up_path_in_window(decoder, x: torch.Tensor, statistics: dict, until: nn.GroupNorm | None = None) -> torch.Tensor:
    """`vae.Decoder.up_path` on one window (B, 512, window, 16), every GroupNorm using the whole input's
    `statistics`; with `until`, stop at that GroupNorm and return its input. Step for step as
    `ResnetBlock.forward`, `UpBlock.forward` and `Decoder.up_path` in vae.py."""

    def norm_silu(norm, h):
        h = group_norm_with(norm, h, *statistics[norm])
        return F.silu(h, inplace=not h.requires_grad)

    for block in decoder.up_blocks:
        for resnet in block.resnets:
            if resnet.norm1 is until:
                return x
            h = resnet.conv1(norm_silu(resnet.norm1, x))
            if resnet.norm2 is until:
                return h
            h = resnet.conv2(norm_silu(resnet.norm2, h))
            x = h + (x if resnet.conv_shortcut is None else resnet.conv_shortcut(x))
        if block.upsamplers is not None:
            x = block.upsamplers[0](x)  # (B, C, 2 * window, 2 * F)
    if decoder.conv_norm_out is until:
        return x
    return decoder.conv_out(norm_silu(decoder.conv_norm_out, x))  # (B, 1, 4 * window, 64)


def decode_up_path_in_windows(decoder, x: torch.Tensor, chunk_frames: int, overlap: int,
                              upsampling_factor: int) -> torch.Tensor:
    """`decoder.up_path(x)` for x (B, 512, T/4, 16), window by window: (B, 1, T, 64)."""
    statistics = {}  # GroupNorm -> whole-input (mean, 1 / std), each (B, G)

    # 1. statistics pass: one sweep over the windows per GroupNorm, each window stopping at that GroupNorm
    for norm in up_path_group_norms(decoder):
        moments = RunningMoments()
        for window in windows(x.shape[2], chunk_frames, overlap):
            h = up_path_in_window(decoder, x[:, :, window.start:window.stop], statistics, until=norm)  # (B, C, R, F)
            rows_per_frame = h.shape[2] // (window.stop - window.start)
            kept = window.crop(h, dim=2, per_frame=rows_per_frame)
            moments.add(kept.reshape(kept.shape[0], norm.num_groups, -1))  # (B, G, N)
        statistics[norm] = moments.mean_and_inv_std(norm.eps)

    # 2. decoding pass: every window to the end
    return run_in_windows(lambda window: up_path_in_window(decoder, window, statistics), x, dim=2,
                          chunk_frames=chunk_frames, overlap=overlap, per_frame=upsampling_factor)
