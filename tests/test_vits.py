"""VITS phoneme encoder (audioldm2_lite/models/vits.py) against transformers' VitsModel text encoder."""

from __future__ import annotations

import json

import pytest
import torch
from reference import max_rel_error

from audioldm2_lite.generation.loading import CheckpointError, load_component, load_tokenizer
from audioldm2_lite.generation.speech import VITS_STAGE

TRANSCRIPTIONS = ["wish you a good day", "Hello, World!", "a"]


def phoneme_ids(checkpoint, texts):
    """Ids and mask padded to the tokenizer's maximum, as the pipeline feeds them (end token included)."""
    tokenizer = load_tokenizer(checkpoint, "tokenizer_2")
    tokens = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    return tokens.input_ids, tokens.attention_mask


def transformers_states(checkpoint, input_ids, attention_mask):
    from transformers import VitsModel

    model = VitsModel.from_pretrained(checkpoint / "text_encoder_2", dtype=torch.float32).eval()
    with torch.no_grad():  # the call diffusers makes
        return model.text_encoder(input_ids, attention_mask=attention_mask, padding_mask=attention_mask[..., None])[0]


def test_last_hidden_state_matches_transformers(tiny_speech_checkpoint):
    input_ids, attention_mask = phoneme_ids(tiny_speech_checkpoint, TRANSCRIPTIONS)
    assert (attention_mask == 0).any() and input_ids.shape[1] > 2 * 2 + 1  # padding and offsets beyond the window
    with torch.no_grad():
        ours = load_component(tiny_speech_checkpoint, "text_encoder_2", stage=VITS_STAGE)(input_ids, attention_mask)
    reference = transformers_states(tiny_speech_checkpoint, input_ids, attention_mask)
    # float32, the same sums in a different order (the relative-position terms gathered, not skewed): rounding only
    error = max_rel_error(ours, reference)
    print(f"VITS tiny: max_rel_error {error:.2e}")  # README table, with -s
    assert error <= 1e-5
    assert torch.equal(ours[attention_mask == 0], torch.zeros_like(ours[attention_mask == 0]))  # padding is zero


def test_strict_load_names_the_ignored_parts(tiny_speech_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tiny_speech_checkpoint / "text_encoder_2"
    tensors = load_file(folder / "model.safetensors")
    assert any(k.startswith(("flow.", "decoder.", "duration_predictor.", "posterior_encoder.")) for k in tensors)
    model = load_component(tiny_speech_checkpoint, "text_encoder_2", stage=VITS_STAGE)  # the unused parts load without complaint
    assert not any(name.startswith(("flow", "decoder")) for name in model.state_dict())

    # a tensor that is neither used nor named as ignored, and a missing one, are errors naming them
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text((tiny_speech_checkpoint / "model_index.json").read_text())
    (broken / "text_encoder_2").mkdir()
    (broken / "text_encoder_2" / "config.json").write_text((folder / "config.json").read_text())
    tensors["surprise.weight"] = torch.zeros(2)
    del tensors["text_encoder.encoder.layers.0.attention.emb_rel_k"]
    save_file(tensors, broken / "text_encoder_2" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"(?s)emb_rel_k.*surprise\.weight"):
        load_component(broken, "text_encoder_2", stage=VITS_STAGE)


def test_largest_relative_offset_is_used(tiny_speech_checkpoint):
    """The value embedding of the window's last offset (+2 in the tiny model) reaches the output."""
    input_ids, attention_mask = phoneme_ids(tiny_speech_checkpoint, TRANSCRIPTIONS[:1])
    model = load_component(tiny_speech_checkpoint, "text_encoder_2", stage=VITS_STAGE)
    with torch.no_grad():
        before = model(input_ids, attention_mask)
        model.text_encoder.encoder.layers[0].attention.emb_rel_v[0, -1] += 1.0
        after = model(input_ids, attention_mask)
    assert max_rel_error(after, before) > 1e-3


@pytest.mark.slow
def test_full_size_matches_transformers(full_checkpoint):
    checkpoint = full_checkpoint("audioldm2-speech-gigaspeech", components=("text_encoder_2", "tokenizer_2"))
    config = json.loads((checkpoint / "text_encoder_2" / "config.json").read_text())
    assert (config["vocab_size"], config["hidden_size"], config["num_hidden_layers"]) == (183, 192, 6)
    tokenizer = load_tokenizer(checkpoint, "tokenizer_2")
    tokenizer.phonemize = False  # CI-safe; the ids are what matter here
    tokens = tokenizer(TRANSCRIPTIONS, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    assert tokens.input_ids.shape[1] == 310  # the speech checkpoints' phoneme slots
    with torch.no_grad():
        ours = load_component(checkpoint, "text_encoder_2", stage=VITS_STAGE)(tokens.input_ids, tokens.attention_mask)
    reference = transformers_states(checkpoint, tokens.input_ids, tokens.attention_mask)
    # float32 through 6 layers of random weights, sums in a different order: rounding only
    error = max_rel_error(ours, reference)
    print(f"VITS full size: max_rel_error {error:.2e}")  # README table, with -s
    assert error <= 1e-5
