"""Text-to-speech conditioning: what the AudioLDM 2 speech checkpoints do differently from text-to-audio.

`SpeechConditioner` is conditioning.py's `TextConditioner` with these differences; the pipeline picks it
for a checkpoint whose `text_encoder_2` is a VITS model (`load_conditioner`).

The speech checkpoints (`anhnct/audioldm2_gigaspeech`, `anhnct/audioldm2_ljspeech`) keep CLAP, the
projection and GPT-2, but their second encoder reads the *transcription* instead of the prompt:

    prompt        --CLAP text tower--> one vector (describes the voice: "A female reporter is speaking")
    transcription --VitsTokenizer (phonemes via espeak-ng)--> 310 phoneme slots --VITS encoder (vits.py)-->
                  (B, 310, 192) states --projection, plus a learned position per slot--> GPT-2
    GPT-2 generates 512 states (not 8), which the speech UNet cross-attends to (it reads nothing else).

Parity details (diffusers' `AudioLDM2Pipeline.encode_prompt` for a `VitsModel` text_encoder_2):
- phoneme ids are padded to the tokenizer's maximum (310) and truncated there;
- in each sequence the first id 0 (the pad symbol "_") becomes the end token 182 (the last of the 183
  symbols) and is attended to; a transcription that fills every slot gets no end token. With a tokenizer
  that intersperses blanks (`add_blank`), id 0 is the leading blank, which is then what is replaced;
- the unconditional half has all-zero VITS states with an all-zero mask, whatever the negative prompt
  (which still goes through CLAP); the projection's learned positions are added to it all the same;
- GPT-2 generates 512 states: the speech UNet was trained on that many (the original config's
  `sequence_gen_length`). A language model config asking for 8, the text-to-audio count (which
  converted speech checkpoints may carry, and the default where the field is missing), is overridden;
  diffusers' own example passes `max_new_tokens=512` for the same reason.

Phonemisation (`phonemize` in the tokenizer's config, set for the real checkpoints) needs the
`phonemizer` package and the espeak-ng system library: `pip install "audioldm2-lite[speech]"` and
`apt-get install espeak-ng` (macOS: `brew install espeak-ng`).
"""

from __future__ import annotations

import functools
import warnings

import torch

from ..models import vits
from .conditioning import Conditioning, TextConditioner, warn_if_truncated
from .loading import Stage, hub_class_name, load_config

END_TOKEN_ID = 182  # appended after the last phoneme (the original's vocabulary: 182 symbols and this end token)
SPEECH_NEW_TOKENS = 512  # GPT-2 states the speech UNet reads
TEXT_TO_AUDIO_NEW_TOKENS = 8


class SpeechDependencyError(RuntimeError):
    """Phonemisation was asked for but the phonemizer package or the espeak-ng library is missing."""


@functools.lru_cache(maxsize=1)
def missing_phonemizer() -> str | None:
    """What is missing for phonemisation (None if nothing)."""
    try:
        from phonemizer.backend import EspeakBackend
    except ImportError:
        return "the `phonemizer` Python package is not installed"
    if not EspeakBackend.is_available():
        return "the espeak-ng system library is not installed (phonemizer cannot find it)"
    return None


def require_phonemizer() -> None:
    missing = missing_phonemizer()
    if missing is not None:
        raise SpeechDependencyError(
            f"this checkpoint's tokenizer turns transcriptions into phonemes, which needs the phonemizer package "
            f"and the espeak-ng library, but {missing}. Install both: pip install \"audioldm2-lite[speech]\" and "
            f"apt-get install espeak-ng (macOS: brew install espeak-ng)."
        )


def transcriptions_for(transcription, batch: int) -> list[str]:
    """One transcription per prompt: a string is said for every prompt, a list gives one each."""
    texts = [transcription] * batch if isinstance(transcription, str) else list(transcription)
    if len(texts) != batch:
        raise ValueError(f"{len(texts)} transcriptions for {batch} prompts: give one per prompt, or one string")
    if any(not isinstance(t, str) or not t.strip() for t in texts):
        raise ValueError(f"every transcription must be a non-empty string, got {transcription!r}")
    return texts


