"""Text-to-speech: the transcription path (speech.py, conditioning.py) and the pipeline, against diffusers.

The tiny speech checkpoint (scripts/make_tiny_speech_checkpoint.py) has a VITS text_encoder_2, a VitsTokenizer
without phonemisation (so CI needs no espeak-ng for most tests) and GPT-2 generating 512 states.
"""

from __future__ import annotations

import pytest
import torch
from reference import max_rel_error
from test_conditioning import reference_encode, reference_pipeline
from test_pipeline import WAVEFORM_TOLERANCE, both, report

from audioldm2_lite.generation import speech
from audioldm2_lite.generation.conditioning import TextConditioner
from audioldm2_lite.generation.speech import SpeechConditioner
from audioldm2_lite.generation.speech import END_TOKEN_ID, SpeechDependencyError, tokenize_transcriptions

PROMPTS = ["A female reporter is speaking", "A man shouts angrily"]
TRANSCRIPTIONS = ["wish you a good day", "Get out, now!"]


@pytest.fixture(scope="module")
def tiny(tiny_speech_checkpoint):
    return SpeechConditioner.from_pretrained(tiny_speech_checkpoint), reference_pipeline(tiny_speech_checkpoint)


def assert_same(ours, reference):
    t5_states, t5_mask, generated = reference[1], reference[2], reference[0]
    assert ours.generated.shape == generated.shape and ours.generated.shape[1] == 512
    # fp32; we batch [uncond, cond] and read a KV cache where diffusers recomputes each of the 512 steps: the same
    # math in another summation order, rounding compounded over 512 fed-back states
    errors = max_rel_error(ours.generated, generated), max_rel_error(ours.t5_states, t5_states)
    print(f"speech encode_prompt: generated {errors[0]:.2e}, VITS states {errors[1]:.2e}")  # README table, with -s
    assert errors[0] <= 1e-5
    # the VITS states: rounding only (the unconditional half is exactly zero in both)
    assert errors[1] <= 1e-5
    # the mask: equal values (diffusers' is float32 here, promoted by concatenating its float zero mask)
    assert ours.t5_mask.dtype == torch.int64 and torch.equal(ours.t5_mask, t5_mask.long())


def test_end_token_and_padding(tiny):
    ours, _ = tiny
    tokenizer = ours.tokenizer_2
    ids, mask = tokenize_transcriptions(tokenizer, ["ab", "a" * 40], "cpu")
    slots = tokenizer.model_max_length
    assert ids.shape == mask.shape == (2, slots)
    # "ab": two phonemes, then the end token (attended to), then padding
    assert ids[0, 2] == END_TOKEN_ID and mask[0].tolist() == [1, 1, 1] + [0] * (slots - 3)
    assert (ids[0, 3:] == 0).all()
    # a transcription filling every slot is cut, with a warning, and gets no end token (as in diffusers)
    with pytest.warns(UserWarning, match=f"at most {slots} phonemes"):
        ids, mask = tokenize_transcriptions(tokenizer, ["a" * 40], "cpu")
    assert END_TOKEN_ID not in ids and mask.all()


def test_encode_prompt_parity_guided(tiny):
    ours, pipe = tiny
    kwargs = dict(do_classifier_free_guidance=True, num_waveforms_per_prompt=1)
    encoded = ours.encode_prompt(PROMPTS, negative_prompt=["noise", "hum"], transcription=TRANSCRIPTIONS, **kwargs)
    expected = reference_encode(pipe, PROMPTS, negative_prompt=["noise", "hum"], transcription=TRANSCRIPTIONS, **kwargs)
    assert_same(encoded, (expected[0], expected[1], expected[2]))
    # the unconditional half: all-zero VITS states and mask, whatever the negative prompt
    assert not encoded.t5_states[:2].any() and not encoded.t5_mask[:2].any() and encoded.t5_states[2:].any()


