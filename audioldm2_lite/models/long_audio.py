"""Long audio: the VAE and the vocoder run over tiles of the time axis and still match one pass.

The engine's way to decode (and encode) audio longer than memory holds in one pass: the functions here walk
the plain models' own blocks (vae.py, vocoder.py), which know nothing of tiles.

A convolution changes an output frame only from input frames within its reach, so a network of
convolutions can run on pieces of the time axis that overlap by that reach, each piece keeping the
output of its own frames. Two ways, for two kinds of network:

- Windows, for the vocoder (convolutions only): the whole network runs on each window, a chunk plus
  `overlap` >= `receptive_field` frames on either side (`windows`, `run_in_windows`, `vocode_in_windows`). Memory is one
  window's; the cost is one pass plus the overlaps.
- Layer by layer, for the VAE (`TimeTiles`), whose GroupNorms normalise with the mean and variance of
  the whole time axis, which no window knows alone. The VAE's blocks are walked as layers that each
  begin with at most one GroupNorm (half a resnet block, an up- or downsampler, the output layer;
  `decode_in_tiles`, `encode_in_tiles`). Each
  layer runs over tiles of its input with one latent frame of overlap either side, and its output is
  kept at full length; the next layer's GroupNorm takes its statistics from that kept tensor, then runs
  its tiles with them. So every layer runs once, exactly (its GroupNorm sees the whole input's
  statistics), at the cost of one pass plus 2 / `tile_frames` for the overlaps; the memory is the
  layer's input and output at full length (the resnet's skip input too) plus one tile's temporaries,
  where one pass holds three to four full-length tensors at its widest layer. With `storage` (the CPU
  while a GPU decodes) the kept tensors live there and the device holds one tile's.

Why not each window's own statistics, as tiled image decoders do: a tile's statistics are not the whole
input's, so its output is not one pass's (scripts/BENCHMARKS.md has the measured differences).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from .vae import AutoencoderKL, ResnetBlock
from .vocoder import HifiGan, HifiGanConfig

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


def receptive_field_frames(config: HifiGanConfig) -> int:
    """Mel frames on either side of a frame that can change the vocoder's samples (an upper bound).

    Each layer's half-width in its own samples, divided by that stage's samples per frame:
    conv_pre (kernel 7), each transposed conv (kernel / stride input samples, plus one for the
    alignment of its windows), each stage's widest MRF block (a dilated conv then a plain conv per
    dilation), conv_post (kernel 7). For the official config this is 27 frames.
    """
    widest = max(  # in samples of its stage
        sum((k - 1) * d // 2 + (k - 1) // 2 for d in dilations)
        for k, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes)
    )
    layers, samples_per_frame = [(3, 1)], 1  # (reach, samples per frame there), conv_pre first
    for rate, kernel in zip(config.upsample_rates, config.upsample_kernel_sizes):
        layers.append((Fraction(kernel, rate) + 1, samples_per_frame))  # transposed conv, in input samples
        samples_per_frame *= rate
        layers.append((widest, samples_per_frame))  # MRF
    layers.append((3, samples_per_frame))  # conv_post
    return receptive_field(layers)


def vocode_in_windows(vocoder: HifiGan, mel: torch.Tensor, chunk_frames: int, overlap: int | None = None):
    """vocoder(mel) for log-mel (B, T, 64), in chunks of `chunk_frames` frames: waveform (B, 160 T + 32).

    Each chunk runs on a window with `overlap` extra frames on either side (default: the receptive
    field, so the result matches one pass) and keeps the samples of its own frames. A window that
    starts at frame s produces the samples of the whole input from 160 s on, because every layer
    commutes with a shift by its stride; only the last chunk keeps the 32-sample tail.
    """
    overlap = receptive_field_frames(vocoder.config) if overlap is None else overlap
    return run_in_windows(vocoder, mel, dim=1, chunk_frames=chunk_frames, overlap=overlap,
                          per_frame=vocoder.hop_length, keep_tail=True)


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


def group_norm(norm: nn.GroupNorm, x: torch.Tensor, statistics: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """`norm(x)` with the given (mean, 1 / std) per (batch, group) instead of x's own (a tile's)."""
    # (x - mean) / std * weight + bias as one multiply-add per value, x * scale + shift, with scale
    # and shift per (batch, channel), as PyTorch's own GroupNorm kernels apply it
    mean, inv_std = (s.repeat_interleave(x.shape[1] // norm.num_groups, dim=1) for s in statistics)  # (B, C)
    scale = inv_std * norm.weight.float()
    shift = norm.bias.float() - mean * scale
    # in float32 at least, as PyTorch's kernels compute half-precision GroupNorm
    return torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None]).to(x.dtype)  # (B, C, H, W)


def resnet_in_tiles(resnet: ResnetBlock, x: torch.Tensor, tiles: TimeTiles) -> torch.Tensor:
    """A VAE resnet block as its two layers, each a GroupNorm then a conv, run over the tiles."""
    def first(x, statistics):
        return resnet.conv1(F.silu(group_norm(resnet.norm1, x, statistics)))  # (B, out, H, W)

    def second(h, x, statistics):
        h = resnet.conv2(F.silu(group_norm(resnet.norm2, h, statistics)))
        return h + (x if resnet.conv_shortcut is None else resnet.conv_shortcut(x))

    h = tiles.map(first, x, norm=resnet.norm1)
    return tiles.map(second, h, x, norm=resnet.norm2)


def blocks_in_tiles(blocks, x: torch.Tensor, tiles: TimeTiles) -> torch.Tensor:
    """The VAE's down or up blocks (resnets, then a down- or upsampler) over the tiles."""
    for block in blocks:
        for resnet in block.resnets:
            x = resnet_in_tiles(resnet, x, tiles)
        for resampler in (getattr(block, "downsamplers", None) or getattr(block, "upsamplers", None) or []):
            x = tiles.map(resampler, x)
    return x