def tokenize_transcriptions(tokenizer, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Phoneme ids and mask (B, slots) int64, padded to the tokenizer's maximum, each closed by the end token."""
    if getattr(tokenizer, "phonemize", False):
        require_phonemizer()
    slots = tokenizer.model_max_length
    for text, ids in zip(texts, tokenizer(texts).input_ids):
        if len(ids) > slots:
            warnings.warn(f"the VITS phoneme encoder reads at most {slots} phonemes; the transcription starting "
                          f"{text[:30]!r} has {len(ids)} and is cut off there")
    tokens = tokenizer(texts, padding="max_length", max_length=slots, truncation=True, return_tensors="pt")
    ids, mask = tokens.input_ids, tokens.attention_mask
    # the first pad id 0 of each sequence becomes the end token, attended to
    is_pad = ids == 0
    first_pad = is_pad & (is_pad.cumsum(dim=1) == 1)  # (B, slots)
    ids = torch.where(first_pad, END_TOKEN_ID, ids)
    mask = torch.where(first_pad, 1, mask)
    return ids.to(device), mask.to(device)


def speech_new_tokens(configured: int) -> int:
    """The GPT-2 states to generate for a speech checkpoint whose language model config says `configured`."""
    return SPEECH_NEW_TOKENS if configured == TEXT_TO_AUDIO_NEW_TOKENS else configured


def encode_transcriptions(vits, tokenizer, transcriptions: list[str | None], device) -> tuple[torch.Tensor, torch.Tensor]:
    """VITS states (B, slots, 192) and mask (B, slots) int64; all zeros for a None (the unconditional half)."""
    slots, width = tokenizer.model_max_length, vits.config.hidden_size
    dtype = vits.text_encoder.embed_tokens.weight.dtype
    states = torch.zeros(len(transcriptions), slots, width, dtype=dtype, device=device)
    mask = torch.zeros(len(transcriptions), slots, dtype=torch.long, device=device)
    spoken = [i for i, text in enumerate(transcriptions) if text is not None]
    if spoken:
        ids, spoken_mask = tokenize_transcriptions(tokenizer, [transcriptions[i] for i in spoken], device)
        states[spoken] = vits(ids, spoken_mask)
        mask[spoken] = spoken_mask
    return states, mask


# The network the speech checkpoints store as `text_encoder_2`, where the others store Flan-T5.
VITS_STAGE = Stage(vits, vits.VitsConfig, vits.VitsTextEncoder, ("VitsModel",))


def is_speech_checkpoint(checkpoint) -> bool:
    """Whether a checkpoint's `text_encoder_2` is a VITS model (a text-to-speech checkpoint)."""
    return hub_class_name(load_config(checkpoint, "text_encoder_2")) in VITS_STAGE.hub_classes


def load_conditioner(checkpoint, **kwargs) -> TextConditioner:
    """The text stages of a checkpoint: the authors' one text stage for their 48 kHz and T5-only models
    (authors_models.AuthorsConditioner), a SpeechConditioner for a text-to-speech one, else a TextConditioner."""
    from .authors_models import AuthorsConditioner, runs_without_gpt2

    if runs_without_gpt2(checkpoint):
        return AuthorsConditioner.from_pretrained(checkpoint, **kwargs)
    kind = SpeechConditioner if is_speech_checkpoint(checkpoint) else TextConditioner
    return kind.from_pretrained(checkpoint, **kwargs)


class SpeechConditioner(TextConditioner):
    """The text stages of a text-to-speech checkpoint: the VITS encoder reads the transcription in T5's place.
    The conditioning's "t5_*" tensors then hold the VITS states and mask (the speech UNet does not read them)."""

    speaks = True
    STAGES = {"text_encoder_2": VITS_STAGE}

    def t5_length(self, prompts: list[str]) -> int:
        return self.tokenizer_2.model_max_length  # every transcription fills the tokenizer's slots (310)

    def encode_texts(self, texts: list[str], t5_length: int, max_new_tokens: int | None = None,
                     device=None, transcriptions: list[str | None] | None = None, encode_tokens=None) -> Conditioning:
        """CLAP on the texts; VITS on `transcriptions` (one per text; None or missing = unconditional),
        one state per phoneme slot (B, 310, 192); the projection and GPT-2 on both."""
        device = device or self.device
        warn_if_truncated(texts, [("CLAP", self.tokenizer)])
        clap_ids, clap_mask = self.clap_tokens(texts, device)
        states, mask = encode_transcriptions(self.t5, self.tokenizer_2, transcriptions or [None] * len(texts), device)
        max_new_tokens = max_new_tokens or speech_new_tokens(self.gpt2.config.max_new_tokens)
        return self.generate_from(clap_ids, clap_mask, states, mask, max_new_tokens)

    def check_transcription(self, transcription, prompts: list[str] | None) -> list[str] | None:
        """One transcription per prompt (when prompts are encoded), else None."""
        if prompts is None:
            return None
        if transcription is None:
            raise ValueError("this is a text-to-speech checkpoint: give the words to say as `transcription` "
                             "(the prompt describes the voice)")
        return transcriptions_for(transcription, len(prompts))
