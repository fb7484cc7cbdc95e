"""The projection model: joins the two text encodings into one prompt sequence for GPT-2.

AudioLDM 2 conditions its "language of audio" generator (GPT-2, `gpt2.py`) on both text encoders:
CLAP's single text vector (512-d, `clap.py`) and Flan-T5's token states (1024-d, `t5.py`). This stage
maps each into GPT-2's width (768) with its own linear layer, frames each projected sequence with a
learned start and end vector, and concatenates them:

    [sos, clap, eos, sos_1, t5_1 ... t5_Lt, eos_1]    (B, Lc + Lt + 4, 768), Lc = 1 for CLAP

with the matching attention mask (the learned vectors are always attended to). GPT-2 then continues
this sequence by `max_new_tokens` hidden states.

In the text-to-speech checkpoints the second encoder is VITS' phoneme encoder (192-d, `vits.py`) instead
of T5, and a learned position embedding, one vector per phoneme slot (`learnable_positional_embedding`,
stored as (1, 192, slots)), is added to its states before their projection
(`use_learned_position_embedding` in the hub config).

Reference: Liu et al., "AudioLDM 2" (arXiv:2308.05734), section 3.2; diffusers'
`AudioLDM2ProjectionModel` (pipelines/audioldm2/modeling_audioldm2.py). Parameter names are the hub's
(`projection`, `projection_1`, `sos_embed`, ...; `_1` marks the second, T5, encoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .hub_config import hub_field


@dataclass
class ProjectionConfig:
    text_encoder_dim: int = 512  # CLAP's joint embedding width
    text_encoder_1_dim: int = 1024  # Flan-T5-large's d_model
    language_model_dim: int = 768  # GPT-2's n_embd
    learned_positions: int | None = None  # text-to-speech: phoneme slots with a learned position (310), else None

    @classmethod
    def from_hub(cls, config: dict) -> "ProjectionConfig":
        # diffusers adds the positions whenever `use_learned_position_embedding` is not null, over `max_seq_length`
        learned = config.get("use_learned_position_embedding") is not None
        return cls(
            text_encoder_dim=hub_field(config, "text_encoder_dim"),
            text_encoder_1_dim=hub_field(config, "text_encoder_1_dim"),
            language_model_dim=hub_field(config, "langauge_model_dim"),  # sic: the hub config spells it this way
            learned_positions=hub_field(config, "max_seq_length") if learned else None,
        )


def frame_with_learned_tokens(states, mask, start, end):
    """[start, states, end] along the sequence axis, and the mask grown by two always-attended positions."""
    batch = states.shape[0]
    start = start.expand(batch, 1, -1)  # (B, 1, D)
    end = end.expand(batch, 1, -1)
    states = torch.cat([start, states, end], dim=1)  # (B, L + 2, D)
    always = mask.new_ones(batch, 1)
    mask = torch.cat([always, mask, always], dim=1)  # (B, L + 2)
    return states, mask


class ProjectionModel(nn.Module):
    def __init__(self, config: ProjectionConfig):
        super().__init__()
        self.config = config
        dim = config.language_model_dim
        self.projection = nn.Linear(config.text_encoder_dim, dim)  # CLAP -> GPT-2 width
        self.projection_1 = nn.Linear(config.text_encoder_1_dim, dim)  # T5 -> GPT-2 width
        self.sos_embed = nn.Parameter(torch.empty(dim))
        self.eos_embed = nn.Parameter(torch.empty(dim))
        self.sos_embed_1 = nn.Parameter(torch.empty(dim))
        self.eos_embed_1 = nn.Parameter(torch.empty(dim))
        if config.learned_positions is not None:  # text-to-speech: one vector per VITS phoneme slot
            self.learnable_positional_embedding = nn.Parameter(
                torch.empty(1, config.text_encoder_1_dim, config.learned_positions)
            )

    def forward(
        self,
        clap_states: torch.Tensor,
        t5_states: torch.Tensor,
        clap_mask: torch.Tensor | None = None,
        t5_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """clap_states (B, Lc, 512), t5_states (B, Lt, 1024), masks (B, Lc) / (B, Lt) of 1 = attend, 0 = padding.

        Returns the GPT-2 prompt (B, Lc + Lt + 4, 768) and its mask (B, Lc + Lt + 4). A missing mask means
        every position is attended to (built from the shape, in the other mask's dtype).
        """
        given = clap_mask if clap_mask is not None else t5_mask
        mask_dtype = given.dtype if given is not None else torch.long
        if clap_mask is None:
            clap_mask = torch.ones(clap_states.shape[:2], dtype=mask_dtype, device=clap_states.device)
        if t5_mask is None:
            t5_mask = torch.ones(t5_states.shape[:2], dtype=mask_dtype, device=t5_states.device)

        # the encoders' states in this model's dtype (the encoders may run in another)
        dtype = self.projection.weight.dtype
        clap_states, t5_states = clap_states.to(dtype), t5_states.to(dtype)

        # CLAP part: project, then [sos, clap, eos]
        clap_part = self.projection(clap_states)  # (B, Lc, 768)
        clap_part, clap_mask = frame_with_learned_tokens(clap_part, clap_mask, self.sos_embed, self.eos_embed)

        # T5 (or VITS) part: project, then [sos_1, t5, eos_1]; eos_1 follows any padding, as in the reference
        if self.config.learned_positions is not None:  # VITS states: add the learned position of each slot
            t5_states = t5_states + self.learnable_positional_embedding.transpose(1, 2)  # (B, Lt = slots, D1)
        t5_part = self.projection_1(t5_states)  # (B, Lt, 768)
        t5_part, t5_mask = frame_with_learned_tokens(t5_part, t5_mask, self.sos_embed_1, self.eos_embed_1)

        # one prompt sequence: [CLAP part, T5 part]
        states = torch.cat([clap_part, t5_part], dim=1)  # (B, Lc + Lt + 4, 768)
        mask = torch.cat([clap_mask, t5_mask], dim=1)  # (B, Lc + Lt + 4)
        return states, mask
