"""CLAP's audio tower (HTSAT) and candidate ranking: which of several waveforms fits the prompt best.

When the pipeline makes several waveforms per prompt, it scores each by the cosine similarity of its
CLAP audio embedding with the prompt's CLAP text embedding and keeps them best first. The audio side:

    16 kHz waveform --(audio_features.py: resample to 48 kHz, 10 s crop or repeat-pad, log-mel)-->
    input_features (B, C, 1001, 64) --(HTSAT: a Swin transformer on the mel "image")--> (B, 1024)
    --(audio_projection: Linear-ReLU-Linear)--> (B, 512) --(L2 norm)--> audio embedding

C is the number of log-mels the feature extractor stacks per clip: 1 in the AudioLDM 2 checkpoints,
4 with `truncation="fusion"` (diffusers' and transformers' small test checkpoints, whose HTSAT reads
`patch_embed_input_channels=4`); each channel is folded into the image on its own and the patch
embedding's convolution reads all of them.

HTSAT (cvssp/audioldm2: spec_size 256, patch 4, window 8, depths 2-2-12-2, heads 4-8-16-32, 128 -> 1024
channels) first normalises each mel bin with a BatchNorm, stretches the 1001 frames to 1024 (bicubic)
and folds them into a 256 x 256 image: four 256-frame chunks stacked along the frequency axis. Then a
Swin transformer: 4 x 4 patches, window self-attention with a learned relative position bias, every
second block on windows shifted by half a window (with a mask so that tokens wrapped around by the
cyclic shift do not attend to each other), and a 2 x 2 patch merging between stages. The pooled output
is the mean over the final tokens after a LayerNorm.

Only the non-fusion model is implemented (`enable_fusion=False`, as in every AudioLDM 2 checkpoint): it
ignores the feature extractor's `is_longer` flag.

Loading: the tower's tensors live in the hub component `text_encoder` (`audio_model.*`,
`audio_projection.*`, beside the text tower of clap.py). Only candidate ranking needs them, so the
pipeline loads this stage on its own (generation/ranking.py `load_audio_tower`) when it first ranks:
text-to-audio without ranking does not keep them in memory (the text tower's load reads the file and
drops them), and a config only ranking reads (the audio tower's, the feature extractor's) can only
refuse ranking, never generation.

References:
- Chen et al., "HTS-AT: A Hierarchical Token-Semantic Audio Transformer for Sound Classification and
  Detection", ICASSP 2022.
- Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021.
- Wu et al., "Large-scale Contrastive Language-Audio Pretraining with Feature Fusion and
  Keyword-to-Caption Augmentation", ICASSP 2023 (LAION-CLAP).
- Parameter names follow the hub checkpoint (transformers' `ClapModel.audio_model` / `audio_projection`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention, merge_heads, split_heads
from .clap import Projection
from .hub_config import hub_field, unsupported_config

# Tensors of the `text_encoder` component this stage deliberately does not load.
UNUSED_KEYS = (
    # the text tower (clap.py) and the contrastive loss's temperatures
    r"text_model\..*", r"text_projection\..*", r"logit_scale_[at]",
    # each attention's `relative_position_index`: a fixed function of the window size, computed in forward
    r"audio_model\.audio_encoder\.layers\.\d+\.blocks\.\d+\.attention\.self\.relative_position_index",
)

# Additive attention mask between tokens that the cyclic shift brought into one window from different
# image regions (-100, not -inf, as in the reference: exp(-100) is already 0 in float32).
SHIFT_MASK_VALUE = -100.0


@dataclass
class ClapAudioConfig:
    spec_size: int = 256  # side of the square image the mel spectrogram is folded into
    num_mel_bins: int = 64
    patch_size: int = 4
    patch_stride: int = 4
    window_size: int = 8
    patch_embeds_hidden_size: int = 128  # channels of the first stage; doubled by each patch merging
    depths: tuple[int, ...] = (2, 2, 12, 2)
    num_attention_heads: tuple[int, ...] = (4, 8, 16, 32)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-5
    hidden_size: int = 1024  # channels of the last stage, the projection's input
    projection_dim: int = 512  # the joint text-audio space
    input_channels: int = 1  # log-mels per clip (the hub's patch_embed_input_channels): 4 with "fusion" features

    @classmethod
    def from_hub(cls, config: dict) -> "ClapAudioConfig":
        """From the `text_encoder` config.json: its `audio_config` and the top-level `projection_dim` /
        `projection_hidden_act` (transformers' ClapConfig overwrites the audio config's with them)."""
        c, d = hub_field(config, "audio_config", {}), cls()
        hub_field(config, "projection_hidden_act", "relu", supported=("relu",))
        hub_field(c, "enable_fusion", False, supported=(False,))
        hub_field(c, "hidden_act", "gelu", supported=("gelu",))
        hub_field(c, "flatten_patch_embeds", True, supported=(True,))
        hub_field(c, "enable_patch_layer_norm", True, supported=(True,))

        def square(name, default):  # the hub allows an int or a pair for these
            value = hub_field(c, name, default)
            if isinstance(value, (list, tuple)):
                if len(set(value)) != 1:
                    raise unsupported_config(c, name, value, "square sizes: one int, or a pair of equal ints")
                value = value[0]
            return int(value)

        config = cls(
            spec_size=square("spec_size", d.spec_size),
            num_mel_bins=hub_field(c, "num_mel_bins", d.num_mel_bins),
            patch_size=square("patch_size", d.patch_size),
            patch_stride=square("patch_stride", d.patch_stride),
            window_size=hub_field(c, "window_size", d.window_size),
            patch_embeds_hidden_size=hub_field(c, "patch_embeds_hidden_size", d.patch_embeds_hidden_size),
            depths=tuple(hub_field(c, "depths", d.depths)),
            num_attention_heads=tuple(hub_field(c, "num_attention_heads", d.num_attention_heads)),
            mlp_ratio=hub_field(c, "mlp_ratio", d.mlp_ratio),
            qkv_bias=hub_field(c, "qkv_bias", d.qkv_bias),
            layer_norm_eps=hub_field(c, "layer_norm_eps", d.layer_norm_eps),
            hidden_size=hub_field(c, "hidden_size", d.hidden_size),
            projection_dim=hub_field(config, "projection_dim", d.projection_dim),
            input_channels=hub_field(c, "patch_embed_input_channels", d.input_channels),
        )
        config.check()
        return config

    @property
    def freq_ratio(self) -> int:  # mel spectrogram chunks stacked into the image
        return self.spec_size // self.num_mel_bins

    def stage_resolutions(self) -> list[int]:  # side of each stage's token grid
        grid = self.spec_size // self.patch_stride
        return [grid // 2**i for i in range(len(self.depths))]

    def check(self) -> None:
        last_channels = self.patch_embeds_hidden_size * 2 ** (len(self.depths) - 1)
        if last_channels != self.hidden_size:
            raise ValueError(f"CLAP audio hidden_size {self.hidden_size} != last stage's channels {last_channels}")
        if len(self.num_attention_heads) != len(self.depths):
            raise ValueError(f"CLAP audio: {len(self.depths)} stages but {len(self.num_attention_heads)} head counts")
        if self.spec_size % self.num_mel_bins or self.patch_size != self.patch_stride:
            raise ValueError("CLAP audio: spec_size must be a multiple of num_mel_bins, and patches must not overlap")
        for side in self.stage_resolutions():
            if side < self.window_size or side % self.window_size:
                raise ValueError(f"CLAP audio: a {side} x {side} token grid does not tile into "
                                 f"{self.window_size} x {self.window_size} windows")


# ----------------------------------------------------------------------------------------------
# Swin building blocks


def relative_position_index(window: int, device=None) -> torch.Tensor:
    """(w*w, w*w) index into the (2w-1)^2-row bias table for each (query, key) pair of a window."""
    steps = torch.arange(window, device=device)
    rows, cols = torch.meshgrid(steps, steps, indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()  # (w*w,) position of each token, row-major
    d_row = rows[:, None] - rows[None, :] + window - 1  # (w*w, w*w) in [0, 2w-2]
    d_col = cols[:, None] - cols[None, :] + window - 1
    return d_row * (2 * window - 1) + d_col


def shifted_window_mask(side: int, window: int, shift: int, device=None) -> torch.Tensor:
    """(num_windows, w*w, w*w) additive mask for attention in cyclically shifted windows.

    After rolling the grid by -shift, the last window row/column holds tokens from up to three
    regions of the original image (its interior, and the strips wrapped around from the top / left);
    tokens of different regions must not attend to each other.
    """
    position = torch.arange(side, device=device)
    region = (position >= side - window).long() + (position >= side - shift).long()  # (side,) 0, 1 or 2
    label = region[:, None] * 3 + region[None, :]  # (side, side) region of each token
    label = windows_of(label[None, :, :, None], window).flatten(1)  # (num_windows, w*w)
    different = label[:, :, None] != label[:, None, :]  # (num_windows, w*w, w*w)
    return different.float() * SHIFT_MASK_VALUE


def windows_of(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/w * W/w, w, w, C): non-overlapping windows, row-major within each image."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, C)


def image_of(windows: torch.Tensor, side: int) -> torch.Tensor:
    """Inverse of `windows_of` for a square side x side grid: (B*nW, w, w, C) -> (B, side, side, C)."""
    window, C = windows.shape[1], windows.shape[-1]
    n = side // window
    x = windows.view(-1, n, n, window, window, C)  # (B, H/w, W/w, w, w, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, side, side, C)


class Dense(nn.Module):
    """One Linear under the hub's BERT-style name `<parent>.dense`."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.dense = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class QueryKeyValue(nn.Module):
    """The attention's projections and relative position bias table (hub name `attention.self`)."""

    def __init__(self, dim: int, num_heads: int, window: int, bias: bool):
        super().__init__()
        self.query = nn.Linear(dim, dim, bias=bias)
        self.key = nn.Linear(dim, dim, bias=bias)
        self.value = nn.Linear(dim, dim, bias=bias)
        # one learned bias per head for each relative offset (dy, dx) in [-(w-1), w-1]^2
        self.relative_position_bias_table = nn.Parameter(torch.empty((2 * window - 1) ** 2, num_heads))


class WindowAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, qkv_bias: bool):
        super().__init__()
        self.num_heads, self.window = num_heads, window
        self.self = QueryKeyValue(dim, num_heads, window, qkv_bias)  # hub name `attention.self`
        self.output = Dense(dim, dim)  # hub name `attention.output.dense`

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B*nW, N, C) tokens of each window (N = w*w); mask (nW, N, N) or None."""
        Bw, N, C = x.shape
        h = self.num_heads
        projections = (self.self.query, self.self.key, self.self.value)
        q, k, v = (split_heads(proj(x), h) for proj in projections)  # (B*nW, h, N, C/h) each

        # relative position bias, plus the shifted-window mask: one additive bias per (window, head, q, k)
        index = relative_position_index(self.window, device=x.device).flatten()
        bias = self.self.relative_position_bias_table[index].view(N, N, h).permute(2, 0, 1)  # (h, N, N)
        if mask is None:
            bias = bias[None]  # (1, h, N, N), the same for every window
        else:
            num_windows = mask.shape[0]
            bias = bias[None] + mask[:, None].to(bias.dtype)  # (nW, h, N, N)
            bias = bias.repeat(Bw // num_windows, 1, 1, 1)  # (B*nW, h, N, N), windows batch-major as in x

        out = attention(q, k, v, bias.to(q.dtype))  # (B*nW, h, N, C/h)
        return self.output(merge_heads(out))  # (B*nW, N, C)


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention and MLP, each a residual branch."""

    def __init__(self, dim: int, num_heads: int, side: int, window: int, shift: int, mlp_ratio: float,
                 qkv_bias: bool, eps: float):
        super().__init__()
        self.side, self.window, self.shift = side, window, shift
        self.layernorm_before = nn.LayerNorm(dim, eps=eps)
        self.attention = WindowAttention(dim, num_heads, window, qkv_bias)
        self.layernorm_after = nn.LayerNorm(dim, eps=eps)
        hidden = int(dim * mlp_ratio)
        self.intermediate = Dense(dim, hidden)  # hub names of the MLP: intermediate.dense, output.dense
        self.output = Dense(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, C) tokens of a side x side grid, row-major (L = side^2)."""
        B, L, C = x.shape
        side, window, shift = self.side, self.window, self.shift

        # window attention, on windows shifted by `shift` (cyclic roll) in every second block
        y = self.layernorm_before(x).view(B, side, side, C)
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        y = windows_of(y, window).view(-1, window * window, C)  # (B*nW, w*w, C)
        mask = shifted_window_mask(side, window, shift, device=x.device) if shift else None
        y = self.attention(y, mask)
        y = image_of(y.view(-1, window, window, C), side)  # (B, side, side, C)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + y.reshape(B, L, C)

        # MLP
        y = self.intermediate(self.layernorm_after(x))
        x = x + self.output(F.gelu(y))
        return x


class PatchMerging(nn.Module):
    """2 x 2 neighbouring tokens -> one token with twice the channels (halves the grid side)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        B, L, C = x.shape
        x = x.view(B, side, side, C)
        # channel order of the merged token: (row, col) = (0, 0), (1, 0), (0, 1), (1, 1)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        x = x.view(B, -1, 4 * C)  # (B, L/4, 4C)
        return self.reduction(self.norm(x))  # (B, L/4, 2C)


