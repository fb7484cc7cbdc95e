"""The authors' model (generation/authors.py): each way diffusers' conversion departs from haoheliu's AudioLDM 2,
checked against the authors' recipe written out here, then end to end against diffusers driven as the authors'
model (tests/reference.py `diffusers_as_authors`, `authors_call`).

The authors' recipe, from their code (audioldm2 0.1.0):
- `openaimodel.py`: with `num_head_channels: 32`, num_heads = channels // 32 and dim_head = 32 (legacy mode:
  channels // num_heads, the same here), `attention.py` CrossAttention: softmax(q k^T / sqrt(dim_head)) v per head;
- `encoders/modules.py`: `AudioMAEConditionCTPoolRand.get_unconditional_condition` returns zeros (B, tokens, 768)
  with a mask of ones; `FlanT5HiddenState.get_unconditional_condition` the T5 states of "" (tokenised with
  padding=True: one token) with a mask of ones;
- the CLAP text tower is RoBERTa-base: LayerNorm eps 1e-5.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from reference import PROMPTS, authors_call, diffusers_as_authors, diffusers_pipeline, max_rel_error

from audioldm2_lite import AudioLDM2Pipeline
from audioldm2_lite.generation.authors import authors_heads, is_official
from audioldm2_lite.generation.conditioning import TextConditioner
from audioldm2_lite.generation.embeddings import encode_prompt as encode_with_embeddings
from audioldm2_lite.generation.loading import checkpoint_reference, load_component
from audioldm2_lite.models import unet as unet_module

from conftest import CONFIGS

# float32 end to end over 4 steps, the VAE and the vocoder, the same operations in another order: as the
# drop-in tests (test_diffusers_dropin.py WAVEFORM_TOLERANCE)
TOLERANCE = 1e-4


def official_unet_config(variant: str) -> dict:
    return json.loads((CONFIGS / variant / "unet" / "config.json").read_text())


# ----------------------------------------------------------------------------------------------
# 1. Heads of 32 channels


def authors_attention(attention: unet_module.Attention, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """The authors' cross-attention written out: heads of 32 channels, whatever the width."""
    q, k, v = attention.to_q(x), attention.to_k(context), attention.to_v(context)
    heads = q.shape[-1] // 32
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, 32).transpose(1, 2)  # (B, heads, L, 32)
    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / 32**0.5, dim=-1)
    out = (weights @ split(v)).transpose(1, 2).reshape(q.shape)  # (B, L, heads * 32)
    return attention.to_out[0](out)


def test_an_attention_of_384_channels_has_12_heads_of_32():
    torch.manual_seed(0)
    x, context = torch.randn(2, 10, 384), torch.randn(2, 7, 1024)
    twelve = unet_module.Attention(384, 12, 1024)
    eight = unet_module.Attention(384, 8, 1024)
    eight.load_state_dict(twelve.state_dict())  # the same weights, split 8 ways (diffusers' reading)
    expected = authors_attention(twelve, x, context)
    with torch.no_grad():
        # float32, the same products through SDPA: rounding only
        assert max_rel_error(twelve(x, context), expected) <= 1e-6
        # split 8 ways it is another function of the same weights: far outside rounding
        assert max_rel_error(eight(x, context), expected) > 1e-2


@pytest.mark.parametrize("variant, heads", [
    ("audioldm2", (4, 8, 12, 20)), ("audioldm2-large", (4, 8, 12, 20)), ("audioldm2-music", (4, 8, 12, 20)),
    ("audioldm2-speech-gigaspeech", (4, 8, 12, 20)),
])
def test_official_configs_are_recognised_and_get_the_authors_heads(variant, heads):
    config = official_unet_config(variant)
    assert config["attention_head_dim"] == 8 and is_official(config)  # as the conversion wrote it
    assert authors_heads(config["block_out_channels"]) == heads
    # an export that writes the heads out per level is the same model; 8 heads per level written out is not
    assert is_official({**config, "attention_head_dim": list(heads)})
    assert not is_official({**config, "attention_head_dim": [8, 8, 8, 8]})
    assert not is_official({**config, "block_out_channels": [128, 256, 384, 512]})


