"""The VAE: between the diffusion latent and the log-mel spectrogram.

AudioLDM 2 denoises in the latent space of a KL-regularised autoencoder (Rombach et al. 2022,
"High-Resolution Image Synthesis with Latent Diffusion Models", sec. 3; AudioLDM, Liu et al. 2023,
sec. 2.2) trained on log-mel spectrograms seen as one-channel images:

    log-mel (B, 1, T, 64) --encoder--> posterior N(mean, exp(logvar)) over z (B, 8, T/4, 16)
    z (B, 8, T/4, 16) --decoder--> log-mel (B, 1, T, 64) --(vocoder.py)--> waveform

The pipeline only decodes: `decode(latents / config.scaling_factor)`, the factor that brought the
latents to unit variance during training (read from each checkpoint's config). The encoder is here for
audio-to-audio work and for testing.

The decoder: post_quant_conv (1x1), conv_in, a mid block (resnet, single-head self-attention over all
T/4 x 16 positions, resnet), three up blocks (resnets, then nearest x2 upsampling and a conv, except
the last), GroupNorm, SiLU, conv_out. The encoder mirrors it with strided convs and ends in
quant_conv, whose 2 x 8 channels are the posterior's mean and log-variance.

Parity with diffusers' `AutoencoderKL` (same names, so its checkpoints load strictly):
- every GroupNorm has eps 1e-6; resnets have no time embedding and an output scale of 1;
- the encoder's downsampling pads right and bottom by one (not symmetrically) before a stride-2 conv;
- the attention is one head of width C, softmax scale 1/sqrt(C), residual added after `to_out.0`;
- log-variance is clamped to [-30, 20] before use.

Long audio: `decode(latents, tile_frames=...)` and `encode(mel, tile_frames=...)` run the convolutional
layers one at a time over tiles of the time axis, each GroupNorm with its whole input's statistics, and
match one pass at the cost of one pass (long_audio.py; `AutoencoderKL.decode` says what it holds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .hub_config import hub_field
from .long_audio import TimeTiles

GROUP_NORM_EPS = 1e-6


@dataclass
class VAEConfig:
    in_channels: int = 1  # log-mel as a one-channel image
    out_channels: int = 1
    latent_channels: int = 8
    block_out_channels: tuple[int, ...] = (128, 256, 512)  # each level after the first halves T and F
    layers_per_block: int = 2  # encoder resnets per level; the decoder has one more
    norm_num_groups: int = 32
    scaling_factor: float = 0.4110932946205139  # latents were divided by 1/this to reach unit variance

    @classmethod
    def from_hub(cls, config: dict) -> "VAEConfig":
        """From diffusers' AutoencoderKL config.json; refuses variants this file does not implement."""
        levels = len(hub_field(config, "block_out_channels"))
        hub_field(config, "act_fn", "silu", supported=("silu",))
        hub_field(config, "down_block_types", supported=(["DownEncoderBlock2D"] * levels,))
        hub_field(config, "up_block_types", supported=(["UpDecoderBlock2D"] * levels,))
        for name in ("mid_block_add_attention", "use_quant_conv", "use_post_quant_conv"):
            hub_field(config, name, True, supported=(True,))
        for name in ("latents_mean", "shift_factor"):
            hub_field(config, name, None, supported=(None,))
        return cls(
            in_channels=hub_field(config, "in_channels"),
            out_channels=hub_field(config, "out_channels"),
            latent_channels=hub_field(config, "latent_channels"),
            block_out_channels=tuple(config["block_out_channels"]),
            layers_per_block=hub_field(config, "layers_per_block"),
            norm_num_groups=hub_field(config, "norm_num_groups"),
            scaling_factor=hub_field(config, "scaling_factor"),
        )


