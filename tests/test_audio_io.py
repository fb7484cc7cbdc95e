"""Reading audio (audio_io.py): files of every common format, channel counts, rates, arrays; each bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import soxr
import torch

from audioldm2_lite.generation.audio_io import AudioInputError, read_audio


def tone(rate: float, seconds: float = 0.5, channels: int = 1, frequency: float = 1000.0) -> np.ndarray:
    """(samples, channels): a sine per channel, each channel at its own level."""
    t = np.arange(int(rate * seconds)) / rate
    return np.stack([0.3 * (c + 1) * np.sin(2 * np.pi * frequency * t) for c in range(channels)], axis=1)


# tolerance of the decoded, resampled tone against the exact one: quantisation and soxr's ripple for lossless
# formats; Ogg Vorbis is lossy (measured 0.022 of a 0.45 sine at its default quality)
@pytest.mark.parametrize("suffix, subtype, tolerance", [(".wav", "FLOAT", 1e-3), (".wav", "PCM_16", 1e-3),
                                                        (".flac", "PCM_24", 1e-3), (".ogg", "VORBIS", 0.05)])
def test_reads_files_mixes_down_and_resamples(tmp_path, suffix, subtype, tolerance):
    path = tmp_path / f"in{suffix}"
    soundfile.write(path, tone(44100, channels=2), 44100, subtype=subtype)
    stored, _ = soundfile.read(path, dtype="float64", always_2d=True)  # what the codec kept
    audio = read_audio(path)
    assert audio.dtype == torch.float32 and audio.ndim == 1
    expected = soxr.resample(stored.mean(axis=1), 44100, 16000, quality="HQ")
    assert len(audio) == round(len(stored) * 16000 / 44100) == len(expected)
    assert np.abs(audio.numpy() - expected).max() < 1e-6  # the same soxr call; float32 output rounding
    # the mix-down of a 0.3 and a 0.6 sine is a 0.45 sine at 1 kHz: check the band-limited result itself
    t = np.arange(len(audio)) / 16000
    middle = slice(200, -200)  # away from the filter's edges
    assert np.abs(audio.numpy()[middle] - 0.45 * np.sin(2 * np.pi * 1000 * t[middle])).max() < tolerance


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 32000, 48000, 12345])
@pytest.mark.parametrize("target", [16000, 48000])
def test_any_rate_to_any_rate(rate, target):
    source = tone(rate, seconds=0.25)[:, 0]
    audio = read_audio(source, sampling_rate=rate, target_rate=target)
    assert len(audio) == round(len(source) * target / rate)
    t = np.arange(len(audio)) / target
    middle = slice(len(audio) // 5, -len(audio) // 5)
    assert np.abs(audio.numpy()[middle] - 0.3 * np.sin(2 * np.pi * 1000 * t[middle])).max() < 1e-3


def test_arrays_and_tensors():
    stereo = tone(16000, channels=2).T.copy()  # (2, samples)
    expected = stereo.mean(axis=0).astype(np.float32)
    assert np.array_equal(read_audio(stereo, sampling_rate=16000).numpy(), expected)  # same rate: no resampling
    assert np.array_equal(read_audio(torch.from_numpy(stereo), sampling_rate=16000).numpy(), expected)
    assert np.array_equal(read_audio(stereo[0], sampling_rate=16000).numpy(), stereo[0].astype(np.float32))
    pcm = np.round(stereo[0] * 32768).astype(np.int16)  # integer PCM: full scale 2^15
    assert np.abs(read_audio(pcm, sampling_rate=16000).numpy() - stereo[0]).max() < 1 / 32768


def test_file_and_given_rate_must_agree(tmp_path):
    path = tmp_path / "a.wav"
    soundfile.write(path, tone(22050), 22050)
    assert len(read_audio(path, sampling_rate=22050)) == 8000
    with pytest.raises(AudioInputError, match="22050 Hz but sampling_rate=16000"):
        read_audio(path, sampling_rate=16000)


def bad_inputs(tmp_path):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is not audio")
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros((0, 1)), 16000)
    nan_file = tmp_path / "nan.wav"
    soundfile.write(nan_file, np.array([0.0, np.nan, 0.1]), 16000, subtype="FLOAT")
    return [
        ((tmp_path / "missing.wav",), {}, "does not exist"),
        ((tmp_path,), {}, "is a directory"),
        ((not_audio,), {}, "cannot read"),
        ((empty,), {}, "is empty"),
        ((nan_file,), {}, "NaN or infinite"),
        ((np.array([0.0, np.inf]),), {"sampling_rate": 16000}, "NaN or infinite"),
        ((torch.tensor([0.0, float("nan")]),), {"sampling_rate": 16000}, "NaN or infinite"),
        ((np.zeros(100),), {}, "needs its sampling_rate"),
        ((np.zeros(0),), {"sampling_rate": 16000}, "is empty"),
        ((np.zeros((2, 0)),), {"sampling_rate": 16000}, "is empty"),
        ((np.zeros((1000, 2)),), {"sampling_rate": 16000}, "transpose"),
        ((np.zeros((1, 2, 100)),), {"sampling_rate": 16000}, "shape"),
        ((np.zeros(100, dtype=bool),), {"sampling_rate": 16000}, "floating point or signed integers"),
        ((np.zeros(100),), {"sampling_rate": 0}, "positive"),
        (([0.0, 0.1],), {"sampling_rate": 16000}, "file path, a NumPy array or a torch tensor"),
    ]


def test_each_bad_input_is_one_clear_error(tmp_path):
    for args, kwargs, message in bad_inputs(tmp_path):
        with pytest.raises(AudioInputError, match=message) as raised:
            read_audio(*args, **kwargs)
        assert "\n" not in str(raised.value)
        assert isinstance(raised.value, ValueError)
