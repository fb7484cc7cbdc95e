"""Audio in: any file, array or tensor -> a mono float32 waveform at the rate a stage needs.

    file (WAV, FLAC, OGG, ... anything soundfile opens) | NumPy array | torch tensor
        --(checks: exists, not a directory, readable, not empty, finite)-->
        --(channels averaged to mono)--> --(soxr band-limited resampling)--> (samples,) float32 at target_rate

The editing modes (editing.py) read their input through `read_audio` at the vocoder's 16 kHz; the
fine-tuning data loader and the evaluation metrics use it too, at whatever rate they need.

Resampling uses soxr (libsoxr, the SoX resampler; also what librosa uses by default) at "HQ" quality:
any ratio (44.1 kHz -> 16 kHz is 160/441, 22.05 kHz -> 48 kHz 320/147), a band-limited filter with
a documented and tested response, in C. A hand-written windowed-sinc would need its own filter design
and quality tests for every ratio; audio_features.py has one only for CLAP's fixed x3 upsampling, where
it must run in torch on the GPU. The output has round(samples * target_rate / source_rate) samples.

Every mistake a caller can make with the input (a missing, unreadable or empty file, a directory,
NaN or infinite samples, an array without its sampling rate) is one `AudioInputError` (a ValueError)
with one line that says what is wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class AudioInputError(ValueError):
    """Input audio that cannot be used; the message is one line saying why."""


def read_audio(source, sampling_rate: float | None = None, target_rate: int = 16000) -> torch.Tensor:
    """Read `source` as a mono float32 1-D tensor at `target_rate` Hz.

    source:
    - a path (str or Path) to any file soundfile opens (WAV, FLAC, OGG, AIFF, ...); its own rate is used
      and `sampling_rate` must be None or agree with it;
    - a NumPy array or torch tensor of shape (samples,) or (channels, samples), with `sampling_rate`
      given. Floating-point samples are taken as they are (full scale is +-1); integer samples (PCM)
      are divided by 2^(bits - 1).
    Several channels are averaged (mixed down) before resampling.
    """
    if isinstance(source, (str, Path)):
        waveform, file_rate = _read_file(Path(source))
        if sampling_rate is not None and sampling_rate != file_rate:
            raise AudioInputError(f"'{source}' is at {file_rate} Hz but sampling_rate={sampling_rate} was given; "
                                  f"leave sampling_rate out for files")
        sampling_rate, name = file_rate, f"'{source}'"
    elif isinstance(source, (np.ndarray, torch.Tensor)):
        if sampling_rate is None:
            raise AudioInputError("an audio array or tensor needs its sampling_rate (samples per second)")
        waveform, name = _mono_from_array(source), f"the audio {type(source).__name__}"
    else:
        raise AudioInputError(f"audio must be a file path, a NumPy array or a torch tensor, "
                              f"not {type(source).__name__}")
    if not (isinstance(sampling_rate, (int, float, np.integer, np.floating)) and sampling_rate > 0):
        raise AudioInputError(f"sampling_rate must be a positive number, got {sampling_rate!r}")
    if not target_rate > 0:
        raise AudioInputError(f"target_rate must be positive, got {target_rate!r}")

    if waveform.size == 0:
        raise AudioInputError(f"{name} is empty (no samples)")
    if not np.isfinite(waveform).all():
        raise AudioInputError(f"{name} contains NaN or infinite samples")
    if sampling_rate != target_rate:
        import soxr

        waveform = soxr.resample(waveform, sampling_rate, target_rate, quality="HQ")
        if waveform.size == 0:
            raise AudioInputError(f"{name} is too short to resample to {target_rate} Hz")
    return torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))


def audio_samples(source, sampling_rate: float | None = None, target_rate: int = 16000) -> int:
    """How many samples `read_audio(source, sampling_rate, target_rate)` gives, from a file's header alone
    (nothing decoded: a request's checks and an upload limit cost no memory, whatever the length)."""
    if isinstance(source, (str, Path)):
        import soundfile

        path = Path(source)
        if not path.exists():
            raise AudioInputError(f"audio file '{path}' does not exist")
        if path.is_dir():
            raise AudioInputError(f"'{path}' is a directory, not an audio file")
        try:
            info = soundfile.info(str(path))
        except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
            detail = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise AudioInputError(f"cannot read '{path}' as audio ({detail})") from None
        samples, sampling_rate = info.frames, info.samplerate
        if samples == 0:
            raise AudioInputError(f"'{path}' is empty (no samples)")
    elif isinstance(source, (np.ndarray, torch.Tensor)):
        if sampling_rate is None:
            raise AudioInputError("an audio array or tensor needs its sampling_rate (samples per second)")
        samples = source.shape[-1] if source.ndim else 0
        if samples == 0:
            raise AudioInputError(f"the audio {type(source).__name__} is empty (no samples)")
    else:
        raise AudioInputError(f"audio must be a file path, a NumPy array or a torch tensor, "
                              f"not {type(source).__name__}")
    return round(samples * target_rate / sampling_rate)


def _read_file(path: Path) -> tuple[np.ndarray, int]:
    """(samples,) float64 mono, and the file's rate."""
    import soundfile

    if not path.exists():
        raise AudioInputError(f"audio file '{path}' does not exist")
    if path.is_dir():
        raise AudioInputError(f"'{path}' is a directory, not an audio file")
    try:
        frames, rate = soundfile.read(str(path), dtype="float64", always_2d=True)  # (samples, channels)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise AudioInputError(f"cannot read '{path}' as audio ({detail})") from None
    return frames.mean(axis=1), rate


def _mono_from_array(audio) -> np.ndarray:
    """(samples,) or (channels, samples) array or tensor -> (samples,) float64."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    if audio.dtype.kind == "i":  # signed PCM: full scale at 2^(bits - 1)
        audio = audio / float(2 ** (8 * audio.dtype.itemsize - 1))
    elif audio.dtype.kind != "f":
        raise AudioInputError(f"audio samples must be floating point or signed integers, not {audio.dtype}")
    audio = audio.astype(np.float64)
    if audio.size == 0:
        raise AudioInputError(f"the audio array is empty (shape {tuple(audio.shape)})")
    if audio.ndim == 1:
        return audio
    if audio.ndim == 2:
        channels, samples = audio.shape
        if channels > samples:
            raise AudioInputError(f"audio of shape {audio.shape} has more channels than samples; "
                                  f"arrays are (channels, samples): transpose a (samples, channels) array")
        return audio.mean(axis=0)
    raise AudioInputError(f"audio must have shape (samples,) or (channels, samples), got {tuple(audio.shape)}")
