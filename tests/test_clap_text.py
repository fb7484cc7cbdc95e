"""CLAP text branch (audioldm2_lite/models/clap.py) against transformers' ClapModel.get_text_features."""

from __future__ import annotations

import gc

import pytest
import torch
from reference import PROMPTS, max_rel_error

import audioldm2_lite.models.attention as attention_module
from audioldm2_lite.generation.loading import load_component, load_tokenizer


def tokenize_like_diffusers(tokenizer, prompts):
    """AudioLDM2Pipeline.encode_prompt's CLAP call: padded to the tokenizer's maximum, truncated."""
    tokens = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    assert len(tokenizer(PROMPTS[2]).input_ids) > tokenizer.model_max_length  # truncation is exercised
    return tokens.input_ids, tokens.attention_mask


def transformers_twin(checkpoint):
    from transformers import ClapModel

    return ClapModel.from_pretrained(checkpoint / "text_encoder", dtype=torch.float32).eval()


def parity_error(checkpoint, padding_side="right") -> float:
    tokenizer = load_tokenizer(checkpoint, "tokenizer")
    tokenizer.padding_side = padding_side
    input_ids, attention_mask = tokenize_like_diffusers(tokenizer, PROMPTS)
    with torch.no_grad():
        ours = load_component(checkpoint, "text_encoder", reference="diffusers").get_text_features(input_ids,
                                                                                                  attention_mask)
        gc.collect()
        reference = transformers_twin(checkpoint).get_text_features(input_ids, attention_mask=attention_mask)
    gc.collect()
    return max_rel_error(ours, reference.pooler_output)


# diffusers pads on the right; left padding also checks that positions are counted over real tokens only
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_text_features_match_transformers(tiny_checkpoint, padding_side):
    error = parity_error(tiny_checkpoint, padding_side)
    # float32, same operations in a different order: rounding only
    assert error <= 1e-5, error


@pytest.mark.slow
def test_text_features_match_transformers_full_size(full_checkpoint):
    error = parity_error(full_checkpoint(components=("text_encoder", "tokenizer")))
    # float32 over 12 layers at 512 tokens, same operations in a different order: rounding only
    assert error <= 1e-5, error


def test_features_are_unit_vectors(tiny_checkpoint):
    input_ids, attention_mask = tokenize_like_diffusers(load_tokenizer(tiny_checkpoint, "tokenizer"), PROMPTS)
    with torch.no_grad():
        features = load_component(tiny_checkpoint, "text_encoder").get_text_features(input_ids, attention_mask)
    # the pipeline's cosine-similarity ranking relies on unit length; float32 rounding only
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(len(PROMPTS)), atol=1e-6, rtol=0)


def test_sdpa_matches_explicit_math(tiny_checkpoint, monkeypatch):
    model = load_component(tiny_checkpoint, "text_encoder")
    input_ids, attention_mask = tokenize_like_diffusers(load_tokenizer(tiny_checkpoint, "tokenizer"), PROMPTS)
    with torch.no_grad():
        fused = model.get_text_features(input_ids, attention_mask)
        monkeypatch.setattr(attention_module, "USE_SDPA", False)
        explicit = model.get_text_features(input_ids, attention_mask)
    # the same attention computed by two kernels in float32: rounding only
    assert max_rel_error(explicit, fused) <= 1e-5


def test_padding_can_be_cut_to_the_longest_prompt(tiny_checkpoint):
    """Padding only to the longest prompt (cheaper than to 512) gives the same features."""
    tokenizer = load_tokenizer(tiny_checkpoint, "tokenizer")
    short_prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[3]]
    model = load_component(tiny_checkpoint, "text_encoder")
    with torch.no_grad():
        padded = model.get_text_features(*tokenize_like_diffusers(tokenizer, short_prompts))
        cut = tokenizer(short_prompts, padding=True, return_tensors="pt")
        assert cut.input_ids.shape[1] < tokenizer.model_max_length
        trimmed = model.get_text_features(cut.input_ids, cut.attention_mask)
    # masked keys get exactly zero weight in float32, so only the summation order differs
    assert max_rel_error(trimmed, padded) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(tiny_checkpoint, dtype):
    input_ids, attention_mask = tokenize_like_diffusers(load_tokenizer(tiny_checkpoint, "tokenizer"), PROMPTS)
    with torch.no_grad():
        reference = load_component(tiny_checkpoint, "text_encoder").get_text_features(input_ids, attention_mask)
        half = load_component(tiny_checkpoint, "text_encoder", dtype=dtype).get_text_features(input_ids, attention_mask)
    assert half.dtype == dtype
    # 8 (bfloat16) or 11 (float16) significant bits through 2 layers: errors of a few 1e-3 on unit vectors
    assert max_rel_error(half, reference) <= 3e-2
