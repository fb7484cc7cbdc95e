"""One generation request: the settings that a Python call, a command line, a prompt-file row and a web request
all become, with the one table of defaults and the one validation, run before any model loads.

    Request(prompt, negative_prompt, transcription, seconds, steps, scheduler, karras, guidance, candidates,
            seed, audio, strength, regenerate_seconds, regenerate_above_hz, lora, lora_scale)
      --check(limits)--> the same request, every value checked (RequestError: one line, a usage mistake)
      --AudioLDM2Pipeline.generate--> audio; `record()` is what a file's metadata and a manifest line hold

A mode is a choice of fields: text to audio (prompt), speech (+ transcription, on a text-to-speech
checkpoint), style transfer (+ audio, strength < 1), inpainting (+ audio, regenerate_seconds), bandwidth
extension (+ audio, regenerate_above_hz); each with or without a LoRA. Edits combine.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .core import is_guided
from .loading import hub_class_name, read_json
from .samplers import SAMPLERS, SchedulerConfig, check_steps


class RequestError(ValueError):
    """A request (or command line) that cannot run as given: one line saying what to change. Exit status 2."""


# The one table of defaults. `None` means "decided by the model or the other fields": seconds -> the UNet's
# training length (10.24 s for every official checkpoint), steps -> DEFAULT_STEPS of the scheduler, scheduler ->
# the checkpoint's own (its scheduler class: DDIM for the official ones), karras -> the checkpoint's scheduler
# config, seed -> drawn at random and recorded.
DEFAULT_STEPS = {name: spec.steps for name, spec in SAMPLERS.items()}  # samplers.SAMPLERS, the one table
DEFAULT_GUIDANCE = 3.5
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64 bits
EDIT_FIELDS = ("strength", "regenerate_seconds", "regenerate_above_hz")


@dataclass(frozen=True)
class ModelLimits:
    """What the checks need to know of the model, without loading it; the official checkpoints' values."""

    scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
    sampling_rate: int = 16000
    samples_per_latent_frame: int = 640  # hop 160 x the VAE's factor 4
    samples_per_mel_frame: int = 160  # the vocoder's hop: the shortest audio is one mel frame
    mel_top_hz: float = 8000.0  # the mel filterbank's upper edge: the model's Nyquist
    default_seconds: float = 10.24  # the UNet's sample_size x 4 x 160 / 16000
    speech: bool = False  # a text-to-speech checkpoint (VITS text_encoder_2): a transcription is needed
    ranks: bool = True  # CLAP's audio tower is there to rank candidates (ranks_candidates)


def ranks_candidates(folder: str | os.PathLike) -> bool:
    """Whether a hub-layout folder's CLAP (`text_encoder`) has an audio tower to rank candidates with: every hub
    checkpoint's, and a converted authors' file's that holds its ranking CLAP (authors_checkpoint.RANKING_CLAP)."""
    config = Path(folder) / "text_encoder" / "config.json"
    return config.is_file() and "audio_config" in read_json(config)


def checkpoint_limits(checkpoint: str | os.PathLike) -> ModelLimits:
    """What a request is checked against (request.ModelLimits), read from a local checkpoint's config files alone:
    nothing downloaded, no weights read, so the checks run before any model loads. A hub id not on disk as a
    folder gets the official checkpoints' values (the pipeline checks again once loaded)."""
    folder = Path(checkpoint).expanduser()
    if not (folder / "model_index.json").is_file():
        return ModelLimits()

    def config(name: str, file: str = "config.json") -> dict:
        return read_json(folder / name / file) if (folder / name / file).is_file() else {}

    unet, vocoder, speech = config("unet"), config("vocoder"), config("text_encoder_2")
    rate = int(vocoder.get("sampling_rate", 16000))
    hop = 1
    for factor in vocoder.get("upsample_rates", (5, 4, 2, 2, 2)):
        hop *= factor
    vae_factor = 2 ** (len(config("vae").get("block_out_channels", (128, 256, 384))) - 1)
    return ModelLimits(
        scheduler=SchedulerConfig.from_hub(config("scheduler", "scheduler_config.json")), sampling_rate=rate,
        samples_per_latent_frame=hop * vae_factor, samples_per_mel_frame=hop, mel_top_hz=rate / 2,
        default_seconds=unet.get("sample_size", 256) * vae_factor * hop / rate,
        speech=hub_class_name(speech) == "VitsModel",
        ranks=ranks_candidates(folder),
    )


