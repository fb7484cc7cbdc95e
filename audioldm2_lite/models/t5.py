"""The Flan-T5-large encoder (hub component `text_encoder_2`).

In AudioLDM 2 the T5 encoder turns the prompt into a sequence of 1024-d states. The sequence (with
its padding mask) is the second part of what the projection model hands to GPT-2, and the UNet's
second cross-attention reads it directly.

T5's encoder is a pre-norm transformer with three particularities:
- no absolute positions: a learned bias per (head, relative-position bucket) is added to the attention
  scores. Block 0 owns the table; every block reuses its bias. Offsets are bucketed exactly below
  `num_buckets / 4` and logarithmically up to `max_distance`, separately for keys left and right;
- RMS normalisation with a weight and no bias or mean subtraction (transformers' `T5LayerNorm`);
- no 1/sqrt(d) scaling of the attention scores (T5 folds it into the initialisation), and a gated
  feed-forward `wo(gelu_tanh(wi_0 x) * wi_1 x)` for the v1.1 / Flan models.

Float16: T5's activations outgrow float16 (the feed-forward output and the residual stream reach
beyond 65504 in the later layers of the trained model). transformers keeps `wo` in float32 and clamps the
stream; we instead carry the residual stream in float32 and compute the feed-forward's gated
product and `wo` in float32 (`KEEP_FP32_KEYS`). The attention and the `wi` matmuls run in the
model's dtype. In float32 this is exactly T5.

References:
- Raffel et al., "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
  Transformer", JMLR 2020 (T5); Chung et al., "Scaling Instruction-Finetuned Language Models", 2022 (Flan-T5).
- Parameter names follow the hub checkpoint (transformers' `T5EncoderModel`), so loading is strict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention, merge_heads, split_heads
from .hub_config import hub_field

# Hub tensors this module deliberately does not load.
UNUSED_KEYS = (
    # the same matrix as shared.weight (tied in transformers); older checkpoints store both copies
    r"encoder\.embed_tokens\.weight",
)
# The feed-forward output projections stay float32 whatever the model's dtype (see the docstring).
KEEP_FP32_KEYS = (r"encoder\.block\.\d+\.layer\.1\.DenseReluDense\.wo\.weight",)


@dataclass
class T5Config:
    vocab_size: int = 32128
    d_model: int = 1024
    d_kv: int = 64  # per head
    d_ff: int = 2816
    num_layers: int = 24
    num_heads: int = 16
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6

    @classmethod
    def from_hub(cls, config: dict) -> "T5Config":
        # only the gated GELU feed-forward of T5 v1.1 / Flan-T5
        hub_field(config, "feed_forward_proj", "relu", supported=("gated-gelu",))
        hub_field(config, "dense_act_fn", "relu", supported=("gelu_new",))
        return cls(
            vocab_size=hub_field(config, "vocab_size"),
            d_model=hub_field(config, "d_model"),
            d_kv=hub_field(config, "d_kv"),
            d_ff=hub_field(config, "d_ff"),
            num_layers=hub_field(config, "num_layers"),
            num_heads=hub_field(config, "num_heads"),
            relative_attention_num_buckets=hub_field(config, "relative_attention_num_buckets"),
            relative_attention_max_distance=hub_field(config, "relative_attention_max_distance"),
            layer_norm_epsilon=hub_field(config, "layer_norm_epsilon"),
        )


def convert_hub_state_dict(state_dict: dict, config: T5Config) -> dict:
    # The embedding is stored as shared.weight, encoder.embed_tokens.weight or both (tied copies);
    # we load shared.weight and take the encoder's copy when that is the only one.
    if "shared.weight" not in state_dict and "encoder.embed_tokens.weight" in state_dict:
        state_dict["shared.weight"] = state_dict.pop("encoder.embed_tokens.weight")
    return state_dict


def relative_position_buckets(length: int, num_buckets: int, max_distance: int, device) -> torch.Tensor:
    """(L, L) bucket index of each key offset (key - query) for a bidirectional encoder."""
    position = torch.arange(length, device=device)
    offset = position[None, :] - position[:, None]  # (L queries, L keys)
    half = num_buckets // 2  # keys to the left use buckets [0, half), keys to the right [half, 2 half)
    bucket = (offset > 0).long() * half
    distance = offset.abs()
    exact = half // 2  # distances below this have a bucket each
    # larger distances share log-spaced buckets up to max_distance, and the last bucket beyond it
    log_scale = torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
    far = (exact + (log_scale * (half - exact)).long()).clamp(max=half - 1)
    return bucket + torch.where(distance < exact, distance, far)  # (L, L)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 and returned in the weight's dtype (T5LayerNorm)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * x.to(self.weight.dtype)


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, d_kv: int, num_buckets: int | None):
        super().__init__()
        self.num_heads, self.d_kv = num_heads, d_kv
        self.q = nn.Linear(d_model, num_heads * d_kv, bias=False)
        self.k = nn.Linear(d_model, num_heads * d_kv, bias=False)
        self.v = nn.Linear(d_model, num_heads * d_kv, bias=False)
        self.o = nn.Linear(num_heads * d_kv, d_model, bias=False)
        if num_buckets is not None:  # block 0 only: the position bias table all blocks share
            self.relative_attention_bias = nn.Embedding(num_buckets, num_heads)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(proj(x), self.num_heads) for proj in (self.q, self.k, self.v))  # (B, heads, L, d_kv)
        out = attention(q, k, v, bias, scale=1.0)  # (B, heads, L, d_kv): T5 does not scale by 1/sqrt(d)
        return self.o(merge_heads(out))  # (B, L, d_model)


class GatedGeluFeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.wi_0 = nn.Linear(d_model, d_ff, bias=False)
        self.wi_1 = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)  # float32 (KEEP_FP32_KEYS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the gate product and wo in wo's dtype (float32): their magnitudes overflow float16
        gate = F.gelu(self.wi_0(x).to(self.wo.weight.dtype), approximate="tanh")  # "gelu_new"
        return self.wo(gate * self.wi_1(x).to(self.wo.weight.dtype))


class AttentionSublayer(nn.Module):  # hub: layer.0
    def __init__(self, config: T5Config, has_position_bias: bool):
        super().__init__()
        num_buckets = config.relative_attention_num_buckets if has_position_bias else None
        self.SelfAttention = SelfAttention(config.d_model, config.num_heads, config.d_kv, num_buckets)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)


class FeedForwardSublayer(nn.Module):  # hub: layer.1
    def __init__(self, config: T5Config):
        super().__init__()
        self.DenseReluDense = GatedGeluFeedForward(config.d_model, config.d_ff)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)


class T5Block(nn.Module):
    def __init__(self, config: T5Config, has_position_bias: bool):
        super().__init__()
        self.layer = nn.ModuleList([AttentionSublayer(config, has_position_bias), FeedForwardSublayer(config)])

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        attention, feed_forward = self.layer
        # pre-norm self-attention; the residual stream x is float32
        x = x + attention.SelfAttention(attention.layer_norm(x), bias).float()
        # pre-norm gated-GELU feed-forward
        x = x + feed_forward.DenseReluDense(feed_forward.layer_norm(x)).float()
        return x


class T5Stack(nn.Module):  # hub: encoder
    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.block = nn.ModuleList(T5Block(config, has_position_bias=(i == 0)) for i in range(config.num_layers))
        self.final_layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        # relative position bias from block 0's table, shared by all blocks
        buckets = relative_position_buckets(
            L, self.config.relative_attention_num_buckets, self.config.relative_attention_max_distance, x.device
        )
        table = self.block[0].layer[0].SelfAttention.relative_attention_bias
        bias = table(buckets).permute(2, 0, 1)[None]  # (1, heads, L, L)
        # padding keys get the most negative score, so they take no attention weight
        is_padding = attention_mask[:, None, None, :] == 0  # (B, 1, 1, L)
        bias = bias.masked_fill(is_padding, torch.finfo(bias.dtype).min)  # (B, heads, L, L)
        for block in self.block:
            x = block(x, bias)
        return self.final_layer_norm(x)


class T5Encoder(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids and mask (1 = token, 0 = padding) -> (B, L, d_model) last hidden state.

        Returned in the model's dtype. States at padding positions are computed too (they attend to
        the real tokens); consumers mask them out.
        """
        x = self.shared(input_ids).float()  # (B, L, d_model): the residual stream, in float32
        return self.encoder(x, attention_mask)
