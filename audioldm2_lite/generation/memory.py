"""How much memory decoding needs, how much there is, and so how to decode: in one pass or in tiles.

Decoding runs the VAE decoder, then the vocoder. In one pass the VAE's widest layers hold about four
tensors the size of its widest activation (B, 256, T, 64) at once; the vocoder's, far less. When that
does not fit in the memory there is, the VAE runs layer by layer over time tiles and the vocoder over
windows (models/long_audio.py): the same result, for the same work, holding about two of those
tensors plus one tile's temporaries. Past that, on a GPU, the tiles' full-length tensors move to CPU
memory and the GPU holds one tile's. Encoding an input to edit follows the same rule with the
encoder's widest activation, half the decoder's.

The estimates are the widest activation (`vae_widest_activation`, `vocoder_widest_activation`)
times the batch, the length and the dtype's size, times how many such tensors were measured to be
held at the peak (the factors below, with their measurements).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

# Peak memory above what was allocated before the call, in tensors of the widest activation (RSS,
# measured with scripts/benchmark_long_audio.py on the full-size model, float32, CPU; the CPU allocator's
# retained free blocks included). One pass of the VAE decoder (and then the vocoder): 3.6 at 10.24 s,
# 3.8 at 40.96 s.
VAE_ONE_PASS = 4.0
# Tiled: the full-length tensors of the widest layer (its input, its output and the resnet's skip input:
# 2 by count, more with what the allocator keeps), plus about five of one tile. Measured 3.0 at 40.96 s
# in tiles of 256 (estimate 3.75), and 3.4 at 10.24 s in tiles of 64 (estimate 3.75).
VAE_TILED_FULL_LENGTH = 2.5
VAE_TILED_PER_TILE = 5.0
# The vocoder in one pass, in its own widest activation (5120 values per mel frame for the official model):
# measured 6.7 at 40.96 s, most of it a constant of its first call; 1.5 per added frame. Below the VAE's.
VOCODER_ONE_PASS = 3.0
# The encoder, by the same counts as the decoder (the same blocks, mirrored).
ENCODER_ONE_PASS, ENCODER_TILED_FULL_LENGTH, ENCODER_TILED_PER_TILE = VAE_ONE_PASS, VAE_TILED_FULL_LENGTH, VAE_TILED_PER_TILE

TILE_FRAMES = 256  # latent frames per tile (10.24 s): overlaps cost 2 / 256 of the work
MIN_TILE_FRAMES = 16
VOCODER_CHUNK_FRAMES = 4096  # mel frames per vocoder window when it does not run in one pass (40.96 s)
# Of the memory free when decoding starts, the share the estimates may claim: others share the machine,
# and the estimates are measurements of one allocator, not bounds.
USABLE_SHARE = 0.8


def available_memory(device) -> int | None:
    """Free bytes where the work will run: the GPU's (with what PyTorch holds cached but unused), or the
    machine's for the CPU (MemAvailable, which counts reclaimable cache); None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu" and Path("/proc/meminfo").is_file():  # Linux
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def vae_widest_activation(vae, latent_bins: int, encoder: bool = False) -> int:
    """Values per latent frame (and batch item) of the VAE decoder's (encoder's) largest activation: the
    decoder's is the last upsampler's output, the encoder's its first level.

    Level i of the decoder runs at 2^i rows and 2^i x latent_bins columns per latent frame, on the
    wider of its input and output widths; the encoder's levels run the other way.
    """
    widths = vae.config.block_out_channels
    levels = len(widths)
    if encoder:
        return max(max(widths[max(i - 1, 0)], widths[i]) * 4 ** (levels - 1 - i) for i in range(levels)) * latent_bins
    widths = widths[::-1]
    return max(max(widths[max(i - 1, 0)], widths[i]) * 4 ** i for i in range(levels)) * latent_bins


