"""Prompt encoding: parity with diffusers' `AudioLDM2Pipeline.encode_prompt` on the same checkpoint.

Compared: the generated GPT-2 states, the T5 states and the T5 mask, [uncond, cond] with guidance.
"""

from __future__ import annotations

import pytest
import torch
from make_tiny_checkpoint import CORPUS, TINY_CLAP_MAX_LENGTH, TINY_T5_MAX_LENGTH
from reference import max_rel_error

from audioldm2_lite.generation.conditioning import TextConditioner
from audioldm2_lite.generation.embeddings import encode_prompt as encode_with_embeddings

PROMPTS = ["A dog barks", "Techno music with a strong bass line and a fast hi-hat pattern, then birds at dawn"]
LONG_PROMPT = " ".join(CORPUS.splitlines()[:6])  # more tokens than either tokenizer keeps


def reference_pipeline(checkpoint):
    """diffusers' pipeline with only the text stages (the UNet, VAE and vocoder are not needed here).

    The hub layout names the language model GPT2Model, which diffusers cannot generate with; load it as
    GPT2LMHeadModel (same weights plus an unused head), as tests/reference.py does; the head's logits are
    never read, so it is replaced by an identity to save their cost.
    """
    from diffusers import AudioLDM2Pipeline
    from transformers import GPT2LMHeadModel

    language_model = GPT2LMHeadModel.from_pretrained(f"{checkpoint}/language_model", dtype=torch.float32)
    language_model.lm_head = torch.nn.Identity()  # diffusers reads only hidden states: skip 50257-way logits
    return AudioLDM2Pipeline.from_pretrained(
        str(checkpoint), language_model=language_model, unet=None, vae=None, vocoder=None, scheduler=None,
        feature_extractor=None, torch_dtype=torch.float32,  # the full-size CLAP is stored in float64
    )


def reference_encode(pipe, prompt, **kwargs):
    with torch.no_grad():
        t5_states, t5_mask, generated = pipe.encode_prompt(prompt, "cpu", **kwargs)
    return generated, t5_states, t5_mask


def assert_same(ours, reference):
    generated, t5_states, t5_mask = reference
    assert ours.generated.shape == generated.shape and ours.t5_states.shape == t5_states.shape
    # fp32; we batch [uncond, cond] through each stage and read a KV cache where diffusers recomputes: the
    # same math in a different summation order, rounding compounded through T5, projection and 8 GPT-2 steps
    assert max_rel_error(ours.generated, generated) <= 1e-5
    assert max_rel_error(ours.t5_states, t5_states) <= 1e-5
    # the mask is the tokenizer's: exact, int64
    assert ours.t5_mask.dtype == t5_mask.dtype == torch.int64 and torch.equal(ours.t5_mask, t5_mask)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return TextConditioner.from_pretrained(tiny_checkpoint), reference_pipeline(tiny_checkpoint)


