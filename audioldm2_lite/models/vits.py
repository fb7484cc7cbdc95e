"""The VITS phoneme encoder of the AudioLDM 2 text-to-speech checkpoints (hub component `text_encoder_2`).

In the speech checkpoints (`anhnct/audioldm2_gigaspeech`, `anhnct/audioldm2_ljspeech`, converted from the
original `audioldm2-speech-*`) this stage replaces Flan-T5: it reads the phoneme ids of the
*transcription* (what is said; the prompt, through CLAP, describes the voice) and returns one 192-d state
per phoneme slot. The projection model adds a learned position embedding to these states and hands
them, framed by its learned start/end vectors, to GPT-2 (generation/speech.py, generation/conditioning.py).

The hub stores a whole transformers `VitsModel`; AudioLDM 2 reads only the last hidden state of its text
encoder, so only that is built here. Everything else in the file is deliberately not loaded
(`UNUSED_KEYS`): the projection of the text states to the flow's prior statistics (`text_encoder.project`),
the normalising flow, the duration predictor, the HiFi-GAN decoder and the posterior encoder (used in
training only), and a speaker embedding where there is one.

The encoder is VITS' text encoder, a post-norm transformer:
- token embedding scaled by sqrt(hidden_size); padded positions are zeroed on the way in and out, and
  padded keys take no attention;
- self-attention with relative positions (Shaw et al.): a learned vector per key offset -w..w
  (window w = 4) is added to the keys (`emb_rel_k`, giving a score bias q . e_k[j - i]) and to the values
  (`emb_rel_v`, giving an output term sum_j p_ij e_v[j - i]); offsets beyond the window get neither.
  Because the value term needs the attention probabilities, this attention is computed explicitly
  rather than through SDPA;
- a feed-forward of two 1-D convolutions (kernel 3, "same" padding, ReLU) that re-zero padded
  positions before each convolution, so padding never leaks into real positions.

Parity: transformers' `VitsModel.text_encoder(...).last_hidden_state` (tests/test_vits.py).

References: Kim et al., "Conditional Variational Autoencoder with Adversarial Learning for End-to-End
Text-to-Speech" (VITS), ICML 2021; Shaw et al., "Self-Attention with Relative Position Representations",
NAACL 2018; Liu et al., "AudioLDM 2" (arXiv:2308.05734). Parameter names follow the hub checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import merge_heads, split_heads

# Hub tensors deliberately not loaded: the parts of VitsModel that AudioLDM 2 does not run.
UNUSED_KEYS = (
    r"text_encoder\.project\..*",  # text states -> prior means / log-variances of the flow (speech synthesis only)
    r"flow\..*",  # normalising flow between the prior and the latent
    r"duration_predictor\..*",  # phoneme durations for VITS' own synthesis
    r"decoder\..*",  # VITS' HiFi-GAN waveform decoder
    r"posterior_encoder\..*",  # spectrogram encoder, used in training only
    r"embed_speaker\..*",  # multi-speaker models only
)


@dataclass
class VitsConfig:
    """Defaults: the AudioLDM 2 speech checkpoints (the original `PhonemeEncoder`'s TextEncoder arguments)."""

    vocab_size: int = 183  # phoneme symbols; the last id (182) is the end token the pipeline appends
    hidden_size: int = 192
    num_hidden_layers: int = 6
    num_attention_heads: int = 2
    window_size: int = 4  # relative positions -4..4
    ffn_dim: int = 768
    ffn_kernel_size: int = 3
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_hub(cls, config: dict) -> "VitsConfig":
        unsupported = {"hidden_act": ("relu", config.get("hidden_act", "relu")),
                       "use_bias": (True, config.get("use_bias", True))}
        for field, (supported, found) in unsupported.items():
            if found != supported:
                raise NotImplementedError(f"VITS config {field}={found!r} is not supported (only {supported!r})")
        if not config.get("window_size", 4):
            raise NotImplementedError("VITS without relative positions (window_size null or 0) is not supported")
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config.get("hidden_size", 192),
            num_hidden_layers=config.get("num_hidden_layers", 6),
            num_attention_heads=config.get("num_attention_heads", 2),
            window_size=config.get("window_size", 4),
            ffn_dim=config.get("ffn_dim", 768),
            ffn_kernel_size=config.get("ffn_kernel_size", 3),
            layer_norm_eps=config.get("layer_norm_eps", 1e-5),
        )


