"""CLAP scoring: the one scorer of candidate ranking and of evaluation (evaluate.py).

Candidate ranking: several waveforms per prompt, sorted by CLAP audio-text similarity, best first.

    waveforms (P * n, samples) at 16 kHz --(audio_features.py: 48 kHz log-mel, as ClapFeatureExtractor)-->
    --(models/clap_audio.py: HTSAT audio tower)--> (P * n, 512) unit vectors
    prompts --(models/clap.py text tower)--> (P, 512) unit vectors --cosine similarity--> order, best first

diffusers' `AudioLDM2Pipeline.score_waveforms` does the same; `rank_waveforms` says where the two differ.
"""

from __future__ import annotations

import torch

from ..models import clap_audio
from ..models.clap_audio import ClapAudioTower
from ..models.hub_config import unsupported_config
from .audio_features import ClapFeatureConfig, clap_input_features
from .conditioning import tokenize
from .hub import resolve_checkpoint
from .loading import DEFAULT_CHECKPOINT, Stage, checkpoint_reference, load_component, load_config, load_tokenizer

# CLAP's audio tower, stored in the `text_encoder` folder beside the text tower and loaded on its own: only
# ranking and evaluation need it.
CLAP_AUDIO_STAGE = Stage(clap_audio, clap_audio.ClapAudioConfig, ClapAudioTower, ("ClapModel",))


def load_audio_tower(checkpoint, dtype: torch.dtype = torch.float32, device="cpu",
                     variant: str | None = None) -> tuple[ClapAudioTower, ClapFeatureConfig]:
    """The audio tower of a checkpoint's `text_encoder`, and the feature extractor settings that feed it.

    Refuses a feature extractor whose log-mels per clip are not the ones the tower reads (diffusers
    would fail at its first convolution): "fusion" gives four, "rand_trunc" one.
    """
    hub = load_config(checkpoint, "feature_extractor")
    features = ClapFeatureConfig.from_hub(hub)
    tower = load_component(checkpoint, "text_encoder", dtype=dtype, device=device, variant=variant,
                           stage=CLAP_AUDIO_STAGE)
    channels = tower.config.input_channels
    if features.channels != channels:
        modes = {1: "'rand_trunc'", 4: "'fusion'"}.get(channels, "none")
        raise unsupported_config(hub, "truncation", features.truncation, f"{modes} with this text_encoder, whose "
                                 f"audio tower reads {channels} log-mels per clip (patch_embed_input_channels)")
    return tower, features


class ClapScorer:
    """A checkpoint's CLAP (both towers), its tokenizer and its audio front end: embeddings in CLAP's joint
    space, and candidates ranked by them. `clap` (the text tower) and `tokenizer` may be given, loaded already
    (the pipeline's text stages); the rest loads from `model` (default the official checkpoint; an authors' file
    is read through its hub-layout conversion, with the text models of `text_models_dir`, as the pipeline does)."""

    def __init__(self, model=None, device=None, dtype: torch.dtype = torch.float32, variant: str | None = None,
                 clap=None, tokenizer=None, reference: str | None = None, text_models_dir=None):
        from .authors_checkpoint import is_authors_checkpoint
        from .authors_models import authors_hub_folder
        from .devices import default_device

        self.device = torch.device(device) if device is not None else default_device()
        model = model or DEFAULT_CHECKPOINT
        if is_authors_checkpoint(model):
            model = authors_hub_folder(model, text_models_dir)
        root = resolve_checkpoint(model, ["text_encoder", "tokenizer", "feature_extractor"], variant)
        # the text tower's LayerNorm eps is the reference's (authors.py): the checkpoint's own by default
        self.reference = checkpoint_reference(model, reference)
        self.clap = clap or load_component(root, "text_encoder", dtype=dtype, device=self.device, variant=variant,
                                           reference=self.reference)
        self.tokenizer = tokenizer or load_tokenizer(root, "tokenizer")
        self.audio_tower, self.feature_config = load_audio_tower(root, dtype, self.device, variant)

    @property
    def dim(self) -> int:
        return self.clap.config.projection_dim  # 512

    def embed_waveforms(self, waveforms: torch.Tensor | list[torch.Tensor], sampling_rate: int) -> torch.Tensor:
        """(B, D) unit vectors of waveforms: one (B, samples) tensor, or a list of (samples,) of any lengths."""
        batches = [waveforms] if isinstance(waveforms, torch.Tensor) else [w[None] for w in waveforms]
        features = torch.cat([clap_input_features(b.to(self.device), sampling_rate, self.feature_config)[0]
                              for b in batches])  # (B, 1, frames, mels)
        return self.audio_tower(features)

    def embed_text(self, texts: list[str], batch_size: int = 8) -> torch.Tensor:
        """(N, D) unit vectors, one per text (padded to each batch's longest; the padding is masked)."""
        out = []
        for start in range(0, len(texts), batch_size):
            ids, mask = tokenize(self.tokenizer, texts[start:start + batch_size], self.tokenizer.model_max_length,
                                 False, self.device)
            out.append(self.clap.get_text_features(ids, mask))
        return torch.cat(out)

    def rank(self, prompts: list[str], audio: torch.Tensor, sampling_rate: int, num_waveforms_per_prompt: int):
        """Each prompt's candidates sorted by CLAP audio-text cosine similarity, best first, and those
        similarities: (audio (P * n, samples), scores (P * n,))."""
        audio_embeds = self.embed_waveforms(audio, sampling_rate).float()  # (P * n, 512)
        text_embeds = self.embed_text(prompts, batch_size=len(prompts)).float()  # (P, 512)
        order = rank_waveforms(audio_embeds, text_embeds, num_waveforms_per_prompt).cpu()
        similarity = (text_embeds @ audio_embeds.T).cpu()  # (P, P * n)
        owner = torch.arange(len(order)) // num_waveforms_per_prompt  # the prompt of each ranked waveform
        return audio[order], similarity[owner, order]


# ----------------------------------------------------------------------------------------------
# Candidate ranking


def rank_waveforms(audio_embeds: torch.Tensor, text_embeds: torch.Tensor, num_waveforms_per_prompt: int,
                   across_prompts: bool = False) -> torch.Tensor:
    """Indices into the batch of waveforms, best first for each prompt: (num_prompts * n,).

    audio_embeds (num_prompts * n, D) and text_embeds (num_prompts, D), both L2-normalised, so their
    dot product is the cosine similarity (CLAP's logit scale does not change the order). Waveforms
    are laid out prompt-major, as the pipeline generates them: rows p*n .. p*n + n-1 belong to prompt p.

    By default each prompt ranks its own n candidates. diffusers' `score_waveforms` instead ranks every
    waveform of the batch against each prompt and keeps the top n (`across_prompts=True` reproduces
    that): with several prompts, a prompt can be handed another prompt's waveform. With one prompt
    both agree. Ties keep the lower index first (a stable sort); diffusers' argsort leaves their order
    unspecified.
    """
    n = num_waveforms_per_prompt
    scores = text_embeds @ audio_embeds.T  # (P, P*n)
    P = text_embeds.shape[0]
    if across_prompts:
        return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :n].reshape(-1)
    own = scores.view(P, P, n).diagonal(dim1=0, dim2=1).T  # (P, n): prompt p against its own candidates
    order = torch.sort(own, dim=1, descending=True, stable=True).indices  # (P, n)
    return (order + n * torch.arange(P, device=order.device)[:, None]).reshape(-1)
