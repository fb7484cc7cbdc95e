"""Editing audio with AudioLDM 2: style transfer (SDEdit), inpainting and bandwidth extension.

    audio (path, array or tensor; any rate, any channels)
      --(audio_io.read_audio: mono, the vocoder's 16 kHz)--> (samples,)
      --(mel.waveform_to_mel: the log-mel the VAE was trained on)--> (1, T, 64), T = hops rounded up to 4
      --(vae encoder: posterior mean, or a sample; x scaling_factor)--> source latent x0 (1, 8, T/4, 16)
      --(noise x0 to the starting step; denoise with the prompt; outside the mask, x0 re-noised
         to each step's level replaces the sample)--> latent (B, 8, T/4, 16)
      --(vae decoder; outside the mask the reconstruction's mel is kept)--> log-mel (B, 1, T, 64)
      --(vocoder, cut to the input's length)--> (B, samples) at 16 kHz

The three modes, which combine (the regenerated regions add up; `strength` applies to all of them):
- Style transfer, SDEdit (Meng et al. 2022, "SDEdit", arXiv:2108.01073; AudioLDM's `transfer_strength`):
  `strength` s in (0, 1]. Of N sampler steps the last int(N s) run (diffusers' img2img rule), from x0
  noised to the first of them with the sampler's own `add_noise`. Small s keeps the input's structure,
  s = 1 starts from pure noise and is exactly text-to-audio with the same noise.
- Inpainting: `regenerate_seconds=(start, end)` regenerates the latent frames (40 ms each) that overlap
  that range and keeps the rest, the latent-diffusion way (Rombach et al. 2022; the original AudioLDM 2's
  `generate_batch_masked`; diffusers' inpainting pipelines for 4-channel UNets): after each step the kept
  region is replaced by x0 noised to the next step's level, after the last step by x0 itself.
- Bandwidth extension (super-resolution): `regenerate_above_hz=f` regenerates the latent bins (4 mel
  bins each) that hold any mel band reaching above f (at 4 kHz: mel bands 48-63, from 3.55 kHz up),
  and keeps the bins below.

What "kept" means at the output: the final latent equals x0 outside the mask. The VAE decoder's
mid-block attention spans the whole latent, so a decoded kept region would still move a little with the
regenerated one; instead, outside the mask the mel of the plain reconstruction, decode(x0), is pasted
back before the vocoder. Time-masked output then equals the plain reconstruction vocode(decode(x0))
except within the vocoder's receptive field of the regenerated frames: `long_audio.receptive_field_frames`,
27 mel frames = 0.27 s on either side for the official vocoder. A frequency mask keeps the low mel bins
the vocoder reads exactly, but the vocoder mixes all bins into every sample, so no waveform sample stays
bit-equal there.

Output: 16 kHz mono (the model's rate) with as many samples as the input has at 16 kHz, so its duration
is the input's whatever the input's rate or channels; loudness is the model's (inputs are normalised to
a peak of 0.5 before encoding, as in training).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..models.long_audio import encode_in_tiles
from .audio_io import read_audio
from .mel import MelConfig, mel_frequencies, waveform_to_mel
from .memory import plan_encode
from .request import RequestError, check_time_range
from .samplers import denoise, draw_noise  # noqa: F401  (denoise: the loop every mode runs, re-exported)


def mel_config(pipe) -> MelConfig:
    """The front end's parameters from the loaded stages (their configs keep the hub's field names)."""
    return MelConfig.from_hub(dataclasses.asdict(pipe.vocoder.config), dataclasses.asdict(pipe.vae.config))


# ----------------------------------------------------------------------------------------------
# Audio -> latent


def encode_audio(pipe, audio, sampling_rate=None, generator=None, sample_posterior: bool = False):
    """Audio -> (source latent (1, C, T/4, F/4) already times scaling_factor, samples at 16 kHz).

    The latent is the VAE posterior's mean, or with `sample_posterior` a sample drawn with `generator`
    (diffusers' `AutoencoderKL.encode(mel).latent_dist.mean` / `.sample(generator)`, times the factor).
    """
    config = mel_config(pipe)
    waveform = read_audio(audio, sampling_rate, target_rate=config.sampling_rate)  # (samples,)
    samples_per_latent_frame = config.hop_length * config.frames_multiple
    if len(waveform) < samples_per_latent_frame:
        raise ValueError(f"the audio is {len(waveform)} samples at {config.sampling_rate} Hz, shorter than one "
                         f"latent frame ({samples_per_latent_frame} samples, "
                         f"{1000 * samples_per_latent_frame / config.sampling_rate:g} ms)")
    # in the VAE's dtype, which may be wider than the UNet's (precision.py: float32 beside a bf16 UNet on the CPU)
    mel = waveform_to_mel(waveform.to(pipe.device), config)[:, None].to(pipe.precision.vae)  # (1, 1, T, n_mels)
    # in one pass when it fits, else layer by layer over time tiles: the same latent (memory.py)
    plan = plan_encode(pipe.vae, mel.shape, pipe.precision.vae, pipe.device, pipe.max_memory)
    with pipe._running(pipe.vae):
        if plan.one_pass:
            mean, logvar = pipe.vae.encode_distribution(mel)  # (1, C, T/4, F/4) each
        else:
            mean, logvar = encode_in_tiles(pipe.vae, mel, plan.tile_frames, plan.storage)
    mean, logvar = mean.to(pipe.device), logvar.to(pipe.device)
    latent = mean
    if sample_posterior:
        latent = mean + torch.exp(0.5 * logvar) * draw_noise(mean.shape, generator, mean.device, mean.dtype)
    return latent * pipe.vae.config.scaling_factor, len(waveform)


# ----------------------------------------------------------------------------------------------
# Masks (True = regenerate) and the starting step


def time_mask(start_s: float, end_s: float, latent_frames: int, sampling_rate: int,
              samples_per_latent_frame: int) -> torch.Tensor:
    """(latent_frames,) bool: the latent frames that overlap [start_s, end_s).

    Counted in whole samples, so that boundaries on a frame edge do not depend on float rounding.
    """
    start = round(start_s * sampling_rate) // samples_per_latent_frame
    stop = math.ceil(round(end_s * sampling_rate) / samples_per_latent_frame)
    frames = torch.arange(latent_frames)
    return (frames >= start) & (frames < stop)


def frequency_mask(above_hz: float, config: MelConfig) -> torch.Tensor:
    """(n_mels / factor,) bool: the latent bins holding a mel band that reaches above `above_hz`."""
    tops = mel_frequencies(config.n_mels + 2, config.fmin, config.fmax)[2:]  # (n_mels,) each band's upper edge
    first_band = int((tops <= above_hz).sum())  # the bands lie in increasing order
    latent_bins = torch.arange(config.n_mels // config.frames_multiple)
    return latent_bins >= first_band // config.frames_multiple


def steps_to_run(strength: float, num_inference_steps: int) -> int:
    """Denoising steps an edit at `strength` runs: int(N * strength), at most N (diffusers' img2img)."""
    return min(int(num_inference_steps * strength), num_inference_steps)


# ----------------------------------------------------------------------------------------------
# One edit, as the pipeline runs it


@dataclass
class AudioEdit:
    pipe: object  # the AudioLDM2Pipeline that runs the edit
    source: torch.Tensor  # (1, C, T/4, F/4) the input's latent, times scaling_factor
    num_samples: int  # the input's length at 16 kHz: the output's length
    strength: float
    regenerate: torch.Tensor | None  # (1, 1, T/4, F/4) bool, True = regenerate; None = everything
    mel_factor: int = 4  # mel frames (bins) per latent frame (bin)

    @property
    def num_frames(self) -> int:  # mel frames
        return self.source.shape[2] * self.mel_factor

    @classmethod
    def prepare(cls, pipe, audio, sampling_rate=None, audio_length_in_s=None, strength: float = 1.0,
                regenerate_seconds=None, regenerate_above_hz=None, generator=None,
                sample_posterior: bool = False) -> "AudioEdit":
        """Read and encode the audio, and make the mask of what is regenerated. The values are checked by
        `Request.check` (request.py) first, as the pipeline does; a wrong one here is a RequestError."""
        if audio is None:
            raise RequestError("an edit needs the recording to edit (audio)")
        config = mel_config(pipe)
        source, num_samples = encode_audio(pipe, audio, sampling_rate, generator, sample_posterior)
        seconds = num_samples / config.sampling_rate

        _, _, latent_frames, latent_bins = source.shape
        regenerate = None
        if regenerate_seconds is not None:
            start_s, end_s = check_time_range(regenerate_seconds, seconds)
            frames = time_mask(start_s, end_s, latent_frames, config.sampling_rate,
                               config.hop_length * config.frames_multiple)
            regenerate = frames[:, None].expand(latent_frames, latent_bins)  # (T/4, F/4)
        if regenerate_above_hz is not None:
            bins = frequency_mask(regenerate_above_hz, config)[None, :].expand(latent_frames, latent_bins)  # (T/4, F/4)
            regenerate = bins if regenerate is None else regenerate | bins  # the regions add up
        if regenerate is not None:
            regenerate = regenerate[None, None].to(pipe.device)  # (1, 1, T/4, F/4)
        return cls(pipe, source, num_samples, float(strength), regenerate, config.frames_multiple)

    def check_steps(self, num_inference_steps: int) -> int:
        """The steps this edit runs of `num_inference_steps` (at least one: Request.check refuses fewer)."""
        steps = steps_to_run(self.strength, num_inference_steps)
        if steps < 1:
            raise RequestError(f"strength={self.strength:g} with {num_inference_steps} steps runs no denoising step")
        return steps

    def mel(self, latents: torch.Tensor, max_memory: int | None = None) -> torch.Tensor:
        """Latents (B, C, T/4, F/4) -> the log-mel the vocoder reads (B, T, n_mels): decoded inside the
        mask, the reconstruction decode(source) outside it (one VAE call for both, tiled when long)."""
        mel = self.pipe.decode_mel(torch.cat([latents, self.source.to(latents.dtype)]), max_memory)  # (B + 1, T, F)
        generated, reconstruction = mel[:-1], mel[-1:]  # (B, T, F), (1, T, F)
        f = self.mel_factor
        regenerate = self.regenerate[:, 0].repeat_interleave(f, dim=1).repeat_interleave(f, dim=2)  # (1, T, F)
        return torch.where(regenerate, generated, reconstruction)
