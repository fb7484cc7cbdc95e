"""Prompt encoding: text in, the three tensors the UNet cross-attends to out.

    prompt --RoBERTa tokens--> CLAP text tower (clap.py) --> one unit vector (B, 1, 512), mask [1]
           --T5 tokens-----> Flan-T5 encoder (t5.py)  --> states (B, L, 1024), mask (B, L)
    both   --> projection (projection.py) --> GPT-2 prompt (B, L + 5, 768)
           --> GPT-2 (gpt2.py)            --> N = 8 generated states (B, 8, 768)

`TextConditioner.encode_prompt` returns `Conditioning(generated, t5_states, t5_mask)`, [uncond, cond] along the
batch with guidance. Without a negative prompt, the authors' model's unconditional half is GPT-2 states of zeros
and the T5 states of "" (authors.py); else (and as diffusers) the negative prompt ("" by default) is encoded.

Parity details (diffusers' `AudioLDM2Pipeline.encode_prompt`):
- CLAP tokens are padded to the tokenizer's maximum (512) and truncated there; T5 tokens are padded
  to the longest prompt and truncated at 128. Text that does not fit is cut off, with a warning.
- The negative prompt's T5 tokens are padded, or cut, to the prompt's T5 length, so the two halves
  stack. Unlike diffusers, both halves go through CLAP, T5, the projection and GPT-2 in one batch.
- `num_waveforms_per_prompt` repeats each prompt's tensors in place (prompt 0, prompt 0, prompt 1, ...).
- T5 states come back in the T5 model's dtype, the generated states in GPT-2's, the mask as int64.

Text-to-speech checkpoints (a VITS `text_encoder_2`) read a `transcription` in T5's place: speech.py's
`SpeechConditioner` is this class with that difference.
"""

from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import torch
from torch import nn

from .authors import is_unconditional_text
from .loading import DEFAULT_CHECKPOINT, checkpoint_reference, load_component, load_tokenizer, local_checkpoint

COMPONENTS = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "projection_model", "language_model")


class Conditioning(NamedTuple):
    generated: torch.Tensor  # (B, N, 768) GPT-2 states, N = max_new_tokens
    t5_states: torch.Tensor  # (B, L, 1024) Flan-T5 last hidden state
    t5_mask: torch.Tensor  # (B, L) int64, 1 = token, 0 = padding


def warn_if_truncated(texts: list[str], readers) -> None:
    """One warning line per text that an encoder cuts short: how many tokens each encoder keeps of how many.

    `readers`: (name, tokenizer) of each encoder; it reads at most the tokenizer's `model_max_length` tokens."""
    for text in texts:
        counts = [(name, len(tokenizer(text, verbose=False).input_ids), tokenizer.model_max_length)
                  for name, tokenizer in readers]
        if any(total > limit for _, total, limit in counts):
            kept = ", ".join(f"{name} kept {min(total, limit)} of {total} tokens" for name, total, limit in counts)
            warnings.warn(f"the prompt {text[:40]!r}... is too long: {kept}; the rest is ignored")


def tokenize(tokenizer, texts: list[str], max_length: int, pad_to_max_length: bool, device):
    """Token ids and mask (B, L) int64, truncated at `max_length`, padded to it or to the longest text."""
    tokens = tokenizer(
        texts, padding="max_length" if pad_to_max_length else "longest", max_length=max_length, truncation=True,
        return_tensors="pt",
    )
    return tokens.input_ids.to(device), tokens.attention_mask.to(device)


