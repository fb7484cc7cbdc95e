"""A result's log-mel spectrogram as a picture with time and frequency axes: what the page shows beside its player.

    waveform (samples,) --(generation/mel.py waveform_to_mel: the log-mel the VAE and the vocoder read)-->
      (frames, n_mels) natural-log magnitudes --(the top 80 dB, a 5-colour ramp)--> plot, low bands at the bottom
      --(Pillow: axes with ticks in seconds and Hz)--> (height, width, 3) uint8 RGB

The mel is the model's own front end, so the picture shows what the model works in: 10 ms frames, mel bands
evenly spaced on the mel scale (the frequency ticks are therefore closer together higher up). Drawn with Pillow,
which Gradio already needs, and a colour ramp of our own: no plotting library.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..generation.mel import MelConfig, mel_frequencies, waveform_to_mel

# the plot area inside the picture, in pixels: (left, top, width, height); the rest holds the axes, and the top
# margin room for the label and buttons Gradio lays over an image
PLOT = (52, 42, 640, 192)
SIZE = (PLOT[0] + PLOT[2] + 14, PLOT[1] + PLOT[3] + 36)  # (width, height) of the whole picture
DYNAMIC_RANGE_DB = 80.0  # shown below the loudest bin; quieter is the darkest colour
COLOURS = np.array([(0, 0, 4), (81, 18, 124), (183, 55, 121), (252, 137, 97), (252, 253, 191)], dtype=np.float64)
# matplotlib's "magma" at 0, 1/4, 1/2, 3/4, 1: brightness rises with loudness, readable in grey and by most
# colour-blind eyes
FREQUENCY_TICKS_HZ = (0, 250, 500, 1000, 2000, 4000, 8000, 16000, 24000)
TIME_TICK_STEPS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)  # seconds; the smallest giving at most 10 ticks


def spectrogram_image(audio, config: MelConfig) -> np.ndarray:
    """(samples,) float waveform at `config.sampling_rate` -> (height, width, 3) uint8 picture (SIZE)."""
    from PIL import Image, ImageDraw

    waveform = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    frames = max(1, math.ceil(len(waveform) / config.hop_length))  # the audio's own frames, not the VAE's padding
    mel = waveform_to_mel(waveform, config)[0, :frames].numpy()  # (frames, n_mels)
    decibels = 20 / math.log(10) * mel  # natural log of a magnitude -> dB
    level = np.clip((decibels - decibels.max()) / DYNAMIC_RANGE_DB + 1, 0, 1)  # 0: the floor, 1: the loudest
    left, top, width, height = PLOT
    plot = Image.fromarray(colour(level.T[::-1])).resize((width, height), Image.Resampling.BILINEAR)

    picture = Image.new("RGB", SIZE, "white")
    picture.paste(plot, (left, top))
    draw, font = ImageDraw.Draw(picture), label_font()
    ink = (60, 60, 60)
    draw.rectangle((left - 1, top - 1, left + width, top + height), outline=ink)
    for hz in (f for f in FREQUENCY_TICKS_HZ if config.fmin <= f <= config.fmax):
        y = top + frequency_row(hz, config)
        draw.line((left - 4, y, left - 1, y), fill=ink)
        draw.text((left - 6, y), f"{hz // 1000}k" if hz >= 1000 else str(hz), fill=ink, font=font, anchor="rm")
    draw.text((left - 6, top + height + 14), "Hz", fill=ink, font=font, anchor="rm")
    seconds = frames * config.hop_length / config.sampling_rate
    step = next((s for s in TIME_TICK_STEPS if seconds / s <= 10), TIME_TICK_STEPS[-1])
    for i in range(int(seconds / step + 1e-9) + 1):
        x = left + time_column(i * step, seconds)
        draw.line((x, top + height, x, top + height + 3), fill=ink)
        draw.text((x, top + height + 5), f"{i * step:g}", fill=ink, font=font, anchor="mt")
    draw.text((left + width, top + height + 20), "time (s)", fill=ink, font=font, anchor="rt")
    return np.asarray(picture)


def colour(level: np.ndarray) -> np.ndarray:
    """(...) levels in [0, 1] -> (..., 3) uint8, interpolated between COLOURS."""
    position = level * (len(COLOURS) - 1)
    low = np.minimum(position.astype(int), len(COLOURS) - 2)
    fraction = (position - low)[..., None]
    return np.rint(COLOURS[low] * (1 - fraction) + COLOURS[low + 1] * fraction).astype(np.uint8)


def frequency_row(hz: float, config: MelConfig) -> float:
    """The row (from the plot's top) at `hz`: band i's centre frequency is drawn at the middle of its rows."""
    centres = mel_frequencies(config.n_mels + 2, config.fmin, config.fmax)[1:-1].numpy()  # (n_mels,) Hz
    bands = np.interp(hz, [config.fmin, *centres, config.fmax], [0, *np.arange(config.n_mels) + 0.5, config.n_mels])
    return PLOT[3] * (1 - bands / config.n_mels)


def time_column(second: float, seconds: float) -> float:
    """The column (from the plot's left) at `second` of a picture spanning `seconds`."""
    return PLOT[2] * second / seconds


def label_font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=11)  # Pillow's bundled TrueType font, where FreeType is there
    except (TypeError, OSError):
        return ImageFont.load_default()
