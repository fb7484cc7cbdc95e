"""The reference twins: diffusers / transformers models loaded from the same checkpoint folder."""

from __future__ import annotations

import torch
from make_tiny_checkpoint import CORPUS

# Different lengths, the empty prompt, and one longer than both tokenizers' maximum (512 and 128 tokens).
PROMPTS = [
    "A dog barks in the distance while rain falls on a tin roof.",
    "",
    " ".join(CORPUS.split() * 2),
    "Techno music",
]


def max_rel_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference|: the project's parity measure."""
    ours, reference = ours.detach().double().cpu(), reference.detach().double().cpu()
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    assert torch.isfinite(ours).all() and torch.isfinite(reference).all()
    scale = reference.abs().max()
    assert scale > 0, "reference is all zeros: the comparison would prove nothing"
    return ((ours - reference).abs().max() / scale).item()


def diffusers_pipeline(checkpoint, dtype=torch.float32):
    """diffusers' AudioLDM2Pipeline on a hub-layout folder.

    The hub layout names the language model GPT2Model, which current diffusers cannot generate with;
    load it as GPT2LMHeadModel (same weights plus an unused tied head) and pass it in.
    """
    from diffusers import AudioLDM2Pipeline
    from transformers import GPT2LMHeadModel

    language_model = GPT2LMHeadModel.from_pretrained(f"{checkpoint}/language_model", torch_dtype=dtype)
    return AudioLDM2Pipeline.from_pretrained(str(checkpoint), language_model=language_model, torch_dtype=dtype)
