"""Flan-T5 encoder (audioldm2_lite/models/t5.py) against transformers' T5EncoderModel."""

from __future__ import annotations

import gc

import pytest
import torch
from reference import PROMPTS, max_rel_error

import audioldm2_lite.models.attention as attention_module
from audioldm2_lite.models import t5
from audioldm2_lite.generation.loading import load_component, load_tokenizer


def tokenize_like_diffusers(tokenizer, prompts):
    """AudioLDM2Pipeline.encode_prompt's T5 call: padded to the longest prompt, truncated at the maximum."""
    tokens = tokenizer(prompts, padding=True, max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
    return tokens.input_ids, tokens.attention_mask


def transformers_twin(checkpoint):
    from transformers import T5EncoderModel

    return T5EncoderModel.from_pretrained(checkpoint / "text_encoder_2", dtype=torch.float32).eval()


def test_last_hidden_state_matches_transformers(tiny_checkpoint):
    tokenizer = load_tokenizer(tiny_checkpoint, "tokenizer_2")
    assert len(tokenizer(PROMPTS[2]).input_ids) > tokenizer.model_max_length  # truncation is exercised
    input_ids, attention_mask = tokenize_like_diffusers(tokenizer, PROMPTS)
    with torch.no_grad():
        ours = load_component(tiny_checkpoint, "text_encoder_2")(input_ids, attention_mask)
        reference = transformers_twin(tiny_checkpoint)(input_ids, attention_mask=attention_mask).last_hidden_state
    # float32, same operations in a different order: rounding only (padding positions included)
    assert max_rel_error(ours, reference) <= 1e-5


# transformers' T5 takes "[gated-]ACT": v1.0's "relu" (diffusers' test T5), v1.1 / Flan's "gated-gelu", and others
@pytest.mark.parametrize("feed_forward_proj", ["relu", "gated-gelu", "gated-silu", "gelu_new", "quick_gelu",
                                               "gated-relu2"])
def test_feed_forward_variants_match_transformers(tiny_checkpoint, tmp_path, feed_forward_proj):
    import json

    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    reference = T5EncoderModel(T5Config(vocab_size=120, d_model=32, d_ff=37, d_kv=8, num_heads=2, num_layers=2,
                                        feed_forward_proj=feed_forward_proj)).eval()
    reference.save_pretrained(tmp_path / "text_encoder_2")
    (tmp_path / "model_index.json").write_text(json.dumps({"text_encoder_2": ["transformers", "T5EncoderModel"]}))
    input_ids, attention_mask = tokenize_like_diffusers(load_tokenizer(tiny_checkpoint, "tokenizer_2"), PROMPTS)
    with torch.no_grad():
        ours = load_component(tmp_path, "text_encoder_2")(input_ids, attention_mask)
        expected = reference(input_ids, attention_mask=attention_mask).last_hidden_state
    assert max_rel_error(ours, expected) <= 1e-5  # float32 rounding, as above


def test_feed_forward_it_cannot_build_is_one_line():
    from audioldm2_lite.generation.loading import UnsupportedConfigError

    with pytest.raises(UnsupportedConfigError) as error:
        t5.T5Config.from_hub({"feed_forward_proj": "gated-prelu"})  # a learned activation, not a function
    assert "feed_forward_proj = 'gated-prelu'" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
def test_full_size_matches_transformers_and_stays_finite_in_float16(full_checkpoint):
    checkpoint = full_checkpoint(components=("text_encoder_2", "tokenizer_2"))
    input_ids, attention_mask = tokenize_like_diffusers(load_tokenizer(checkpoint, "tokenizer_2"), PROMPTS)
    assert input_ids.shape[1] == 128  # the long prompt is truncated at flan-t5's maximum
    with torch.no_grad():
        reference = transformers_twin(checkpoint)(input_ids, attention_mask=attention_mask).last_hidden_state
        gc.collect()
        ours = load_component(checkpoint, "text_encoder_2")(input_ids, attention_mask)
        gc.collect()
        # 24 layers float32, same operations in a different order: rounding only
        assert max_rel_error(ours, reference) <= 1e-5
        del reference
        # float16 on the CPU (torch has float16 CPU kernels), the first prompt alone to keep CI time down
        length = int(attention_mask[0].sum())
        half = load_component(checkpoint, "text_encoder_2", dtype=torch.float16)(
            input_ids[:1, :length], attention_mask[:1, :length]
        )
    gc.collect()
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    # 11 significant bits through 24 layers of random weights
    assert max_rel_error(half, ours[:1, :length]) <= 2e-2


def test_sdpa_matches_explicit_math(tiny_checkpoint, monkeypatch):
    model = load_component(tiny_checkpoint, "text_encoder_2")
    input_ids, attention_mask = tokenize_like_diffusers(load_tokenizer(tiny_checkpoint, "tokenizer_2"), PROMPTS)
    with torch.no_grad():
        fused = model(input_ids, attention_mask)
        monkeypatch.setattr(attention_module, "USE_SDPA", False)
        explicit = model(input_ids, attention_mask)
    # the same attention computed by two kernels in float32: rounding only
    assert max_rel_error(explicit, fused) <= 1e-5


def test_relative_position_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    # 300 positions reach past max_distance (128), so every kind of bucket is exercised
    position = torch.arange(300)
    reference = T5Attention._relative_position_bucket(
        position[None, :] - position[:, None], bidirectional=True, num_buckets=32, max_distance=128
    )
    assert torch.equal(t5.relative_position_buckets(300, 32, 128, "cpu"), reference)


def _scale_feed_forward_outputs(model, factor):
    with torch.no_grad():
        for block in model.encoder.block:
            block.layer[1].DenseReluDense.wo.weight.mul_(factor)
    return model


def test_float16_survives_activations_beyond_its_range(tiny_checkpoint):
    """The residual stream outgrows float16 (65504), as trained T5's does: the output must stay finite."""
    input_ids, attention_mask = tokenize_like_diffusers(load_tokenizer(tiny_checkpoint, "tokenizer_2"), PROMPTS)
    # wo outputs 1e5 times larger: the stream reaches ~1e5 or more, and RMS normalisation undoes the scale
    reference = _scale_feed_forward_outputs(load_component(tiny_checkpoint, "text_encoder_2"), 1e5)
    half = _scale_feed_forward_outputs(load_component(tiny_checkpoint, "text_encoder_2", dtype=torch.float16), 1e5)
    assert half.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32  # KEEP_FP32_KEYS
    assert half.shared.weight.dtype == torch.float16
    peak = []
    half.encoder.block[-1].register_forward_hook(lambda module, args, out: peak.append(out.abs().max()))
    with torch.no_grad():
        expected = reference(input_ids, attention_mask)
        output = half(input_ids, attention_mask)
    assert peak[0] > torch.finfo(torch.float16).max  # the test does reach past float16's range
    assert output.dtype == torch.float16 and torch.isfinite(output).all()
    # 11 significant bits through 2 layers
    assert max_rel_error(output, expected) <= 1e-2
