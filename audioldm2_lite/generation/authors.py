"""The authors' model: where diffusers' conversion of AudioLDM 2 computes another model, and the switch.

The checkpoints were trained with haoheliu's code (`audioldm2` 0.1.0). `reference="authors"` runs that model,
`reference="diffusers"` what diffusers 0.42 computes. They differ in three places:
1. UNet heads: the authors' are 32 channels wide (`num_head_channels: 32`); diffusers reads the hub's
   `attention_head_dim: 8` as 8 heads (of 48 and 80 channels at 384 and 640 channels and in the mid block).
2. The unconditional half of guidance: the authors' is zeros for GPT-2's slot and T5("") for T5's, masks of
   ones (`AudioMAEConditionCTPoolRand`, `FlanT5HiddenState.get_unconditional_condition`): what training dropped
   the condition to. Diffusers encodes "" through every text stage. A negative prompt keeps diffusers' way.
3. CLAP's text LayerNorm eps: RoBERTa-base's 1e-5; the hub config leaves it unset (transformers: 1e-12).
The default is the authors' for the official checkpoints (recognised by their UNet config) and for folders converted
from the authors' files (`_authors_model` in it), diffusers' for other folders; given explicitly, either applies.
"""

from __future__ import annotations

import dataclasses

REFERENCES = ("authors", "diffusers")
HEAD_CHANNELS = 32  # the authors' `num_head_channels`
CLAP_TEXT_LAYER_NORM_EPS = 1e-5  # RoBERTa-base's

# The official checkpoints' UNet configs (cvssp/audioldm2, -large, -music, the speech ports), as converted
OFFICIAL_UNET = {
    "block_out_channels": [128, 256, 384, 640], "in_channels": 8, "out_channels": 8, "layers_per_block": 2,
    "down_block_types": ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 3,
    "up_block_types": ["CrossAttnUpBlock2D"] * 3 + ["UpBlock2D"],
}
OFFICIAL_CROSS_ATTENTION = (
    [[None, 768, 1024]] * 4,  # audioldm2, audioldm2-music: GPT-2 and T5
    [[None, 768, 1024, None]] * 4,  # audioldm2-large
    [[None, 768]] * 4,  # the speech checkpoints: GPT-2's 512 states only
)


def authors_heads(block_out_channels) -> tuple[int, ...]:
    """Heads per level as the authors split them: channels // 32 (so heads of 32 channels)."""
    uneven = [c for c in block_out_channels if c % HEAD_CHANNELS or c < HEAD_CHANNELS]
    if uneven:
        raise ValueError(f"the authors' model splits attention into heads of {HEAD_CHANNELS} channels, and this UNet "
                         f"has a level of {uneven[0]} channels: run it with reference='diffusers'")
    return tuple(c // HEAD_CHANNELS for c in block_out_channels)


def is_official(unet_config: dict) -> bool:
    """Whether a hub UNet config is an official checkpoint's (as converted, or exported with the heads per level)."""
    if any(unet_config.get(name) != value for name, value in OFFICIAL_UNET.items()):
        return False
    heads = unet_config.get("attention_head_dim")
    heads_as_converted = heads == 8 or heads == list(authors_heads(OFFICIAL_UNET["block_out_channels"]))
    return heads_as_converted and unet_config.get("cross_attention_dim") in OFFICIAL_CROSS_ATTENTION


def resolve_reference(reference: str | None, unet_config: dict) -> str:
    """The reference a checkpoint runs as: the one given, else the authors' for an official checkpoint."""
    if reference is None:
        return "authors" if is_official(unet_config) or "_authors_model" in unet_config else "diffusers"
    if reference not in REFERENCES:
        raise ValueError(f"reference must be 'authors' or 'diffusers', got {reference!r}")
    return reference


def apply_reference(name: str, config, reference: str):
    """A stage's dataclass config as the reference runs it (the stages themselves know nothing of this)."""
    if reference != "authors":
        return config
    if name == "unet":
        return dataclasses.replace(config, num_heads=authors_heads(config.block_out_channels))
    if name == "text_encoder":
        return dataclasses.replace(config, layer_norm_eps=CLAP_TEXT_LAYER_NORM_EPS)
    return config


def is_unconditional_text(negative_prompt) -> bool:
    """No negative prompt: None, "" or only empty strings (as diffusers, where "" is the default)."""
    return all(not text for text in ([negative_prompt] if isinstance(negative_prompt, str) else negative_prompt or []))
