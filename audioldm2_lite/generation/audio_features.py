"""CLAP's audio front end, in torch: a 16 kHz waveform -> the log-mel `input_features` HTSAT reads.

Used for candidate ranking (clap_audio.py). diffusers resamples the vocoder's 16 kHz output to 48 kHz
with librosa (soxr, "HQ") and hands it to transformers' `ClapFeatureExtractor` (numpy). Here the same
steps run in torch on the pipeline's device:

    (B, T) at 16 kHz --(x3 polyphase windowed-sinc upsampler)--> (B, 3T) at 48 kHz
    --(exactly 10 s: repeat-pad shorter audio, crop longer audio)--> (B, 480000)
    --(|STFT|^2: periodic Hann 1024, hop 480, centred with reflect padding)--> (B, 513, 1001)
    --(64 Slaney mel filters, 50 Hz - 14 kHz, Slaney area norm)--> (B, 64, 1001)
    --(10 log10(max(x, 1e-10)))--> input_features (B, 1, 1001, 64)

Differences from the reference, by design:
- Longer than 10 s: the extractor (`truncation="rand_trunc"`) takes a *random* 10 s crop; here it is
  deterministic, the first 10 s, so that the ranking is reproducible. `is_longer` is still reported
  (True for such clips) but the non-fusion HTSAT of AudioLDM 2 ignores it.
- Resampling: soxr's filter is not bit-reproducible in torch. Ours is a Kaiser-windowed sinc whose
  cut-off (7655 Hz), window (beta 12.8) and length (+-96 input samples) were chosen to match soxr HQ's
  measured 16 -> 48 kHz impulse response; tests/test_clap_audio.py bounds the difference in the 48 kHz
  waveforms, the log-mels and the CLAP similarities (the measured figures: scripts/BENCHMARKS.md).
- The spectrogram is computed in float64 (float32 where a device has no float64), which the
  extractor also does; on the same 48 kHz audio the two agree to the float32 rounding of the output
  (< 1e-5 dB).

`truncation="fusion"` (the extractor's default, used by diffusers' and transformers' small test
checkpoints) stacks four log-mels as channels, (B, 4, 1001, 64), on HTK mel filters without area
normalisation. For clips up to 10 s the four are the same log-mel of the padded clip. For longer clips
they are the whole clip's log-mel stretched (bilinearly) to 10 s, then a front, a middle and a back
10 s crop; the reference draws each crop's start at random within the first, second and last third of
the possible starts, here each crop starts where its third starts (so the front crop is the first
10 s, as with `rand_trunc`).
`padding`: "repeatpad" (repeat whole copies, then zeros), "repeat" (repeat, cut at 10 s) or any other
value (zeros), as the extractor does.

References: transformers' `ClapFeatureExtractor` and `audio_utils.spectrogram`; librosa's Slaney mel
scale; J. O. Smith, "Digital Audio Resampling" (windowed-sinc interpolation); the SoX / libsoxr
Kaiser-window low-pass design.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.hub_config import hub_field
from .mel import compute_dtype, mel_filterbank

# The x3 upsampler's low-pass filter (see the module docstring for how they were chosen).
RESAMPLE_CUTOFF = 0.956875  # -6 dB point, as a fraction of the input's Nyquist frequency (7655 Hz at 16 kHz)
RESAMPLE_KAISER_BETA = 12.8
RESAMPLE_HALF_WIDTH = 96  # input samples on each side of the output sample's position

MEL_FLOOR = 1e-10  # power clipped here before the dB conversion (-100 dB)


@dataclass
class ClapFeatureConfig:
    """The hub's feature_extractor/preprocessor_config.json (cvssp/audioldm2 values)."""

    sampling_rate: int = 48000
    feature_size: int = 64  # mel bins
    fft_window_size: int = 1024
    hop_length: int = 480
    max_length_s: int = 10
    frequency_min: float = 50.0
    frequency_max: float = 14000.0
    truncation: str = "rand_trunc"
    padding: str = "repeatpad"

    @classmethod
    def from_hub(cls, config: dict) -> "ClapFeatureConfig":
        d = cls()
        return cls(
            sampling_rate=hub_field(config, "sampling_rate", d.sampling_rate),
            feature_size=hub_field(config, "feature_size", d.feature_size),
            fft_window_size=hub_field(config, "fft_window_size", d.fft_window_size),
            hop_length=hub_field(config, "hop_length", d.hop_length),
            max_length_s=hub_field(config, "max_length_s", d.max_length_s),
            frequency_min=hub_field(config, "frequency_min", d.frequency_min),
            frequency_max=hub_field(config, "frequency_max", d.frequency_max),
            truncation=hub_field(config, "truncation", d.truncation, supported=("rand_trunc", "fusion")),
            padding=hub_field(config, "padding", d.padding),
        )

    @property
    def channels(self) -> int:  # log-mels stacked per clip: four versions with "fusion", else one
        return 4 if self.truncation == "fusion" else 1

    @property
    def max_frames(self) -> int:  # log-mel frames of max_length samples (1001)
        return self.max_length // self.hop_length + 1

    @property
    def max_length(self) -> int:  # samples in the model's window (480000)
        return self.max_length_s * self.sampling_rate