class SwinStage(nn.Module):
    def __init__(self, config: ClapAudioConfig, stage: int, merge: bool):
        super().__init__()
        dim = config.patch_embeds_hidden_size * 2**stage
        side = config.stage_resolutions()[stage]
        self.side = side
        # Every second block attends in shifted windows, except where one window covers the whole grid.
        shift = config.window_size // 2 if side > config.window_size else 0
        self.blocks = nn.ModuleList(
            SwinBlock(dim, config.num_attention_heads[stage], side, config.window_size, shift if i % 2 else 0,
                      config.mlp_ratio, config.qkv_bias, config.layer_norm_eps)
            for i in range(config.depths[stage])
        )
        self.downsample = PatchMerging(dim) if merge else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x, self.side)
        return x


class PatchEmbed(nn.Module):
    def __init__(self, config: ClapAudioConfig):
        super().__init__()
        p, dim = config.patch_size, config.patch_embeds_hidden_size
        self.proj = nn.Conv2d(config.input_channels, dim, kernel_size=p, stride=p)
        self.norm = nn.LayerNorm(dim)  # transformers' default eps (1e-5), not config.layer_norm_eps

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.proj(image)  # (B, C, S/p, S/p)
        return self.norm(x.flatten(2).transpose(1, 2))  # (B, (S/p)^2, C) row-major


