"""The engine: AudioLDM 2 (core.py) run faster, bigger and for many people, behind diffusers' call API.

`AudioLDM2Pipeline` is the core `AudioLDM2` with each step replaced or wrapped where it must do more, every
piece tested equal to the core step it replaces (tests/test_core.py):

- the UNet step: keys and values computed once per generation, the layers both halves of guidance share run
  once (guided_unet.py); torch.compile and CUDA graphs (`optimize`, cuda_graphs.py);
- decoding: in time tiles when one pass does not fit in memory (memory.py, models/long_audio.py);
- precision recipes per stage (precision.py), model CPU offload, LoRA adapters and their per-call scale;
- requests: diffusers' keyword arguments become a `Request` once (request.py); `generate(requests)` runs
  many, batched (batching.py); edits of an input recording (editing.py); text-to-speech checkpoints
  (speech.py); candidates ranked by CLAP (ranking.py).

The call takes diffusers' `AudioLDM2Pipeline.__call__` argument names and returns what it returns (an
output object indexable as diffusers', or a tuple with `return_dict=False`), so switching is a change of
import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import warnings
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..models.long_audio import decode_in_tiles, vocode_in_windows
from .authors_models import folder_stage, guided_unet_for, model_folder, model_reference
from .batching import Generated, run_requests  # noqa: F401  (Generated re-exported)
from .conditioning import Conditioning, TextConditioner
from .core import AudioLDM2, classifier_free_guidance, is_guided
from .cuda_graphs import CUDAGraphed
from .devices import default_device, resolve_device  # noqa: F401  (default_device: documented here)
from .editing import AudioEdit, mel_config
from .embeddings import encode_prompt as encode_with_embeddings
from .guided_unet import GuidedUNet
from .hub import has_variant
from .loading import DEFAULT_CHECKPOINT, STAGES, CheckpointError, load_component, load_config
from .lora import load_lora, set_lora_call_scale
from .memory import TilePlan, plan_decode
from .precision import Precision, resolve_precision
from .ranking import ClapScorer
from .request import ModelLimits, Request, check_call, ranks_candidates
from .samplers import SchedulerConfig, denoise
from .samplers.extras import to_hub, unet_calls
from .speech import load_conditioner


@dataclass
class AudioLDM2PipelineOutput:
    """A call's result. Indexable as diffusers' outputs are: `out[0]` and `out["audios"]` are the audios,
    `to_tuple()` holds the fields that are set, in order."""

    audios: np.ndarray | torch.Tensor  # (batch * num_waveforms_per_prompt, samples) float32, or latents
    scores: torch.Tensor | None = None  # (batch * n,) CLAP similarity of each audio to its prompt, when ranked

    def to_tuple(self) -> tuple:
        return tuple(value for value in (self.audios, self.scores) if value is not None)

    def __getitem__(self, key):
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]


@dataclass
class Runners:
    """The callables the pipeline runs its stages through: by default the stages' own methods; after
    `optimize()` their torch.compile'd and CUDA-graphed versions. The stages themselves are never changed."""

    encode_tokens: Callable  # CLAP text, T5, projection, GPT-2 on tokens: TextConditioner.encode_tokens
    unet_context: Callable  # keys and values of the conditioning, once per generation: GuidedUNet.context
    unet: Callable  # the UNet, called by predict_noise: GuidedUNet
    predict_noise: Callable  # the guided UNet call: AudioLDM2Pipeline.predict_noise
    decode_mel: Callable  # the VAE decoder: AutoencoderKL.decode
    vocode: Callable  # the vocoder: HifiGan.forward


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


@dataclass(frozen=True)
class SchedulerSettings:
    """What `AudioLDM2Pipeline.scheduler` returns: the scheduler config as diffusers writes it."""

    config: dict


