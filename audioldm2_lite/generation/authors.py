"""The authors' model: where diffusers' conversion of AudioLDM 2 computes a different model, and the switch.

The checkpoints were trained with the authors' code (haoheliu/AudioLDM2, `audioldm2` 0.1.0 on the package
index). Diffusers' conversion of them, and so diffusers' `AudioLDM2Pipeline`, departs from that code in three
places; `reference="authors"` runs the model the weights were trained as, `reference="diffusers"` runs what
diffusers 0.42 computes:

1. UNet attention heads. The authors' UNet config sets `num_head_channels: 32`: every transformer splits its
   channels into heads of 32 (`openaimodel.py`: num_heads = channels // 32). The conversion writes no head
   setting, so the hub configs hold `attention_head_dim: 8`, which diffusers reads as 8 heads everywhere:
   the same at 256 channels, but 8 heads of 48 and 80 instead of 12 and 20 heads of 32 at 384 and 640 channels
   and in the mid block.
2. The unconditional half of classifier-free guidance. The authors' unconditional GPT-2 sequence is zeros
   with a mask of ones (`AudioMAEConditionCTPoolRand.get_unconditional_condition`), their T5 one the states
   of "" with a mask of ones (`FlanT5HiddenState.get_unconditional_condition`): what training dropped the
   condition to. Diffusers encodes "" through CLAP, T5, the projection and GPT-2 instead. A negative prompt
   (not empty) keeps diffusers' behaviour under both references: it is diffusers' extension.
3. CLAP's text LayerNorm epsilon. The authors' text tower is RoBERTa-base (eps 1e-5); the hub's CLAP text
   config leaves it unset, so transformers' `ClapTextConfig` default 1e-12 applies.

The default reference is the authors' for the official checkpoints, recognised by their UNet config (a local
copy of cvssp/audioldm2 is the same model), and diffusers' for any other folder (a diffusers test fixture, a
fine-tune saved with another head layout). Given explicitly, either applies to any folder.
"""

from __future__ import annotations

import dataclasses

REFERENCES = ("authors", "diffusers")
HEAD_CHANNELS = 32  # the authors' `num_head_channels`
CLAP_TEXT_LAYER_NORM_EPS = 1e-5  # RoBERTa-base's

# The UNet configs the conversion script writes for the official checkpoints (cvssp/audioldm2, -large, -music
# and the speech ports): these fields, with the cross-attention layouts below.
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
    """Whether a hub UNet config is one of the official checkpoints' (as converted, or exported with the
    authors' heads written out per level)."""
    if any(unet_config.get(name) != value for name, value in OFFICIAL_UNET.items()):
        return False
    heads = unet_config.get("attention_head_dim")
    heads_as_converted = heads == 8 or heads == list(authors_heads(OFFICIAL_UNET["block_out_channels"]))
    return heads_as_converted and unet_config.get("cross_attention_dim") in OFFICIAL_CROSS_ATTENTION


def resolve_reference(reference: str | None, unet_config: dict) -> str:
    """The reference a checkpoint runs as: the one given, else the authors' for an official checkpoint."""
    if reference is None:
        return "authors" if is_official(unet_config) else "diffusers"
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


def describe(reference: str) -> str:
    """One line on what ran, for the console and the page."""
    if reference == "authors":
        return "the authors' model (heads of 32 channels, zero unconditional sequence, CLAP eps 1e-5)"
    return "diffusers' conversion (attention_head_dim as heads, unconditional from '', CLAP eps from the config)"


def is_unconditional_text(negative_prompt) -> bool:
    """No negative prompt: None, "" or only empty strings (as diffusers, where "" is the default)."""
    if negative_prompt is None:
        return True
    texts = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
    return all(not text for text in texts)
