"""GPT-2 generator: parity with diffusers' `AudioLDM2Pipeline.generate_language_model` on the same weights."""

from __future__ import annotations

import types

import pytest
import torch
from reference import diffusers_pipeline, max_rel_error

import audioldm2_lite.models.attention as attention_module
from audioldm2_lite import load_component


def padded_prompt(dim, batch=3, length=12):
    """Projection-shaped prompts: [sos, clap, eos, sos_1, t5 ..., padding ..., eos_1], padding inside the sequence."""
    embeds = torch.randn(batch, length, dim)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        mask[row, length - 1 - 3 * row : length - 1] = 0  # the T5 part's padding, before eos_1
    return embeds, mask


def reference_generate(language_model, embeds, mask, max_new_tokens):
    """diffusers' generation loop, bound to just the language model (it reads nothing else of the pipeline)."""
    from diffusers import AudioLDM2Pipeline

    holder = types.SimpleNamespace(language_model=language_model)
    with torch.no_grad():
        return AudioLDM2Pipeline.generate_language_model(holder, embeds, attention_mask=mask, max_new_tokens=max_new_tokens)


@pytest.fixture(scope="module")
def tiny_models(tiny_checkpoint):
    return load_component(tiny_checkpoint, "language_model"), diffusers_pipeline(tiny_checkpoint).language_model


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_generate_parity_tiny(tiny_models, use_sdpa, monkeypatch):
    ours, reference = tiny_models
    monkeypatch.setattr(attention_module, "USE_SDPA", use_sdpa)
    embeds, mask = padded_prompt(ours.config.n_embd)
    generated = ours.generate(embeds, mask)  # N from the config
    assert generated.shape == (3, ours.config.max_new_tokens, ours.config.n_embd) == (3, 8, 24)
    expected = reference_generate(reference, embeds, mask, max_new_tokens=8)
    # fp32; the reference recomputes the whole sequence each step where we read a cache, so only the
    # summation order differs: rounding, compounded over 8 fed-back steps
    assert max_rel_error(generated, expected) <= 1e-5
    # the padding matters (the comparison would not notice a mask that is ignored otherwise)
    unmasked = ours.generate(embeds, torch.ones_like(mask))
    assert max_rel_error(unmasked[1:], expected[1:]) > 1e-3


def test_generate_other_lengths_and_no_mask(tiny_models):
    ours, reference = tiny_models
    embeds, _ = padded_prompt(ours.config.n_embd, batch=2, length=5)
    for new_tokens in (1, 3):
        expected = reference_generate(reference, embeds, None, max_new_tokens=new_tokens)
        # fp32 rounding only, as above
        assert max_rel_error(ours.generate(embeds, None, max_new_tokens=new_tokens), expected) <= 1e-5


def test_forward_matches_transformers(tiny_models):
    ours, reference = tiny_models
    embeds, mask = padded_prompt(ours.config.n_embd)
    with torch.no_grad():
        expected = reference.transformer(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    real = mask.bool()  # padded positions' outputs are never read; compare the real ones
    # fp32, one pass: kernel rounding only
    assert max_rel_error(ours(embeds, mask)[real], expected[real]) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_generate_half_precision(tiny_checkpoint, tiny_models, dtype):
    ours32, _ = tiny_models
    ours = load_component(tiny_checkpoint, "language_model", dtype=dtype)
    embeds, mask = padded_prompt(ours.config.n_embd)
    generated = ours.generate(embeds.to(dtype), mask)
    assert generated.dtype == dtype
    # 8-bit (bf16) / 11-bit (fp16) mantissas through 2 layers and 8 fed-back steps: a few percent at most
    assert max_rel_error(generated, ours32.generate(embeds, mask)) <= 5e-2


def test_prompt_too_long_is_an_error(tiny_models):
    ours, _ = tiny_models
    embeds = torch.randn(1, ours.config.n_positions, ours.config.n_embd)
    with pytest.raises(ValueError, match="positions"):
        ours.generate(embeds)


@pytest.mark.slow
def test_generate_parity_full_size(full_checkpoint):
    from transformers import GPT2LMHeadModel

    checkpoint = full_checkpoint(components=("language_model",))
    ours = load_component(checkpoint, "language_model")
    embeds, mask = padded_prompt(ours.config.n_embd, batch=2, length=20)
    generated = ours.generate(embeds, mask)
    del ours
    reference = GPT2LMHeadModel.from_pretrained(f"{checkpoint}/language_model").eval()
    reference.lm_head = torch.nn.Identity()  # diffusers reads only hidden states: skip 50257-way logits
    expected = reference_generate(reference, embeds, mask, max_new_tokens=8)
    # fp32 rounding only (cache vs recomputation), compounded over 12 layers and 8 fed-back steps
    assert max_rel_error(generated, expected) <= 1e-5


# The language_model folder as the hub and every diffusers version write it: GPT2Model (official, diffusers up to
# 0.32), GPT2LMHeadModel (diffusers 0.33 and later; safetensors leave the tied head out, torch.save keeps it), and
# old files with the causal-mask buffers of transformers < 4.3x. All load to the same tensors.
@pytest.mark.parametrize("layout", ["lm_head_safetensors", "lm_head_bin_with_head", "gpt2model_bin_with_buffers"])
def test_every_language_model_layout_loads_the_same(tiny_checkpoint, tmp_path, layout):
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from audioldm2_lite.models.gpt2 import lm_head_state_dict

    folder = shutil.copytree(tiny_checkpoint / "language_model", tmp_path / "language_model")
    shutil.copy(tiny_checkpoint / "model_index.json", tmp_path)
    bare = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    if layout == "gpt2model_bin_with_buffers":
        n = json.loads((folder / "config.json").read_text())["n_positions"]
        causal = torch.tril(torch.ones(n, n, dtype=torch.bool))[None, None]
        buffers = {f"h.{i}.attn.{name}": value for i in range(2)
                   for name, value in (("bias", causal), ("masked_bias", torch.tensor(-1e4)))}
        torch.save({**bare, **buffers}, folder / "pytorch_model.bin")
    else:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
        prefixed = lm_head_state_dict(bare)
        if layout == "lm_head_safetensors":
            save_file(prefixed, folder / "model.safetensors")
        else:
            torch.save({**prefixed, "lm_head.weight": bare["wte.weight"]}, folder / "pytorch_model.bin")
    expected = load_component(tiny_checkpoint, "language_model").state_dict()
    loaded = load_component(tmp_path, "language_model").state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
