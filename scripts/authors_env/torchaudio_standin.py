"""A stand-in for torchaudio inside the authors'-code venv (scripts/authors_env.sh installs it as `torchaudio`).

No torchaudio wheel on the package index matches the CPU torch of that venv (torchaudio stops at 2.11 and its
wheels are CUDA builds). The authors' package imports torchaudio at module level, reads audio files with it
(never done by a text-to-audio run), and builds one `torchaudio.transforms.MelSpectrogram` inside its CLAP
wrapper. That module is a submodule, so its buffers (`spectrogram.window`, `mel_scale.fb`) are part of the
authors' checkpoint files: the class below keeps torchaudio's module and buffer names and values (HTK mel scale,
no normalisation, periodic Hann window), so the files written in this venv have the official files' keys.
Anything else raises.
"""

import math

import torch
from torch import nn


def _hz_to_mel_htk(freq):
    return 2595.0 * math.log10(1.0 + freq / 700.0)


def melscale_fbanks(n_freqs, f_min, f_max, n_mels, sample_rate):
    """Triangular filters on the HTK mel scale, (n_freqs, n_mels), as torchaudio.functional.melscale_fbanks."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_pts = torch.linspace(_hz_to_mel_htk(f_min), _hz_to_mel_htk(f_max), n_mels + 2)
    f_pts = 700.0 * (10 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)  # (n_freqs, n_mels + 2)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.min(down, up), min=0.0)


class _Spectrogram(nn.Module):
    def __init__(self, n_fft, win_length, hop_length, power):
        super().__init__()
        self.n_fft, self.win_length, self.hop_length, self.power = n_fft, win_length, hop_length, power
        self.register_buffer("window", torch.hann_window(win_length))

    def forward(self, waveform):
        spec = torch.stft(waveform, self.n_fft, self.hop_length, self.win_length, self.window,
                          center=True, pad_mode="reflect", return_complex=True)
        return spec.abs() ** self.power


class _MelScale(nn.Module):
    def __init__(self, n_mels, sample_rate, f_min, f_max, n_stft):
        super().__init__()
        self.register_buffer("fb", melscale_fbanks(n_stft, f_min, f_max, n_mels, sample_rate))

    def forward(self, spec):
        return torch.matmul(spec.transpose(-1, -2), self.fb).transpose(-1, -2)


class MelSpectrogram(nn.Module):
    def __init__(self, sample_rate=16000, n_fft=400, win_length=None, hop_length=None, f_min=0.0, f_max=None,
                 n_mels=128, power=2.0, center=True, pad_mode="reflect", norm=None, onesided=True, **unused):
        super().__init__()
        if not (center and pad_mode == "reflect" and norm is None and onesided and not unused):
            raise NotImplementedError("torchaudio stand-in: only the authors' CLAP MelSpectrogram settings")
        win_length = win_length or n_fft
        hop_length = hop_length or win_length // 2
        self.spectrogram = _Spectrogram(n_fft, win_length, hop_length, power)
        self.mel_scale = _MelScale(n_mels, sample_rate, f_min, f_max or sample_rate / 2, n_fft // 2 + 1)

    def forward(self, waveform):
        return self.mel_scale(self.spectrogram(waveform))


class _Namespace:
    def __init__(self, name, **members):
        self._name, self._members = name, members

    def __getattr__(self, attr):
        if attr in self._members:
            return self._members[attr]
        raise RuntimeError(f"torchaudio.{self._name}.{attr}: torchaudio is a stand-in in this venv")


transforms = _Namespace("transforms", MelSpectrogram=MelSpectrogram)
functional = _Namespace("functional", melscale_fbanks=melscale_fbanks)
compliance = _Namespace("compliance")
__version__ = "0.0-standin"


def __getattr__(name):
    raise RuntimeError(f"torchaudio.{name}: torchaudio is a stand-in in this venv (see scripts/authors_env.sh)")
