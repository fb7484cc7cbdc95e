"""Prompt encoding: text in, the three tensors the UNet cross-attends to out.

    prompt --RoBERTa tokens--> CLAP text tower (clap.py) --> one unit vector (B, 1, 512), mask [1]
           --T5 tokens-----> Flan-T5 encoder (t5.py)  --> states (B, L, 1024), mask (B, L)
    both   --> projection (projection.py) --> GPT-2 prompt (B, L + 5, 768)
           --> GPT-2 (gpt2.py)            --> N = 8 generated states (B, 8, 768)

`TextConditioner.encode_prompt` returns `Conditioning(generated, t5_states, t5_mask)`: the UNet reads
the generated GPT-2 states (unmasked) in one cross-attention and the T5 states (masked) in the other.
With classifier-free guidance every tensor is [uncond, cond] along the batch, the unconditional half
encoding the negative prompt ("" by default).

Parity details (diffusers' `AudioLDM2Pipeline.encode_prompt`):
- CLAP tokens are padded to the tokenizer's maximum (512) and truncated there; T5 tokens are padded
  to the longest prompt and truncated at 128. Text that does not fit is cut off, with a warning.
- The negative prompt's T5 tokens are padded, or cut, to the prompt's T5 length, so the two halves
  stack. Unlike diffusers, both halves go through CLAP, T5, the projection and GPT-2 in one batch.
- `num_waveforms_per_prompt` repeats each prompt's tensors in place (prompt 0, prompt 0, prompt 1, ...).
- T5 states come back in the T5 model's dtype, the generated states in GPT-2's, the mask as int64.
"""

from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import torch
from torch import nn

from .loading import (
    DEFAULT_CHECKPOINT,
    load_component,
    load_tokenizer,
    resolve_checkpoint,
)

COMPONENTS = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "projection_model", "language_model")


class Conditioning(NamedTuple):
    generated: torch.Tensor  # (B, N, 768) GPT-2 states, N = max_new_tokens
    t5_states: torch.Tensor  # (B, L, 1024) Flan-T5 last hidden state
    t5_mask: torch.Tensor  # (B, L) int64, 1 = token, 0 = padding


def warn_if_truncated(tokenizer, texts: list[str], max_length: int, reader: str) -> None:
    """Warn, naming the lost text, about every text longer than `max_length` tokens."""
    for text, ids in zip(texts, tokenizer(texts, verbose=False).input_ids):
        if len(ids) > max_length:
            # truncation keeps max_length - 1 tokens and the closing special token; the rest is lost
            removed = tokenizer.decode(ids[max_length - 1 : -1])
            warnings.warn(
                f"{reader} reads at most {max_length} tokens; cut off from the prompt starting {text[:30]!r}: {removed!r}"
            )


def tokenize(tokenizer, texts: list[str], max_length: int, pad_to_max_length: bool, reader: str, device):
    """Token ids and mask (B, L) int64, truncated at `max_length`, padded to it or to the longest text."""
    warn_if_truncated(tokenizer, texts, max_length, reader)
    tokens = tokenizer(
        texts, padding="max_length" if pad_to_max_length else "longest", max_length=max_length, truncation=True,
        return_tensors="pt",
    )
    return tokens.input_ids.to(device), tokens.attention_mask.to(device)


