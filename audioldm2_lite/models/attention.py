"""Scaled dot-product attention: the one function every stage's attention layers call.

    attention(q, k, v, bias, scale) = softmax(q k^T * scale + bias) v

q is (B, heads, L, d), k and v are (B, heads, S, d); `scale` defaults to 1 / sqrt(d) (T5 passes 1.0: it
folds the scaling into its weights). `bias` is an additive float mask, or a boolean one (True = may attend),
broadcastable to (B, heads, L, S). It runs through torch's fused `scaled_dot_product_attention`; set
`USE_SDPA = False` to run the explicit math below instead, for comparison and teaching (the tests do).
`split_heads` and `merge_heads` are the one reshape between a sequence of features and its heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

USE_SDPA = True


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
              scale: float | None = None) -> torch.Tensor:
    if USE_SDPA:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    scores = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale)  # (B, heads, L, S)
    if bias is not None:
        scores = scores.masked_fill(~bias, float("-inf")) if bias.dtype == torch.bool else scores + bias
    return scores.float().softmax(dim=-1).to(v.dtype) @ v  # (B, heads, L, d), softmax in float32


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads * d) -> (B, heads, L, d)."""
    return rearrange(x, "b l (h d) -> b h l d", h=heads)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, d) -> (B, L, heads * d)."""
    return rearrange(x, "b h l d -> b l (h d)")
