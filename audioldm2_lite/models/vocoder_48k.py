"""The HiFi-GAN vocoder (models/vocoder.py) with the mel front end it reads named in its config.

The authors' audioldm_48k reads 256 mels of a 2048-point STFT over 20 Hz to 24 kHz, where the 16 kHz models
read 64 mels of a 1024-point STFT over 0 Hz to Nyquist. generation/authors_checkpoint.py writes `n_fft`,
`mel_fmin` and `mel_fmax` into the vocoder's config.json; generation/mel.py (`MelConfig.from_hub`) reads them.
The network is the same HifiGan.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .vocoder import HifiGanConfig


@dataclass
class MelHifiGanConfig(HifiGanConfig):
    # None: the 16 kHz models' n_fft 1024 over 0 Hz to Nyquist (generation/mel.py)
    n_fft: int | None = None
    mel_fmin: float | None = None
    mel_fmax: float | None = None

    @classmethod
    def from_hub(cls, config: dict) -> "MelHifiGanConfig":
        base = HifiGanConfig.from_hub(config)
        return cls(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)},
                   n_fft=config.get("n_fft"), mel_fmin=config.get("mel_fmin"), mel_fmax=config.get("mel_fmax"))
