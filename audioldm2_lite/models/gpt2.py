"""GPT-2 as AudioLDM 2's "language of audio" generator: prompt embeddings in, 8 hidden states out.

AudioLDM 2 never feeds GPT-2 token ids. The projection model (`projection.py`) turns the CLAP and T5
text encodings into a sequence of 768-d input embeddings; GPT-2 continues that sequence by
`max_new_tokens` (8) hidden states, each the final hidden state (after `ln_f`) of the last position,
appended as the next input embedding. The UNet cross-attends to those 8 states.

The network is the original GPT-2 (124M: 12 pre-LN blocks of 12-head causal self-attention and a
4x MLP with the tanh GELU, learned positions, a final layer norm); the token embedding `wte` is
in the checkpoint but unused. Generation keeps a key/value cache of fixed size, allocated once for the
whole run, so each step computes one position and every tensor keeps its shape (no host syncs, no
growing `torch.cat`): the loop can be captured by torch.compile / CUDA graphs.

Parity details (diffusers' `AudioLDM2Pipeline.generate_language_model`): no position ids are passed,
so positions are 0, 1, 2, ... whatever the attention mask says (padding inside the T5 part of the
prompt takes a position too); padded prompt positions are hidden from every query; the generated
positions are always attended to.

References: Radford et al., "Language Models are Unsupervised Multitask Learners" (2019);
karpathy/nanoGPT model.py; transformers' GPT2Model, whose parameter names we keep.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention, merge_heads, split_heads
from .hub_config import hub_field


@dataclass
class GPT2Config:
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int = 3072  # MLP width; the hub writes null for 4 * n_embd
    n_positions: int = 1024
    layer_norm_epsilon: float = 1e-5
    max_new_tokens: int = 8  # hidden states generated per prompt (an AudioLDM 2 addition to the config)

    @classmethod
    def from_hub(cls, config: dict) -> "GPT2Config":
        hub_field(config, "activation_function", "gelu_new", supported=("gelu_new",))
        hub_field(config, "scale_attn_weights", True, supported=(True,))
        hub_field(config, "scale_attn_by_inverse_layer_idx", False, supported=(False,))
        hub_field(config, "add_cross_attention", False, supported=(False,))
        n_embd = hub_field(config, "n_embd")
        return cls(
            n_embd=n_embd,
            n_layer=hub_field(config, "n_layer"),
            n_head=hub_field(config, "n_head"),
            n_inner=hub_field(config, "n_inner", 4 * n_embd),  # null in the hub config: 4 * n_embd
            n_positions=hub_field(config, "n_positions"),
            layer_norm_epsilon=hub_field(config, "layer_norm_epsilon"),
            max_new_tokens=hub_field(config, "max_new_tokens", 8),
        )


# Hub tensors we deliberately leave out: the token embedding and the language-model head (we are fed
# embeddings and read hidden states, never token ids or logits), and the causal-mask buffers that old
# transformers versions saved with each attention layer.
UNUSED_KEYS = (r"wte\.weight", r"lm_head\.weight", r"h\.\d+\.attn\.(bias|masked_bias)")

CONV1D_WEIGHTS = re.compile(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")

# The two layouts of the hub component `language_model`: the official checkpoints (and diffusers up to
# 0.2x) store a bare `GPT2Model` (`h.0.attn...`); current diffusers saves and generates with a
# `GPT2LMHeadModel`, the same network under `transformer.` plus a head tied to `wte` (`lm_head.weight`,
# which safetensors files leave out because it is the same tensor).
LM_HEAD_PREFIX = "transformer."


def convert_hub_state_dict(state_dict: dict, config: GPT2Config) -> dict:
    # GPT2LMHeadModel layout: the network's tensors under `transformer.`; the head stays as it is (unused)
    state_dict = {k.removeprefix(LM_HEAD_PREFIX): v for k, v in state_dict.items()}
    for key in state_dict:
        if CONV1D_WEIGHTS.fullmatch(key):
            # GPT-2's Conv1D stores its weight as (in, out); nn.Linear wants (out, in)
            state_dict[key] = state_dict[key].t().contiguous()
    return state_dict


def lm_head_state_dict(hub_state_dict: dict) -> dict:
    """A `language_model` state dict of either hub layout in the GPT2LMHeadModel layout (names only): every
    tensor under `transformer.`. The tied head is left out, as transformers' own `save_pretrained` writes it
    (the config's `tie_word_embeddings`, true for GPT-2, makes transformers tie it to `wte` when loading), and
    so are the causal-mask buffers of old files, which current transformers computes instead."""
    network = {k.removeprefix(LM_HEAD_PREFIX): v for k, v in hub_state_dict.items()}
    left_out = re.compile(r"lm_head\.weight|h\.\d+\.attn\.(bias|masked_bias)")
    return {LM_HEAD_PREFIX + k: v for k, v in network.items() if not left_out.fullmatch(k)}


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(dim, 3 * dim)  # fused q, k, v
        self.c_proj = nn.Linear(dim, dim)

    def forward(self, x, positions, visible, cache):
        """x (B, T, D) at `positions` (T,); cache = (keys, values), each (B, H, S, D/H), filled in place.

        `visible` (B, 1, T, S) is True where a query may attend to a cache slot.
        """
        batch, length, dim = x.shape
        q, k, v = self.c_attn(x).split(dim, dim=-1)  # 3 x (B, T, D)
        q, k, v = (split_heads(t, self.heads) for t in (q, k, v))  # (B, H, T, D/H)

        # write this step's keys and values into their cache slots, then attend over the whole cache
        keys, values = cache
        keys.index_copy_(2, positions, k)  # (B, H, S, D/H)
        values.index_copy_(2, positions, v)
        out = attention(q, keys, values, visible)  # (B, H, T, D/H)
        return self.c_proj(merge_heads(out))  # (B, T, D)


class MLP(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.c_fc = nn.Linear(dim, inner)
        self.c_proj = nn.Linear(inner, dim)

    def forward(self, x):
        # GPT-2's GELU ("gelu_new"): the tanh approximation. torch's matches the hand-written formula of
        # transformers' NewGELUActivation to float rounding
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, inner: int, eps: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, inner)

    def forward(self, x, positions, visible, cache):
        x = x + self.attn(self.ln_1(x), positions, visible, cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT2Generator(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList(
            Block(config.n_embd, config.n_head, config.n_inner, config.layer_norm_epsilon) for _ in range(config.n_layer)
        )
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def empty_cache(self, batch: int, slots: int, like: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Zeroed (keys, values) per layer, each (B, H, S, D/H); zeros, not empty: masked slots still enter matmuls."""
        heads = self.config.n_head
        shape = (batch, heads, slots, self.config.n_embd // heads)
        return [(like.new_zeros(shape), like.new_zeros(shape)) for _ in self.h]

    def run_positions(self, inputs_embeds, positions, slot_valid, cache):
        """Final hidden states (B, T, D) of `inputs_embeds` (B, T, D) placed at `positions` (T,) of the sequence.

        slot_valid (B, S) marks the cache slots holding real (non-padding) positions.
        """
        slots = torch.arange(slot_valid.shape[1], device=positions.device)
        # causal: a query sees earlier slots that hold real positions, and always itself (so no padded
        # query row is empty; real queries never see padding either way)
        earlier = slots[None, :] <= positions[:, None]  # (T, S)
        itself = slots[None, :] == positions[:, None]
        visible = earlier & (slot_valid[:, None, :] | itself)  # (B, T, S)
        visible = visible[:, None]  # (B, 1, T, S), broadcast over heads

        x = inputs_embeds + self.wpe(positions)  # learned positions, 0, 1, 2, ... regardless of padding
        for block, layer_cache in zip(self.h, cache):
            x = block(x, positions, visible, layer_cache)
        return self.ln_f(x)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, L, D) of a sequence of input embeddings (B, L, D); mask (B, L), 1 = attend."""
        inputs_embeds = inputs_embeds.to(self.wpe.weight.dtype)
        batch, length, _ = inputs_embeds.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.bool, device=inputs_embeds.device)
        positions = torch.arange(length, device=inputs_embeds.device)
        cache = self.empty_cache(batch, length, inputs_embeds)
        return self.run_positions(inputs_embeds, positions, attention_mask.bool(), cache)

    @torch.no_grad()
    def generate(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int | None = None,
    ) -> torch.Tensor:
        """The N hidden states (B, N, D) that continue the prompt `inputs_embeds` (B, L, D).

        attention_mask (B, L): 1 = attend, 0 = padding. N defaults to the config's max_new_tokens (8).
        """
        new_tokens = self.config.max_new_tokens if max_new_tokens is None else max_new_tokens
        inputs_embeds = inputs_embeds.to(self.wpe.weight.dtype)  # the prompt in this model's dtype
        batch, prompt_length, _ = inputs_embeds.shape
        device = inputs_embeds.device
        if attention_mask is None:
            attention_mask = torch.ones(batch, prompt_length, dtype=torch.bool, device=device)

        # the cache holds the prompt and every generated state but the last, which is never fed back
        total = prompt_length + new_tokens - 1
        if total > self.config.n_positions:
            raise ValueError(f"prompt of {prompt_length} + {new_tokens} new states exceeds GPT-2's {self.config.n_positions} positions")
        cache = self.empty_cache(batch, total, inputs_embeds)
        generated_valid = torch.ones(batch, new_tokens - 1, dtype=torch.bool, device=device)
        slot_valid = torch.cat([attention_mask.bool(), generated_valid], dim=1)  # (B, S)
        positions = torch.arange(total, device=device)

        # the prompt in one pass; its last position's final state is the first generated state
        hidden = self.run_positions(inputs_embeds, positions[:prompt_length], slot_valid, cache)
        generated = [hidden[:, -1:]]  # N x (B, 1, D)

        # each further step feeds the previous state back in as the next input embedding: one position
        for step in range(prompt_length, total):
            generated.append(self.run_positions(generated[-1], positions[step : step + 1], slot_valid, cache))
        return torch.cat(generated, dim=1)  # (B, N, D)