@dataclass(frozen=True)
class Request:
    prompt: str
    negative_prompt: str = ""
    transcription: str | None = None  # the words to say (speech checkpoints); the prompt describes the voice
    seconds: float | None = None  # None: the model's training length; an edit keeps its input's length
    steps: int | None = None  # None: DEFAULT_STEPS[scheduler]
    scheduler: str | None = None  # a samplers.SAMPLERS name ("ddim", "euler", "unipc", ...); None: the checkpoint's
    karras: bool | None = None  # Karras noise levels (samplers that offer them); None: the checkpoint's config
    guidance: float = DEFAULT_GUIDANCE  # classifier-free guidance; 1 or below: none
    candidates: int = 1  # waveforms made, ranked by CLAP similarity to the prompt, best first
    seed: int | None = None  # None: drawn; the result records the one used
    audio: object = None  # the recording to edit: a path, or (samples,) array/tensor at `audio_sampling_rate`
    audio_sampling_rate: int | None = None
    strength: float = 1.0  # style transfer: how much of the schedule is redone, (0, 1]
    regenerate_seconds: tuple[float, float] | None = None  # inpainting: (start, end) regenerated, the rest kept
    regenerate_above_hz: float | None = None  # bandwidth extension: regenerated above, kept below
    lora: str | None = None  # a LoRA adapter file (audioldm2-lite-train)
    lora_scale: float = 1.0

    @property
    def guided(self) -> bool:
        return is_guided(self.guidance)

    @property
    def is_edit(self) -> bool:
        return self.audio is not None

    def resolved(self, limits: ModelLimits | None = None) -> "Request":
        """The request with every default filled in: scheduler, Karras levels, steps (and seconds, unless an edit)."""
        limits = limits or ModelLimits()
        scheduler = self.scheduler or limits.scheduler.sampler  # the folder's scheduler class names it
        karras = self.karras
        if karras is None:  # the folder's setting, where the sampler asked for offers Karras levels
            karras = scheduler in SAMPLERS and limits.scheduler.for_sampler(scheduler).use_karras_sigmas
        steps = self.steps if self.steps is not None else DEFAULT_STEPS.get(scheduler, 20)
        seconds = self.seconds if self.seconds is not None or self.is_edit else limits.default_seconds
        return dataclasses.replace(self, scheduler=scheduler, karras=karras, steps=steps, seconds=seconds)

    def check(self, limits: ModelLimits | None = None) -> "Request":
        """The request resolved and checked (every value a person can get wrong, before any model loads);
        the first mistake is a RequestError. An edit's input is opened (its header only) for its length."""
        limits = limits or ModelLimits()
        r = self.resolved(limits)
        if not isinstance(r.prompt, str) or not r.prompt.strip():
            raise RequestError("the prompt is empty")
        if not isinstance(r.negative_prompt, str):
            raise RequestError(f"the negative prompt must be text, got {r.negative_prompt!r}")
        if r.transcription is not None and (not isinstance(r.transcription, str) or not r.transcription.strip()):
            raise RequestError("the transcription is empty")
        if limits.speech and r.transcription is None:
            raise RequestError("this is a text-to-speech checkpoint: give the words to say as the transcription "
                               "(the prompt describes the voice)")
        if r.scheduler not in SAMPLERS:
            raise RequestError(f"unknown scheduler '{r.scheduler}'; choose from {', '.join(SAMPLERS)}")
        if r.karras and "karras" not in SAMPLERS[r.scheduler].noise_levels:
            offered = ", ".join(name for name, spec in SAMPLERS.items() if "karras" in spec.noise_levels)
            raise RequestError(f"karras noise levels apply to these schedulers only: {offered}")
        config = dataclasses.replace(limits.scheduler.for_sampler(r.scheduler), use_karras_sigmas=r.karras)
        if r.karras:
            config = dataclasses.replace(config, use_exponential_sigmas=False)
        try:
            check_steps(r.scheduler, config, r.steps)
        except ValueError as error:
            raise RequestError(f"steps: {error}") from None
        number(r.guidance, "guidance", minimum=0.0)
        whole(r.candidates, "candidates", minimum=1)
        if r.candidates > 1 and not limits.ranks:
            raise RequestError("this model has no CLAP audio tower to rank candidates with (its text_encoder has no "
                               "audio_config); ask for one waveform per prompt")
        if r.seed is not None and (isinstance(r.seed, bool) or not isinstance(r.seed, int) or not 0 <= r.seed <= MAX_SEED):
            raise RequestError(f"seed must be in 0 .. 2**64 - 1, got {r.seed!r}")
        if r.lora is None and r.lora_scale != 1.0:
            raise RequestError("a LoRA scale needs a LoRA adapter (lora)")
        if r.lora is not None and not Path(r.lora).is_file():
            raise RequestError(f"no LoRA adapter file '{r.lora}'")
        number(r.lora_scale, "lora_scale")
        if r.is_edit:
            self.check_edit(r, limits)
        else:
            given = [name for name in EDIT_FIELDS if getattr(r, name) != Request.__dataclass_fields__[name].default]
            if given:
                raise RequestError(f"{given[0]} edits audio: give the recording to edit (audio)")
            if isinstance(r.seconds, bool) or not isinstance(r.seconds, (int, float)) or not math.isfinite(r.seconds) \
                    or int(r.seconds * limits.sampling_rate / limits.samples_per_mel_frame) < 1:
                shortest = limits.samples_per_mel_frame / limits.sampling_rate
                raise RequestError(f"seconds must be positive, at least {shortest:g} (one mel frame of this model); "
                                   f"got {r.seconds!r}")
        return r

    @staticmethod
    def check_edit(r: "Request", limits: ModelLimits) -> None:
        from .audio_io import AudioInputError, audio_samples

        try:
            samples = audio_samples(r.audio, r.audio_sampling_rate, limits.sampling_rate)  # at the model's rate
        except AudioInputError as error:
            raise RequestError(str(error)) from None
        seconds = samples / limits.sampling_rate
        if samples < limits.samples_per_latent_frame:
            raise RequestError(f"the audio is {samples} samples at {limits.sampling_rate} Hz, shorter than one latent "
                               f"frame ({limits.samples_per_latent_frame} samples, "
                               f"{1000 * limits.samples_per_latent_frame / limits.sampling_rate:g} ms)")
        if r.seconds is not None and abs(r.seconds - seconds) > 1e-3:
            raise RequestError(f"seconds={r.seconds:g} disagrees with the audio's {seconds:g} s; leave it out: an edit "
                               f"keeps the input's length")
        if isinstance(r.strength, bool) or not isinstance(r.strength, (int, float)) or not 0 < r.strength <= 1:
            raise RequestError(f"strength must be in (0, 1], got {r.strength!r}")
        if int(r.steps * r.strength) < 1:
            raise RequestError(f"strength={r.strength:g} with {r.steps} steps runs no denoising step; raise the "
                               f"strength or the number of steps")
        if r.regenerate_seconds is not None:
            check_time_range(r.regenerate_seconds, seconds)
        if r.regenerate_above_hz is not None:
            hz = r.regenerate_above_hz
            if isinstance(hz, bool) or not isinstance(hz, (int, float)) or not 0 < hz < limits.mel_top_hz:
                raise RequestError(f"regenerate_above_hz must be in (0, {limits.mel_top_hz:g}) Hz, the model's mel "
                                   f"range; got {hz!r}")

    def record(self) -> dict:
        """The request as plain JSON values: what a file's metadata and a manifest line hold (an in-memory input
        recording is recorded as "<array>")."""
        fields = dataclasses.asdict(self)
        if self.audio is not None and not isinstance(self.audio, (str, Path)):
            fields["audio"] = "<array>"
        elif self.audio is not None:
            fields["audio"] = str(self.audio)
        if self.regenerate_seconds is not None:
            fields["regenerate_seconds"] = [float(x) for x in self.regenerate_seconds]
        return {k: v for k, v in fields.items() if v is not None and not (k == "audio_sampling_rate" and not self.audio)}


