"""diffusers' precomputed embeddings (`prompt_embeds`, `generated_prompt_embeds`, `attention_mask` and their
`negative_*` twins): either half of the conditioning given as tensors instead of as text, for the engine's
diffusers call API. The core's `TextConditioner.encode_prompt` encodes text only.
"""

from __future__ import annotations

import torch

from .authors import is_unconditional_text
from .conditioning import Conditioning, TextConditioner


def given(t5_states, t5_mask, generated, device) -> Conditioning:
    """Precomputed conditioning on `device` (a missing mask: all ones). The UNet casts it to its dtype."""
    if t5_mask is None:
        t5_mask = torch.ones(t5_states.shape[:2], dtype=torch.long, device=device)
    return Conditioning(generated.to(device), t5_states.to(device), t5_mask.to(device))


@torch.no_grad()
def encode_prompt(conditioner: TextConditioner, prompt=None, negative_prompt=None, num_waveforms_per_prompt: int = 1,
                  do_classifier_free_guidance: bool = True, max_new_tokens: int | None = None, device=None,
                  prompt_embeds=None, negative_prompt_embeds=None, generated_prompt_embeds=None,
                  negative_generated_prompt_embeds=None, attention_mask=None, negative_attention_mask=None,
                  transcription=None, encode_tokens=None) -> Conditioning:
    """`conditioner.encode_prompt`, with either half given as embeddings as diffusers takes them: `prompt_embeds`
    (T5 states) with `generated_prompt_embeds` and optionally `attention_mask`; likewise `negative_*`. A half
    given as text is encoded on its own; without a negative prompt the unconditional half is the reference's."""
    if prompt_embeds is None and negative_prompt_embeds is None:
        return conditioner.encode_prompt(prompt, negative_prompt, num_waveforms_per_prompt, do_classifier_free_guidance,
                                         max_new_tokens, device, transcription, encode_tokens)
    if prompt is None and (prompt_embeds is None or generated_prompt_embeds is None):
        raise ValueError("give `prompt`, or both `prompt_embeds` and `generated_prompt_embeds`")
    if negative_prompt_embeds is not None and negative_generated_prompt_embeds is None:
        raise ValueError("`negative_prompt_embeds` needs `negative_generated_prompt_embeds` too")
    device = torch.device(device) if device is not None else conditioner.device
    if prompt_embeds is not None:
        encoded = given(prompt_embeds, attention_mask, generated_prompt_embeds, device)
    else:
        encoded = conditioner.encode_prompt(prompt, None, 1, False, max_new_tokens, device, transcription,
                                            encode_tokens)
    if do_classifier_free_guidance:
        batch, t5_length = encoded.t5_states.shape[:2]
        if negative_prompt_embeds is not None:
            uncond = given(negative_prompt_embeds, negative_attention_mask, negative_generated_prompt_embeds, device)
        elif conditioner.reference == "authors" and is_unconditional_text(negative_prompt):
            uncond = conditioner.authors_unconditional(encoded, device)
        else:
            negatives = conditioner.negative_texts(negative_prompt, batch)
            uncond = conditioner.encode_texts(negatives, t5_length, max_new_tokens, device, encode_tokens=encode_tokens)
        encoded = Conditioning(*(torch.cat([u, c]) for u, c in zip(uncond, encoded)))
    return conditioner.repeat(encoded, num_waveforms_per_prompt)