def test_unet_levels_and_mid_block_split_into_heads_of_32(tiny_authors_checkpoint):
    unet = load_component(tiny_authors_checkpoint, "unet", reference="authors")
    attentions = [m for m in unet.modules() if isinstance(m, unet_module.Attention)]
    assert attentions and all(m.to_q.out_features // m.num_heads == 32 for m in attentions)
    assert unet.mid_block.attentions[0].transformer_blocks[0].attn1.num_heads == 96 // 32
    plain = load_component(tiny_authors_checkpoint, "unet")  # not an official config: diffusers' reading
    assert {m.num_heads for m in plain.modules() if isinstance(m, unet_module.Attention)} == {2}


def test_the_authors_heads_need_levels_of_32_channels(tiny_checkpoint):
    with pytest.raises(ValueError, match="heads of 32 channels.*reference='diffusers'"):
        load_component(tiny_checkpoint, "unet", reference="authors")


def test_the_reference_is_decided_by_the_config_not_the_name(tiny_checkpoint, tmp_path):
    assert checkpoint_reference(tiny_checkpoint) == "diffusers"  # a test fixture: as diffusers runs it
    assert checkpoint_reference(tiny_checkpoint, "authors") == "authors"  # given: applies to any folder
    # a local copy of the official layout under any name is the official model
    copy = shutil.copytree(tiny_checkpoint, tmp_path / "my-copy")
    (copy / "unet" / "config.json").write_text(json.dumps(official_unet_config("audioldm2")))
    assert checkpoint_reference(copy) == "authors" and checkpoint_reference(copy, "diffusers") == "diffusers"
    with pytest.raises(ValueError, match="'authors' or 'diffusers'"):
        checkpoint_reference(copy, "original")


# ----------------------------------------------------------------------------------------------
# 2. The unconditional half


def test_the_unconditional_half_is_zeros_and_t5_of_the_empty_text(tiny_checkpoint):
    from transformers import T5EncoderModel

    ours = TextConditioner.from_pretrained(tiny_checkpoint, reference="authors")
    prompts = [PROMPTS[0], PROMPTS[3]]
    generated, t5_states, t5_mask = ours.encode_prompt(prompts)
    cond = ours.encode_prompt(prompts, do_classifier_free_guidance=False)
    assert torch.equal(generated[2:], cond.generated) and torch.equal(t5_states[2:], cond.t5_states)
    # GPT-2's slot: zeros, as many states as the conditional half
    assert torch.equal(generated[:2], torch.zeros_like(cond.generated))
    # T5's slot: T5("") as the authors tokenise it (padding=True: the one token "</s>"), attended to; the rest of
    # the row pads it to the prompts' length and is masked
    tokens = ours.tokenizer_2([""], padding=True, return_tensors="pt")
    assert tokens.input_ids.shape == (1, 1)
    with torch.no_grad():
        empty = T5EncoderModel.from_pretrained(tiny_checkpoint / "text_encoder_2")(**tokens).last_hidden_state
    assert t5_mask[:2].tolist() == [[1] + [0] * (t5_mask.shape[1] - 1)] * 2
    # float32, the same T5 with masked padding keys beside the token: rounding only
    assert max_rel_error(t5_states[:2, :1], empty.expand(2, -1, -1)) <= 1e-6


def test_a_negative_prompt_keeps_diffusers_unconditional_half(tiny_checkpoint):
    authors = TextConditioner.from_pretrained(tiny_checkpoint, reference="authors")
    diffusers = TextConditioner.from_pretrained(tiny_checkpoint, reference="diffusers")
    for negative in ("low quality", ["low quality"]):
        ours, theirs = authors.encode_prompt(PROMPTS[0], negative), diffusers.encode_prompt(PROMPTS[0], negative)
        # the same stages on the same tokens (CLAP's LayerNorm eps aside, which the tiny CLAP hardly feels)
        assert max_rel_error(ours.generated, theirs.generated) <= 1e-4
    # an empty negative prompt counts as none, as in diffusers, where "" is the default
    for negative in ("", [""]):
        assert not authors.encode_prompt(PROMPTS[0], negative).generated[0].any()


def test_given_embeddings_get_the_authors_unconditional_half(tiny_checkpoint):
    ours = TextConditioner.from_pretrained(tiny_checkpoint, reference="authors")
    cond = ours.encode_prompt(PROMPTS[0], do_classifier_free_guidance=False)
    encoded = encode_with_embeddings(ours, None, prompt_embeds=cond.t5_states, generated_prompt_embeds=cond.generated)
    assert torch.equal(encoded.generated, torch.cat([torch.zeros_like(cond.generated), cond.generated]))


# ----------------------------------------------------------------------------------------------
# 3. CLAP's text LayerNorm


def test_clap_text_layer_norm_is_robertas(tiny_checkpoint):
    from transformers import ClapConfig, ClapModel

    ours = load_component(tiny_checkpoint, "text_encoder", reference="authors")
    norms = [m for m in ours.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-5 for m in norms)
    config = ClapConfig.from_pretrained(tiny_checkpoint / "text_encoder")
    config.text_config.layer_norm_eps = 1e-5
    twin = ClapModel.from_pretrained(tiny_checkpoint / "text_encoder", config=config)
    tokens = TextConditioner.from_pretrained(tiny_checkpoint).clap_tokens(PROMPTS[:1] + PROMPTS[3:])
    with torch.no_grad():
        expected = twin.get_text_features(*tokens)
        expected = getattr(expected, "pooler_output", expected)
        # float32, the same operations in a different order: rounding only
        assert max_rel_error(ours.get_text_features(*tokens), expected) <= 1e-5


# ----------------------------------------------------------------------------------------------
# End to end: diffusers driven as the authors' model


def run_ours(pipe, prompt, guidance, seconds, latents, output_type):
    return torch.as_tensor(pipe(prompt, latents=latents.clone(), num_inference_steps=4, guidance_scale=guidance,
                                scheduler="ddim", audio_length_in_s=seconds, output_type=output_type).audios)


def run_authors(reference, prompt, guidance, seconds, latents, output_type):
    call = authors_call if guidance > 1 else lambda pipe, p, **kw: pipe(p, **kw)  # no unconditional half at 1
    return torch.as_tensor(call(reference, prompt, latents=latents.clone(), num_inference_steps=4,
                                guidance_scale=guidance, audio_length_in_s=seconds, output_type=output_type).audios)


@pytest.mark.parametrize("guidance", [3.5, 1.0])
def test_tiny_matches_diffusers_driven_as_the_authors_model(tiny_authors_checkpoint, guidance):
    ours = AudioLDM2Pipeline.from_pretrained(tiny_authors_checkpoint, device="cpu", dtype=torch.float32,
                                             reference="authors")
    assert ours.reference == "authors"
    reference = diffusers_as_authors(tiny_authors_checkpoint)
    reference.set_progress_bar_config(disable=True)
    latents = ours.prepare_latents(2, 64, torch.Generator().manual_seed(1))
    prompts = ["a dog barks", "rain on a tin roof at night"]
    for output_type in ("latent", "pt"):
        error = max_rel_error(run_ours(ours, prompts, guidance, 0.64, latents, output_type),
                              run_authors(reference, prompts, guidance, 0.64, latents, output_type))
        print(f"tiny, guidance {guidance}, {output_type}: {error:.2e}")
        assert error <= TOLERANCE
    # and it is another model than diffusers' reading of the same folder
    plain = diffusers_pipeline(tiny_authors_checkpoint)
    plain.set_progress_bar_config(disable=True)
    assert max_rel_error(run_ours(ours, prompts, guidance, 0.64, latents, "latent"),
                         torch.as_tensor(plain(prompts, latents=latents.clone(), num_inference_steps=4,
                                               guidance_scale=guidance, output_type="latent").audios)) > 1e-3


def test_reference_diffusers_still_matches_diffusers(tiny_authors_checkpoint):
    ours = AudioLDM2Pipeline.from_pretrained(tiny_authors_checkpoint, device="cpu", dtype=torch.float32,
                                             reference="diffusers")
    reference = diffusers_pipeline(tiny_authors_checkpoint)
    reference.set_progress_bar_config(disable=True)
    latents = ours.prepare_latents(1, 64, torch.Generator().manual_seed(1))
    expected = torch.as_tensor(reference("a dog barks", latents=latents.clone(), num_inference_steps=4,
                                         output_type="latent").audios)
    assert max_rel_error(run_ours(ours, "a dog barks", 3.5, 0.64, latents, "latent"), expected) <= 1e-5


@pytest.mark.slow
def test_full_size_default_is_the_authors_model(full_checkpoint):
    """The official configs at full size (random weights): ours by default against diffusers driven as the
    authors' model. 1.28 s keeps the full-size UNet calls short on 2 cores."""
    checkpoint = full_checkpoint()
    ours = AudioLDM2Pipeline.from_pretrained(checkpoint, device="cpu", dtype=torch.float32)
    assert ours.reference == "authors"
    latents = ours.prepare_latents(1, 128, torch.Generator().manual_seed(1))
    audio = run_ours(ours, "techno music", 3.5, 1.28, latents, "pt")
    del ours
    reference = diffusers_as_authors(checkpoint)
    reference.set_progress_bar_config(disable=True)
    error = max_rel_error(audio, run_authors(reference, "techno music", 3.5, 1.28, latents, "pt"))
    print(f"full size, authors' model: waveform {error:.2e}")
    assert error <= TOLERANCE


def test_speech_unconditional_half_is_zeros_without_running_gpt2(tiny_speech_checkpoint, monkeypatch):
    """The authors' speech model: the generated-sequence slot's unconditional value is zeros (512 x 768 in the
    authors' config, mask ones); the VITS slot, which the speech UNet does not read, holds zeros. GPT-2 then
    generates for the conditional rows only."""
    from audioldm2_lite.generation.speech import SpeechConditioner

    ours = SpeechConditioner.from_pretrained(tiny_speech_checkpoint, reference="authors")
    ours.tokenizer_2.phonemize = False  # phonemisation has its own test
    batches = []
    generate = ours.gpt2.generate
    monkeypatch.setattr(ours.gpt2, "generate", lambda prompt, *a, **k: batches.append(len(prompt)) or
                        generate(prompt, *a, **k))
    generated, states, mask = ours.encode_prompt("a calm voice", transcription="hello there")
    assert batches == [1] and generated.shape[:2] == (2, 512)
    assert not generated[0].any() and generated[1].any()
    assert not states[0].any() and not mask[0].any()


def test_every_program_takes_the_switch_and_keeps_what_ran(tiny_authors_checkpoint, tmp_path):
    """--reference in the CLI and with a prompt file: said once, kept in the file's metadata and the manifest."""
    import subprocess
    import sys

    import soundfile

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog barks\n")
    common = ["--model", str(tiny_authors_checkpoint), "--seconds", "0.32", "--steps", "2", "--seed", "0",
              "--dtype", "float32"]
    runs = ((["a dog barks", "-o", str(tmp_path / "one.wav"), "--reference", "authors"], "the authors' model"),
            (["--prompts-file", str(prompts), "--output-dir", str(tmp_path / "many"), "--reference", "diffusers"],
             "diffusers' conversion"))
    for arguments, said in runs:
        run = subprocess.run([sys.executable, "-m", "audioldm2_lite.cli", *arguments, *common], capture_output=True,
                             text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        lines = [line for line in run.stderr.splitlines() if "model: " in line]
        assert len(lines) == 1 and said in lines[0], run.stderr
    with soundfile.SoundFile(tmp_path / "one.wav") as file:
        assert json.loads(file.comment)["reference"] == "authors"
    [line] = (tmp_path / "many" / "manifest.jsonl").read_text().splitlines()
    assert json.loads(line)["reference"] == "diffusers"