class TextConditioner(nn.Module):
    """The tokenizers and the four text stages; an nn.Module so that `.to(device)` moves them together."""

    def __init__(self, tokenizer, tokenizer_2, clap, t5, projection, gpt2, clap_pad_to_max_length: bool = True):
        super().__init__()
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2  # RoBERTa (CLAP), T5
        self.clap, self.t5, self.projection, self.gpt2 = clap, t5, projection, gpt2
        # diffusers pads CLAP's input to 512 tokens. Padding to the longest prompt instead gives the same
        # features up to float rounding (padding is masked and does not move positions) for far less work.
        self.clap_pad_to_max_length = clap_pad_to_max_length

    @classmethod
    def from_pretrained(
        cls, checkpoint: str | os.PathLike = DEFAULT_CHECKPOINT, device="cpu", dtype=torch.float32, **kwargs
    ) -> "TextConditioner":
        root = resolve_checkpoint(checkpoint, COMPONENTS)

        def load(name):
            return load_component(root, name, dtype=dtype, device=device)

        return cls(
            load_tokenizer(root, "tokenizer"), load_tokenizer(root, "tokenizer_2"), load("text_encoder"),
            load("text_encoder_2"), load("projection_model"), load("language_model"), **kwargs,
        )

    @property
    def device(self) -> torch.device:
        return self.gpt2.wpe.weight.device

    def tokenize_t5(self, texts: list[str], length: int | None, device):
        """T5 ids and mask: padded to the longest text and cut at the tokenizer's maximum (128), or
        padded and cut to exactly `length` tokens (the negative prompt, to stack with the prompt)."""
        max_length = self.tokenizer_2.model_max_length if length is None else length
        return tokenize(self.tokenizer_2, texts, max_length, length is not None, "the T5 text encoder", device)

    def encode_texts(self, texts: list[str], t5_ids, t5_mask, max_new_tokens: int | None = None,
                     encode_tokens=None) -> Conditioning:
        """CLAP, T5, projection and GPT-2 on a batch of texts whose T5 tokens are given (they fix its length).

        `encode_tokens` runs the stages on the tokens: `self.encode_tokens` unless the caller passes its
        own version of it (the pipeline passes a CUDA-graphed one after `optimize()`).
        """
        clap_ids, clap_mask = tokenize(
            self.tokenizer, texts, self.tokenizer.model_max_length, self.clap_pad_to_max_length,
            "the CLAP text encoder", t5_ids.device,
        )
        return (encode_tokens or self.encode_tokens)(clap_ids, clap_mask, t5_ids, t5_mask, max_new_tokens)

    def encode_tokens(self, clap_ids, clap_mask, t5_ids, t5_mask, max_new_tokens: int | None = None) -> Conditioning:
        """The text stages on token ids and masks (B, L): tensors in, tensors out, no host synchronisation."""
        # CLAP: one unit vector per text, always attended to
        clap_states = self.clap.get_text_features(clap_ids, clap_mask)[:, None]  # (B, 1, 512)
        clap_mask = clap_mask.new_ones(clap_ids.shape[0], 1)

        # T5: one state per token
        t5_states = self.t5(t5_ids, t5_mask)  # (B, L, 1024)

        # the GPT-2 prompt [sos, clap, eos, sos_1, t5 ..., eos_1], continued by N generated states
        projection_dtype = self.projection.projection.weight.dtype
        prompt, prompt_mask = self.projection(
            clap_states.to(projection_dtype), t5_states.to(projection_dtype), clap_mask, t5_mask
        )  # (B, L + 5, 768), (B, L + 5)
        generated = self.gpt2.generate(prompt.to(self.gpt2.wpe.weight.dtype), prompt_mask, max_new_tokens)  # (B, N, 768)
        return Conditioning(generated, t5_states, t5_mask)

    @torch.no_grad()
    def encode_prompt(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_waveforms_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        max_new_tokens: int | None = None,
        device: str | torch.device | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        generated_prompt_embeds: torch.Tensor | None = None,
        negative_generated_prompt_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        encode_tokens=None,
    ) -> Conditioning:
        """Conditioning for `prompt`, [uncond, cond] along the batch with guidance, each prompt repeated
        `num_waveforms_per_prompt` times.

        As in diffusers, either half may be given precomputed instead of as text: `prompt_embeds` (T5
        states) with `generated_prompt_embeds` and optionally `attention_mask`; likewise `negative_*`.
        `encode_tokens`: see `encode_texts`.
        """
        device = torch.device(device) if device is not None else self.device
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if prompts is None and (prompt_embeds is None or generated_prompt_embeds is None):
            raise ValueError("give `prompt`, or both `prompt_embeds` and `generated_prompt_embeds`")
        if negative_prompt_embeds is not None and negative_generated_prompt_embeds is None:
            raise ValueError("`negative_prompt_embeds` needs `negative_generated_prompt_embeds` too")
        batch = len(prompts) if prompt_embeds is None else prompt_embeds.shape[0]

        # tokenise what is given as text: the prompts to their longest, the negatives to the prompts' T5 length
        to_encode = []  # (texts, T5 ids, T5 mask) per half, in [uncond, cond] order
        if prompt_embeds is None:
            t5_ids, t5_mask = self.tokenize_t5(prompts, None, device)
            to_encode.append((prompts, t5_ids, t5_mask))
        t5_length = (prompt_embeds if prompt_embeds is not None else t5_ids).shape[1]
        encode_negative = do_classifier_free_guidance and negative_prompt_embeds is None
        if encode_negative:
            negatives = self.negative_texts(negative_prompt, batch)
            to_encode.insert(0, (negatives, *self.tokenize_t5(negatives, t5_length, device)))

        # both halves through the text stages in one batch, then split again
        if to_encode:
            encoded = self.encode_texts(
                [text for texts, _, _ in to_encode for text in texts],
                torch.cat([ids for _, ids, _ in to_encode]),
                torch.cat([mask for _, _, mask in to_encode]),
                max_new_tokens,
                encode_tokens,
            )
            halves = zip(*(part.split(batch) for part in encoded))
            encoded_negative = Conditioning(*next(halves)) if encode_negative else None
            encoded_prompt = Conditioning(*next(halves)) if prompt_embeds is None else None

        if prompt_embeds is None:
            cond = encoded_prompt
        else:
            cond = self.given(prompt_embeds, attention_mask, generated_prompt_embeds, device)
        cond = self.repeat(cond, num_waveforms_per_prompt)
        if not do_classifier_free_guidance:
            return cond
        if encode_negative:
            uncond = encoded_negative
        else:
            uncond = self.given(negative_prompt_embeds, negative_attention_mask, negative_generated_prompt_embeds, device)
        uncond = self.repeat(uncond, num_waveforms_per_prompt)
        return Conditioning(*(torch.cat([u, c]) for u, c in zip(uncond, cond)))

    @staticmethod
    def negative_texts(negative_prompt, batch: int) -> list[str]:
        if negative_prompt is None:
            return [""] * batch
        if isinstance(negative_prompt, str):
            return [negative_prompt] * batch
        if len(negative_prompt) != batch:
            raise ValueError(f"{len(negative_prompt)} negative prompts for {batch} prompts: give one per prompt")
        return list(negative_prompt)

    def given(self, t5_states, t5_mask, generated, device) -> Conditioning:
        """Precomputed conditioning, cast and moved as the encoded one would be (a missing mask: all ones)."""
        if t5_mask is None:
            t5_mask = torch.ones(t5_states.shape[:2], dtype=torch.long, device=device)
        t5_dtype = self.t5.shared.weight.dtype
        return Conditioning(
            generated.to(device, self.gpt2.wpe.weight.dtype), t5_states.to(device, t5_dtype), t5_mask.to(device)
        )

    @staticmethod
    def repeat(conditioning: Conditioning, times: int) -> Conditioning:
        """Each prompt's tensors `times` times in place along the batch: (B, ...) -> (B * times, ...)."""
        return Conditioning(*(part.repeat_interleave(times, dim=0) for part in conditioning))
