"""AudioLDM 2 as the paper draws it: text in, audio out, every stage called once in order.

    prompt --(conditioning.py: CLAP text, Flan-T5, projection, GPT-2)--> GPT-2 states, T5 states + mask
           --(models/unet.py x T steps, samplers.py, classifier-free guidance here)--> latent (B, 8, T/4, 16)
           --(models/vae.py decoder)--> log-mel (B, 1, T, 64) --(models/vocoder.py HiFi-GAN)--> 16 kHz waveform

`AudioLDM2` is the model and nothing else: `generate_latents` yields the latent after every step, `decode` is
one pass. Speed, memory, requests, ranking and speech live in the engine (pipeline.py, `AudioLDM2Pipeline`,
diffusers' call API), which wraps or replaces these steps and is tested equal to them (tests/test_core.py).

References: Liu et al., "AudioLDM 2: Learning Holistic Audio Generation with Self-supervised Pretraining",
2023; Ho and Salimans, "Classifier-Free Diffusion Guidance", 2022.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .conditioning import Conditioning, TextConditioner
from .loading import DEFAULT_CHECKPOINT, checkpoint_reference, load_component, load_config, local_checkpoint
from .samplers import SAMPLERS, SchedulerConfig, denoise, draw_noise, make_sampler


def is_guided(guidance_scale: float) -> bool:
    """Classifier-free guidance runs above a scale of 1 (at 1 it is the conditional prediction alone), as diffusers."""
    return guidance_scale > 1.0


def classifier_free_guidance(noise: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """[uncond, cond] predictions (2B, ...) -> uncond + g (cond - uncond) (B, ...): from the unconditional
    prediction, further towards the conditional one."""
    uncond, cond = noise.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


class AudioLDM2:
    def __init__(self, conditioner: TextConditioner, unet, vae, vocoder, scheduler_config: SchedulerConfig,
                 device="cpu", dtype: torch.dtype = torch.float32):
        self.conditioner, self.unet, self.vae, self.vocoder = conditioner, unet, vae, vocoder
        self.scheduler_config = scheduler_config
        self.device, self.dtype = torch.device(device), dtype  # the latents are drawn and denoised in `dtype`

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_CHECKPOINT, device="cpu", dtype: torch.dtype = torch.float32,
                        reference: str | None = None):
        """Every stage of a local hub-layout folder (or a hub id in the Hugging Face cache: the engine,
        `AudioLDM2Pipeline.from_pretrained`, downloads), on `device` in `dtype`. The folder's scheduler class
        picks the sampler (samplers `SAMPLERS`). Text-to-speech checkpoints (a VITS `text_encoder_2`) load
        through the engine. `reference`: "authors" (the model the weights were trained as) or "diffusers"
        (diffusers' conversion); default: the authors' for the official checkpoints (authors.py)."""
        root = local_checkpoint(model)
        reference = checkpoint_reference(root, reference)  # the UNet's heads, the unconditional half, CLAP's eps
        # CLAP reads the prompt padded to its longest, not to 512 tokens as diffusers does: the padding is
        # masked, so the features agree to float rounding, at a fraction of the cost
        conditioner = TextConditioner.from_pretrained(root, device=device, dtype=dtype, clap_pad_to_max_length=False,
                                                      reference=reference)
        unet, vae, vocoder = (load_component(root, name, dtype=dtype, device=device, reference=reference)
                              for name in ("unet", "vae", "vocoder"))
        return cls(conditioner, unet, vae, vocoder, SchedulerConfig.from_hub(load_config(root, "scheduler")),
                   device, dtype)

    @property
    def reference(self) -> str:
        return self.conditioner.reference  # "authors" or "diffusers": the model computed (authors.py)

    @property
    def vae_scale_factor(self) -> int:
        return self.vae.upsampling_factor  # 4: mel frames per latent frame

    @property
    def sampling_rate(self) -> int:
        return self.vocoder.config.sampling_rate  # 16 kHz

    @property
    def hop_length(self) -> int:
        return self.vocoder.hop_length  # 160 samples per mel frame

    # ------------------------------------------------------------------------------------------
    # The stages, in order

    def encode_prompt(self, prompt, negative_prompt=None, num_waveforms_per_prompt: int = 1,
                      do_classifier_free_guidance: bool = True, max_new_tokens: int | None = None) -> Conditioning:
        """(GPT-2 states (B, N, 768), T5 states (B, L, 1024), T5 mask (B, L)), [uncond, cond] with guidance."""
        return self.conditioner.encode_prompt(prompt, negative_prompt, num_waveforms_per_prompt,
                                              do_classifier_free_guidance, max_new_tokens, device=self.device)

    def latent_frames(self, audio_length_in_s: float) -> tuple[int, int]:
        """(mel frames rounded up to the VAE's factor, waveform samples to keep), as diffusers does."""
        frames = int(audio_length_in_s * self.sampling_rate / self.hop_length)
        frames = math.ceil(frames / self.vae_scale_factor) * self.vae_scale_factor
        return frames, int(audio_length_in_s * self.sampling_rate)

    def prepare_latents(self, batch: int, frames: int, generator=None, latents=None) -> torch.Tensor:
        """The starting noise (B, 8, T/4, 16) for `frames` mel frames, drawn on the CPU (the same on every
        device), or `latents` checked and moved."""
        shape = (batch, self.unet.config.in_channels, frames // self.vae_scale_factor,
                 self.vocoder.config.model_in_dim // self.vae_scale_factor)  # (B, 8, T/4, 16)
        if latents is None:
            latents = draw_noise(shape, generator, self.device, self.dtype)  # a list: one generator per row
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape} for this audio length")
        return latents.to(self.device, self.dtype)

    def predict_noise(self, latents, t, conditioning: Conditioning, guidance_scale: float) -> torch.Tensor:
        """The UNet's noise prediction for `latents` at timestep `t`, with classifier-free guidance: one call
        on [latents, latents] against the [uncond, cond] conditioning."""
        guided = is_guided(guidance_scale)
        noise = self.unet(torch.cat([latents, latents]) if guided else latents, t, *conditioning)
        return classifier_free_guidance(noise, guidance_scale) if guided else noise

    def make_sampler(self, num_inference_steps: int, scheduler: str | None = None, eta: float = 0.0,
                     karras_sigmas: bool | None = None):
        """A fresh sampler: `scheduler` (a name of samplers `SAMPLERS`) defaults to the checkpoint's;
        `karras_sigmas` puts the steps on Karras et al.'s noise levels (None: the scheduler config's setting)."""
        name = scheduler or self.scheduler_config.sampler
        config = self.scheduler_config.for_sampler(name)  # the folder's schedule, the named sampler's options
        if karras_sigmas is not None:
            config = dataclasses.replace(config, use_karras_sigmas=karras_sigmas,
                                         use_exponential_sigmas=config.use_exponential_sigmas and not karras_sigmas)
        return make_sampler(name, config, num_inference_steps, device=self.device, eta=eta)

    def generate_latents(self, latents, conditioning: Conditioning, num_inference_steps: int = 200,
                         guidance_scale: float = 3.5, scheduler: str | None = None, eta: float = 0.0, generator=None,
                         karras_sigmas: bool | None = None):
        """Denoise `latents` (the starting noise), yielding (timestep, latent) after every step."""
        sampler = self.make_sampler(num_inference_steps, scheduler, eta, karras_sigmas)
        predict = lambda x, t: self.predict_noise(x, t, conditioning, guidance_scale)
        yield from denoise(sampler, predict, latents, generator=generator)

    def decode(self, latents: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
        """Latent (B, 8, T/4, 16) -> waveform (B, samples) float32 on the CPU, cut to `num_samples`."""
        mel = self.vae.decode(latents / self.vae.config.scaling_factor)  # (B, 1, T, 64)
        audio = self.vocoder(mel.squeeze(1))  # (B, 160 T + 32)
        return audio[:, :num_samples].float().cpu()

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], audio_length_in_s: float | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float = 3.5, negative_prompt=None,
                 num_waveforms_per_prompt: int = 1, eta: float = 0.0, generator=None) -> torch.Tensor:
        """Audio for `prompt`: (B * num_waveforms_per_prompt, samples) float32 at `sampling_rate`. The length
        defaults to the UNet's training length (10.24 s), the steps to the sampler's (200 for DDIM)."""
        if audio_length_in_s is None:  # the UNet's sample size in seconds
            audio_length_in_s = self.unet.config.sample_size * self.vae_scale_factor * self.hop_length
            audio_length_in_s /= self.sampling_rate
        num_inference_steps = num_inference_steps or SAMPLERS[self.scheduler_config.sampler].steps
        guided = is_guided(guidance_scale)
        conditioning = self.encode_prompt(prompt, negative_prompt, num_waveforms_per_prompt, guided)
        frames, num_samples = self.latent_frames(audio_length_in_s)
        latents = self.prepare_latents(conditioning.generated.shape[0] // (2 if guided else 1), frames, generator)
        for _, latents in self.generate_latents(latents, conditioning, num_inference_steps, guidance_scale,
                                                eta=eta, generator=generator):
            pass
        return self.decode(latents, num_samples)
