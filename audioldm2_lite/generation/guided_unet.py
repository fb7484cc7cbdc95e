"""The UNet as the engine runs it: the plain model's numbers, without the work that repeats.

The core (core.py) calls the plain UNet (models/unet.py) at every step on [latents, latents] against the
[uncond, cond] conditioning. Two pieces of that work are the same every time:

- keys and values: every cross-attention projects the same GPT-2 or T5 sequence at every step.
  `GuidedUNet.context` projects them once per generation, and each step reads them.
- the layers before the first attention (the timestep MLP, conv_in, the DownBlock2D level) see the
  conditioning nowhere, so both halves of guidance give them the same input. `GuidedUNet.forward` runs
  them once on the latents and repeats their outputs, then goes on with the plain blocks.

It walks the plain model's own blocks, as lora.py walks the module tree: each cross-attention is given a
name and taught to read its keys and values from the context (`PrecomputedKeysValues`, which keeps the
weights and their names); the plain forward pass still works on the same modules, and tests/test_core.py
holds both against the core.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.unet import Attention, SpatialTransformer, UNet


class PrecomputedKeysValues(Attention):
    """A cross-attention whose keys and values may come precomputed: given a dict as its context (the
    engine's, {name: (keys, values)}), it reads its own entry; given a sequence, it projects it as always."""

    def keys_values(self, context):
        if isinstance(context, dict):
            return context[self.name]
        return super().keys_values(context)


class GuidedUNet(nn.Module):
    """The plain UNet run with keys and values computed once per generation, and with the layers shared by
    both halves of classifier-free guidance run once."""

    def __init__(self, unet: UNet):
        super().__init__()
        self.unet = unet
        self.cross_attentions = []  # (what it reads: "gpt2" or "t5", the attention)
        for name, module in unet.named_modules():
            if isinstance(module, SpatialTransformer) and module.reads != "self":
                for i, block in enumerate(module.transformer_blocks):
                    block.attn2.__class__ = PrecomputedKeysValues  # same weights, same state-dict names
                    block.attn2.name = f"{name}.transformer_blocks.{i}.attn2"
                    self.cross_attentions.append((module.reads, block.attn2))
        # the first down level that reads the conditioning (or the last level): the levels before it are shared
        blocks = unet.down_blocks
        self.shared_levels = next((i for i, b in enumerate(blocks) if len(b.attentions) > 0), len(blocks) - 1)

    def context(self, encoder_hidden_states, encoder_hidden_states_1, encoder_attention_mask_1=None) -> dict:
        """What every step's cross-attentions read, computed once: {"gpt2": ({name: (keys, values)}, None),
        "t5": ({name: (keys, values)}, score bias)}, keys and values (B, heads, S, d)."""
        sequences = self.unet.sequences(encoder_hidden_states, encoder_hidden_states_1, encoder_attention_mask_1)
        keys_values = {reads: {} for reads in sequences}
        for reads, attention in self.cross_attentions:
            keys_values[reads][attention.name] = Attention.keys_values(attention, sequences[reads][0])
        return {reads: (keys_values[reads], bias) for reads, (_, bias) in sequences.items()}

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, context: dict, repeats: int = 1) -> torch.Tensor:
        """The plain UNet's noise prediction (R B, C, T, F) for `sample` (B, C, T, F) repeated `repeats` (R)
        times, against `context` (of conditioning R B long): with guidance R = 2, [latents, latents]."""
        unet = self.unet
        time_emb = unet.embed_timestep(timestep, sample.shape[0])  # (B, 4 C0)
        x = unet.conv_in(sample.to(unet.conv_in.weight.dtype))  # (B, C0, T, F)
        skips = [x]
        repeat = lambda t: t.repeat(repeats, *[1] * (t.dim() - 1))  # (B, ...) -> (R B, ...) = [t, t, ...]
        for i, block in enumerate(unet.down_blocks):
            if i == self.shared_levels and repeats > 1:  # from here on the halves differ: R B samples
                x, time_emb, skips = repeat(x), repeat(time_emb), [repeat(skip) for skip in skips]
            x, block_skips = block(x, time_emb, context)
            skips += block_skips
        x = unet.mid_block(x, time_emb, context)
        return unet.up_path(x, skips, time_emb, context)
