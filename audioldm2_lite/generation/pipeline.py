"""AudioLDM 2 text-to-audio, end to end: the thin pipeline that ties the stages together.

    prompt --(conditioning.py: CLAP text, Flan-T5, projection, GPT-2)--> GPT-2 states, T5 states + mask
           --(unet.py x T steps, samplers.py, classifier-free guidance here)--> denoised latent (B, 8, T/4, 16)
           --(vae.py decoder)--> log-mel (B, 1, T, 64) --(vocoder.py HiFi-GAN)--> 16 kHz waveform
           --(clap_audio.py, when several candidates per prompt)--> candidates ranked best first

The call takes diffusers' `AudioLDM2Pipeline.__call__` argument names, so switching is a change of import;
`generate_latents` yields the latent after every step, for readers and research hooks. Classifier-free
guidance, batching and candidate ranking live here, not in the models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .audio_features import clap_input_features
from .ranking import load_audio_tower, rank_waveforms
from .conditioning import TextConditioner
from .cuda_graphs import CUDAGraphed
from .editing import AudioEdit
from .loading import DEFAULT_CHECKPOINT, load_component, load_config, resolve_checkpoint
from .lora import load_lora
from .precision import Precision, resolve_precision
from .samplers import SAMPLERS, SchedulerConfig, make_sampler


@dataclass
class AudioLDM2PipelineOutput:
    audios: np.ndarray | torch.Tensor  # (batch * num_waveforms_per_prompt, samples) float32, or latents
    scores: torch.Tensor | None = None  # (batch * n,) CLAP similarity of each audio to its prompt, when ranked


@dataclass
class Runners:
    """The callables the pipeline runs its stages through: by default the stages' own methods; after
    `optimize()` their torch.compile'd and CUDA-graphed versions. The stages themselves are never changed."""

    encode_tokens: Callable  # CLAP text, T5, projection, GPT-2 on tokens: TextConditioner.encode_tokens
    unet: Callable  # the UNet, called by predict_noise
    predict_noise: Callable  # the guided UNet call: AudioLDM2Pipeline.predict_noise
    decode_mel: Callable  # the VAE decoder: AutoencoderKL.decode
    vocode: Callable  # the vocoder: HifiGan.forward


