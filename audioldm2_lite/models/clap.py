"""CLAP, the contrastive text-audio model (hub component `text_encoder`): the text tower.

In AudioLDM 2 the CLAP text tower turns each prompt into one 512-d unit vector in the joint
text-audio space. That vector (with a mask of [1]) is the first part of the sequence the projection
model hands to GPT-2. When several waveforms are generated per prompt, the pipeline ranks them by
the cosine similarity of the prompt's vector with each waveform's CLAP audio embedding.

The text tower is RoBERTa-base (12 post-norm layers, 768-d, 12 heads, exact GELU) whose pooled
output (tanh of a dense layer on the first token, `<s>`) goes through a two-layer projection
(Linear-ReLU-Linear) and is L2-normalised, as `transformers.ClapModel.get_text_features` does.

The audio tower (`audio_model`, `audio_projection`, an HTSAT Swin transformer), stored in the same
component, is `clap_audio.py`: a stage of its own, loaded only when candidates are first ranked.

References:
- Wu et al., "Large-scale Contrastive Language-Audio Pretraining with Feature Fusion and
  Keyword-to-Caption Augmentation", ICASSP 2023 (LAION-CLAP).
- Liu et al., "RoBERTa: A Robustly Optimized BERT Pretraining Approach", 2019.
- Parameter names follow the hub checkpoint (transformers' `ClapModel`), so loading is strict.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention, merge_heads, split_heads
from .hub_config import hub_field

# Hub tensors this module deliberately does not load.
UNUSED_KEYS = (
    # the audio tower: a stage of its own (clap_audio.py), loaded when candidate ranking first needs it
    r"audio_model\..*", r"audio_projection\..*",
    # temperatures of the contrastive training loss; inference only compares cosine similarities
    r"logit_scale_[at]",
    # stored index tables (arange and zeros): positions are computed from the padding in forward and
    # the token type is always 0
    r"text_model\.embeddings\.(position_ids|token_type_ids)",
)


@dataclass
class ClapConfig:
    # RoBERTa text tower (cvssp/audioldm2 keeps transformers' ClapTextConfig defaults)
    vocab_size: int = 50265
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514  # 512 tokens + the padding index and the unused index 0
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 1
    # joint text-audio space, shared with the audio tower's projection
    projection_dim: int = 512

    @classmethod
    def from_hub(cls, config: dict) -> "ClapConfig":
        text, d = hub_field(config, "text_config", {}), cls()
        hub_field(text, "hidden_act", "gelu", supported=("gelu",))
        hub_field(config, "projection_hidden_act", "relu", supported=("relu",))
        return cls(
            vocab_size=hub_field(text, "vocab_size", d.vocab_size),
            hidden_size=hub_field(text, "hidden_size", d.hidden_size),
            num_layers=hub_field(text, "num_hidden_layers", d.num_layers),
            num_heads=hub_field(text, "num_attention_heads", d.num_heads),
            intermediate_size=hub_field(text, "intermediate_size", d.intermediate_size),
            max_position_embeddings=hub_field(text, "max_position_embeddings", d.max_position_embeddings),
            type_vocab_size=hub_field(text, "type_vocab_size", d.type_vocab_size),
            layer_norm_eps=hub_field(text, "layer_norm_eps", d.layer_norm_eps),
            pad_token_id=hub_field(text, "pad_token_id", d.pad_token_id),
            # the top-level value wins over the sub-configs' (transformers copies it into both)
            projection_dim=hub_field(config, "projection_dim", d.projection_dim),
        )


class TextEmbeddings(nn.Module):
    """Token + learned absolute position + token type embeddings, then LayerNorm (RoBERTa)."""

    def __init__(self, config: ClapConfig):
        super().__init__()
        self.pad_token_id = config.pad_token_id
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # RoBERTa (after fairseq) numbers the real tokens pad+1, pad+2, ... and gives every padding token
        # the position pad: positions depend on the padding tokens, not on the attention mask.
        is_token = (input_ids != self.pad_token_id).long()  # (B, L)
        positions = torch.cumsum(is_token, dim=1) * is_token + self.pad_token_id  # (B, L)
        token_types = torch.zeros_like(input_ids)  # a single segment
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_types)
        x = x + self.position_embeddings(positions)  # (B, L, D)
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(proj(x), self.num_heads) for proj in (self.query, self.key, self.value))
        return merge_heads(attention(q, k, v, bias))  # (B, heads, L, D / heads) -> (B, L, D)


class DenseResidualNorm(nn.Module):
    """BERT's post-norm residual: LayerNorm(residual + dense(x))."""

    def __init__(self, dim_in: int, dim_out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(dim_in, dim_out)
        self.LayerNorm = nn.LayerNorm(dim_out, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dense(x))


class AttentionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.self = SelfAttention(dim, num_heads)  # hub name: attention.self
        self.output = DenseResidualNorm(dim, dim, eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, bias), residual=x)


class Intermediate(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dense = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU


class TextLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, hidden: int, eps: float):
        super().__init__()
        self.attention = AttentionBlock(dim, num_heads, eps)
        self.intermediate = Intermediate(dim, hidden)
        self.output = DenseResidualNorm(hidden, dim, eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        # self-attention, then LayerNorm(x + attention)
        x = self.attention(x, bias)
        # feed-forward, then LayerNorm(x + feed-forward)
        return self.output(self.intermediate(x), residual=x)


class TextEncoder(nn.Module):
    def __init__(self, config: ClapConfig):
        super().__init__()
        self.layer = nn.ModuleList(
            TextLayer(config.hidden_size, config.num_heads, config.intermediate_size, config.layer_norm_eps)
            for _ in range(config.num_layers)
        )

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, bias)
        return x


class Pooler(nn.Module):
    """tanh(dense(h_<s>)): the hidden state of the first token stands for the sentence."""

    def __init__(self, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden_states[:, 0]))  # (B, D)


class TextModel(nn.Module):
    """RoBERTa: token ids -> pooled sentence vector."""

    def __init__(self, config: ClapConfig):
        super().__init__()
        self.embeddings = TextEmbeddings(config)
        self.encoder = TextEncoder(config)
        self.pooler = Pooler(config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)  # (B, L, D)
        # padding keys get the most negative score, so they take no attention weight
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min  # (B, 1, 1, L)
        x = self.encoder(x, bias)  # (B, L, D)
        return self.pooler(x)  # (B, D)


class Projection(nn.Module):
    """Linear-ReLU-Linear into the joint text-audio space."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear1 = nn.Linear(dim_in, dim_out)
        self.linear2 = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.relu(self.linear1(x)))


class ClapModel(nn.Module):
    """CLAP's text tower under the hub names of transformers' ClapModel (the audio tower: clap_audio.py)."""

    def __init__(self, config: ClapConfig):
        super().__init__()
        self.config = config
        self.text_model = TextModel(config)
        self.text_projection = Projection(config.hidden_size, config.projection_dim)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids and mask (1 = token, 0 = padding) -> (B, projection_dim) unit vectors.

        The ids come from the RoBERTa tokenizer (diffusers pads them to its 512 maximum). Padding can
        be cut to the longest prompt without changing the result: padding tokens are masked as keys,
        their positions do not move the real tokens', and only the first token is pooled.
        """
        pooled = self.text_model(input_ids, attention_mask)  # (B, D)
        features = self.text_projection(pooled)  # (B, projection_dim)
        # unit length, in float32 so float16 cannot underflow the norm
        return F.normalize(features.float(), dim=-1).to(features.dtype)