class AudioLDM2Pipeline(AudioLDM2):
    def __init__(self, conditioner: TextConditioner, unet, vae, vocoder, scheduler_config: SchedulerConfig,
                 checkpoint=None, device="cpu", dtype=torch.float32, offload: bool = False, variant: str | None = None,
                 precision: Precision | None = None):
        # each stage's dtype (precision.py); `dtype` is the UNet's, which the latents are drawn and denoised in
        self.precision = precision or Precision.uniform(dtype)
        super().__init__(conditioner, unet, vae, vocoder, scheduler_config, device, self.precision.unet)
        # CLAP's audio tower: loaded from `checkpoint` when candidates are first ranked (clap_scorer), so
        # generation neither loads it nor depends on its configs
        self.checkpoint, self.variant, self.scorer, self.offload = checkpoint, variant, None, offload
        self.runners = self.plain_runners()

    progress_stage = staticmethod(progress_stage)  # for batching.py, which runs requests through `run`

    # The stages may be replaced, as diffusers' components are (`pipe.vocoder = ...`): what follows from them is
    # read from the current ones, and a replaced stage runs as it is (the runners, and any optimize(), reset).
    STAGE_ATTRIBUTES = ("conditioner", "unet", "vae", "vocoder")

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name in self.STAGE_ATTRIBUTES and "runners" in vars(self):
            super().__setattr__("runners", self.plain_runners())

    @property
    def scheduler(self) -> "SchedulerSettings":
        """The scheduler a call runs by default, as diffusers shows it: `.config` is a dict with `_class_name`
        that diffusers' `<Class>.from_config` takes. Assigning any object with a `.config` (diffusers'
        idiom, `pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)`) picks the sampler
        here by its class name and config (samplers.SchedulerConfig.from_hub); diffusers is not imported."""
        return SchedulerSettings(to_hub(self.scheduler_config))

    @scheduler.setter
    def scheduler(self, scheduler):
        config = dict(scheduler.config)
        self.scheduler_config = SchedulerConfig.from_hub({**config, "_class_name": type(scheduler).__name__}
                                                         if not isinstance(scheduler, SchedulerSettings) else config)

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_CHECKPOINT, device=None, dtype=None, offload: bool = False,
                        progress: bool = False, lora=None, lora_scale: float = 1.0, variant: str | None = None,
                        reference: str | None = None, text_models_dir=None):
        """Load every stage of a hub id or local hub-layout folder, or of an authors' .pth file / haoheliu/<name>
        (converted once to a hub-layout folder, authors_models.py; `text_models_dir` holds roberta-base/,
        google/flan-t5-large/ and gpt2/ for it, default: those folders here, else the hub cache).

        device defaults to `default_device()` (CUDA, then MPS, then CPU). dtype: None for the measured default
        of the device (precision.py: float16 on CUDA; on a CPU with native bfloat16 the UNet, text stages and vocoder
        in bfloat16, the VAE in float32; float32 elsewhere), a torch dtype for every stage in it, or a
        `Precision` naming each stage's; `pipe.precision` says what was chosen. With `offload=True` the weights
        stay in CPU memory and each stage visits `device` only while it runs (model CPU offload). `progress` names
        each component as it loads (a hub
        download shows huggingface_hub's own bars). `lora`: a LoRA adapter file from audioldm2-lite-train,
        applied to the UNet with `lora_scale`. `variant` ("fp16"): the weight files of that variant, where a
        component has them (as diffusers). The folder's scheduler class picks the sampler a call uses by
        default (samplers `SAMPLERS`); assign `pipe.scheduler` to change it.
        `reference`: "authors" runs the model the weights were trained as, "diffusers" what diffusers'
        conversion computes (authors.py: UNet heads, the unconditional half of guidance, CLAP's LayerNorm
        epsilon); default: the authors' for the official checkpoints (recognised by their configs), diffusers'
        for any other folder, and the authors' for their own files. `pipe.reference` says which ran.
        """
        device = resolve_device(device)
        precision = resolve_precision(device, dtype)
        root = model_folder(model, text_models_dir, variant)  # an authors' file: converted once to hub layout, cached
        reference = model_reference(root, reference)
        home = torch.device("cpu") if offload else device
        if variant is not None and not any(has_variant(root / name, variant) for name in STAGES):
            raise CheckpointError(f"no component of '{root}' has weight files of the variant '{variant}' "
                                  f"(such as unet/diffusion_pytorch_model.{variant}.safetensors).")

        def load(name, dtype):
            with progress_stage(f"loading {name}", progress):
                return load_component(root, name, dtype=dtype, device=home, variant=variant, reference=reference,
                                      stage=folder_stage(root, name))

        # CLAP reads the prompt padded to its longest, not to 512 tokens as diffusers does: the padding is
        # masked, so the features agree to float rounding, at a fraction of the cost
        with progress_stage("loading the text encoders (CLAP, T5, projection, GPT-2)", progress):
            conditioner = load_conditioner(root, device=home, dtype=precision.text, variant=variant,  # speech.py
                                           clap_pad_to_max_length=False, reference=reference)
        if lora is not None and Path(lora).resolve().parent == root.resolve():
            # audioldm2-lite-train exports OUT/ with the adapter merged into OUT/unet and the adapter alone beside it
            warnings.warn(f"{lora} lies in the checkpoint {root}, an export whose UNet has this adapter merged in "
                          f"already: applying it again doubles it. Load the base model with --lora, or the export "
                          f"without it")
        unet = load("unet", precision.unet)
        if lora is not None:
            unet = load_lora(unet, lora, lora_scale)
        return cls(
            conditioner, unet, load("vae", precision.vae), load("vocoder", precision.vocoder),
            SchedulerConfig.from_hub(load_config(root, "scheduler")), root, device=device, offload=offload,
            variant=variant, precision=precision,
        )

    @property
    def guided_unet(self) -> GuidedUNet | None:
        """The engine's UNet call over the current UNet (guided_unet.py), built once per UNet; None for a pipeline
        that only decodes (no UNet)."""
        if self.unet is None:
            return None
        if getattr(self, "_guided_unet", None) is None or self._guided_unet.unet is not self.unet:
            self._guided_unet = guided_unet_for(self.unet)  # authors_models.py: FilmGuidedUNet for a FiLM UNet
        return self._guided_unet

    def plain_runners(self) -> Runners:
        unet = self.guided_unet
        return Runners(self.conditioner.encode_tokens, unet and unet.context, unet, self.predict_noise,
                       self.vae.decode, self.vocoder)

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
            runners.unet = torch.compile(runners.unet, fullgraph=True, dynamic=False)  # the GuidedUNet
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
    # The core's steps, replaced

    def encode_prompt(self, prompt, negative_prompt=None, num_waveforms_per_prompt=1,
                      do_classifier_free_guidance=True, max_new_tokens=None, **embeds) -> Conditioning:
        """The core's `encode_prompt` (on the device during the call with offload, through the runners), with
        diffusers' precomputed `*prompt_embeds` and `*attention_mask` arguments and, on a text-to-speech
        checkpoint, the `transcription` (embeddings.py, conditioning.py)."""
        with self._running(self.conditioner):
            return encode_with_embeddings(
                self.conditioner, prompt, negative_prompt=negative_prompt,
                num_waveforms_per_prompt=num_waveforms_per_prompt,
                do_classifier_free_guidance=do_classifier_free_guidance, max_new_tokens=max_new_tokens,
                device=self.device, encode_tokens=self.runners.encode_tokens, **embeds,
            )

    def generate_latents(self, latents, conditioning, num_inference_steps=200, guidance_scale=3.5,
                         scheduler=None, eta=0.0, generator=None, karras_sigmas=None, edit: AudioEdit | None = None):
        """The core's `generate_latents`, with the cross-attentions' keys and values computed once, and with
        `edit`, an edit of its source: from the step `strength` gives, the source noised there as the start
        (SDEdit), and outside its mask the source kept (inpainting, bandwidth)."""
        sampler = self.make_sampler(num_inference_steps, scheduler, eta, karras_sigmas)
        with self._running(self.unet):
            context = self.runners.unet_context(*conditioning)  # the same at every step

            def predict_noise(x, t):
                return self.runners.predict_noise(x, t, context, guidance_scale)

            if edit is None:
                yield from denoise(sampler, predict_noise, latents, generator=generator)
            else:
                # diffusers' img2img: skip N - int(N strength) steps, each `order` UNet calls (Heun's 2)
                start = sampler.start_index(num_inference_steps - edit.check_steps(num_inference_steps))
                yield from denoise(sampler, predict_noise, latents, edit.source, start, edit.regenerate, generator,
                                   start_from_noise=edit.strength == 1.0)

    def predict_noise(self, latents, t, context, guidance_scale: float) -> torch.Tensor:
        """The core's `predict_noise`, on `context` (`GuidedUNet.context` of the conditioning) instead of the
        conditioning: with guidance the layers before the first attention run once for both halves."""
        guided = is_guided(guidance_scale)
        noise = self.runners.unet(latents, t, context, 2 if guided else 1)
        return classifier_free_guidance(noise, guidance_scale) if guided else noise

    # The most memory decoding may take, in bytes; None: most of what is free on the device when it starts.
    # Set it (`pipe.max_memory = 4 * 2**30`, or per call) to bound decoding on a small or shared GPU.
    max_memory: int | None = None

    def decode_plan(self, shape, max_memory: int | None = None) -> TilePlan:
        """One pass, or the time tiles and vocoder windows that fit (memory.py), for latents of `shape`."""
        return plan_decode(self.vae, self.vocoder, shape, self.precision.vae, self.device,
                           self.max_memory if max_memory is None else max_memory)

    def decode_mel(self, latents: torch.Tensor, max_memory: int | None = None) -> torch.Tensor:
        """Latent (B, 8, T/4, 16), times the VAE's scaling factor -> log-mel (B, T, 64): in one pass when its
        estimated memory fits, else layer by layer over time tiles, for the same result (long_audio.py)."""
        plan = self.decode_plan(latents.shape, max_memory)
        # the latents are in the UNet's dtype, the VAE may run in another (precision.py)
        latents = latents.to(self.precision.vae) / self.vae.config.scaling_factor
        with self._running(self.vae):
            if plan.one_pass:
                mel = self.runners.decode_mel(latents)  # (B, 1, T, 64)
            else:  # not through the runners: a CUDA graph cannot hold the tiles' host copies
                mel = decode_in_tiles(self.vae, latents, plan.tile_frames, plan.storage)
        return mel.squeeze(1).to(self.device)  # (B, T, 64)

    def decode(self, latents: torch.Tensor, num_samples: int | None = None, edit: AudioEdit | None = None,
               max_memory: int | None = None) -> torch.Tensor:
        """The core's `decode`, for every mode: with an `edit` that keeps a region, the reconstruction's mel
        outside its mask (AudioEdit.mel). In time tiles and vocoder windows when one pass does not fit in
        `max_memory` (default `self.max_memory`, else most of the memory free on the device)."""
        keeps = edit is not None and edit.regenerate is not None
        mel = edit.mel(latents, max_memory) if keeps else self.decode_mel(latents, max_memory)
        plan = self.decode_plan(latents.shape, max_memory)
        with self._running(self.vocoder):
            mel = mel.to(self.precision.vocoder)
            if plan.vocoder_chunk_frames is None:
                audio = self.runners.vocode(mel)
            else:
                audio = vocode_in_windows(self.vocoder, mel, plan.vocoder_chunk_frames)
        return audio[:, :num_samples].float().cpu()

    # ------------------------------------------------------------------------------------------

    def limits(self) -> ModelLimits:
        """What a request is checked against: this checkpoint's schedule, rates and lengths."""
        mel = mel_config(self)
        return ModelLimits(
            scheduler=self.scheduler_config, sampling_rate=self.sampling_rate,
            samples_per_latent_frame=self.hop_length * self.vae_scale_factor, samples_per_mel_frame=self.hop_length,
            mel_top_hz=mel.fmax,
            default_seconds=self.unet.config.sample_size * self.vae_scale_factor * self.hop_length / self.sampling_rate,
            speech=self.conditioner.speaks,
            ranks=self.checkpoint is not None and ranks_candidates(self.checkpoint),
        )

    @torch.no_grad()
    def __call__(self, prompt=None, audio_length_in_s: float | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float = 3.5, negative_prompt=None, num_waveforms_per_prompt: int = 1,
                 eta: float = 0.0, generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None,
                 prompt_embeds=None, negative_prompt_embeds=None, generated_prompt_embeds=None,
                 negative_generated_prompt_embeds=None, attention_mask=None, negative_attention_mask=None,
                 max_new_tokens: int | None = None, output_type: str = "np", callback=None,
                 callback_steps: int = 1, scheduler: str | None = None, karras_sigmas: bool | None = None,
                 progress: bool = False, seed: int | None = None, audio=None, audio_sampling_rate: float | None = None,
                 strength: float = 1.0, regenerate_seconds: tuple[float, float] | None = None,
                 regenerate_above_hz: float | None = None, transcription=None, return_dict: bool = True,
                 cross_attention_kwargs: dict | None = None) -> AudioLDM2PipelineOutput | tuple:
        """Audio for `prompt` (diffusers' argument names). `seed` is the simple way to reproducible output:
        the starting noise is drawn on the CPU, so a seed gives the same audio on every device (to float
        rounding); `generator` takes precedence, one or a list (one per waveform). `progress` shows every stage
        with tqdm. `num_inference_steps` defaults to the scheduler's (core.DEFAULT_STEPS: 200 for DDIM).

        As diffusers: `generator` may be a list with one generator per output waveform (row i's noise is then
        what a single run with generator i draws); `return_dict=False` returns `(audios,)`;
        `cross_attention_kwargs={"scale": s}` multiplies a loaded LoRA's update by s for this call;
        `output_type` "np" (float32 array), "pt" (float32 CPU tensor) or "latent" (the final latents).
        `scheduler` (a samplers.SAMPLERS name: "ddim", "euler", "unipc", ...) defaults to the checkpoint's
        scheduler class (or `pipe.scheduler`'s), `karras_sigmas` to its config's `use_karras_sigmas`.

        With `audio` (a path, or an array/tensor with `audio_sampling_rate`), an edit of it: style transfer to
        `strength`, inpainting of `regenerate_seconds` (start, end), bandwidth extension above
        `regenerate_above_hz` (see editing.py). An edit's output has the input's length.
        `transcription`: the words to say, for the text-to-speech checkpoints (the prompt describes the voice).
        Every value is checked as a `Request` is (request.py), before any work: a mistake is one RequestError."""
        check_call(prompt, prompt_embeds, transcription, output_type, callback_steps)
        first = prompt if isinstance(prompt, str) else (prompt[0] if prompt else "(given embeddings)")
        spoken = transcription if transcription is None or isinstance(transcription, str) else transcription[0]
        # the one translation: diffusers' keyword arguments become a request, checked once
        request = Request(
            first, transcription=spoken, seconds=audio_length_in_s, steps=num_inference_steps, scheduler=scheduler,
            karras=karras_sigmas, guidance=guidance_scale, candidates=num_waveforms_per_prompt, audio=audio,
            audio_sampling_rate=audio_sampling_rate, strength=strength, regenerate_seconds=regenerate_seconds,
            regenerate_above_hz=regenerate_above_hz,
        ).check(self.limits() if prompt_embeds is None else dataclasses.replace(self.limits(), speech=False))
        self.set_cross_attention_kwargs(cross_attention_kwargs)  # diffusers' per-call LoRA scale
        if seed is not None and generator is None:
            generator = torch.Generator("cpu").manual_seed(seed)
        ranked = [prompt] if isinstance(prompt, str) else prompt
        if num_waveforms_per_prompt > 1 and prompt is not None and output_type != "latent":
            self.clap_scorer()  # loaded on first ranking, and any config it refuses refused before the work
        with progress_stage("encoding the prompt", progress):
            conditioning = self.encode_prompt(
                prompt, negative_prompt, num_waveforms_per_prompt, request.guided, max_new_tokens,
                prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                generated_prompt_embeds=generated_prompt_embeds,
                negative_generated_prompt_embeds=negative_generated_prompt_embeds,
                attention_mask=attention_mask, negative_attention_mask=negative_attention_mask,
                transcription=transcription,
            )
        audio, scores = self.run(request, conditioning, generator, latents, ranked, eta, callback, callback_steps,
                                 progress, decode=output_type != "latent")
        if output_type == "latent":
            return AudioLDM2PipelineOutput(audios=audio) if return_dict else (audio,)
        output = AudioLDM2PipelineOutput(audios=audio.numpy() if output_type == "np" else audio, scores=scores)
        return output if return_dict else (output.audios,)

    @torch.no_grad()
    def run(self, request: Request, conditioning: Conditioning, generator=None, latents=None,
            prompts: list[str] | None = None, eta: float = 0.0, callback=None, callback_steps: int = 1,
            progress: bool = False, decode: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A checked request from its conditioning on: (audio (B * n, samples) float32 on the CPU, best first
        when ranked, and its CLAP scores, else None); with `decode=False` (the final latents, None).

        Starts from `latents`, else from noise drawn with `generator`; with several candidates per prompt
        (request.candidates) they are ranked against `prompts` (None: not ranked).
        `callback(i, t, latents)` after every `callback_steps`-th denoising step."""
        edit = None
        if request.is_edit:
            edit = AudioEdit.prepare(self, request.audio, request.audio_sampling_rate, None, request.strength,
                                     request.regenerate_seconds, request.regenerate_above_hz)
        batch = conditioning.generated.shape[0] // (2 if request.guided else 1)
        frames, num_samples = (edit.num_frames, edit.num_samples) if edit else self.latent_frames(request.seconds)
        latents = self.prepare_latents(batch, frames, generator, latents)

        steps = self.generate_latents(latents, conditioning, request.steps, request.guidance, request.scheduler, eta,
                                      generator, request.karras, edit)
        if progress:
            from tqdm.auto import tqdm

            total = unet_calls(request.scheduler, request.steps, edit.check_steps(request.steps) if edit else None)
            steps = tqdm(steps, total=total, desc="denoising", unit="step")
        for i, (t, latents) in enumerate(steps):
            if callback is not None and i % callback_steps == 0:
                callback(i, t, latents)
        if not decode:
            return latents, None

        with progress_stage("decoding", progress):
            audio, scores = self.decode(latents, num_samples, edit), None
        if request.candidates > 1 and prompts is not None:
            with progress_stage("ranking the candidates", progress):
                audio, scores = self.rank_candidates(prompts, audio, request.candidates)
        return audio, scores

    def set_cross_attention_kwargs(self, cross_attention_kwargs: dict | None) -> None:
        """diffusers' per-call `cross_attention_kwargs`: {"scale": s} multiplies the update of the LoRA loaded
        into the UNet by s (without a LoRA it changes nothing, as in diffusers). Set on every call, so a
        scale never carries over to the next call."""
        kwargs = dict(cross_attention_kwargs or {})
        if set(kwargs) - {"scale"}:
            raise ValueError(f"cross_attention_kwargs takes only 'scale' (a LoRA's weight for this call), got "
                             f"{sorted(kwargs)}")
        scale = kwargs.get("scale", 1.0)
        if isinstance(self.runners.predict_noise, CUDAGraphed) and scale != 1.0:
            raise ValueError("cross_attention_kwargs scale with optimize(cuda_graphs=True): the graphs keep the "
                             "LoRA scale they were captured with. Load the LoRA with lora_scale=s instead.")
        set_lora_call_scale(self.unet, scale)

    @torch.no_grad()
    def generate(self, requests: Request | list[Request], progress: bool = False, callback=None) -> list[Generated]:
        """Run requests (checked first, all of them, before any work): what every program calls.

        Each request's audio depends on the request alone, not on which others share its batch: its noise comes
        from a generator of its own seeded with its seed (drawn when None, and recorded in the result), and its
        text is encoded alone, so batched UNet arithmetic moves it by float rounding only. Requests that can
        share a batch (text to audio with the same length, steps, sampler, guidance and candidates) go through one
        `run`, as requests; edits run one at a time. `callback(i, t, latents)` after every denoising step.
        """
        return run_requests(self, [requests] if isinstance(requests, Request) else list(requests), progress, callback)

    @staticmethod
    def with_seed(request: Request) -> Request:
        """The request with a seed: its own, or one drawn from the system's entropy (then recorded)."""
        return request if request.seed is not None else dataclasses.replace(request, seed=secrets.randbelow(2**32))

    def clap_scorer(self) -> ClapScorer:
        """CLAP as a scorer (ranking.py): the text stages' CLAP, and its audio tower loaded from the checkpoint on
        first use (for ranking), in the text stages' dtype, as the text tower it is compared with."""
        if self.scorer is None:
            home = torch.device("cpu") if self.offload else self.device
            clap = self.conditioner.clap  # None where the text stages have no CLAP: the scorer loads the folder's
            self.scorer = ClapScorer(self.checkpoint, home, self.precision.text, self.variant, clap=clap,
                                     tokenizer=self.conditioner.tokenizer if clap is not None else None,
                                     reference=self.reference)
            self.scorer.device = self.device  # where it runs: with offload, moved there for the call
        return self.scorer

    def clap_audio_tower(self):
        """(CLAP audio tower, ClapFeatureConfig), loaded from the checkpoint on first use (for ranking)."""
        scorer = self.clap_scorer()
        return scorer.audio_tower, scorer.feature_config

    def rank_candidates(self, prompt, audio: torch.Tensor, num_waveforms_per_prompt: int):
        """Each prompt's candidates sorted by CLAP audio-text cosine similarity, best first (ranking.py), and
        those similarities: (audio (P * n, samples), scores (P * n,))."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        scorer = self.clap_scorer()
        with self._running(self.conditioner, scorer.audio_tower):
            return scorer.rank(prompts, audio, self.sampling_rate, num_waveforms_per_prompt)
