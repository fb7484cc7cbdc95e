"""CLAP audio tower, its front end and candidate ranking vs transformers / librosa / diffusers.

- HTSAT + projection vs `transformers.ClapModel.get_audio_features` on identical input_features
  (tiny and, slow, full-size random weights).
- The log-mel front end vs `ClapFeatureExtractor` on the same 48 kHz audio (short, exactly 10 s, longer).
- The torch x3 resampler vs `librosa.resample` (soxr HQ), the only step that is not exact.
- The ranking vs diffusers' `AudioLDM2Pipeline.score_waveforms` on the tiny checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import max_rel_error, randomize_untrained_audio_tensors

import audioldm2_lite.models.attention as attention_module
from audioldm2_lite.models import clap_audio
from audioldm2_lite.generation.audio_features import (
    ClapFeatureConfig,
    clap_input_features,
    resample,
)
from audioldm2_lite.generation.ranking import CLAP_AUDIO_STAGE, load_audio_tower, rank_waveforms
from audioldm2_lite.generation.loading import load_component

OFFICIAL_FEATURES = Path(__file__).resolve().parents[1] / "scripts/checkpoint_configs/audioldm2/feature_extractor"


def reference_clap(folder, dtype=torch.float32):
    from transformers import ClapModel

    return ClapModel.from_pretrained(str(folder), dtype=dtype).eval()


def perturb_untrained_tensors(reference_model, ours) -> None:
    """Give the tensors a fresh init leaves trivial (relative position bias tables: zeros; BatchNorm
    statistics: 0 and 1) random values in the reference, and copy the whole audio tower into ours.

    Without this a wrong bias lookup or a skipped normalisation would pass unnoticed. Our strict load
    from the checkpoint folder has already proved the names and shapes.
    """
    randomize_untrained_audio_tensors(reference_model)
    audio_state = {
        k: v for k, v in reference_model.state_dict().items()
        if k.startswith(("audio_model.", "audio_projection.")) and not k.endswith("relative_position_index")
    }
    ours.load_state_dict(audio_state, strict=True)


def random_log_mel(batch: int, frames: int, mels: int, channels: int = 1) -> torch.Tensor:
    return -40 + 20 * torch.randn(batch, channels, frames, mels)  # dB, roughly the range real audio gives


def test_relative_position_index_matches_stored_tables(tiny_checkpoint):
    """The tables we recompute in forward (and skip when loading) equal the ones the hub stores."""
    from audioldm2_lite.generation.loading import read_weights

    state_dict, _ = read_weights(tiny_checkpoint / "text_encoder")
    stored = {k: v for k, v in state_dict.items() if k.endswith("relative_position_index")}
    assert stored
    for key, table in stored.items():
        window = round(table.shape[0] ** 0.5)
        assert torch.equal(clap_audio.relative_position_index(window), table), key


@pytest.mark.parametrize("frames", [251, 256])  # the extractor's 10 s (stretched to 256 by bicubic), and 256 as is
@pytest.mark.parametrize("use_sdpa", [True, False])
def test_audio_features_match_transformers_tiny(tiny_checkpoint, frames, use_sdpa, monkeypatch):
    monkeypatch.setattr(attention_module, "USE_SDPA", use_sdpa)
    ours = load_component(tiny_checkpoint, "text_encoder", stage=CLAP_AUDIO_STAGE)
    reference = reference_clap(tiny_checkpoint / "text_encoder")
    perturb_untrained_tensors(reference, ours)
    x = random_log_mel(3, frames, ours.config.num_mel_bins)
    with torch.no_grad():
        expected = reference.get_audio_features(input_features=x).pooler_output
        got = ours(x)
    # fp32, same operations up to summation order: a few ulp of the unit-norm output
    assert got.shape == expected.shape == (3, ours.config.projection_dim)
    assert max_rel_error(got, expected) <= 1e-5


def test_four_channel_tower_matches_transformers(fusion_checkpoint):
    """HTSAT reading four log-mels per clip (patch_embed_input_channels=4, as diffusers' test checkpoints)."""
    ours = load_component(fusion_checkpoint, "text_encoder", stage=CLAP_AUDIO_STAGE)
    reference = reference_clap(fusion_checkpoint / "text_encoder")
    perturb_untrained_tensors(reference, ours)
    x = random_log_mel(3, 251, ours.config.num_mel_bins, channels=4)  # four different mels: every channel counts
    with torch.no_grad():
        expected = reference.get_audio_features(input_features=x).pooler_output
        got = ours(x)
    # fp32, same operations up to summation order: a few ulp of the unit-norm output
    assert ours.config.input_channels == 4 and got.shape == expected.shape
    assert max_rel_error(got, expected) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_audio_features_low_precision_tiny(tiny_checkpoint, dtype):
    ours32 = load_component(tiny_checkpoint, "text_encoder", stage=CLAP_AUDIO_STAGE)
    ours = load_component(tiny_checkpoint, "text_encoder", stage=CLAP_AUDIO_STAGE, dtype=dtype)
    x = random_log_mel(2, 251, ours.config.num_mel_bins)
    with torch.no_grad():
        expected = ours32(x)
        got = ours(x)
    assert got.dtype == dtype
    # measured 2.6e-3 (bf16) and 5.5e-4 (fp16): bf16 keeps 8 bits of mantissa (fp16 11), the
    # normalisation and folding run in fp32; a few bf16 / fp16 ulps of a unit vector
    assert max_rel_error(got.float(), expected) <= (2e-2 if dtype == torch.bfloat16 else 5e-3)


@pytest.mark.slow
def test_audio_features_match_transformers_full(full_checkpoint):
    folder = full_checkpoint("audioldm2", ["text_encoder"])
    ours = load_component(folder, "text_encoder", stage=CLAP_AUDIO_STAGE)
    reference = reference_clap(folder / "text_encoder")
    perturb_untrained_tensors(reference, ours)
    x = random_log_mel(1, 1001, 64)  # 10 s at hop 480: the official feature extractor's output
    with torch.no_grad():
        expected = reference.get_audio_features(input_features=x).pooler_output
        got = ours(x)
    del reference, ours
    # fp32 through 18 Swin blocks, same operations up to summation order
    assert max_rel_error(got, expected) <= 1e-5


# ----------------------------------------------------------------------------------------------
# front end


def test_signal(seconds: float, sampling_rate: int, seed: int = 0) -> np.ndarray:
    """A stand-in for generated audio: a vibrato harmonic tone (220 Hz, 29 partials) and gated noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    f0 = 220 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sampling_rate
    x = 0.1 * sum(np.sin(k * phase) / k for k in range(1, 30))
    x = x + 0.05 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 0.5 * t) > 0)
    return x.astype(np.float32)


test_signal.__test__ = False  # a helper, not a test


@pytest.mark.parametrize("features", ["tiny", "official"])
@pytest.mark.parametrize("seconds", [3.0, 10.0, 12.5])  # repeat-pad, as is, crop
def test_front_end_matches_feature_extractor(tiny_checkpoint, features, seconds):
    from transformers import ClapFeatureExtractor

    folder = tiny_checkpoint / "feature_extractor" if features == "tiny" else OFFICIAL_FEATURES
    extractor = ClapFeatureExtractor.from_pretrained(str(folder))
    config = ClapFeatureConfig.from_hub(json.loads((folder / "preprocessor_config.json").read_text()))
    audio = test_signal(seconds, 48000)
    # the extractor crops longer audio at random; ours keeps the first 10 s: give it that crop
    expected = extractor([audio[: config.max_length]], sampling_rate=48000, return_tensors="pt")
    got, is_longer = clap_input_features(torch.from_numpy(audio)[None], 48000, config)
    assert got.dtype == torch.float32 and got.shape == expected.input_features.shape
    # both compute in float64; the extractor stores the STFT as complex64 and returns float32, so the
    # dB values (|x| <= 100) agree to float32 rounding
    assert max_rel_error(got, expected.input_features) <= 1e-6
    assert is_longer.tolist() == [[seconds > 10]]


@pytest.mark.parametrize("seconds, padding", [
    (3.0, "repeatpad"), (3.0, "repeat"), (3.0, "pad"),  # four copies of one padded log-mel
    (10.0, "repeatpad"), (10.005, "repeatpad"),  # as is; longer by less than a hop (the whole clip)
    (12.5, "repeatpad"), (31.0, "repeatpad"),  # the whole clip stretched, then front, middle and back crops
])
def test_fusion_front_end_matches_feature_extractor(seconds, padding, monkeypatch):
    from transformers import ClapFeatureExtractor

    extractor = ClapFeatureExtractor.from_pretrained(str(OFFICIAL_FEATURES), truncation="fusion", padding=padding)
    hub = json.loads((OFFICIAL_FEATURES / "preprocessor_config.json").read_text())
    config = ClapFeatureConfig.from_hub({**hub, "truncation": "fusion", "padding": padding})
    audio = test_signal(seconds, 48000)
    # the extractor starts each crop of a longer clip at a random point of its third of the possible starts;
    # ours at the first point of each third: make the reference draw that one
    monkeypatch.setattr(np.random, "choice", lambda starts: starts[0])
    expected = extractor([audio], sampling_rate=48000, return_tensors="pt")
    got, is_longer = clap_input_features(torch.from_numpy(audio)[None], 48000, config)
    assert got.shape == expected.input_features.shape == (1, 4, 1001, 64)
    # float64 spectrograms returned as float32 on both sides (and the stretch in float32 on both): the dB
    # values (|x| <= 100) agree to float32 rounding
    assert max_rel_error(got, expected.input_features) <= 1e-6
    assert is_longer.tolist() == [[len(audio) // 480 + 1 > 1001]]


@pytest.mark.parametrize("kind", ["harmonic", "noise"])
def test_resampler_matches_librosa(kind):
    import librosa

    if kind == "harmonic":
        audio = test_signal(4.0, 16000)
    else:  # white noise: full band, the most energy near 8 kHz where the two filters differ most
        audio = (0.3 * np.random.default_rng(1).standard_normal(64000)).astype(np.float32)
    expected = librosa.resample(audio, orig_sr=16000, target_sr=48000)  # soxr HQ, float32
    got = resample(torch.from_numpy(audio).double()[None], 16000, 48000)[0]
    # Different low-pass filters (ours a Kaiser-windowed sinc fitted to soxr HQ's response, which it
    # matches to 7e-6 of the peak): measured 2e-5 (harmonic) and 4e-5 (noise) of the peak
    assert got.shape == expected.shape
    assert max_rel_error(got, torch.from_numpy(expected)) <= 1e-4


def test_front_end_from_16k_close_to_librosa_and_extractor():
    """The whole 16 kHz -> input_features chain at the official settings vs diffusers' (librosa + extractor)."""
    import librosa
    from transformers import ClapFeatureExtractor

    extractor = ClapFeatureExtractor.from_pretrained(str(OFFICIAL_FEATURES))
    config = ClapFeatureConfig.from_hub(json.loads((OFFICIAL_FEATURES / "preprocessor_config.json").read_text()))
    noise = (0.3 * np.random.default_rng(1).standard_normal(64000)).astype(np.float32)
    audio = np.stack([test_signal(4.0, 16000), noise])
    expected = extractor(list(librosa.resample(audio, orig_sr=16000, target_sr=48000)), sampling_rate=48000,
                         return_tensors="pt").input_features
    got, _ = clap_input_features(torch.from_numpy(audio), 16000, config)
    # Only the resamplers differ. Measured: 0.03 dB at most, in the mel bins of 7.6 - 9 kHz where the two
    # low-pass filters' transition bands differ; below 1e-3 dB in the other bins (values span -100..+40 dB)
    assert (got - expected).abs().max() <= 0.1


def test_resampler_runs_in_float32_and_keeps_length():
    x = torch.randn(2, 1601)
    y = resample(x, 16000, 48000)
    assert y.shape == (2, 4803) and y.dtype == torch.float32
    assert max_rel_error(y, resample(x.double(), 16000, 48000)) <= 1e-5


# ----------------------------------------------------------------------------------------------
# ranking


def test_rank_waveforms_orders():
    text = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    audio = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    order = rank_waveforms(audio, text, 3)
    scores = text @ audio.T
    for p in range(2):
        own = order[3 * p: 3 * p + 3]
        assert sorted(own.tolist()) == [3 * p, 3 * p + 1, 3 * p + 2]  # each prompt keeps its own candidates
        assert torch.all(scores[p, own][:-1] >= scores[p, own][1:])  # best first
    across = rank_waveforms(audio, text, 3, across_prompts=True).view(2, 3)
    assert torch.equal(across, torch.argsort(scores, dim=1, descending=True)[:, :3])


def reference_scores(pipe, prompts, waveforms_16k: np.ndarray) -> torch.Tensor:
    """diffusers' score_waveforms up to the argsort: librosa, ClapFeatureExtractor, ClapModel."""
    import librosa

    inputs = pipe.tokenizer(prompts, return_tensors="pt", padding=True)
    audio_48k = librosa.resample(waveforms_16k, orig_sr=16000, target_sr=48000)
    inputs["input_features"] = pipe.feature_extractor(list(audio_48k), return_tensors="pt",
                                                      sampling_rate=48000).input_features
    with torch.no_grad():
        return pipe.text_encoder(**inputs).logits_per_text  # (P, P * n)


@pytest.mark.parametrize("checkpoint", ["tiny_checkpoint", "fusion_checkpoint"])
@pytest.mark.parametrize("prompts", [["A dog barks in the distance."], ["Techno music.", "Birds chirping at dawn."]])
def test_ranking_matches_diffusers(request, checkpoint, prompts):
    from reference import diffusers_pipeline

    checkpoint = request.getfixturevalue(checkpoint)
    pipe = diffusers_pipeline(checkpoint)
    n = 4
    # candidates <= 10 s (diffusers' random crop never fires), distinct enough to be ranked apart
    waveforms = np.stack([test_signal(4.0, 16000, seed=i) * (0.3 + 0.4 * i) for i in range(len(prompts) * n)])
    waveforms[1] = np.roll(waveforms[1], 4000)
    waveforms[2] = (0.2 * np.random.default_rng(2).standard_normal(waveforms.shape[1])).astype(np.float32)
    waveforms[3] = np.sin(2 * np.pi * 1000 * np.arange(waveforms.shape[1]) / 16000).astype(np.float32) * 0.5

    ranked = pipe.score_waveforms(text=prompts, audio=torch.from_numpy(waveforms), num_waveforms_per_prompt=n,
                                  device="cpu", dtype=torch.float32)
    expected_order = [int(np.flatnonzero((waveforms == row.numpy()).all(axis=1))[0]) for row in ranked]

    ours, features_config = load_audio_tower(checkpoint)
    features, _ = clap_input_features(torch.from_numpy(waveforms), 16000, features_config)
    with torch.no_grad():
        audio_embeds = ours(features)
        inputs = pipe.tokenizer(prompts, return_tensors="pt", padding=True)
        text_embeds = pipe.text_encoder.get_text_features(**inputs).pooler_output  # the text tower is clap.py's

    # the comparison is meaningful only where the reference's scores are further apart than our error
    expected_scores = reference_scores(pipe, prompts, waveforms) / pipe.text_encoder.logit_scale_t.exp()
    our_scores = text_embeds @ audio_embeds.T
    error = (our_scores - expected_scores).abs().max()
    gaps = expected_scores.sort(dim=1).values.diff(dim=1)
    assert error < gaps.min() / 2, (error, gaps.min())
    # Only the resamplers differ (on the same 48 kHz audio the features agree to float32 rounding). Measured
    # on the cosine similarities: 2e-7 with the tiny features; 1.7e-5 with "fusion" ones, whose top mel bin
    # (HTK scale) lies wholly above the 16 kHz audio's 8 kHz band edge and so holds only the two low-pass
    # filters' stopband leakage near the -100 dB floor, where they differ by up to 1 dB
    assert error <= (5e-5 if features_config.truncation == "fusion" else 1e-5)

    assert rank_waveforms(audio_embeds, text_embeds, n, across_prompts=True).tolist() == expected_order
    if len(prompts) == 1:  # with one prompt, ranking within the prompt is the same thing
        assert rank_waveforms(audio_embeds, text_embeds, n).tolist() == expected_order