def test_one_transcription_for_every_prompt_and_repetition(tiny):
    ours, _ = tiny
    shared = ours.encode_prompt(PROMPTS, transcription="hello", num_waveforms_per_prompt=2, max_new_tokens=4)
    each = ours.encode_prompt(PROMPTS, transcription=["hello", "hello"], num_waveforms_per_prompt=2, max_new_tokens=4)
    assert shared.generated.shape == (8, 4, 24)  # [uncond, cond] x 2 prompts x 2 waveforms, 4 states asked for
    for part, expected in zip(shared, each):
        assert torch.equal(part, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_stays_close(tiny, tiny_speech_checkpoint, dtype):
    ours, _ = tiny
    half = SpeechConditioner.from_pretrained(tiny_speech_checkpoint, dtype=dtype)
    kwargs = dict(transcription="hello there", max_new_tokens=64)
    expected, encoded = ours.encode_prompt("a man", **kwargs), half.encode_prompt("a man", **kwargs)
    assert encoded.generated.dtype == encoded.t5_states.dtype == dtype
    # 8 (bfloat16) or 11 (float16) significant bits through VITS, the projection and 64 fed-back GPT-2 states
    # (measured 1.8e-2 / 2.6e-3)
    for part, reference in zip(encoded[:2], expected[:2]):
        assert max_rel_error(part, reference) <= 5e-2


def test_text_to_audio_state_count_is_overridden():
    # 8 (text-to-audio, or the field missing) cannot be what a speech UNet reads; anything else is the config's
    assert speech.speech_new_tokens(8) == 512 and speech.speech_new_tokens(512) == 512
    assert speech.speech_new_tokens(64) == 64


def test_transcription_errors(tiny, tiny_checkpoint):
    ours, _ = tiny
    with pytest.raises(ValueError, match="text-to-speech checkpoint: give the words to say"):
        ours.encode_prompt(PROMPTS)
    with pytest.raises(ValueError, match="1 transcriptions for 2 prompts"):
        ours.encode_prompt(PROMPTS, transcription=["only one"])
    with pytest.raises(ValueError, match="non-empty string"):
        ours.encode_prompt(PROMPTS[0], transcription=" ")
    text_to_audio = TextConditioner.from_pretrained(tiny_checkpoint)
    with pytest.raises(ValueError, match="`transcription` needs a text-to-speech checkpoint"):
        text_to_audio.encode_prompt("rain", transcription="hello")


def test_missing_phonemizer_is_one_clear_error(tiny, monkeypatch):
    ours, _ = tiny
    monkeypatch.setattr(ours.tokenizer_2, "phonemize", True)
    for missing in ("the `phonemizer` Python package is not installed", "the espeak-ng system library is not installed"):
        monkeypatch.setattr(speech, "missing_phonemizer", lambda missing=missing: missing)
        with pytest.raises(SpeechDependencyError) as caught:
            ours.encode_prompt(PROMPTS[0], transcription="hello")
        message = str(caught.value)
        assert missing in message and "phonemizer" in message and "espeak-ng" in message and "[speech]" in message


def test_real_phonemisation_matches_diffusers(tiny, monkeypatch):
    missing = speech.missing_phonemizer()
    if missing is not None:
        pytest.skip(f"phonemisation needs the phonemizer package and espeak-ng: {missing}")
    ours, pipe = tiny
    monkeypatch.setattr(ours.tokenizer_2, "phonemize", True)
    monkeypatch.setattr(pipe.tokenizer_2, "phonemize", True)
    ids, _ = tokenize_transcriptions(ours.tokenizer_2, ["wish you a good day"], "cpu")
    unknown = ours.tokenizer_2.unk_token_id
    assert (ids != unknown).all() and ours.tokenizer_2.decode(ids[0, :4]) != "wish"  # IPA symbols, all known
    kwargs = dict(do_classifier_free_guidance=False, num_waveforms_per_prompt=1)  # one GPT-2 run in diffusers
    encoded = ours.encode_prompt(PROMPTS[0], transcription="wish you a good day", **kwargs)
    expected = reference_encode(pipe, PROMPTS[0], transcription="wish you a good day", **kwargs)
    assert_same(encoded, expected)


@pytest.mark.parametrize("scheduler, steps", [("ddim", 3), ("dpmsolver++", 4)])
def test_tiny_speech_end_to_end(tiny_speech_checkpoint, scheduler, steps):
    ours, reference = both(tiny_speech_checkpoint, scheduler, 0.5, PROMPTS[0], transcription=TRANSCRIPTIONS[:1],
                           negative_prompt="noise", num_inference_steps=steps)
    assert ours.shape == reference.shape == (1, 8000)
    # fp32 through 512 generated states, the UNet steps, the VAE and the vocoder: see WAVEFORM_TOLERANCE
    assert report(f"tiny speech {scheduler}", ours, reference) <= WAVEFORM_TOLERANCE


def test_cli_speaks(tiny_speech_checkpoint, tmp_path):
    import soundfile

    from audioldm2_lite.cli import main

    out = tmp_path / "speech.wav"
    assert main(["A female reporter is speaking", "--transcription", "wish you a good day", "-o", str(out),
                 "--model", str(tiny_speech_checkpoint), "--seconds", "0.5", "--steps", "2", "--device", "cpu"]) == 0
    audio, rate = soundfile.read(out)
    assert rate == 16000 and audio.shape == (8000,)


@pytest.mark.parametrize("speaks, args, message", [
    (True, [], "this is a text-to-speech checkpoint: give the words to say"),
    (False, ["--transcription", "hello"], "`transcription` needs a text-to-speech checkpoint"),
    (True, ["--transcription", "  "], "the transcription is empty"),
])
def test_cli_transcription_errors_are_one_line(tiny_speech_checkpoint, tiny_checkpoint, tmp_path, capsys, speaks,
                                                args, message):
    from audioldm2_lite.cli import main

    out = tmp_path / "out.wav"
    model = tiny_speech_checkpoint if speaks else tiny_checkpoint
    try:  # in-process (a subprocess costs seconds of imports): an error is a return value or argparse's exit
        status = main(["A man speaks", *args, "-o", str(out), "--model", str(model), "--seconds", "0.5", "--steps", "1",
                       "--device", "cpu"])
    except SystemExit as exit:
        status = exit.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert status != 0 and message in lines[-1] and lines[-1].startswith("audioldm2-lite: error:") and not out.exists()


def teacher_forced_check(checkpoint, label):
    """Our conditioning against diffusers' stages and transformers' GPT-2 run once over the whole sequence.

    diffusers' own 512-step loop did not finish in 10 minutes at full size on a 2-core CPU, so the loop itself is compared at tiny size (test_encode_prompt_parity_guided) and here the 512
    states are checked by teacher forcing: one GPT-2 forward over [prompt, states 1..511] must give each state
    at its position.
    """
    ours = SpeechConditioner.from_pretrained(checkpoint, reference="diffusers")  # diffusers' CLAP eps
    ours.tokenizer_2.phonemize = False  # phonemisation has its own test; here the slots and the 512 states
    encoded = ours.encode_prompt(PROMPTS[0], transcription=TRANSCRIPTIONS[0], negative_prompt="noise")
    del ours
    pipe = reference_pipeline(checkpoint)
    pipe.tokenizer_2.phonemize = False
    slots = pipe.tokenizer_2.model_max_length
    tokens = pipe.tokenizer_2(TRANSCRIPTIONS[:1], padding="max_length", max_length=slots, truncation=True,
                              return_tensors="pt")
    ids, mask = tokens.input_ids, tokens.attention_mask
    end = int(mask.sum())  # diffusers' end token: the first pad id 0 becomes 182, attended to
    ids[0, end], mask[0, end] = END_TOKEN_ID, 1
    with torch.no_grad():
        vits = pipe.text_encoder_2.text_encoder(ids, attention_mask=mask, padding_mask=mask[..., None])[0]
        clap_tokens = pipe.tokenizer(["noise", PROMPTS[0]], padding="max_length", truncation=True, return_tensors="pt")
        clap = pipe.text_encoder.get_text_features(**clap_tokens)
        clap = getattr(clap, "pooler_output", clap)[:, None]  # transformers 5 wraps the features
        states = torch.cat([torch.zeros_like(vits), vits])  # [uncond, cond]
        masks = torch.cat([torch.zeros_like(mask), mask])
        projected = pipe.projection_model(hidden_states=clap, hidden_states_1=states,
                                          attention_mask=torch.ones(2, 1, dtype=torch.long), attention_mask_1=masks)
        # teacher forcing: the prompt, then every generated state but the last, all attended to
        new = encoded.generated.shape[1]
        sequence = torch.cat([projected.hidden_states, encoded.generated[:, :-1]], dim=1)
        full_mask = torch.cat([projected.attention_mask, torch.ones(2, new - 1, dtype=torch.long)], dim=1)
        hidden = pipe.language_model.transformer(inputs_embeds=sequence, attention_mask=full_mask).last_hidden_state
    reference = hidden[:, projected.hidden_states.shape[1] - 1:]  # (2, 512, 768): the state each position generates
    # fp32, our cache step by step against one full forward: rounding only
    errors = (max_rel_error(encoded.generated, reference), max_rel_error(encoded.t5_states, states))
    print(f"speech {label}, teacher-forced: generated {errors[0]:.2e}, VITS states {errors[1]:.2e}")  # with -s
    assert errors[0] <= 1e-5 and errors[1] <= 1e-5
    assert torch.equal(encoded.t5_mask, masks)
    return encoded


def test_tiny_matches_teacher_forced_transformers(tiny_speech_checkpoint):
    assert teacher_forced_check(tiny_speech_checkpoint, "tiny").generated.shape == (2, 512, 24)


@pytest.mark.slow
def test_full_size_matches_teacher_forced_transformers(full_checkpoint):
    checkpoint = full_checkpoint("audioldm2-speech-gigaspeech", components=(
        "tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "projection_model", "language_model",
    ))
    encoded = teacher_forced_check(checkpoint, "full size")
    assert encoded.t5_states.shape == (2, 310, 192) and encoded.generated.shape == (2, 512, 768)