def relative_offsets(length: int, window: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """For every (query i, key j): the index of offset j - i into a (2 window + 1) table, and whether it is inside."""
    position = torch.arange(length, device=device)
    offset = position[None, :] - position[:, None]  # (L queries, L keys)
    return offset.clamp(-window, window) + window, offset.abs() <= window  # (L, L) each


class RelativeSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.heads, self.window = heads, window
        head_dim = dim // heads
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        # one learned vector per offset -window..window, shared by the heads
        self.emb_rel_k = nn.Parameter(torch.empty(1, 2 * window + 1, head_dim))
        self.emb_rel_v = nn.Parameter(torch.empty(1, 2 * window + 1, head_dim))

    def forward(self, x: torch.Tensor, key_is_padding: torch.Tensor) -> torch.Tensor:
        """x (B, L, D); key_is_padding (B, 1, 1, L) True where a key is padding."""
        B, L, D = x.shape
        q = self.q_proj(x) * (D // self.heads) ** -0.5  # scaled before both score terms
        q, k, v = (split_heads(t, self.heads) for t in (q, self.k_proj(x), self.v_proj(x)))  # (B, H, L, d)
        index, inside = relative_offsets(L, self.window, x.device)
        index = index.expand(B, self.heads, L, L)

        # scores: content q . k_j plus position q . e_k[j - i] inside the window
        scores = q @ k.transpose(-2, -1)  # (B, H, L, L)
        by_offset = q @ self.emb_rel_k[0].transpose(0, 1)  # (B, H, L, 2w + 1)
        scores = scores + torch.where(inside, by_offset.gather(-1, index), 0.0)
        scores = scores.masked_fill(key_is_padding, torch.finfo(scores.dtype).min)
        probs = scores.softmax(dim=-1)  # (B, H, L, L)

        # output: content sum_j p_ij v_j plus position sum_j p_ij e_v[j - i], the probabilities summed per offset
        out = probs @ v  # (B, H, L, d)
        per_offset = probs.new_zeros(B, self.heads, L, 2 * self.window + 1)
        per_offset.scatter_add_(-1, index, torch.where(inside, probs, 0.0))  # (B, H, L, 2w + 1)
        out = out + per_offset @ self.emb_rel_v[0]
        return self.out_proj(merge_heads(out))  # (B, L, D)


class ConvFeedForward(nn.Module):
    def __init__(self, dim: int, inner: int, kernel: int):
        super().__init__()
        self.conv_1 = nn.Conv1d(dim, inner, kernel)
        self.conv_2 = nn.Conv1d(inner, dim, kernel)
        self.padding = ((kernel - 1) // 2, kernel // 2)  # "same" length, the extra tap on the right

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), mask (B, L, 1) of 1 = phoneme, 0 = padding."""
        x, mask = x.transpose(1, 2), mask.transpose(1, 2)  # (B, D, L), (B, 1, L)
        x = self.conv_1(F.pad(x * mask, self.padding)).relu()  # (B, inner, L)
        x = self.conv_2(F.pad(x * mask, self.padding)) * mask  # (B, D, L)
        return x.transpose(1, 2)  # (B, L, D)


class EncoderLayer(nn.Module):
    def __init__(self, config: VitsConfig):
        super().__init__()
        c = config
        self.attention = RelativeSelfAttention(c.hidden_size, c.num_attention_heads, c.window_size)
        self.layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.feed_forward = ConvFeedForward(c.hidden_size, c.ffn_dim, c.ffn_kernel_size)
        self.final_layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x, mask, key_is_padding):
        # post-norm: normalise after each residual sum
        x = self.layer_norm(x + self.attention(x, key_is_padding))
        x = self.final_layer_norm(x + self.feed_forward(x, mask))
        return x


class Encoder(nn.Module):  # hub: text_encoder.encoder
    def __init__(self, config: VitsConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))


class TextEncoder(nn.Module):  # hub: text_encoder
    def __init__(self, config: VitsConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.encoder = Encoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask[..., None].to(self.embed_tokens.weight.dtype)  # (B, L, 1)
        key_is_padding = (attention_mask == 0)[:, None, None, :]  # (B, 1, 1, L)
        x = self.embed_tokens(input_ids) * math.sqrt(self.config.hidden_size) * mask  # (B, L, D)
        for layer in self.encoder.layers:
            x = layer(x, mask, key_is_padding)
        return x * mask


class VitsTextEncoder(nn.Module):
    """The hub `VitsModel`, reduced to what AudioLDM 2 reads: its text encoder's last hidden state."""

    def __init__(self, config: VitsConfig):
        super().__init__()
        self.config = config
        self.text_encoder = TextEncoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) phoneme ids and mask (1 = phoneme, 0 = padding) -> (B, L, 192) states, zero at padding."""
        return self.text_encoder(input_ids, attention_mask)
