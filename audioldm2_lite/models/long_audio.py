"""Long audio: the VAE and the vocoder run over tiles of the time axis and still match one pass.

A convolution changes an output frame only from input frames within its reach, so a network of
convolutions can run on pieces of the time axis that overlap by that reach, each piece keeping the
output of its own frames. Two ways, for two kinds of network:

- Windows, for the vocoder (convolutions only): the whole network runs on each window, a chunk plus
  `overlap` >= `receptive_field` frames on either side (`windows`, `run_in_windows`). Memory is one
  window's; the cost is one pass plus the overlaps.
- Layer by layer, for the VAE (`TimeTiles`), whose GroupNorms normalise with the mean and variance of
  the whole time axis, which no window knows alone. The VAE's blocks are written as layers that each
  begin with at most one GroupNorm (half a resnet block, an up- or downsampler, the output layer). Each
  layer runs over tiles of its input with one latent frame of overlap either side, and its output is
  kept at full length; the next layer's GroupNorm takes its statistics from that kept tensor, then runs
  its tiles with them. So every layer runs once, exactly (its GroupNorm sees the whole input's
  statistics), at the cost of one pass plus 2 / `tile_frames` for the overlaps; the memory is the
  layer's input and output at full length (the resnet's skip input too) plus one tile's temporaries,
  where one pass holds three to four full-length tensors at its widest layer. With `storage` (the CPU
  while a GPU decodes) the kept tensors live there and the device holds one tile's.

Why not each window's own statistics, as tiled image decoders do: on random weights that was 3% to
11% off one pass for a steady latent and up to 75% for one whose loudness changes along time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
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
# Layer by layer, with whole-input GroupNorm statistics


class RunningMoments:
    """Mean and sum of squared deviations per (batch, group), added to part by part (Chan et al. 1979)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, None, None

    def add(self, x: torch.Tensor) -> None:
        """x (B, G, N): N more values of each group."""
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        count = x.shape[-1]
        variance, mean = torch.var_mean(x, dim=-1, correction=0)  # (B, G) each
        m2 = variance * count
        if self.mean is not None:
            delta = mean - self.mean
            mean = self.mean + delta * (count / (self.count + count))
            m2 = self.m2 + m2 + delta.square() * (self.count * count / (self.count + count))
            count += self.count
        self.count, self.mean, self.m2 = count, mean, m2

    def mean_and_inv_std(self, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean, torch.rsqrt(self.m2 / self.count + eps)  # biased variance, as F.group_norm


# Every VAE layer reaches at most one latent frame beyond its own: a 3x3 conv one row, and a stride-2
# conv two rows where there are at least 2 rows per latent frame (the encoder downsamples from 4 and 2).
LAYER_OVERLAP_FRAMES = 1


class TimeTiles:
    """Runs a network's layers one at a time over tiles of the time axis of full-length tensors.

    Tensors are (B, C, rows, W) with time along dim 2 and a whole number of rows per latent frame
    (1 at the latent's resolution, 4 at the mel spectrogram's): tiles are counted in latent frames, so
    one tiling serves every resolution. `device` is where the layers run (their weights' device),
    `storage` where the full-length outputs are kept (default: `device`).
    """

    def __init__(self, frames: int, tile_frames: int, overlap: int = LAYER_OVERLAP_FRAMES,
                 device=None, storage=None):
        self.frames, self.tile_frames, self.overlap = frames, tile_frames, overlap
        self.device = device
        self.storage = storage if storage is not None else device

    def rows(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Latent frames start .. stop of x, on the device the layers run on."""
        per_frame = x.shape[2] // self.frames
        return x[:, :, start * per_frame:stop * per_frame].to(self.device)

    def statistics(self, x: torch.Tensor, norm: nn.GroupNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean and 1 / std per (batch, group) that `norm` takes of the whole of x, each (B, G)."""
        moments = RunningMoments()
        for start in range(0, self.frames, self.tile_frames):
            tile = self.rows(x, start, min(start + self.tile_frames, self.frames))
            moments.add(tile.reshape(tile.shape[0], norm.num_groups, -1))  # (B, G, C / G * rows * W)
        return moments.mean_and_inv_std(norm.eps)

    def map(self, layer, *inputs: torch.Tensor, norm: nn.GroupNorm | None = None) -> torch.Tensor:
        """layer(*inputs) at full length, computed tile by tile; inputs share the time axis.

        With `norm` (the layer's GroupNorm, applied to the first input) the layer is called as
        `layer(*tiles, statistics=...)` with that GroupNorm's statistics over the whole first input.
        """
        statistics = {} if norm is None else {"statistics": self.statistics(inputs[0], norm)}
        output = None
        for window in windows(self.frames, self.tile_frames, self.overlap):
            result = layer(*(self.rows(x, window.start, window.stop) for x in inputs), **statistics)
            per_frame = result.shape[2] // (window.stop - window.start)  # output rows per latent frame
            if output is None:  # (B, C', frames * per_frame, W'), filled tile by tile
                output = result.new_empty((*result.shape[:2], self.frames * per_frame, result.shape[3]),
                                          device=self.storage)
            first = (window.start + window.keep_start) * per_frame
            kept = window.crop(result, dim=2, per_frame=per_frame)
            output[:, :, first:first + kept.shape[2]] = kept
        return output
