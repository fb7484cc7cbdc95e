"""The log-mel front end (mel.py) against the published recipe, written here with numpy, scipy and librosa."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.signal
import torch
from reference import max_rel_error

from audioldm2_lite import load_component, load_config
from audioldm2_lite.generation.mel import MelConfig, log_mel, mel_filterbank, normalize_waveform, waveform_to_mel

RATE = 16000


def reference_log_mel(waveform: np.ndarray, num_frames: int) -> np.ndarray:
    """haoheliu/AudioLDM2's `wav_to_fbank` for a 16 kHz waveform, in float64 numpy, (num_frames, 64).

    read_wav_file: normalize_wav (mean, peak 0.5), pad_wav to the segment, peak 0.5 again (the original
    divides by the bare peak there; + 1e-8 as ours, or silence would be NaN); _wav2fbank: clip to [-1, 1],
    TacotronSTFT (reflect pad 512, periodic Hann 1024, hop 160, |.|, librosa's mel basis, log max(., 1e-5));
    _pad_spec: cut or zero-pad to the target length.
    """
    w = waveform - waveform.mean()
    w = 0.5 * w / (np.abs(w).max() + 1e-8)
    segment = num_frames * 160
    w = np.pad(w, (0, segment - len(w))) if segment > len(w) else w[:segment]
    w = 0.5 * w / (np.abs(w).max() + 1e-8)
    w = np.clip(w, -1, 1)
    frames = librosa.util.frame(np.pad(w, 512, mode="reflect"), frame_length=1024, hop_length=160)  # (1024, n)
    window = scipy.signal.get_window("hann", 1024, fftbins=True)
    magnitude = np.abs(np.fft.rfft(frames * window[:, None], axis=0))  # (513, n)
    basis = librosa.filters.mel(sr=RATE, n_fft=1024, n_mels=64, fmin=0, fmax=8000, dtype=np.float64)
    fbank = np.log(np.maximum(basis @ magnitude, 1e-5)).T  # (n, 64)
    if len(fbank) < num_frames:
        fbank = np.pad(fbank, ((0, num_frames - len(fbank)), (0, 0)))
    return fbank[:num_frames]


def make_signals(samples: int) -> dict[str, np.ndarray]:
    t = np.arange(samples) / RATE
    rng = np.random.default_rng(0)
    return {
        "chirp": scipy.signal.chirp(t, f0=60, t1=t[-1], f1=7900, method="logarithmic"),
        "white noise": rng.standard_normal(samples),
        "silence": np.zeros(samples),
        "clipped square": np.clip(1.6 * scipy.signal.square(2 * np.pi * 440 * t), -1, 1) + 0.1,  # with DC
    }


@pytest.mark.parametrize("samples", [RATE, 20837])  # whole frames; odd length with a padded last frame
def test_front_end_matches_published_recipe(samples):
    config = MelConfig()
    signals = make_signals(samples)
    batch = torch.from_numpy(np.stack(list(signals.values()))).float()  # (4, samples)
    ours = waveform_to_mel(batch, config)  # (4, T, 64), batched
    frames = config.num_frames(samples)
    assert frames % 4 == 0 and frames * 160 >= samples > (frames - 4) * 160
    assert ours.shape == (4, frames, 64) and ours.dtype == torch.float32
    for row, (name, signal) in enumerate(signals.items()):
        reference = torch.from_numpy(reference_log_mel(signal.astype(np.float32).astype(np.float64), frames))
        error = max_rel_error(ours[row], reference)
        # the recipe in float64 vs ours in float64 rounded to float32 output: float32 rounding (~6e-8)
        assert error <= 1e-5, (name, error)
        print(f"{name}: max rel error {error:.1e}")


def test_cut_and_pad_to_a_given_length():
    signal = make_signals(RATE)["chirp"]
    for frames in (40, 200):  # cut (100 frames of audio) and pad
        ours = waveform_to_mel(torch.from_numpy(signal).float(), MelConfig(), num_frames=frames)
        reference = reference_log_mel(signal.astype(np.float32).astype(np.float64), frames)
        error = max_rel_error(ours[0], torch.from_numpy(reference))
        assert error <= 1e-5, (frames, error)  # float32 rounding, as above


def test_filterbank_equals_librosa():
    ours = mel_filterbank(RATE, 1024, 64, 0.0, 8000.0)  # float64
    reference = librosa.filters.mel(sr=RATE, n_fft=1024, n_mels=64, fmin=0.0, fmax=8000.0, dtype=np.float64)
    assert max_rel_error(ours, torch.from_numpy(reference)) < 1e-12  # same float64 formulas
    # another range and size (CLAP's): the function is general
    ours = mel_filterbank(48000, 1024, 64, 50.0, 14000.0, dtype=torch.float32)
    reference = librosa.filters.mel(sr=48000, n_fft=1024, n_mels=64, fmin=50.0, fmax=14000.0)  # float32
    assert max_rel_error(ours, torch.from_numpy(reference)) < 1e-6  # both float64 math rounded to float32


def test_normalisation_and_log_floor():
    x = torch.tensor([[0.2, 0.4, -0.1, 0.3], [0.0, 0.0, 0.0, 0.0]])
    y = normalize_waveform(x, num_samples=6)
    assert y.shape == (2, 6)
    assert torch.allclose(y[0].abs().max(), torch.tensor(0.5)) and abs(float(y[0, :4].mean())) < 1e-7
    assert torch.equal(y[0, 4:], torch.zeros(2)) and torch.equal(y[1], torch.zeros(6))  # silence stays silent
    silent = log_mel(torch.zeros(1, 1600), MelConfig())  # (1, 11, 64)
    assert silent.shape == (1, 11, 64) and torch.allclose(silent, torch.tensor(np.log(1e-5), dtype=torch.float32))


def test_config_from_checkpoint(tiny_checkpoint):
    vocoder, vae = load_component(tiny_checkpoint, "vocoder"), load_component(tiny_checkpoint, "vae")
    config = MelConfig.from_hub(load_config(tiny_checkpoint, "vocoder"), load_config(tiny_checkpoint, "vae"))
    assert config.sampling_rate == vocoder.config.sampling_rate
    assert config.n_mels == vocoder.config.model_in_dim
    assert config.hop_length == vocoder.hop_length and config.frames_multiple == vae.upsampling_factor
    assert config.fmax == config.sampling_rate / 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the device test needs one")
def test_same_result_on_cuda():
    signal = torch.from_numpy(make_signals(RATE)["white noise"]).float()
    cpu = waveform_to_mel(signal, MelConfig())
    cuda = waveform_to_mel(signal.cuda(), MelConfig())
    assert cuda.device.type == "cuda"
    assert max_rel_error(cuda, cpu) < 1e-6  # float64 on both; cuFFT vs pocketfft rounding
