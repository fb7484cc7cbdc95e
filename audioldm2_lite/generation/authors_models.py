"""Text to audio with the authors' two AudioLDM-1-style models, which diffusers' AudioLDM 2 pipeline cannot run.

    audioldm_48k:               prompt --RoBERTa--> CLAP text tower --> unit vector (B, 512)
                                  --> FiLM UNet (the vector joins the time embedding) --> latent (B, 16, T/8, 32)
                                  --> VAE (256 mels) --> HiFi-GAN --> 48 kHz waveform
    audioldm_16k_crossattn_t5:  prompt --T5 tokens--> Flan-T5 encoder --> states (B, L, 1024) + mask
                                  --> UNet (one cross-attention to them) --> latent (B, 8, T/4, 16)
                                  --> VAE (64 mels) --> HiFi-GAN --> 16 kHz waveform

The stages are the AudioLDM 2 ones (models/), configured from the authors' file (authors_checkpoint.py); the
loop is the one of every mode (samplers.denoise). Classifier-free guidance follows the authors' code
(`latent_diffusion/models/ddpm.py`, the conditioners in `encoders/modules.py`): the unconditional half is
the embedding of "" (CLAPAudioEmbeddingClassifierFreev2.get_unconditional_condition: CLAP("")), or the
Flan-T5 states of "" with a mask of ones (FlanT5HiddenState.get_unconditional_condition); a negative prompt
takes its place where one is given. Unlike the authors' inference, the CLAP conditioner never drops the
prompt (their `unconditional_prob` 0.1, a training setting left on).

Every model of the authors' files runs through AudioLDM2Pipeline: `from_pretrained` of the file converts it
once into a hub-layout folder (`authors_hub_folder`), loads its UNet and vocoder as the authors' stages
(models/unet_film.py, models/vocoder_48k.py) and, for these two models, puts `AuthorsConditioner` in
TextConditioner's place and runs the FiLM UNet through `FilmGuidedUNet`; the VAE and vocoder run as for
AudioLDM 2, at the model's own rate.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from . import authors_checkpoint as ac
from .authors_export import write_hub_folder
from .conditioning import Conditioning, TextConditioner
from .guided_unet import GuidedUNet
from .hub import resolve_checkpoint
from .loading import checkpoint_reference, load_component, load_tokenizer


class AuthorsConditioner(nn.Module):
    """The text stage of audioldm_48k (CLAP) or audioldm_16k_crossattn_t5 (Flan-T5), in TextConditioner's place.

    Its Conditioning fills the slots the UNet reads: for the FiLM UNet `generated` holds the CLAP vector
    (B, 1, 512), which the UNet takes as its FiLM condition; for the T5-only UNet the T5 slot holds the states
    and mask. The slot the model does not read holds a (B, 1, 1) placeholder of zeros (mask ones).
    """

    speaks = False  # no text-to-speech
    reference = "authors"  # the authors' unconditional half (below); these models have no diffusers version

    def __init__(self, family: str, tokenizer, encoder):
        super().__init__()
        self.family, self.tokenizer, self.encoder = family, tokenizer, encoder
        # batching.py pads a batch's T5 slot to tokenizer_2.model_max_length: the FiLM model's slot is a placeholder
        self.tokenizer_2 = tokenizer if family == "t5" else SimpleNamespace(model_max_length=1)

    @classmethod
    def from_pretrained(cls, root: Path, device="cpu", dtype=torch.float32, variant=None,
                        **audioldm2_settings) -> "AuthorsConditioner":
        """`audioldm2_settings` (TextConditioner's clap_pad_to_max_length, reference) do not apply: the padding is
        masked or absent, and these models run as the authors' only."""
        family = ac.AUTHORS_CONFIGS[authors_model_of(root)].family
        component, tokenizer = ("text_encoder", "tokenizer") if family == "film" else ("text_encoder_2", "tokenizer_2")
        return cls(family, load_tokenizer(root, tokenizer),
                   load_component(root, component, dtype=dtype, device=device, variant=variant))

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @property
    def clap(self):
        """The CLAP text tower that candidates are ranked against: the FiLM model's own; the T5-only model has none
        (ranking then loads the folder's `text_encoder`, the file's ranking CLAP)."""
        return self.encoder if self.family == "film" else None

    def clap_text_features(self, texts: list[str], device=None) -> torch.Tensor:
        """CLAP's unit vectors (B, 512) (what the FiLM UNet reads, and what candidates are ranked against)."""
        tokens = self.tokenizer(texts, padding="longest", truncation=True, return_tensors="pt").to(device or self.device)
        return self.encoder.get_text_features(tokens.input_ids, tokens.attention_mask)

    def encode_texts(self, texts: list[str]) -> Conditioning:
        batch = len(texts)
        placeholder = torch.zeros(batch, 1, 1, device=self.device)
        ones = torch.ones(batch, 1, dtype=torch.long, device=self.device)
        if self.family == "film":
            return Conditioning(self.clap_text_features(texts)[:, None], placeholder, ones)  # (B, 1, 512)
        # FlanT5HiddenState.encode_text: padded to the longest text, truncated at 128 tokens
        tokens = self.tokenizer(texts, padding="longest", truncation=True, max_length=128,
                                return_tensors="pt").to(self.device)
        return Conditioning(placeholder, self.encoder(tokens.input_ids, tokens.attention_mask), tokens.attention_mask)

    def encode_tokens(self, *args, **kwargs):
        """Not used: encode_prompt runs the one text stage itself (the pipeline's runners name this slot)."""
        raise NotImplementedError("the authors' 48k / T5-only text stage is run by encode_prompt")

    @torch.no_grad()
    def encode_prompt(self, prompt=None, negative_prompt=None, num_waveforms_per_prompt: int = 1,
                      do_classifier_free_guidance: bool = True, max_new_tokens=None, device=None, transcription=None,
                      encode_tokens=None, **embeds) -> Conditioning:
        """[uncond, cond] along the batch with guidance (the authors' unconditional half without a negative
        prompt), each prompt repeated num_waveforms_per_prompt times."""
        if any(value is not None for value in embeds.values()) or transcription is not None:
            raise ValueError(f"the authors' {self.family} model takes text prompts only (no embeddings, no transcription)")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        cond = self.encode_texts(prompts)
        if do_classifier_free_guidance:
            negatives = TextConditioner.negative_texts(negative_prompt, len(prompts))
            uncond = self.encode_texts(negatives)
            if self.family == "t5" and not any(negatives):  # FlanT5HiddenState: T5("") with a mask of ones
                uncond = uncond._replace(t5_mask=torch.ones_like(uncond.t5_mask))
            length = max(uncond.t5_states.shape[1], cond.t5_states.shape[1])  # masked padding, so the halves stack
            pad = lambda c: c._replace(t5_states=F.pad(c.t5_states, (0, 0, 0, length - c.t5_states.shape[1])),
                                       t5_mask=F.pad(c.t5_mask, (0, length - c.t5_mask.shape[1])))
            cond = Conditioning(*(torch.cat([u, c]) for u, c in zip(pad(uncond), pad(cond))))
        return TextConditioner.repeat(cond, num_waveforms_per_prompt)


def authors_model_of(root: Path) -> str | None:
    """The authors' model a hub-layout folder was converted from (model_index.json `_authors_model`), if any."""
    index = Path(root) / "model_index.json"
    return json.loads(index.read_text()).get("_authors_model") if index.is_file() else None


def folder_stage(root: Path, name: str):
    """How component `name` of a folder is built (loading.load_component's `stage`): the authors' own in a folder
    converted from their file (authors_checkpoint.authors_stage: the FiLM UNet, the vocoder with its mel front end),
    else None, STAGES'."""
    return ac.authors_stage(name) if authors_model_of(root) else None


def runs_without_gpt2(root: Path) -> bool:
    """Whether a folder holds one of the authors' AudioLDM-1-style models (AuthorsConditioner's)."""
    kind = authors_model_of(root)
    return kind is not None and ac.AUTHORS_CONFIGS[kind].family != "audioldm2"


class FilmGuidedUNet(GuidedUNet):
    """The engine's UNet call (guided_unet.py) for the FiLM UNet: its condition joins the time embedding, so the
    halves of guidance differ from the first layer on and share none; the context carries the condition."""

    def context(self, encoder_hidden_states, encoder_hidden_states_1, encoder_attention_mask_1=None) -> dict:
        """GuidedUNet.context, with "film": (the CLAP condition (R B, 512), None)."""
        context = super().context(encoder_hidden_states, encoder_hidden_states_1, encoder_attention_mask_1)
        return {**context, "film": (encoder_hidden_states.flatten(1), None)}

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, context: dict, repeats: int = 1) -> torch.Tensor:
        sample = sample.repeat(repeats, 1, 1, 1)  # (R B, C, T, F): [latents, latents] with guidance
        time_emb = self.unet.embed_timestep_and_condition(timestep, sample.shape[0], context["film"][0])
        return self.unet.run_blocks(sample, time_emb, context)


