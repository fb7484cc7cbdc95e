"""Candidate ranking: several waveforms per prompt, sorted by CLAP audio-text similarity, best first.

    waveforms (P * n, samples) at 16 kHz --(audio_features.py: 48 kHz log-mel, as ClapFeatureExtractor)-->
    --(models/clap_audio.py: HTSAT audio tower)--> (P * n, 512) unit vectors
    prompts --(models/clap.py text tower)--> (P, 512) unit vectors --cosine similarity--> order, best first

diffusers' `AudioLDM2Pipeline.score_waveforms` does the same; `rank_waveforms` says where the two differ.
"""

from __future__ import annotations

import torch

from ..models.clap_audio import ClapAudioTower
from ..models.hub_config import unsupported_config
from .audio_features import ClapFeatureConfig
from .loading import load_component, load_config


def load_audio_tower(checkpoint, dtype: torch.dtype = torch.float32, device="cpu",
                     variant: str | None = None) -> tuple[ClapAudioTower, ClapFeatureConfig]:
    """The audio tower of a checkpoint's `text_encoder`, and the feature extractor settings that feed it.

    Refuses a feature extractor whose log-mels per clip are not the ones the tower reads (diffusers
    would fail at its first convolution): "fusion" gives four, "rand_trunc" one.
    """
    hub = load_config(checkpoint, "feature_extractor")
    features = ClapFeatureConfig.from_hub(hub)
    tower = load_component(checkpoint, "clap_audio", dtype=dtype, device=device, variant=variant)
    channels = tower.config.input_channels
    if features.channels != channels:
        modes = {1: "'rand_trunc'", 4: "'fusion'"}.get(channels, "none")
        raise unsupported_config(hub, "truncation", features.truncation, f"{modes} with this text_encoder, whose "
                                 f"audio tower reads {channels} log-mels per clip (patch_embed_input_channels)")
    return tower, features


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
