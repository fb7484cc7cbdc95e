"""The vocoder: HiFi-GAN from log-mel spectrogram to 16 kHz waveform, the pipeline's last stage.

    log-mel (B, T, 64) --conv_pre--> (B, 1024, T)
        5 x [leaky ReLU, transposed conv (x5, x4, x2, x2, x2), multi-receptive-field fusion]
        --leaky ReLU, conv_post, tanh--> waveform (B, 160 T + 32)

HiFi-GAN: Kong, Kim and Bae 2020, "HiFi-GAN: Generative Adversarial Networks for Efficient and High
Fidelity Speech Synthesis", generator V1 (sec. 2.1, fig. 1). Multi-receptive-field fusion (MRF) runs
the signal through one residual block per kernel size (3, 7, 11), each a chain of dilated convs
(dilations 1, 3, 5), and averages their outputs.

Parity with transformers' `SpeechT5HifiGan` (same names, so its checkpoints load strictly):
- the leaky ReLU before conv_post has slope 0.01 (PyTorch's default, as in the original HiFi-GAN
  code), while every other one has `leaky_relu_slope` (0.1);
- `normalize_before` standardises the input with the stored `mean` and `scale` (off for AudioLDM 2,
  whose checkpoints store zeros and ones there);
- the transposed convs pad (kernel - stride) / 2, which makes each stage's output 1 sample (x5),
  4 (x4) or 2 (x2) longer than stride x input: 160 T + 32 samples in all, which the pipeline cuts.

Long audio: every layer is a convolution, so the engine's long_audio.py runs it on overlapping windows
of the time axis (`vocode_in_windows`) for one pass's result.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .hub_config import hub_field

FINAL_LEAKY_RELU_SLOPE = 0.01  # F.leaky_relu's default, used by the reference before conv_post


@dataclass
class HifiGanConfig:
    model_in_dim: int = 64  # mel bins
    sampling_rate: int = 16000
    upsample_initial_channel: int = 1024  # halved at every upsampling stage
    upsample_rates: tuple[int, ...] = (5, 4, 2, 2, 2)  # product 160: samples per mel frame
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 8, 4, 4)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    leaky_relu_slope: float = 0.1
    normalize_before: bool = False

    @classmethod
    def from_hub(cls, config: dict) -> "HifiGanConfig":
        """From transformers' SpeechT5HifiGan config.json."""
        return cls(
            model_in_dim=hub_field(config, "model_in_dim"),
            sampling_rate=hub_field(config, "sampling_rate"),
            upsample_initial_channel=hub_field(config, "upsample_initial_channel"),
            upsample_rates=tuple(hub_field(config, "upsample_rates")),
            upsample_kernel_sizes=tuple(hub_field(config, "upsample_kernel_sizes")),
            resblock_kernel_sizes=tuple(hub_field(config, "resblock_kernel_sizes")),
            resblock_dilation_sizes=tuple(tuple(d) for d in hub_field(config, "resblock_dilation_sizes")),
            leaky_relu_slope=hub_field(config, "leaky_relu_slope", 0.1),
            normalize_before=hub_field(config, "normalize_before", False),
        )


def convert_hub_state_dict(state_dict: dict, config: HifiGanConfig) -> dict:
    """Fold weight normalisation into plain conv weights.

    The official AudioLDM 2 checkpoints store plain `weight` tensors (weight norm was removed before
    they were saved). A checkpoint saved while weight norm was still applied stores each conv weight as
    a magnitude g and a direction v instead (`weight_g`/`weight_v` from `nn.utils.weight_norm`, or
    `parametrizations.weight.original0`/`original1` from `nn.utils.parametrizations.weight_norm`);
    at inference they are just w = g * v / |v|, the norm taken over every dimension where g has size 1.
    """
    pairs = {  # regex of the magnitude key -> the matching direction key
        re.compile(r"(.*)\.weight_g"): "{}.weight_v",
        re.compile(r"(.*)\.parametrizations\.weight\.original0"): "{}.parametrizations.weight.original1",
    }
    converted = dict(state_dict)
    for key in list(state_dict):
        for magnitude_key, direction_key in pairs.items():
            match = magnitude_key.fullmatch(key)
            if match and direction_key.format(match[1]) in state_dict:
                g, v = converted.pop(key), converted.pop(direction_key.format(match[1]))
                norm_dims = [d for d in range(v.ndim) if g.shape[d] == 1]
                norm = v.float().pow(2).sum(dim=norm_dims, keepdim=True).sqrt()
                converted[f"{match[1]}.weight"] = (g.float() * v.float() / norm).to(v.dtype)
    return converted