def guided_unet_for(unet) -> GuidedUNet:
    """The engine's UNet call for `unet`: FilmGuidedUNet for a FiLM UNet, else GuidedUNet."""
    return FilmGuidedUNet(unet) if getattr(unet.config, "film_condition_dim", None) else GuidedUNet(unet)


# ----------------------------------------------------------------------------------------------
# The AudioLDM 2 family: a hub-layout folder that AudioLDM2Pipeline loads


# The layout authors_hub_folder writes; another one converts a file again (2: the ranking CLAP's audio tower).
CONVERSION = 2


def authors_hub_folder(model, text_models_dir=None, cache_dir=None) -> Path:
    """The hub-layout folder of an authors' file, converted once into a cache (`$AUDIOLDM2_LITE_CACHE` or
    ~/.cache/audioldm2_lite/authors, keyed by the file's path, size and time, and CONVERSION)."""
    file = ac.resolve_authors_file(model).resolve()
    stat = file.stat()
    key = hashlib.sha256(f"{file}:{stat.st_size}:{stat.st_mtime_ns}:{CONVERSION}".encode()).hexdigest()[:16]
    root = Path(cache_dir or os.environ.get("AUDIOLDM2_LITE_CACHE", Path.home() / ".cache" / "audioldm2_lite"))
    folder = root / "authors" / f"{file.stem}-{key}"
    if not (folder / "model_index.json").is_file():
        write_hub_folder(file, folder, text_models_dir)
    return folder


def model_folder(model, text_models_dir=None, variant: str | None = None) -> Path:
    """The hub-layout folder that the pipeline and training read for `model`: a hub id or folder as it is, an
    authors' file converted once (authors_hub_folder; every model of the authors runs through it)."""
    if ac.is_authors_checkpoint(model):
        model = authors_hub_folder(model, text_models_dir)
    return resolve_checkpoint(model, variant=variant)


def model_reference(root: Path, reference: str | None = None) -> str:
    """The model a folder runs as (authors.py): `reference` if given; a folder converted from an authors' file
    runs as the authors' model; any other, as loading.checkpoint_reference says (official configs: authors)."""
    return checkpoint_reference(root, "authors" if reference is None and authors_model_of(root) else reference)