CASES = {
    "guided, empty negative": (PROMPTS, dict(do_classifier_free_guidance=True, num_waveforms_per_prompt=1)),
    "unguided": (PROMPTS, dict(do_classifier_free_guidance=False, num_waveforms_per_prompt=1)),
    "negatives, 2 per prompt": (
        PROMPTS, dict(do_classifier_free_guidance=True, num_waveforms_per_prompt=2, negative_prompt=["noise", "low quality"]),
    ),
    # the negative is longer than the prompt's T5 length: cut to it, as diffusers does
    "one prompt, longer negative": (
        "A cat meows", dict(do_classifier_free_guidance=True, num_waveforms_per_prompt=1, negative_prompt=PROMPTS[1]),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_encode_prompt_parity_tiny(tiny, case):
    ours, pipe = tiny
    prompt, kwargs = CASES[case]
    assert_same(ours.encode_prompt(prompt, **kwargs), reference_encode(pipe, prompt, **kwargs))


def test_long_prompt_is_cut_with_a_warning(tiny):
    ours, pipe = tiny
    clap_tokens = len(ours.tokenizer(LONG_PROMPT).input_ids)
    t5_tokens = len(ours.tokenizer_2(LONG_PROMPT).input_ids)
    assert clap_tokens > TINY_CLAP_MAX_LENGTH and t5_tokens > TINY_T5_MAX_LENGTH  # the case is what it claims
    prompts = [PROMPTS[0], LONG_PROMPT]
    with pytest.warns(UserWarning) as caught:
        encoded = ours.encode_prompt(prompts, num_waveforms_per_prompt=1)
    # one line for the long prompt: how many tokens each encoder kept of how many
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert f"CLAP kept {TINY_CLAP_MAX_LENGTH} of {clap_tokens} tokens" in messages[0]
    assert f"T5 kept {TINY_T5_MAX_LENGTH} of {t5_tokens} tokens" in messages[0]
    assert encoded.t5_states.shape[1] == TINY_T5_MAX_LENGTH
    assert_same(encoded, reference_encode(pipe, prompts, num_waveforms_per_prompt=1, do_classifier_free_guidance=True))


def test_precomputed_halves(tiny):
    """Either half given as embeddings (diffusers' prompt_embeds / negative_* arguments) gives the same result."""
    ours, pipe = tiny
    full = ours.encode_prompt(PROMPTS, negative_prompt=["noise", "hum"])
    (neg_gen, gen), (neg_t5, t5), (neg_mask, mask) = (part.chunk(2) for part in full)
    with_cond_given = encode_with_embeddings(
        ours, None, negative_prompt=["noise", "hum"], prompt_embeds=t5, attention_mask=mask, generated_prompt_embeds=gen
    )
    with_uncond_given = encode_with_embeddings(
        ours, PROMPTS, negative_prompt_embeds=neg_t5, negative_attention_mask=neg_mask,
        negative_generated_prompt_embeds=neg_gen
    )
    for encoded in (with_cond_given, with_uncond_given):
        for part, expected in zip(encoded, full):
            # fp32: only the batch composition of the text stages differs
            assert max_rel_error(part, expected) <= 1e-6
    # a missing mask means every T5 state is attended to
    unmasked = encode_with_embeddings(ours, None, prompt_embeds=t5, generated_prompt_embeds=gen,
                                      do_classifier_free_guidance=False)
    assert torch.equal(unmasked.t5_mask, torch.ones_like(mask))


def test_one_batched_generate_call(tiny, monkeypatch):
    ours, _ = tiny
    calls = []
    generate = ours.gpt2.generate
    monkeypatch.setattr(ours.gpt2, "generate", lambda *args, **kwargs: calls.append(args[0].shape) or generate(*args, **kwargs))
    ours.encode_prompt(PROMPTS, num_waveforms_per_prompt=2)
    assert len(calls) == 1 and calls[0][0] == 2 * len(PROMPTS)  # [uncond, cond], before the repetition


def test_clap_padded_to_longest_gives_the_same(tiny):
    ours, _ = tiny
    short = TextConditioner(
        ours.tokenizer, ours.tokenizer_2, ours.clap, ours.t5, ours.projection, ours.gpt2, clap_pad_to_max_length=False
    )
    for part, expected in zip(short.encode_prompt(PROMPTS), ours.encode_prompt(PROMPTS)):
        # fp32: masked padding changes nothing but the lengths of the softmax sums
        assert max_rel_error(part, expected) <= 1e-5


def test_bad_arguments(tiny):
    ours, _ = tiny
    with pytest.raises(ValueError, match="negative prompts"):
        ours.encode_prompt(PROMPTS, negative_prompt=["one"])
    with pytest.raises(ValueError, match="generated_prompt_embeds"):
        encode_with_embeddings(ours, None, prompt_embeds=torch.zeros(1, 3, 32))


@pytest.mark.slow
def test_encode_prompt_parity_full_size(full_checkpoint):
    checkpoint = full_checkpoint(components=(
        "tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "projection_model", "language_model",
    ))
    kwargs = dict(do_classifier_free_guidance=True, num_waveforms_per_prompt=1)
    ours = TextConditioner.from_pretrained(checkpoint, reference="diffusers")  # as diffusers (official configs)
    encoded = ours.encode_prompt(PROMPTS, **kwargs)  # short prompts: CLAP's 512 padded tokens cost enough
    del ours
    pipe = reference_pipeline(checkpoint)
    assert_same(encoded, reference_encode(pipe, PROMPTS, **kwargs))