# ----------------------------------------------------------------------------------------------
# Resampling


def upsampling_filter(factor: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """(2 * factor * half_width + 1,) Kaiser-windowed sinc low-pass for x`factor` upsampling, in output
    samples, with gain `factor` so that zero-stuffed input keeps its level."""
    half = factor * RESAMPLE_HALF_WIDTH
    m = torch.arange(-half, half + 1, dtype=torch.float64, device=device)
    cutoff = RESAMPLE_CUTOFF / (2 * factor)  # cycles per output sample
    window = torch.kaiser_window(2 * half + 1, periodic=False, beta=RESAMPLE_KAISER_BETA, dtype=torch.float64,
                                 device=device)
    return (factor * 2 * cutoff * torch.sinc(2 * cutoff * m) * window).to(dtype)


def resample(waveform: torch.Tensor, orig_sr: int, target_sr: int) -> torch.Tensor:
    """(B, T) -> (B, T * target_sr / orig_sr) for an integer upsampling ratio (16 kHz -> 48 kHz: x3).

    y[n] = sum_k x[k] h[n - factor k]: the input zero-stuffed and low-passed. Done polyphase: output
    phase p (n = factor q + p) is the input convolved with every factor-th tap h[factor j + p], so no
    multiplication by a stuffed zero is made. Outside the clip the signal is taken as zero.
    """
    if target_sr == orig_sr:
        return waveform
    if target_sr % orig_sr:
        raise NotImplementedError(f"only integer upsampling ratios are implemented, not {orig_sr} -> {target_sr} Hz")
    factor = target_sr // orig_sr
    B, T = waveform.shape
    kernel = upsampling_filter(factor, waveform.dtype, waveform.device)  # (2 factor W + 1,), centred
    taps = 2 * RESAMPLE_HALF_WIDTH + 1
    kernel = F.pad(kernel, (0, factor * taps - kernel.numel()))  # (factor * taps,) zeros after the last tap
    phases = kernel.view(taps, factor).T  # (factor, taps): phases[p, j + W] = h[factor j + p]
    # conv1d correlates, so flip each phase to convolve
    y = F.conv1d(waveform[:, None], phases.flip(-1)[:, None], padding=RESAMPLE_HALF_WIDTH)  # (B, factor, T)
    return y.transpose(1, 2).reshape(B, factor * T)  # interleave the phases: y[factor q + p] = y_p[q]


# ----------------------------------------------------------------------------------------------
# 10 s window, log-mel spectrogram


def fit_to_length(waveform: torch.Tensor, max_length: int, padding: str = "repeatpad") -> torch.Tensor:
    """(B, T) -> (B, max_length): longer clips keep their first `max_length` samples (the reference
    crops at a random offset); shorter ones are padded as `padding` says (see the module docstring)."""
    T = waveform.shape[1]
    if T >= max_length:
        return waveform[:, :max_length]
    if padding == "repeat":  # whole copies and a part of one more
        return waveform.repeat(1, max_length // T + 1)[:, :max_length]
    if padding == "repeatpad":  # whole copies, then zeros
        waveform = waveform.repeat(1, max_length // T)  # (B, T * floor(max_length / T))
    return F.pad(waveform, (0, max_length - waveform.shape[1]))


def mel_filters(config: ClapFeatureConfig, dtype=torch.float64, device=None) -> torch.Tensor:
    """(n_fft/2 + 1, n_mels) triangular mel filters: on the Slaney scale with equal areas (librosa's
    default), or with `truncation="fusion"` on the HTK scale, unnormalised (torchaudio's default)."""
    return mel_filterbank(config.sampling_rate, config.fft_window_size, config.feature_size, config.frequency_min,
                          config.frequency_max, dtype, device, htk=config.truncation == "fusion").T


def log_mel_spectrogram(waveform: torch.Tensor, config: ClapFeatureConfig) -> torch.Tensor:
    """(B, T) -> (B, 1 + T // hop, n_mels) power mel spectrogram in dB, in the waveform's dtype."""
    n_fft = config.fft_window_size
    window = torch.hann_window(n_fft, periodic=True, dtype=waveform.dtype, device=waveform.device)
    spectrum = torch.stft(waveform, n_fft, hop_length=config.hop_length, window=window, center=True,
                          pad_mode="reflect", return_complex=True)  # (B, n_fft/2 + 1, frames)
    power = spectrum.real**2 + spectrum.imag**2
    filters = mel_filters(config, waveform.dtype, waveform.device)  # (n_fft/2 + 1, n_mels)
    mel = torch.einsum("bft,fm->btm", power, filters)  # (B, frames, n_mels)
    return 10 * torch.log10(torch.clamp(mel, min=MEL_FLOOR))


def fusion_crops(mel: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, T, n_mels) log-mel of a clip longer than `frames` -> (B, 4, frames, n_mels): the whole clip
    stretched to `frames`, then a front, a middle and a back crop (each where its third of the possible
    starts begins; the reference draws each start at random within its third)."""
    starts = mel.shape[1] - frames + 1  # possible crop starts
    thirds = [starts // 3 + (i < starts % 3) for i in range(3)]  # sizes, as numpy's array_split
    crop_starts = [0, thirds[0] if thirds[1] else 0, thirds[0] + thirds[1] if thirds[2] else 0]
    # the stretch in float32, as the reference: its sample positions are rounded to float32 (0.003 dB apart
    # from float64's at the official size)
    mel = mel.float()
    whole = F.interpolate(mel[:, None], size=(frames, mel.shape[2]), mode="bilinear",
                          align_corners=False)  # (B, 1, frames, n_mels)
    crops = [mel[:, None, start : start + frames] for start in crop_starts]  # 3 x (B, 1, frames, n_mels)
    return torch.cat([whole, *crops], dim=1)


def clap_input_features(waveform: torch.Tensor, sampling_rate: int, config: ClapFeatureConfig,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) waveform at `sampling_rate` -> input_features (B, channels, frames, n_mels) float32, is_longer (B, 1).

    The same tensors transformers' `ClapFeatureExtractor` returns for the waveform resampled to
    `config.sampling_rate`, except that the crops of longer clips are not random (module docstring).
    """
    x = waveform.to(compute_dtype(waveform.device))
    x = resample(x, sampling_rate, config.sampling_rate)  # (B, T')
    longer = x.shape[1] > config.max_length
    is_longer = torch.full((x.shape[0], 1), longer, dtype=torch.bool, device=x.device)
    if config.truncation == "fusion" and longer:
        mel = log_mel_spectrogram(x, config)  # (B, frames of the whole clip, n_mels)
        if mel.shape[1] == config.max_frames:  # longer by less than a hop: the reference keeps the whole clip
            return mel[:, None].expand(-1, 4, -1, -1).float(), torch.zeros_like(is_longer)
        return fusion_crops(mel, config.max_frames), is_longer
    mel = log_mel_spectrogram(fit_to_length(x, config.max_length, config.padding), config)  # (B, frames, n_mels)
    return mel[:, None].expand(-1, config.channels, -1, -1).float(), is_longer