class TextConditioner(nn.Module):
    """The tokenizers and the four text stages; an nn.Module so that `.to(device)` moves them together."""

    speaks = False  # a text-to-speech checkpoint, which needs a transcription (speech.SpeechConditioner)
    STAGES = {}  # component -> loading.Stage, where it is another network than loading.STAGES names

    def __init__(self, tokenizer, tokenizer_2, clap, t5, projection, gpt2, clap_pad_to_max_length: bool = True,
                 reference: str = "diffusers"):
        super().__init__()
        self.reference = reference  # "authors": the authors' unconditional half (authors.py); "diffusers": ""'s
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2  # RoBERTa (CLAP), T5 (or VITS: text-to-speech)
        self.clap, self.t5, self.projection, self.gpt2 = clap, t5, projection, gpt2
        # diffusers pads CLAP's input to 512 tokens. Padding to the longest prompt instead gives the same
        # features up to float rounding (padding is masked and does not move positions) for far less work.
        self.clap_pad_to_max_length = clap_pad_to_max_length

    @classmethod
    def from_pretrained(
        cls, checkpoint: str | os.PathLike = DEFAULT_CHECKPOINT, device="cpu", dtype=torch.float32,
        variant: str | None = None, reference: str | None = None, **kwargs
    ) -> "TextConditioner":
        """`reference`: "authors" or "diffusers" (default: the checkpoint's own, authors.py)."""
        reference = checkpoint_reference(checkpoint, reference)
        root = local_checkpoint(checkpoint, COMPONENTS, variant)

        def load(name):
            return load_component(root, name, dtype=dtype, device=device, variant=variant, stage=cls.STAGES.get(name),
                                  reference=reference)

        return cls(
            load_tokenizer(root, "tokenizer"), load_tokenizer(root, "tokenizer_2"), load("text_encoder"),
            load("text_encoder_2"), load("projection_model"), load("language_model"), reference=reference, **kwargs,
        )

    @property
    def device(self) -> torch.device:
        return self.gpt2.wpe.weight.device

    # ------------------------------------------------------------------------------------------
    # The text stages

    def clap_tokens(self, texts: list[str], device=None):
        """CLAP's token ids and mask (B, L), padded to the longest text (or to 512, as diffusers, if asked)."""
        return tokenize(self.tokenizer, texts, self.tokenizer.model_max_length, self.clap_pad_to_max_length,
                        device or self.device)

    def clap_text_features(self, texts: list[str], device=None) -> torch.Tensor:
        """CLAP's text embedding of each text: (B, 512) unit vectors (also what candidates are ranked against)."""
        return self.clap.get_text_features(*self.clap_tokens(texts, device))

    def t5_length(self, prompts: list[str]) -> int:
        """T5 tokens per prompt in a batch: the longest prompt's, at most the tokenizer's maximum (128)."""
        longest = max(len(ids) for ids in self.tokenizer_2(prompts, verbose=False).input_ids)
        return min(longest, self.tokenizer_2.model_max_length)

    def encode_texts(self, texts: list[str], t5_length: int, max_new_tokens: int | None = None,
                     device=None, transcriptions: list[str | None] | None = None, encode_tokens=None) -> Conditioning:
        """CLAP, T5, projection and GPT-2 on a batch of texts, their T5 tokens padded or cut to `t5_length`.

        `transcriptions`: for speech.SpeechConditioner, which reads them instead of the texts. `encode_tokens`
        runs the stages on the tokens: `self.encode_tokens` unless the caller passes its own version of it (the
        pipeline passes a CUDA-graphed one after `optimize()`).
        """
        device = device or self.device
        warn_if_truncated(texts, [("CLAP", self.tokenizer), ("T5", self.tokenizer_2)])
        clap_ids, clap_mask = self.clap_tokens(texts, device)
        t5_ids, t5_mask = tokenize(self.tokenizer_2, texts, t5_length, True, device)
        return (encode_tokens or self.encode_tokens)(clap_ids, clap_mask, t5_ids, t5_mask, max_new_tokens)

    def encode_tokens(self, clap_ids, clap_mask, t5_ids, t5_mask, max_new_tokens: int | None = None) -> Conditioning:
        """The text stages on token ids and masks (B, L): tensors in, tensors out, no host synchronisation."""
        t5_states = self.t5(t5_ids, t5_mask)  # (B, L, 1024): one state per token
        return self.generate_from(clap_ids, clap_mask, t5_states, t5_mask, max_new_tokens)

    def generate_from(self, clap_ids, clap_mask, states, mask, max_new_tokens: int | None = None) -> Conditioning:
        """CLAP on its tokens, then the projection and GPT-2 on [CLAP vector, text encoder states (B, L, D)]."""
        # CLAP: one unit vector per text, always attended to
        clap_states = self.clap.get_text_features(clap_ids, clap_mask)[:, None]  # (B, 1, 512)
        clap_mask = clap_mask.new_ones(clap_ids.shape[0], 1)
        # the GPT-2 prompt [sos, clap, eos, sos_1, states ..., eos_1], continued by N generated states
        prompt, prompt_mask = self.projection(clap_states, states, clap_mask, mask)  # (B, L + 5, 768), (B, L + 5)
        generated = self.gpt2.generate(prompt, prompt_mask, max_new_tokens)  # (B, N, 768)
        return Conditioning(generated, states, mask)

    # ------------------------------------------------------------------------------------------
    # Prompts to conditioning, as diffusers' encode_prompt

    @torch.no_grad()
    def encode_prompt(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                      num_waveforms_per_prompt: int = 1, do_classifier_free_guidance: bool = True,
                      max_new_tokens: int | None = None, device=None, transcription: str | list[str] | None = None,
                      encode_tokens=None) -> Conditioning:
        """Conditioning for `prompt`, [uncond, cond] along the batch with guidance, each prompt repeated
        `num_waveforms_per_prompt` times. `transcription`: for speech.SpeechConditioner (what is said).
        `encode_tokens`: see `encode_texts`. (Precomputed embeddings, diffusers' `prompt_embeds` and
        `negative_*`: the engine's embeddings.py.)"""
        device = torch.device(device) if device is not None else self.device
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        spoken = self.check_transcription(transcription, prompts)
        guided = do_classifier_free_guidance
        if guided and self.reference == "authors" and is_unconditional_text(negative_prompt):
            cond = self.encode_texts(prompts, self.t5_length(prompts), max_new_tokens, device, spoken, encode_tokens)
            encoded = Conditioning(*(torch.cat([u, c]) for u, c in zip(self.authors_unconditional(cond, device), cond)))
        else:  # both halves through the text stages in one batch, [negatives, prompts], T5 padded to the prompts'
            texts = (self.negative_texts(negative_prompt, len(prompts)) if guided else []) + prompts
            if spoken is not None:  # text-to-speech: the unconditional rows say nothing
                spoken = [None] * (len(texts) - len(prompts)) + spoken
            encoded = self.encode_texts(texts, self.t5_length(prompts), max_new_tokens, device, spoken, encode_tokens)
        # repeating [uncond, cond] prompt by prompt keeps the halves apart: (2B, ...) -> (2B * times, ...)
        return self.repeat(encoded, num_waveforms_per_prompt)

    def authors_unconditional(self, cond: Conditioning, device) -> Conditioning:
        """The authors' unconditional half for a batch conditioned on `cond`: what training dropped the condition to.

        GPT-2's slot: zeros with a mask of ones (`AudioMAEConditionCTPoolRand.get_unconditional_condition`). The
        UNet attends to all of it: every key is 0, so its cross-attention output is the bias of `to_out` whatever
        the length, and the zeros take the shape of `cond`'s generated states.
        T5's slot: the states of "" with a mask of ones over its tokens (`FlanT5HiddenState`); here padded to the
        length of `cond`'s T5 rows with masked slots, which the masked cross-attention does not see, so the rows
        stack. Speech checkpoints: the VITS slot (the speech UNet does not read it) holds zeros, mask zero.
        """
        batch, length = cond.t5_states.shape[:2]
        generated = torch.zeros_like(cond.generated)  # (B, N, 768)
        if self.speaks:
            return Conditioning(generated, torch.zeros_like(cond.t5_states), torch.zeros_like(cond.t5_mask))
        states, mask = self.empty_t5(length, device)
        return Conditioning(generated, states.to(cond.t5_states.dtype).expand(batch, -1, -1),
                            mask.to(cond.t5_mask.dtype).expand(batch, -1))

    def empty_t5(self, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """T5's states of "" (the one token "</s>", attended to) padded to `length`: (1, L, 1024), mask (1, L)."""
        ids, mask = tokenize(self.tokenizer_2, [""], length, True, device)  # (1, L): "</s>" and padding
        return self.t5(ids, mask), mask

    def check_transcription(self, transcription, prompts: list[str] | None) -> list[str] | None:
        """One transcription per prompt for a text-to-speech checkpoint (speech.SpeechConditioner), else None."""
        if transcription is not None:
            raise ValueError("`transcription` needs a text-to-speech checkpoint (e.g. anhnct/audioldm2_gigaspeech); "
                             "this one makes audio from the prompt alone")
        return None

    @staticmethod
    def negative_texts(negative_prompt, batch: int) -> list[str]:
        if negative_prompt is None:
            return [""] * batch
        if isinstance(negative_prompt, str):
            return [negative_prompt] * batch
        if len(negative_prompt) != batch:
            raise ValueError(f"{len(negative_prompt)} negative prompts for {batch} prompts: give one per prompt")
        return list(negative_prompt)

    @staticmethod
    def repeat(conditioning: Conditioning, times: int) -> Conditioning:
        """Each prompt's tensors `times` times in place along the batch: (B, ...) -> (B * times, ...)."""
        return Conditioning(*(part.repeat_interleave(times, dim=0) for part in conditioning))