def decode_in_tiles(vae: AutoencoderKL, latents: torch.Tensor, tile_frames: int, storage=None) -> torch.Tensor:
    """`vae.decode(latents)` with the up path one layer at a time over tiles of `tile_frames` latent frames.

    Each layer's output is kept at full length and normalised with the whole input's statistics: the
    same result as one pass, for the same work plus two overlap frames per tile, in less memory (memory.py
    estimates how much). The mid block, whose attention spans the whole T/4 x 16 map, runs in one piece.
    With `storage`, the kept full-length tensors (and the returned mel) live there: the CPU while a GPU
    decodes.
    """
    decoder = vae.decoder
    latents = latents.to(vae.post_quant_conv.weight.dtype)
    x = decoder.mid_block(decoder.conv_in(vae.post_quant_conv(latents)))  # (B, 512, T/4, 16)
    tiles = TimeTiles(latents.shape[2], tile_frames, device=vae.post_quant_conv.weight.device, storage=storage)
    x = blocks_in_tiles(decoder.up_blocks, x, tiles)

    def output(x, statistics):
        return decoder.conv_out(F.silu(group_norm(decoder.conv_norm_out, x, statistics)))  # (B, 1, T, 64)

    return tiles.map(output, x, norm=decoder.conv_norm_out)


def encode_in_tiles(vae: AutoencoderKL, mel: torch.Tensor, tile_frames: int,
                    storage=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`vae.encode_distribution(mel)` with the down path one layer at a time over time tiles; the mid block
    and the output run in one piece. T must be a multiple of the VAE's factor (whole latent frames)."""
    frames, remainder = divmod(mel.shape[2], vae.upsampling_factor)
    if remainder:
        raise ValueError(f"tiled encoding needs whole latent frames: {mel.shape[2]} mel frames is not "
                         f"a multiple of {vae.upsampling_factor}")
    encoder, device = vae.encoder, vae.quant_conv.weight.device
    tiles = TimeTiles(frames, tile_frames, device=device, storage=storage)
    x = tiles.map(encoder.conv_in, mel.to(vae.quant_conv.weight.dtype))
    x = encoder.mid_block(blocks_in_tiles(encoder.down_blocks, x, tiles).to(device))
    moments = vae.quant_conv(encoder.conv_out(F.silu(encoder.conv_norm_out(x))))  # (B, 16, T/4, 16)
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)
