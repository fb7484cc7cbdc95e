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
  feed-forward `wo(gelu_tanh(wi_0 x) * wi_1 x)` for the v1.1 / Flan models (`feed_forward_proj`
  "gated-gelu"). The original T5 (v1.0) has the plain `wo(relu(wi x))` ("relu"); the config may name
  any activation of transformers' table, gated ("gated-silu") or not ("gelu"): `ACTIVATIONS` below.

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
from .hub_config import hub_field, unsupported_config

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
    feed_forward_activation: str = "gelu_new"  # a name in ACTIVATIONS
    gated_feed_forward: bool = True  # wo(act(wi_0 x) * wi_1 x) (v1.1, Flan-T5), else wo(act(wi x)) (v1.0)

    @classmethod
    def from_hub(cls, config: dict) -> "T5Config":
        # "[gated-]ACT", parsed as transformers' T5Config does: it derives `dense_act_fn` from this field
        # (and "gated-gelu" means the tanh GELU), so a saved `dense_act_fn` is not read
        feed_forward_proj = hub_field(config, "feed_forward_proj", "relu")
        gated, _, activation = feed_forward_proj.rpartition("-")
        activation = "gelu_new" if feed_forward_proj == "gated-gelu" else activation
        if gated not in ("", "gated") or activation not in ACTIVATIONS:
            raise unsupported_config(config, "feed_forward_proj", feed_forward_proj,
                                     f"'ACT' or 'gated-ACT' with ACT one of {', '.join(ACTIVATIONS)}")
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
            feed_forward_activation=activation,
            gated_feed_forward=gated == "gated",
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


# The activations transformers' T5 can be configured with (its ACT2FN names), as plain functions.
# The tanh-approximated GELUs are one formula written several ways: torch's matches them to float rounding.
def _gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {
    "relu": F.relu, "gelu": F.gelu, "gelu_python": F.gelu, "gelu_new": _gelu_tanh, "gelu_fast": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh, "gelu_python_tanh": _gelu_tanh, "gelu_accurate": _gelu_tanh,
    "gelu_10": lambda x: F.gelu(x).clamp(-10, 10), "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "silu": F.silu, "swish": F.silu, "mish": F.mish, "relu2": lambda x: F.relu(x).square(), "relu6": F.relu6,
    "leaky_relu": F.leaky_relu, "hardswish": F.hardswish, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
}


class FeedForward(nn.Module):  # hub: DenseReluDense, whatever the activation
    """wo(act(wi_0 x) * wi_1 x) when gated (T5 v1.1, Flan-T5), else wo(act(wi x)) (T5 v1.0)."""

    def __init__(self, d_model: int, d_ff: int, activation: str, gated: bool):
        super().__init__()
        self.activation, self.gated = ACTIVATIONS[activation], gated
        if gated:
            self.wi_0 = nn.Linear(d_model, d_ff, bias=False)
            self.wi_1 = nn.Linear(d_model, d_ff, bias=False)
        else:
            self.wi = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)  # float32 (KEEP_FP32_KEYS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the activation, the gate product and wo in wo's dtype (float32): their magnitudes overflow float16
        dtype = self.wo.weight.dtype
        if not self.gated:
            return self.wo(self.activation(self.wi(x).to(dtype)))
        return self.wo(self.activation(self.wi_0(x).to(dtype)) * self.wi_1(x).to(dtype))


class AttentionSublayer(nn.Module):  # hub: layer.0
    def __init__(self, config: T5Config, has_position_bias: bool):
        super().__init__()
        num_buckets = config.relative_attention_num_buckets if has_position_bias else None
        self.SelfAttention = SelfAttention(config.d_model, config.num_heads, config.d_kv, num_buckets)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)


class FeedForwardSublayer(nn.Module):  # hub: layer.1
    def __init__(self, config: T5Config):
        super().__init__()
        self.DenseReluDense = FeedForward(config.d_model, config.d_ff, config.feed_forward_activation,
                                          config.gated_feed_forward)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)


class T5Block(nn.Module):
    def __init__(self, config: T5Config, has_position_bias: bool):
        super().__init__()
        self.layer = nn.ModuleList([AttentionSublayer(config, has_position_bias), FeedForwardSublayer(config)])

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        attention, feed_forward = self.layer
        # pre-norm self-attention; the residual stream x is float32
        x = x + attention.SelfAttention(attention.layer_norm(x), bias).float()
        # pre-norm feed-forward
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
