"""The log-mel front end the VAE and the vocoder were trained on: waveform -> (B, T, 64) log-mel frames.

    16 kHz waveform (B, samples)
      --normalize_waveform: remove the mean, peak 0.5; pad or cut to T hops; peak 0.5 again-->
      --|STFT|: periodic Hann 1024, hop 160, reflect-padded by 512 on both sides (centred)--> (B, 513, T + 1)
      --Slaney mel filterbank (64 bins, 0 - 8000 Hz, area-normalised)--> (B, 64, T + 1)
      --natural log of max(mel, 1e-5); frames laid out as rows, cut or zero-padded to T--> (B, T, 64)

T is the number of mel frames the VAE needs: the audio's hops rounded up to a multiple of the VAE's
factor (4), so that its latent has T / 4 whole frames; 10.24 s is 1024 frames. The vocoder reads the
same log-mel, so `vocoder(log_mel)` resynthesises the input and `vae.decode(vae.encode(log_mel))`
is the VAE's reconstruction of it.

The recipe is the original AudioLDM 2 code's (haoheliu/AudioLDM2: `audioldm2/utils.py` for the
default config, `utilities/audio/tools.py` `wav_to_fbank` / `_pad_spec`, `utilities/audio/stft.py`
`TacotronSTFT`, `utilities/audio/audio_processing.py` `dynamic_range_compression`), written in torch
and batched, one function per step, in the spirit of openai/whisper's `audio.py`. Differences, by
design: the second peak normalisation divides by (peak + 1e-8) like the first (the original divides by
the bare peak, NaN for silence); the STFT and filterbank run in float64 (float32 on devices without
it) and the result is float32, so the output is the recipe's to float32 rounding.

Parameters come from the checkpoint where it has them (`MelConfig.from_hub`): the sampling rate, the
mel bins and the hop (the vocoder's upsampling product) from the vocoder's config, the frame multiple
from the VAE's. The STFT size (1024) and the filterbank's range (0 Hz to Nyquist) are in no hub config;
they are the original's constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F



@dataclass
class MelConfig:
    sampling_rate: int = 16000  # vocoder config `sampling_rate`
    n_mels: int = 64  # vocoder config `model_in_dim`
    hop_length: int = 160  # product of the vocoder's `upsample_rates`: samples per mel frame
    frames_multiple: int = 4  # the VAE's factor, 2 ** (len(block_out_channels) - 1)
    n_fft: int = 1024  # the original's filter_length and win_length
    fmin: float = 0.0
    fmax: float = 8000.0  # the original's mel_fmax: Nyquist at 16 kHz
    log_floor: float = 1e-5  # mel values clamped here before the log
    peak: float = 0.5  # waveforms are normalised to this peak amplitude

    @classmethod
    def from_hub(cls, vocoder_config: dict, vae_config: dict) -> "MelConfig":
        """From the vocoder's (SpeechT5HifiGan) and the VAE's (AutoencoderKL) config.json. The STFT size and mel
        band are the 16 kHz models' unless the vocoder config names them (`n_fft`, `mel_fmin`, `mel_fmax`, which
        scripts/convert_authors_checkpoint.py writes for the 48 kHz model: 2048, 20 Hz, 24 kHz)."""
        sampling_rate = vocoder_config["sampling_rate"]
        return cls(
            sampling_rate=sampling_rate,
            n_mels=vocoder_config["model_in_dim"],
            hop_length=math.prod(vocoder_config["upsample_rates"]),
            frames_multiple=2 ** (len(vae_config["block_out_channels"]) - 1),
            n_fft=vocoder_config.get("n_fft") or 1024,
            fmin=vocoder_config.get("mel_fmin") or 0.0,
            fmax=vocoder_config.get("mel_fmax") or sampling_rate / 2,
        )

    def num_frames(self, num_samples: int) -> int:
        """Mel frames the VAE needs for `num_samples` samples: whole hops, rounded up to the VAE's factor."""
        hops = math.ceil(num_samples / self.hop_length)
        return math.ceil(hops / self.frames_multiple) * self.frames_multiple


# ----------------------------------------------------------------------------------------------
# The steps