def leaky_relu_(x: torch.Tensor, slope: float) -> torch.Tensor:
    """Leaky ReLU in place when no gradient flows through x (one full-size tensor fewer per layer)."""
    return F.leaky_relu(x, slope, inplace=not x.requires_grad)


class ResidualBlock(nn.Module):
    """x + conv(lrelu(conv_dilated(lrelu(x)))) for each dilation in turn; same length in and out."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...], slope: float):
        super().__init__()
        self.slope = slope
        self.convs1 = nn.ModuleList([
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size - 1) * d // 2)
            for d in dilations
        ])
        self.convs2 = nn.ModuleList([
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2):
            h = conv1(F.leaky_relu(x, self.slope))  # out of place: x is still needed for the residual
            h = conv2(leaky_relu_(h, self.slope))
            h += x  # in place: h is a fresh conv output
            x = h
        return x


class HifiGan(nn.Module):
    def __init__(self, config: HifiGanConfig):
        super().__init__()
        self.config = config
        width = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.model_in_dim, width, 7, padding=3)
        self.upsampler = nn.ModuleList([
            nn.ConvTranspose1d(width // 2**i, width // 2 ** (i + 1), kernel, stride=rate, padding=(kernel - rate) // 2)
            for i, (rate, kernel) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes))
        ])
        self.resblocks = nn.ModuleList([  # stage-major: stage i's blocks are [i * kernels, (i + 1) * kernels)
            ResidualBlock(width // 2 ** (i + 1), kernel, tuple(dilations), config.leaky_relu_slope)
            for i in range(len(self.upsampler))
            for kernel, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes)
        ])
        self.conv_post = nn.Conv1d(width // 2 ** len(self.upsampler), 1, 7, padding=3)
        # input statistics for `normalize_before`: persistent buffers, stored in every checkpoint
        self.register_buffer("mean", torch.zeros(config.model_in_dim))
        self.register_buffer("scale", torch.ones(config.model_in_dim))

    @property
    def hop_length(self) -> int:
        return math.prod(self.config.upsample_rates)  # 160 samples per mel frame

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """log-mel (B, T, 64) -> waveform (B, 160 T + 32) in [-1, 1]."""
        mel = mel.to(self.conv_pre.weight.dtype)  # the VAE's mel may be in another dtype
        if self.config.normalize_before:
            mel = (mel - self.mean) / self.scale
        x = self.conv_pre(mel.transpose(1, 2))  # (B, 1024, T)
        kernels = len(self.config.resblock_kernel_sizes)
        for i, upsample in enumerate(self.upsampler):
            x = upsample(leaky_relu_(x, self.config.leaky_relu_slope))  # (B, C / 2, rate * length + extra)
            # multi-receptive-field fusion: the average of the stage's residual blocks
            blocks = self.resblocks[i * kernels:(i + 1) * kernels]
            fused = blocks[0](x)
            for block in blocks[1:]:
                fused += block(x)
            x = fused.div_(kernels)
        x = self.conv_post(leaky_relu_(x, FINAL_LEAKY_RELU_SLOPE))  # (B, 1, 160 T + 32)
        return torch.tanh(x).squeeze(1)