# ----------------------------------------------------------------------------------------------
# HTSAT and the projection


class HTSATEncoder(nn.Module):
    """Log-mel (B, C, T, F) -> pooled features (B, hidden_size). Hub name `audio_model.audio_encoder`."""

    def __init__(self, config: ClapAudioConfig):
        super().__init__()
        self.config = config
        self.batch_norm = nn.BatchNorm2d(config.num_mel_bins)  # per mel bin, running statistics
        self.patch_embed = PatchEmbed(config)
        n = len(config.depths)
        self.layers = nn.ModuleList(SwinStage(config, i, merge=i < n - 1) for i in range(n))
        self.norm = nn.LayerNorm(config.hidden_size)  # default eps, as in the reference

    def mel_to_image(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, C, T, F) -> (B, C, S, S): stretch T to S*r frames (r = S/F), then stack the r chunks of S
        frames along frequency, so image row c*F + f, column t holds bin f of frame c*S + t (per channel)."""
        S, r = self.config.spec_size, self.config.freq_ratio
        B, C, T, F_ = mel.shape
        if T > S * r or F_ != self.config.num_mel_bins:
            raise ValueError(f"CLAP audio expects at most {S * r} frames of {self.config.num_mel_bins} mel bins, "
                             f"got {T} x {F_}")
        if T < S * r:
            mel = F.interpolate(mel, size=(S * r, F_), mode="bicubic", align_corners=True)  # (B, C, S*r, F)
        image = mel.view(B, C, r, S, F_).transpose(3, 4)  # (B, C, r, F, S): chunk, bin, frame in chunk
        return image.reshape(B, C, r * F_, S)  # (B, C, S, S)

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        """input_features (B, C, T, F) log-mel in dB, as `audio_features.clap_input_features` gives it."""
        # per-bin normalisation and folding into an image, in float32 (bicubic and BatchNorm in half
        # precision are less accurate and not implemented on every device)
        bn = self.batch_norm
        x = input_features.float().transpose(1, 3)  # (B, F, T, C): mel bins as channels
        x = F.batch_norm(x, bn.running_mean.float(), bn.running_var.float(), bn.weight.float(), bn.bias.float(),
                         training=False, eps=bn.eps)
        image = self.mel_to_image(x.transpose(1, 3))  # (B, C, S, S)
        x = self.patch_embed(image.to(self.patch_embed.proj.weight.dtype))  # (B, (S/4)^2, C0)

        # Swin stages: (B, L, C) -> (B, L/4, 2C) between stages
        for stage in self.layers:
            x = stage(x)

        # final norm, mean over the tokens
        x = self.norm(x)  # (B, L_last, hidden_size)
        return x.mean(dim=1)  # (B, hidden_size)


class ClapAudioModel(nn.Module):
    """Hub name `audio_model`: holds the encoder as `audio_encoder`, as transformers' ClapAudioModel."""

    def __init__(self, config: ClapAudioConfig):
        super().__init__()
        self.audio_encoder = HTSATEncoder(config)

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.audio_encoder(input_features)


class ClapAudioTower(nn.Module):
    """CLAP's audio tower under its hub names inside `text_encoder` (`audio_model.*`, `audio_projection.*`)."""

    def __init__(self, config: ClapAudioConfig):
        super().__init__()
        self.config = config
        self.audio_model = ClapAudioModel(config)
        self.audio_projection = Projection(config.hidden_size, config.projection_dim)  # as the text tower's

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        """(B, C, frames, mels) log-mel from audio_features.py -> (B, projection_dim) unit vectors, as
        transformers' `ClapModel.get_audio_features`. The log-mel is first rounded to the model's dtype,
        as diffusers hands it to the model."""
        input_features = input_features.to(self.audio_projection.linear1.weight.dtype)
        return F.normalize(self.audio_projection(self.audio_model(input_features)), dim=-1)