def check_call(prompt, prompt_embeds, transcription, output_type, callback_steps) -> None:
    """The shapes of a diffusers-style call (AudioLDM2Pipeline.__call__), before it becomes a Request: a prompt or
    embeddings, every prompt text, one transcription per prompt, the output type and the callback's period."""
    if prompt is None and prompt_embeds is None:
        raise RequestError("give a prompt (str or list of str) or prompt_embeds")
    prompts = [prompt] if isinstance(prompt, str) else (prompt or [])
    if prompt is not None and (not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts)):
        raise RequestError(f"every prompt must be a non-empty string, got {prompt!r}")
    spoken = [transcription] if isinstance(transcription, str) else (transcription or [])
    if any(not isinstance(t, str) or not t.strip() for t in spoken):
        raise RequestError(f"every transcription must be a non-empty string, got {transcription!r}")
    if output_type not in ("np", "pt", "latent"):
        raise RequestError(f"output_type must be 'np', 'pt' or 'latent', got {output_type!r}")
    if not isinstance(callback_steps, int) or callback_steps < 1:
        raise RequestError(f"callback_steps must be a positive int, got {callback_steps!r}")


def check_time_range(regenerate_seconds, seconds: float) -> tuple[float, float]:
    """(start, end) in seconds inside [0, seconds], start < end; else one RequestError."""
    try:
        start_s, end_s = (float(x) for x in regenerate_seconds)
    except (TypeError, ValueError):
        raise RequestError(f"regenerate_seconds must be (start, end) in seconds, got {regenerate_seconds!r}") from None
    if not (math.isfinite(start_s) and math.isfinite(end_s)):
        raise RequestError(f"regenerate_seconds {start_s:g}:{end_s:g} must be finite")
    if not start_s < end_s:
        raise RequestError(f"regenerate_seconds {start_s:g}:{end_s:g} is reversed or empty (start must be before end)")
    if start_s < 0 or end_s > seconds + 1e-9:
        raise RequestError(f"regenerate_seconds {start_s:g}:{end_s:g} is outside the audio (0 to {seconds:g} s)")
    return start_s, end_s


def number(value, name: str, minimum: float | None = None, maximum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f" at least {minimum:g}" if minimum is not None else ""
        raise RequestError(f"{name} must be a finite number{bounds}, got {value!r}")


def whole(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RequestError(f"{name} must be a whole number, at least {minimum}; got {value!r}")