def compute_dtype(device: torch.device) -> torch.dtype:
    """float64 for spectrograms, except on devices without it (MPS)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def normalize_waveform(waveform: torch.Tensor, num_samples: int | None = None, peak: float = 0.5) -> torch.Tensor:
    """(B, samples) -> (B, num_samples): mean removed, scaled to `peak`, padded with zeros or cut, scaled again.

    The original's `read_wav_file`: normalise, `pad_wav` to the segment length, normalise the peak again
    (which matters only when cutting removed the loudest sample).
    """
    x = waveform - waveform.mean(dim=-1, keepdim=True)
    x = peak * x / (x.abs().amax(dim=-1, keepdim=True) + 1e-8)
    if num_samples is not None:
        x = F.pad(x, (0, num_samples - x.shape[-1])) if num_samples > x.shape[-1] else x[..., :num_samples]
    return peak * x / (x.abs().amax(dim=-1, keepdim=True) + 1e-8)


def mel_frequencies(n: int, fmin: float, fmax: float, device=None, htk: bool = False) -> torch.Tensor:
    """(n,) float64 Hz, equally spaced on the Slaney mel scale (`librosa.mel_frequencies(n, fmin=, fmax=)`),
    or on the HTK scale with `htk=True`."""

    def hz_to_mel(f: float) -> float:  # Slaney: linear below 1 kHz (3 mel per 200 Hz), logarithmic above
        if htk:
            return 2595 * math.log10(1 + f / 700)
        return 3 * f / 200 if f < 1000 else 15 + math.log(f / 1000) * 27 / math.log(6.4)

    mels = torch.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n, dtype=torch.float64, device=device)
    if htk:
        return 700 * (10 ** (mels / 2595) - 1)
    return torch.where(mels < 15, 200 * mels / 3, 1000 * torch.exp((mels - 15) * math.log(6.4) / 27))


def mel_filterbank(sampling_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float,
                   dtype=torch.float64, device=None, htk: bool = False) -> torch.Tensor:
    """(n_mels, n_fft / 2 + 1) triangular filters on the Slaney mel scale with Slaney area normalisation:
    `librosa.filters.mel(sr=..., n_fft=..., n_mels=..., fmin=..., fmax=...)` with its defaults.

    `htk=True`: on the HTK mel scale and unnormalised (torchaudio's default; CLAP's "fusion" front end)."""
    edges = mel_frequencies(n_mels + 2, fmin, fmax, device, htk)  # (n_mels + 2,) band i spans edges[i] .. [i + 2]
    fft_hz = torch.linspace(0, sampling_rate / 2, n_fft // 2 + 1, dtype=torch.float64, device=device)
    # filter i rises from edges[i] to edges[i + 1] and falls to edges[i + 2]
    rise = (fft_hz[None, :] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]  # (n_mels, n_freqs)
    fall = (edges[2:, None] - fft_hz[None, :]) / (edges[2:] - edges[1:-1])[:, None]
    filters = torch.clamp(torch.minimum(rise, fall), min=0)
    if not htk:
        filters = filters * (2 / (edges[2:] - edges[:-2]))[:, None]  # equal area per filter
    return filters.to(dtype)


def log_mel(waveform: torch.Tensor, config: MelConfig) -> torch.Tensor:
    """(B, samples) in [-1, 1] -> (B, samples // hop + 1, n_mels) float32 natural-log mel magnitudes."""
    x = waveform.to(compute_dtype(waveform.device)).clamp(-1, 1)  # the original clips before its STFT
    window = torch.hann_window(config.n_fft, periodic=True, dtype=x.dtype, device=x.device)
    spectrum = torch.stft(x, config.n_fft, hop_length=config.hop_length, window=window, center=True,
                          pad_mode="reflect", return_complex=True)  # (B, n_fft / 2 + 1, frames)
    magnitude = spectrum.abs()  # sqrt(re^2 + im^2): magnitude, not power
    filters = mel_filterbank(config.sampling_rate, config.n_fft, config.n_mels, config.fmin, config.fmax,
                             x.dtype, x.device)  # (n_mels, n_fft / 2 + 1)
    mel = torch.einsum("mf,bft->btm", filters, magnitude)  # (B, frames, n_mels)
    return torch.log(torch.clamp(mel, min=config.log_floor)).float()


def fit_frames(mel: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B, T', n_mels) -> (B, num_frames, n_mels): cut, or padded with zeros (the original's `_pad_spec`)."""
    if mel.shape[1] >= num_frames:
        return mel[:, :num_frames]
    return F.pad(mel, (0, 0, 0, num_frames - mel.shape[1]))


def waveform_to_mel(waveform: torch.Tensor, config: MelConfig, num_frames: int | None = None) -> torch.Tensor:
    """The whole front end: (B, samples) or (samples,) at `config.sampling_rate` -> (B, T, n_mels) float32.

    T is `num_frames`, by default `config.num_frames(samples)`: every sample lands in a frame.
    """
    if waveform.ndim == 1:
        waveform = waveform[None]  # (1, samples)
    waveform = waveform.to(compute_dtype(waveform.device))
    num_frames = config.num_frames(waveform.shape[-1]) if num_frames is None else num_frames
    x = normalize_waveform(waveform, num_frames * config.hop_length, config.peak)  # (B, T * hop)
    return fit_frames(log_mel(x, config), num_frames)  # (B, T + 1, n_mels) -> (B, T, n_mels)