# Hub checkpoints saved by diffusers before 0.15 name the attention projections differently;
# diffusers renames them on load, and so do we.
LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def convert_hub_state_dict(state_dict: dict, config: VAEConfig) -> dict:
    """Rename legacy attention keys (`...attentions.0.query.weight` -> `...attentions.0.to_q.weight`)."""
    legacy = re.compile(r"(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)")
    converted = {}
    for key, tensor in state_dict.items():
        match = legacy.fullmatch(key)
        if match:
            prefix, name, kind = match.groups()
            key = f"{prefix}.{LEGACY_ATTENTION_NAMES[name]}.{kind}"
        converted[key] = tensor
    return converted


def silu_(x: torch.Tensor) -> torch.Tensor:
    """SiLU, in place when no gradient flows through x (saves one full-size tensor per layer)."""
    return F.silu(x, inplace=not x.requires_grad)


# ----------------------------------------------------------------------------------------------
# Blocks


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm with eps 1e-6; given `statistics`, (mean, 1 / std) per (batch, group), it normalises
    with those instead of x's own, so that a time tile of a long input is normalised as the whole input
    is (long_audio.TimeTiles)."""

    def __init__(self, groups: int, channels: int):
        super().__init__(groups, channels, eps=GROUP_NORM_EPS)

    def forward(self, x: torch.Tensor, statistics: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if statistics is None:
            return super().forward(x)
        # (x - mean) / std * weight + bias as one multiply-add per value, x * scale + shift, with scale
        # and shift per (batch, channel), as PyTorch's own GroupNorm kernels apply it
        mean, inv_std = (s.repeat_interleave(x.shape[1] // self.num_groups, dim=1) for s in statistics)  # (B, C)
        scale = inv_std * self.weight.float()
        shift = self.bias.float() - mean * scale
        # in float32 at least, as PyTorch's kernels compute half-precision GroupNorm
        return torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None]).to(x.dtype)  # (B, C, H, W)


class ResnetBlock(nn.Module):
    """x + conv(SiLU(norm(conv(SiLU(norm(x)))))), with a 1x1 conv on x when the width changes.

    Written as two layers, each one GroupNorm then a conv, so that long audio can run them one at a
    time over the whole time axis (`forward_in_tiles`); `forward` is the two in a row.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def first_layer(self, x: torch.Tensor, statistics=None) -> torch.Tensor:
        return self.conv1(silu_(self.norm1(x, statistics)))  # (B, out, H, W)

    def second_layer(self, h: torch.Tensor, x: torch.Tensor, statistics=None) -> torch.Tensor:
        """The second conv on the first layer's output h, plus the block's input x."""
        h = self.conv2(silu_(self.norm2(h, statistics)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        h += shortcut  # in place: h is a fresh conv output, and an addition's gradient needs neither input
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second_layer(self.first_layer(x), x)

    def forward_in_tiles(self, x: torch.Tensor, tiles: TimeTiles) -> torch.Tensor:
        h = tiles.map(self.first_layer, x, norm=self.norm1)
        return tiles.map(self.second_layer, h, x, norm=self.norm2)


class SelfAttention(nn.Module):
    """One head of self-attention over every (time, frequency) position, GroupNorm first, residual after."""


    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = GroupNorm(groups, channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])  # hub name `to_out.0`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        q, k, v = (proj(h).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))  # (B, 1, H*W, C): one head
        h = attention(q, k, v)  # (B, 1, H*W, C): 4-d like diffusers, 3-d inputs take another CPU kernel
        h = self.to_out[0](h.squeeze(1))  # (B, H*W, C)
        h = h.transpose(1, 2).reshape(batch, channels, height, width)  # (B, C, H, W)
        return x + h


class MidBlock(nn.Module):
    """resnet, attention, resnet at the lowest resolution."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList([SelfAttention(channels, groups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        x = self.attentions[0](x)
        return self.resnets[1](x)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one row and column on the far side only (diffusers' padding=0)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


class DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, downsample: bool):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_layers
        self.resnets = nn.ModuleList([ResnetBlock(widths[i], widths[i + 1], groups) for i in range(num_layers)])
        self.downsamplers = nn.ModuleList([Downsample(out_channels)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsamplers is None else self.downsamplers[0](x)

    def forward_in_tiles(self, x: torch.Tensor, tiles: TimeTiles) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet.forward_in_tiles(x, tiles)
        return x if self.downsamplers is None else tiles.map(self.downsamplers[0], x)


class UpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, upsample: bool):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_layers
        self.resnets = nn.ModuleList([ResnetBlock(widths[i], widths[i + 1], groups) for i in range(num_layers)])
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)

    def forward_in_tiles(self, x: torch.Tensor, tiles: TimeTiles) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet.forward_in_tiles(x, tiles)
        return x if self.upsamplers is None else tiles.map(self.upsamplers[0], x)


# ----------------------------------------------------------------------------------------------
# Encoder and decoder


class Encoder(nn.Module):
    """log-mel (B, 1, T, 64) -> posterior parameters before quant_conv (B, 2 * latent, T/4, 16)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        widths, groups = config.block_out_channels, config.norm_num_groups
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([
            DownBlock(widths[max(i - 1, 0)], widths[i], config.layers_per_block, groups, downsample=i < len(widths) - 1)
            for i in range(len(widths))
        ])
        self.mid_block = MidBlock(widths[-1], groups)
        self.conv_norm_out = GroupNorm(groups, widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * config.latent_channels, 3, padding=1)

    def output(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(silu_(self.conv_norm_out(x)))  # (B, 16, T/4, 16)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(mel)  # (B, 128, T, 64)
        for block in self.down_blocks:
            x = block(x)  # (B, 512, T/4, 16) after the last
        return self.output(self.mid_block(x))

    def forward_in_tiles(self, mel: torch.Tensor, tiles: TimeTiles) -> torch.Tensor:
        """forward(mel) with the down path one layer at a time over time tiles (long_audio.py); the mid
        block, whose attention spans the whole T/4 x 16 map, and the output run in one piece."""
        x = tiles.map(self.conv_in, mel)
        for block in self.down_blocks:
            x = block.forward_in_tiles(x, tiles)
        return self.output(self.mid_block(x.to(tiles.device)))


class Decoder(nn.Module):
    """z (B, latent, T/4, 16) -> log-mel (B, 1, T, 64), in two halves so the up path can run in tiles."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        widths, groups = config.block_out_channels[::-1], config.norm_num_groups  # (512, 256, 128)
        self.conv_in = nn.Conv2d(config.latent_channels, widths[0], 3, padding=1)
        self.mid_block = MidBlock(widths[0], groups)
        self.up_blocks = nn.ModuleList([
            UpBlock(widths[max(i - 1, 0)], widths[i], config.layers_per_block + 1, groups, upsample=i < len(widths) - 1)
            for i in range(len(widths))
        ])
        self.conv_norm_out = GroupNorm(groups, widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], config.out_channels, 3, padding=1)

    def lowest_resolution(self, z: torch.Tensor) -> torch.Tensor:
        """conv_in and the mid block: (B, latent, T/4, 16) -> (B, 512, T/4, 16); attention sees all of it."""
        return self.mid_block(self.conv_in(z))

    def output(self, x: torch.Tensor, statistics=None) -> torch.Tensor:
        return self.conv_out(silu_(self.conv_norm_out(x, statistics)))  # (B, 1, T, 64)

    def up_path(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 512, T/4, 16) -> (B, 1, T, 64): convolutions and GroupNorms only."""
        for block in self.up_blocks:
            x = block(x)  # (B, 512, T/2, 32), (B, 256, T, 64), (B, 128, T, 64)
        return self.output(x)

    def up_path_in_tiles(self, x: torch.Tensor, tiles: TimeTiles) -> torch.Tensor:
        """up_path(x), one layer at a time over time tiles (long_audio.py)."""
        for block in self.up_blocks:
            x = block.forward_in_tiles(x, tiles)
        return tiles.map(self.output, x, norm=self.conv_norm_out)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up_path(self.lowest_resolution(z))


# ----------------------------------------------------------------------------------------------
# The autoencoder


class AutoencoderKL(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        latent = config.latent_channels
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1)
        self.post_quant_conv = nn.Conv2d(latent, latent, 1)
        self.decoder = Decoder(config)

    @property
    def upsampling_factor(self) -> int:
        """Mel frames (and mel bins) per latent frame (bin): 4."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def widest_activation(self, latent_bins: int, encoder: bool = False) -> int:
        """Values per latent frame (and batch item) of the decoder's (encoder's) largest activation, the
        unit of `generation/memory.py`'s estimates: the decoder's is the last upsampler's output,
        256 channels x 4 rows x 64 bins = 65536 for the official config; the encoder's, its first level,
        128 x 4 x 64 = 32768.

        Level i of the decoder runs at 2^i rows and 2^i x latent_bins columns per latent frame, on the
        wider of its input and output widths; the encoder's levels run the other way.
        """
        widths = self.config.block_out_channels
        levels = len(widths)
        if encoder:
            return max(max(widths[max(i - 1, 0)], widths[i]) * 4 ** (levels - 1 - i) for i in range(levels)) * latent_bins
        widths = widths[::-1]
        return max(max(widths[max(i - 1, 0)], widths[i]) * 4 ** i for i in range(levels)) * latent_bins

    def time_tiles(self, frames: int, tile_frames: int, storage=None) -> TimeTiles:
        """Tiles of `tile_frames` latent frames over `frames`, run where the weights are."""
        return TimeTiles(frames, tile_frames, device=self.post_quant_conv.weight.device, storage=storage)

    def encode_distribution(self, mel: torch.Tensor, tile_frames: int | None = None,
                            storage=None) -> tuple[torch.Tensor, torch.Tensor]:
        """log-mel (B, 1, T, 64) -> posterior (mean, logvar), each (B, 8, T/4, 16).

        A sample is `mean + exp(logvar / 2) * noise`; the diffusion model sees `sample * scaling_factor`.
        `tile_frames` and `storage`: as for `decode` (T must then be a multiple of 4).
        """
        mel = mel.to(self.quant_conv.weight.dtype)  # a pipeline may run the stages around it in another dtype
        if tile_frames is None:
            hidden = self.encoder(mel)
        else:
            frames, remainder = divmod(mel.shape[2], self.upsampling_factor)
            if remainder:
                raise ValueError(f"tiled encoding needs whole latent frames: {mel.shape[2]} mel frames is not "
                                 f"a multiple of {self.upsampling_factor}")
            hidden = self.encoder.forward_in_tiles(mel, self.time_tiles(frames, tile_frames, storage))
        moments = self.quant_conv(hidden)  # (B, 16, T/4, 16)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, mel: torch.Tensor, tile_frames: int | None = None, storage=None) -> torch.Tensor:
        """log-mel (B, 1, T, 64) -> posterior mean (B, 8, T/4, 16), not yet multiplied by scaling_factor."""
        return self.encode_distribution(mel, tile_frames, storage)[0]

    def decode(self, latents: torch.Tensor, tile_frames: int | None = None, storage=None) -> torch.Tensor:
        """Latents already divided by `scaling_factor` (B, 8, T/4, 16) -> log-mel (B, 1, T, 64).

        With `tile_frames` (latent frames; 4 mel frames each) the up path runs one layer at a time over
        tiles of the time axis, keeping each layer's output at full length and normalising with the
        whole input's statistics (long_audio.py): the same result as one pass, for the same work plus
        two overlap frames per tile. At its peak it holds about 2.5 full-length tensors of the widest
        activation (`widest_activation`) plus a few of one tile, where one pass holds about 4
        (measured: generation/memory.py). The mid block, whose attention spans the whole T/4 x 16 map,
        runs in one piece. With `storage`, the kept full-length tensors (and the returned mel) live
        there: the CPU while a GPU decodes, so the GPU holds one tile's.
        """
        latents = latents.to(self.post_quant_conv.weight.dtype)  # the UNet's latents may be in another dtype
        x = self.decoder.lowest_resolution(self.post_quant_conv(latents))  # (B, 512, T/4, 16)
        if tile_frames is None:
            return self.decoder.up_path(x)
        return self.decoder.up_path_in_tiles(x, self.time_tiles(latents.shape[2], tile_frames, storage))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode(latents)
