"""The UNets of the authors' two AudioLDM-1-style models, as variants of AudioLDM 2's (models/unet.py).

- audioldm_48k, FiLM: a linear map of the prompt's 512-d CLAP embedding (the authors' `film_emb`; diffusers'
  `class_embed_type` "simple_projection" with `class_embeddings_concat`) is concatenated to the time
  embedding, so every ResNet reads a vector twice as wide; its transformers only self-attend.
- audioldm_16k_crossattn_t5, T5-only: one cross-attention per ResNet reads the Flan-T5 states with their mask.
  AudioLDM 2's UNet routes a transformer by its position in the level's list (0-1: GPT-2, 2+: T5), so this
  model's config names where T5 starts (`first_t5_position` 1, an audioldm2_lite field written by
  generation/authors_checkpoint.py).
Everything else is the AudioLDM 2 UNet: the same blocks, names and parity details. tests/test_authors_checkpoint.py
compares both with the authors' own `UNetModel` (openaimodel.py of haoheliu/AudioLDM2).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .hub_config import HubConfig, hub_field
from .unet import ResnetBlock, UNet, UNetConfig

# the hub fields this variant reads; the plain UNetConfig refuses their non-default values
VARIANT_FIELDS = ("class_embed_type", "class_embeddings_concat", "projection_class_embeddings_input_dim",
                  "first_t5_position")


@dataclass
class FilmUNetConfig(UNetConfig):
    # FiLM: width of the embedding concatenated to the time embedding (512, CLAP, for audioldm_48k); None: none
    film_condition_dim: int | None = None
    # the first position of a level's transformer list that reads the T5 sequence (diffusers: 2)
    first_t5_position: int = 2

    @classmethod
    def from_hub(cls, config: dict) -> "FilmUNetConfig":
        film = hub_field(config, "class_embed_type", None, supported=(None, "simple_projection")) is not None
        hub_field(config, "class_embeddings_concat", film, supported=(film,))  # FiLM by concatenation only
        plain = HubConfig({k: v for k, v in config.items() if k not in VARIANT_FIELDS},
                          getattr(config, "source", "the config"))
        base = UNetConfig.from_hub(plain)
        return cls(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)},
                   film_condition_dim=hub_field(config, "projection_class_embeddings_input_dim") if film else None,
                   first_t5_position=hub_field(config, "first_t5_position", 2))


class FilmUNet(UNet):
    """AudioLDM 2's UNet with the FiLM condition and the T5 routing of FilmUNetConfig."""

    def __init__(self, config: FilmUNetConfig):
        super().__init__(config)
        c = config
        if c.film_condition_dim:
            width = 4 * c.block_out_channels[0]  # the time embedding's
            self.class_embedding = nn.Linear(c.film_condition_dim, width)  # the authors' film_emb
            for resnet in self.modules():  # every ResNet reads [time embedding | FiLM embedding]
                if isinstance(resnet, ResnetBlock):
                    resnet.time_emb_proj = nn.Linear(2 * width, resnet.time_emb_proj.out_features)
        for block in (*self.down_blocks, self.mid_block, *self.up_blocks):
            per_resnet = getattr(block, "per_resnet", len(block.attentions))  # the mid block has one ResNet's
            for i, transformer in enumerate(block.attentions):
                if transformer.reads != "self":  # by position in its ResNet's list, from first_t5_position on T5
                    transformer.reads = "gpt2" if i % per_resnet < c.first_t5_position else "t5"

    def sequences(self, encoder_hidden_states=None, encoder_hidden_states_1=None, encoder_attention_mask_1=None):
        """UNet.sequences, where a sequence this model does not read may be None, plus "film": (the FiLM
        condition (B, 512), None), taken from the first sequence (the conditioner's (B, 1, 512))."""
        absent = torch.zeros(1, 1, 1, device=self.conv_in.weight.device)  # never read: no transformer of its name
        sequences = super().sequences(absent if encoder_hidden_states is None else encoder_hidden_states,
                                      absent if encoder_hidden_states_1 is None else encoder_hidden_states_1,
                                      encoder_attention_mask_1)
        reads_film = self.config.film_condition_dim and encoder_hidden_states is not None
        film = encoder_hidden_states.flatten(1) if reads_film else None  # (B, 512)
        return {**sequences, "film": (film, None)}

    def embed_timestep_and_condition(self, timestep, batch: int, condition: torch.Tensor | None) -> torch.Tensor:
        """(B, 4 C0) time embedding, with the FiLM embedding of `condition` (B, 512) concatenated: (B, 8 C0)."""
        time_emb = self.embed_timestep(timestep, batch)
        if not self.config.film_condition_dim:
            return time_emb
        film = self.class_embedding(condition.to(time_emb.dtype).reshape(batch, -1))  # (B, 4 C0)
        return torch.cat([time_emb, film], dim=-1)  # (B, 8 C0)

    def run_blocks(self, sample: torch.Tensor, time_emb: torch.Tensor, sequences: dict) -> torch.Tensor:
        """Down, mid and up levels as UNet.forward runs them, given the embedding every ResNet reads."""
        x = self.conv_in(sample.to(self.conv_in.weight.dtype))  # (B, C0, T, F)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, time_emb, sequences)
            skips += block_skips
        x = self.mid_block(x, time_emb, sequences)
        return self.up_path(x, skips, time_emb, sequences)

    def forward(
        self,
        sample: torch.Tensor,  # (B, C, T, F) noisy latent
        timestep: torch.Tensor,  # scalar or (B,)
        encoder_hidden_states: torch.Tensor | None = None,  # (B, 1, 512) CLAP (FiLM), or unread
        encoder_hidden_states_1: torch.Tensor | None = None,  # (B, S, 1024) T5's states, or unread
        encoder_attention_mask_1: torch.Tensor | None = None,  # (B, S) 1 = token, 0 = padding
        class_labels: torch.Tensor | None = None,  # (B, 512) the FiLM condition, instead of encoder_hidden_states
    ) -> torch.Tensor:
        """The predicted noise (B, C, T, F)."""
        sequences = self.sequences(encoder_hidden_states, encoder_hidden_states_1, encoder_attention_mask_1)
        condition = class_labels if class_labels is not None else sequences["film"][0]
        return self.run_blocks(sample, self.embed_timestep_and_condition(timestep, sample.shape[0], condition),
                               sequences)