def vocoder_widest_activation(vocoder) -> int:
    """Values per mel frame (and batch item) of the vocoder's largest activation: a stage's width times its
    samples per frame."""
    config = vocoder.config
    widest, samples_per_frame = config.upsample_initial_channel, 1  # conv_pre's output
    for i, rate in enumerate(config.upsample_rates):
        samples_per_frame *= rate
        widest = max(widest, config.upsample_initial_channel // 2 ** (i + 1) * samples_per_frame)
    return widest


def decode_bytes(vae, vocoder, batch: int, frames: int, latent_bins: int, dtype: torch.dtype,
                 tile_frames: int | None = None) -> int:
    """Estimated peak bytes of decoding `frames` latent frames: in one pass, or with the VAE in tiles of
    `tile_frames` and the vocoder in windows (whose memory is bounded by their length)."""
    size = torch.empty((), dtype=dtype).element_size()
    widest = vae_widest_activation(vae, latent_bins) * batch * size  # bytes per latent frame
    if tile_frames is None:
        mel_frames = frames * vae.upsampling_factor
        vocoder_bytes = VOCODER_ONE_PASS * vocoder_widest_activation(vocoder) * batch * size * mel_frames
        return int(max(VAE_ONE_PASS * widest * frames, vocoder_bytes))
    tile = min(tile_frames, frames)
    return int(VAE_TILED_FULL_LENGTH * widest * frames + VAE_TILED_PER_TILE * widest * tile)


def encode_bytes(vae, batch: int, frames: int, latent_bins: int, dtype: torch.dtype,
                 tile_frames: int | None = None) -> int:
    """Estimated peak bytes of encoding a mel spectrogram of `frames` latent frames."""
    size = torch.empty((), dtype=dtype).element_size()
    widest = vae_widest_activation(vae, latent_bins, encoder=True) * batch * size
    if tile_frames is None:
        return int(ENCODER_ONE_PASS * widest * frames)
    return int(ENCODER_TILED_FULL_LENGTH * widest * frames + ENCODER_TILED_PER_TILE * widest * min(tile_frames, frames))


@dataclass
class TilePlan:
    """How to run the VAE: in one pass (tile_frames None), or in tiles keeping full-length tensors on `storage`."""

    tile_frames: int | None = None
    storage: torch.device | None = None  # None: where the VAE runs
    vocoder_chunk_frames: int | None = None  # mel frames per vocoder window; None: one pass
    estimate: int = 0  # the estimated peak bytes of the plan
    budget: int | None = None  # the bytes it was planned for; None: unknown

    @property
    def one_pass(self) -> bool:
        return self.tile_frames is None


def memory_budget(device, max_memory: int | None) -> int | None:
    """`max_memory` when given, else the usable share of the memory free on `device` (None: unknown)."""
    if max_memory is not None:
        return int(max_memory)
    free = available_memory(device)
    return None if free is None else int(free * USABLE_SHARE)


def plan_tiles(estimate, device, budget: int | None) -> TilePlan:
    """One pass if `estimate(None)` fits in `budget`; else the largest tiles (up to TILE_FRAMES) whose
    `estimate(tile_frames)` fits; else, off the CPU, full-length tensors in CPU memory; else the smallest tiles."""
    device = torch.device(device)
    one_pass = estimate(None)
    if budget is None or one_pass <= budget:
        return TilePlan(estimate=one_pass, budget=budget)
    tile = TILE_FRAMES
    while tile > MIN_TILE_FRAMES and estimate(tile) > budget:
        tile //= 2
    if estimate(tile) > budget and device.type != "cpu":  # the device keeps one tile's tensors, the CPU the rest
        return TilePlan(TILE_FRAMES, torch.device("cpu"), estimate=estimate(TILE_FRAMES), budget=budget)
    return TilePlan(tile, estimate=estimate(tile), budget=budget)


def plan_decode(vae, vocoder, latents_shape, dtype: torch.dtype, device, max_memory: int | None = None) -> TilePlan:
    """How to decode latents of `latents_shape` (B, C, T/4, F/4) within `max_memory` bytes (default: the
    usable share of the memory free on `device`)."""
    batch, _, frames, latent_bins = latents_shape
    plan = plan_tiles(lambda tile: decode_bytes(vae, vocoder, batch, frames, latent_bins, dtype, tile),
                      device, memory_budget(device, max_memory))
    if not plan.one_pass:
        plan.vocoder_chunk_frames = VOCODER_CHUNK_FRAMES
    return plan


def plan_encode(vae, mel_shape, dtype: torch.dtype, device, max_memory: int | None = None) -> TilePlan:
    """How to encode a log-mel of `mel_shape` (B, 1, T, F) within `max_memory` bytes (as `plan_decode`)."""
    batch, _, mel_frames, bins = mel_shape
    frames, latent_bins = mel_frames // vae.upsampling_factor, bins // vae.upsampling_factor
    return plan_tiles(lambda tile: encode_bytes(vae, batch, frames, latent_bins, dtype, tile),
                      device, memory_budget(device, max_memory))