def default_device() -> torch.device:
    """CUDA when there is a GPU, then Apple's MPS, then the CPU (MPS is untested on real hardware)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@contextlib.contextmanager
def progress_stage(description: str, enabled: bool):
    """A one-unit tqdm bar for a stage with no steps of its own (loading, encoding, decoding)."""
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    with tqdm(total=1, desc=description, bar_format="{desc}: {elapsed}") as bar:
        yield
        bar.update()


class AudioLDM2Pipeline:
    def __init__(self, conditioner: TextConditioner, unet, vae, vocoder, scheduler_config: SchedulerConfig,
                 checkpoint=None, device="cpu", dtype=torch.float32, offload: bool = False,
                 precision: Precision | None = None):
        self.conditioner, self.unet, self.vae, self.vocoder = conditioner, unet, vae, vocoder
        self.scheduler_config = scheduler_config
        # CLAP's audio tower and its feature extractor's settings: loaded from `checkpoint` when candidates
        # are first ranked (clap_audio_tower), so generation neither loads them nor depends on their configs
        self.checkpoint, self.clap_audio, self.feature_config = checkpoint, None, None
        # each stage's dtype (precision.py); `dtype` is the UNet's, which the latents are drawn and denoised in
        self.precision = precision or Precision.uniform(dtype)
        self.device, self.dtype, self.offload = torch.device(device), self.precision.unet, offload
        self.vae_scale_factor = vae.upsampling_factor  # 4: mel frames per latent frame
        self.sampling_rate = vocoder.config.sampling_rate  # 16 kHz
        self.hop_length = vocoder.hop_length  # 160 samples per mel frame
        self.runners = self.plain_runners()

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_CHECKPOINT, device=None, dtype=None, offload: bool = False,
                        progress: bool = False, lora=None, lora_scale: float = 1.0):
        """Load every stage of a hub id or local hub-layout folder.

        device defaults to `default_device()` (CUDA, then MPS, then CPU). dtype: None for the measured default
        of the device (precision.py: float16 on CUDA; on a CPU with native bfloat16 the UNet, text stages and vocoder
        in bfloat16, the VAE in float32; float32 elsewhere), a torch dtype for every stage in it, or a
        `Precision` naming each stage's; `pipe.precision` says what was chosen. With `offload=True` the weights
        stay in CPU memory and each stage visits `device` only while it runs (model CPU offload). `progress` names each component as it loads (a hub
        download shows huggingface_hub's own bars). `lora`: a LoRA adapter file from audioldm2-lite-train,
        applied to the UNet with `lora_scale`.
        """
        device = torch.device(device) if device is not None else default_device()
        precision = resolve_precision(device, dtype)
        root = resolve_checkpoint(model)
        home = torch.device("cpu") if offload else device

        def load(name, dtype):
            with progress_stage(f"loading {name}", progress):
                return load_component(root, name, dtype=dtype, device=home)

        # CLAP reads the prompt padded to its longest, not to 512 tokens as diffusers does: the padding is
        # masked, so the features agree to float rounding, at a fraction of the cost
        with progress_stage("loading the text encoders (CLAP, T5, projection, GPT-2)", progress):
            conditioner = TextConditioner.from_pretrained(root, device=home, dtype=precision.text,
                                                          clap_pad_to_max_length=False)
        unet = load("unet", precision.unet)
        if lora is not None:
            unet = load_lora(unet, lora, lora_scale)
        return cls(
            conditioner, unet, load("vae", precision.vae), load("vocoder", precision.vocoder),
            SchedulerConfig.from_hub(load_config(root, "scheduler")), root, device=device, offload=offload,
            precision=precision,
        )

    def plain_runners(self) -> Runners:
        return Runners(self.conditioner.encode_tokens, self.unet, self.predict_noise, self.vae.decode, self.vocoder)

    def optimize(self, compile: bool = False, cuda_graphs: bool = True) -> "AudioLDM2Pipeline":
        """Speed options for CUDA; results stay within float rounding of the eager pipeline.

        - `cuda_graphs`: the text stages (CLAP text, T5, projection, GPT-2 generation), the guided UNet call,
          the VAE decoder and the vocoder are each captured as a CUDA graph on first use for each shape and
          replayed afterwards (cuda_graphs.py). Eager launches cost more CPU time than the GPU work they start.
          Ignored off CUDA.
        - `compile`: torch.compile the UNet, the VAE decoder and the vocoder first (fused kernels); the
          first call per audio length compiles, for minutes.
        Not with `offload`: a graph keeps the addresses of the weights it was captured with.
        The pipeline keeps these versions in `self.runners`; the stages stay plain modules.
        `optimize(compile=False, cuda_graphs=False)` goes back to the plain stages.
        """
        runners = self.plain_runners()
        if compile:
            runners.unet = torch.compile(self.unet, fullgraph=True, dynamic=False)
            runners.decode_mel = torch.compile(self.vae.decode, dynamic=False)
            runners.vocode = torch.compile(self.vocoder, dynamic=False)
        if cuda_graphs and self.device.type == "cuda":
            if self.offload:
                raise ValueError("cuda_graphs and offload do not combine: graphs pin the weights' addresses")
            pool = torch.cuda.graph_pool_handle()  # graphs replay one at a time and return copies: one pool
            for name in ("encode_tokens", "predict_noise", "decode_mel", "vocode"):
                setattr(runners, name, CUDAGraphed(getattr(runners, name), pool))
        self.runners = runners
        return self

    @contextlib.contextmanager
    def _running(self, *modules):
        """With offload, move the stage to the device for the duration of the block, then back."""
        if self.offload:
            for module in modules:
                module.to(self.device)
        try:
            yield
        finally:
            if self.offload:
                for module in modules:
                    module.to("cpu")

    # ------------------------------------------------------------------------------------------
    # The stages, in order

    def encode_prompt(self, prompt, negative_prompt=None, num_waveforms_per_prompt=1,
                      do_classifier_free_guidance=True, max_new_tokens=None, **embeds):
        """(GPT-2 states (B, N, 768), T5 states (B, L, 1024), T5 mask (B, L)), [uncond, cond] with guidance."""
        with self._running(self.conditioner):
            return self.conditioner.encode_prompt(
                prompt, negative_prompt=negative_prompt, num_waveforms_per_prompt=num_waveforms_per_prompt,
                do_classifier_free_guidance=do_classifier_free_guidance, max_new_tokens=max_new_tokens,
                device=self.device, encode_tokens=self.runners.encode_tokens, **embeds,
            )

    def latent_frames(self, audio_length_in_s: float) -> tuple[int, int]:
        """(mel frames rounded up to the VAE's factor, waveform samples to keep), as diffusers does."""
        frames = int(audio_length_in_s * self.sampling_rate / self.hop_length)
        frames = math.ceil(frames / self.vae_scale_factor) * self.vae_scale_factor
        return frames, int(audio_length_in_s * self.sampling_rate)

    def prepare_latents(self, batch: int, frames: int, generator=None, latents=None) -> torch.Tensor:
        shape = (batch, self.unet.config.in_channels, frames // self.vae_scale_factor,
                 self.vocoder.config.model_in_dim // self.vae_scale_factor)  # (B, 8, T/4, 16)
        if latents is None:
            # drawn where the generator lives (as diffusers' randn_tensor), then moved
            noise_device = generator.device if generator is not None else self.device
            latents = torch.randn(shape, generator=generator, device=noise_device, dtype=self.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape} for this audio length")
        return latents.to(self.device, self.dtype)

    def generate_latents(self, latents, conditioning, num_inference_steps=200, guidance_scale=3.5,
                         scheduler="ddim", eta=0.0, generator=None, karras_sigmas=False):
        """Denoise `latents`, yielding (timestep, latent) after every step.

        `karras_sigmas` puts DPM-Solver++'s steps on Karras et al.'s noise levels (diffusers'
        `use_karras_sigmas=True`), often better at few steps.
        """
        generated, t5_states, t5_mask = conditioning
        config = dataclasses.replace(self.scheduler_config, use_karras_sigmas=karras_sigmas)
        sampler = make_sampler(scheduler, config, num_inference_steps, device=self.device, eta=eta)
        latents = latents * sampler.init_noise_sigma
        with self._running(self.unet):
            context = self.unet.cross_attention_context(generated, t5_states, t5_mask)  # the same at every step
            for i, t in enumerate(sampler.timesteps):
                noise = self.runners.predict_noise(latents, t, context, guidance_scale)
                latents = sampler.step(noise, i, latents, generator=generator)
                yield t, latents

    def predict_noise(self, latents, t, context, guidance_scale: float) -> torch.Tensor:
        """The UNet's noise prediction for `latents` at timestep `t`, with classifier-free guidance.

        `context` is `unet.cross_attention_context` of the conditioning ([uncond, cond] with guidance).
        """
        guided = guidance_scale > 1.0
        # with guidance the UNet sees [latents, latents] (2B, 8, T/4, 16) against [uncond, cond]; it runs the
        # layers before the first attention once and repeats their output (batch_repeats)
        noise = self.runners.unet(latents, t, context=context, batch_repeats=2 if guided else 1)
        if guided:  # one batched call, then extrapolate from the unconditional towards the conditional
            uncond, cond = noise.chunk(2)
            noise = uncond + guidance_scale * (cond - uncond)
        return noise

    # Audio longer than this is decoded in overlapping chunks along time (the same result, see long_audio.py),
    # so the largest activations exist for one chunk at a time: 30.72 s per chunk. Chunking costs the VAE
    # decoder about 9x its one-pass time (measured on CPU; its GroupNorms gather whole-input statistics first).
    DECODE_CHUNK_LATENT_FRAMES = 768

    def decode(self, latents: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
        """Latent (B, 8, T/4, 16) -> waveform (B, samples) float32 on the CPU."""
        chunk = self.DECODE_CHUNK_LATENT_FRAMES
        long_audio = latents.shape[2] > chunk
        latents = latents.to(self.precision.vae)  # the latents are in the UNet's dtype (precision.py)
        with self._running(self.vae):
            mel = self.runners.decode_mel(latents / self.vae.config.scaling_factor,
                                          chunk_frames=chunk if long_audio else None)  # (B, 1, T, 64)
        with self._running(self.vocoder):
            audio = self.runners.vocode(mel.squeeze(1).to(self.precision.vocoder),
                                        chunk_frames=chunk * self.vae_scale_factor if long_audio else None)
        return audio[:, :num_samples].float().cpu()

    # ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, prompt=None, audio_length_in_s: float | None = None, num_inference_steps: int = 200,
                 guidance_scale: float = 3.5, negative_prompt=None, num_waveforms_per_prompt: int = 1,
                 eta: float = 0.0, generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds=None, negative_prompt_embeds=None, generated_prompt_embeds=None,
                 negative_generated_prompt_embeds=None, attention_mask=None, negative_attention_mask=None,
                 max_new_tokens: int | None = None, output_type: str = "np", callback=None,
                 callback_steps: int = 1, scheduler: str = "ddim", karras_sigmas: bool = False,
                 progress: bool = False, seed: int | None = None, audio=None, audio_sampling_rate: float | None = None,
                 strength: float = 1.0, regenerate_seconds: tuple[float, float] | None = None,
                 regenerate_above_hz: float | None = None, transcription=None) -> AudioLDM2PipelineOutput:
        """Audio for `prompt` (diffusers' argument names). `seed` is the simple way to reproducible output:
        the starting noise is drawn on the CPU, so a seed gives the same audio on every device (to float
        rounding); `generator` takes precedence. `progress` shows every stage with tqdm.

        With `audio` (a path, or an array/tensor with `audio_sampling_rate`), an edit of it: style transfer to
        `strength`, inpainting of `regenerate_seconds` (start, end), bandwidth extension above
        `regenerate_above_hz` (see editing.py). An edit's output has the input's length.
        `transcription`: the words to say, for the text-to-speech checkpoints (the prompt describes the voice)."""
        if seed is not None and generator is None:
            generator = torch.Generator("cpu").manual_seed(seed)
        edit = None
        if audio is not None or strength != 1.0 or regenerate_seconds is not None or regenerate_above_hz is not None:
            edit = AudioEdit.prepare(self, audio, audio_sampling_rate, audio_length_in_s, strength,
                                     regenerate_seconds, regenerate_above_hz)
            audio_length_in_s = edit.num_samples / self.sampling_rate
        if audio_length_in_s is None:  # the UNet's training size: 10.24 s
            audio_length_in_s = self.unet.config.sample_size * self.vae_scale_factor * self.hop_length / self.sampling_rate
        self.check_inputs(prompt, prompt_embeds, audio_length_in_s, num_inference_steps, num_waveforms_per_prompt,
                          scheduler, output_type)
        steps_run = edit.check_steps(num_inference_steps) if edit else num_inference_steps
        ranking = num_waveforms_per_prompt > 1 and prompt is not None and output_type != "latent"
        if ranking:
            self.clap_audio_tower()  # loaded on first ranking, and any config it refuses refused before the work
        with progress_stage("encoding the prompt", progress):
            conditioning = self.encode_prompt(
                prompt, negative_prompt, num_waveforms_per_prompt, guidance_scale > 1.0, max_new_tokens,
                prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                generated_prompt_embeds=generated_prompt_embeds,
                negative_generated_prompt_embeds=negative_generated_prompt_embeds,
                attention_mask=attention_mask, negative_attention_mask=negative_attention_mask,
                transcription=transcription,
            )
        batch = conditioning[0].shape[0] // (2 if guidance_scale > 1.0 else 1)
        frames, num_samples = (edit.num_frames, edit.num_samples) if edit else self.latent_frames(audio_length_in_s)
        latents = self.prepare_latents(batch, frames, generator, latents)

        denoiser = edit.generate_latents if edit else self.generate_latents
        steps = denoiser(latents, conditioning, num_inference_steps, guidance_scale, scheduler, eta, generator,
                         karras_sigmas)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, total=steps_run, desc="denoising", unit="step")
        for i, (t, latents) in enumerate(steps):
            if callback is not None and i % callback_steps == 0:
                callback(i, t, latents)
        if output_type == "latent":
            return AudioLDM2PipelineOutput(audios=latents)

        with progress_stage("decoding", progress):
            audio, scores = (edit.decode(latents) if edit else self.decode(latents, num_samples)), None
        if ranking:
            with progress_stage("ranking the candidates", progress):
                audio, scores = self.rank_candidates(prompt, audio, num_waveforms_per_prompt)
        return AudioLDM2PipelineOutput(audios=audio.numpy() if output_type == "np" else audio, scores=scores)

    def clap_audio_tower(self):
        """(CLAP audio tower, ClapFeatureConfig), loaded from the checkpoint on first use (for ranking)."""
        if self.clap_audio is None:
            home = torch.device("cpu") if self.offload else self.device
            # CLAP's audio tower in the text stages' dtype, as CLAP's text tower it is compared with
            self.clap_audio, self.feature_config = load_audio_tower(self.checkpoint, self.precision.text, home)
        return self.clap_audio, self.feature_config

    def rank_candidates(self, prompt, audio: torch.Tensor, num_waveforms_per_prompt: int):
        """Each prompt's candidates sorted by CLAP audio-text cosine similarity, best first (see clap_audio.py),
        and those similarities: (audio (P * n, samples), scores (P * n,))."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        tower, feature_config = self.clap_audio_tower()
        with self._running(self.conditioner, tower):
            features, _ = clap_input_features(audio.to(self.device), self.sampling_rate, feature_config)
            audio_embeds = tower(features).float()  # (P * n, 512)
            text_embeds = self.conditioner.clap_text_features(prompts, self.device).float()  # (P, 512)
        order = rank_waveforms(audio_embeds, text_embeds, num_waveforms_per_prompt).cpu()
        similarity = (text_embeds @ audio_embeds.T).cpu()  # (P, P * n)
        owner = torch.arange(len(order)) // num_waveforms_per_prompt  # the prompt of each ranked waveform
        return audio[order], similarity[owner, order]

    def check_inputs(self, prompt, prompt_embeds, audio_length_in_s, num_inference_steps, num_waveforms_per_prompt,
                     scheduler, output_type):
        if prompt is None and prompt_embeds is None:
            raise ValueError("give a prompt (str or list of str) or prompt_embeds")
        prompts = [prompt] if isinstance(prompt, str) else (prompt or [])
        if prompt is not None and (not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts)):
            raise ValueError(f"every prompt must be a non-empty string, got {prompt!r}")
        if not audio_length_in_s > 0:
            raise ValueError(f"audio_length_in_s must be positive, got {audio_length_in_s}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
        if num_waveforms_per_prompt < 1:
            raise ValueError(f"num_waveforms_per_prompt must be at least 1, got {num_waveforms_per_prompt}")
        if scheduler not in SAMPLERS:
            raise ValueError(f"unknown scheduler '{scheduler}'; choose from {', '.join(SAMPLERS)}")
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"output_type must be 'np', 'pt' or 'latent', got {output_type!r}")
