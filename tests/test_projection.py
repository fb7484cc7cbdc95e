"""Projection model: parity with diffusers' AudioLDM2ProjectionModel loaded from the same checkpoint."""

from __future__ import annotations

import pytest
import torch
from reference import max_rel_error

from audioldm2_lite import load_component
from audioldm2_lite.models.projection import ProjectionConfig


def reference_projection(checkpoint):
    from diffusers.pipelines.audioldm2 import AudioLDM2ProjectionModel

    return AudioLDM2ProjectionModel.from_pretrained(f"{checkpoint}/projection_model").eval()


def random_inputs(config: ProjectionConfig, batch=3, t5_length=7):
    """CLAP's single vector per prompt, T5 states with right-padding of different lengths per prompt."""
    clap_states = torch.randn(batch, 1, config.text_encoder_dim)
    t5_states = torch.randn(batch, t5_length, config.text_encoder_1_dim)
    clap_mask = torch.ones(batch, 1, dtype=torch.long)
    t5_mask = torch.ones(batch, t5_length, dtype=torch.long)
    for row in range(1, batch):
        t5_mask[row, t5_length - 2 * row :] = 0
    return clap_states, t5_states, clap_mask, t5_mask


def check_parity(checkpoint):
    ours = load_component(checkpoint, "projection_model")
    reference = reference_projection(checkpoint)
    # the text-to-speech projection adds a learned position per VITS slot: its input fills every slot
    clap_states, t5_states, clap_mask, t5_mask = random_inputs(ours.config, t5_length=ours.config.learned_positions or 7)
    with torch.no_grad():
        expected = reference(
            hidden_states=clap_states, hidden_states_1=t5_states, attention_mask=clap_mask, attention_mask_1=t5_mask
        )
        states, mask = ours(clap_states, t5_states, clap_mask, t5_mask)
    # fp32, the same two matmuls and concatenations: only kernel rounding can differ
    assert max_rel_error(states, expected.hidden_states) <= 1e-6
    # the mask is integer bookkeeping: exact, and of the tokenizer's dtype
    assert mask.dtype == expected.attention_mask.dtype and torch.equal(mask, expected.attention_mask)
    return ours, (clap_states, t5_states, clap_mask, t5_mask)


def test_projection_parity_tiny(tiny_checkpoint):
    check_parity(tiny_checkpoint)


def test_projection_parity_tiny_speech(tiny_speech_checkpoint):
    ours, _ = check_parity(tiny_speech_checkpoint)
    assert ours.config.learned_positions == 32 and ours.learnable_positional_embedding.abs().sum() > 0


def test_config_reads_misspelt_hub_field():
    config = ProjectionConfig.from_hub(
        {"_class_name": "AudioLDM2ProjectionModel", "text_encoder_dim": 3, "text_encoder_1_dim": 5, "langauge_model_dim": 7}
    )
    assert (config.text_encoder_dim, config.text_encoder_1_dim, config.language_model_dim) == (3, 5, 7)


def test_missing_masks_mean_attend_everywhere(tiny_checkpoint):
    """A missing mask is built from its states' shape (diffusers builds it from a slice of the states: a bug)."""
    ours = load_component(tiny_checkpoint, "projection_model")
    clap_states, t5_states, clap_mask, t5_mask = random_inputs(ours.config)
    ones_t5 = torch.ones_like(t5_mask)
    states, mask = ours(clap_states, t5_states, clap_mask, ones_t5)
    for masks in [(clap_mask, None), (None, ones_t5), (None, None)]:
        states_default, mask_default = ours(clap_states, t5_states, *masks)
        assert torch.equal(states_default, states) and torch.equal(mask_default, mask)
    assert mask.shape == (3, 1 + 7 + 4) and bool(mask.all())


@pytest.mark.slow
def test_projection_parity_full_size(full_checkpoint):
    check_parity(full_checkpoint(components=("projection_model",)))
