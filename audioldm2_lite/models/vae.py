"""The VAE: between the diffusion latent and the log-mel spectrogram.

AudioLDM 2 denoises in the latent space of a KL-regularised autoencoder (Rombach et al. 2022,
"High-Resolution Image Synthesis with Latent Diffusion Models", sec. 3; AudioLDM, Liu et al. 2023,
sec. 2.2) trained on log-mel spectrograms seen as one-channel images:

    log-mel (B, 1, T, 64) --encoder--> posterior N(mean, exp(logvar)) over z (B, 8, T/4, 16)
    z (B, 8, T/4, 16) --decoder--> log-mel (B, 1, T, 64) --(vocoder.py)--> waveform

Generation decodes `latents / config.scaling_factor` (the checkpoint's own factor, which brought the latents to
unit variance in training); editing and training encode.

The decoder: post_quant_conv (1x1), conv_in, a mid block (resnet, single-head self-attention over all
T/4 x 16 positions, resnet), three up blocks (resnets, then nearest x2 upsampling and a conv, except
the last), GroupNorm, SiLU, conv_out. The encoder mirrors it with strided convs and ends in
quant_conv, whose 2 x 8 channels are the posterior's mean and log-variance.

Parity with diffusers' `AutoencoderKL` (same names, so its checkpoints load strictly):
- every GroupNorm has eps 1e-6; resnets have no time embedding and an output scale of 1;
- the encoder's downsampling pads right and bottom by one (not symmetrically) before a stride-2 conv;
- the attention is one head of width C, softmax scale 1/sqrt(C), residual added after `to_out.0`;
- log-variance is clamped to [-30, 20] before use.

Long audio: the engine's long_audio.py walks these blocks over time tiles, for one pass's result in less memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .hub_config import hub_field

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


class ResnetBlock(nn.Module):
    """x + conv(SiLU(norm(conv(SiLU(norm(x)))))), with a 1x1 conv on x when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=GROUP_NORM_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=GROUP_NORM_EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(silu_(self.norm1(x)))  # (B, out, H, W)
        h = self.conv2(silu_(self.norm2(h)))
        h += x if self.conv_shortcut is None else self.conv_shortcut(x)  # in place: h is a fresh conv output
        return h


class SelfAttention(nn.Module):
    """One head of self-attention over every (time, frequency) position, GroupNorm first, residual after."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=GROUP_NORM_EPS)
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
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=GROUP_NORM_EPS)
        self.conv_out = nn.Conv2d(widths[-1], 2 * config.latent_channels, 3, padding=1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(mel)  # (B, 128, T, 64)
        for block in self.down_blocks:
            x = block(x)  # (B, 512, T/4, 16) after the last
        x = self.mid_block(x)
        return self.conv_out(silu_(self.conv_norm_out(x)))  # (B, 16, T/4, 16)


class Decoder(nn.Module):
    """z (B, latent, T/4, 16) -> log-mel (B, 1, T, 64)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        widths, groups = config.block_out_channels[::-1], config.norm_num_groups  # (512, 256, 128)
        self.conv_in = nn.Conv2d(config.latent_channels, widths[0], 3, padding=1)
        self.mid_block = MidBlock(widths[0], groups)
        self.up_blocks = nn.ModuleList([
            UpBlock(widths[max(i - 1, 0)], widths[i], config.layers_per_block + 1, groups, upsample=i < len(widths) - 1)
            for i in range(len(widths))
        ])
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=GROUP_NORM_EPS)
        self.conv_out = nn.Conv2d(widths[-1], config.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))  # (B, 512, T/4, 16): the attention sees all of it
        for block in self.up_blocks:
            x = block(x)  # (B, 512, T/2, 32), (B, 256, T, 64), (B, 128, T, 64)
        return self.conv_out(silu_(self.conv_norm_out(x)))  # (B, 1, T, 64)


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

    def encode_distribution(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log-mel (B, 1, T, 64) -> posterior (mean, logvar), each (B, 8, T/4, 16).

        A sample is `mean + exp(logvar / 2) * noise`; the diffusion model sees `sample * scaling_factor`.
        """
        mel = mel.to(self.quant_conv.weight.dtype)  # a pipeline may run the stages around it in another dtype
        moments = self.quant_conv(self.encoder(mel))  # (B, 16, T/4, 16)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """log-mel (B, 1, T, 64) -> posterior mean (B, 8, T/4, 16), not yet multiplied by scaling_factor."""
        return self.encode_distribution(mel)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents already divided by `scaling_factor` (B, 8, T/4, 16) -> log-mel (B, 1, T, 64), in one pass."""
        latents = latents.to(self.post_quant_conv.weight.dtype)  # the UNet's latents may be in another dtype
        return self.decoder(self.post_quant_conv(latents))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode(latents)
