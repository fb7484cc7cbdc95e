"""What the engine and the programs ask of the samplers beyond running them: the scheduler config as diffusers
writes it (`AudioLDM2Pipeline.scheduler.config`, for diffusers' `<Class>.from_config`), and the UNet calls a run
takes (progress bars)."""

from __future__ import annotations

import dataclasses

from .base import CLASS_DEFAULTS, SAMPLERS, SOLVER_FIELDS, SchedulerConfig


def to_hub(config: SchedulerConfig) -> dict:
    """The config as diffusers writes it, with `_class_name`: what `<Class>.from_config` takes."""
    spec = SAMPLERS[config.sampler]
    solver = CLASS_DEFAULTS.get(spec.scheduler_class, {})
    out = {"_class_name": spec.scheduler_class}
    for field in dataclasses.fields(config):
        if field.name == "sampler" or (field.name in SOLVER_FIELDS and field.name not in solver):
            continue  # a solver option this class does not have
        if field.name.startswith("use_") and not spec.noise_levels:
            continue  # Karras/exponential levels on a class that has neither
        out[field.name] = getattr(config, field.name)
    if spec.scheduler_class == "DDIMScheduler":
        out["clip_sample"] = False  # diffusers' DDIM defaults it on
    if spec.scheduler_class == "PNDMScheduler":
        out["skip_prk_steps"] = True
    return out


def unet_calls(name: str, num_inference_steps: int, steps_run: int | None = None) -> int:
    """The UNet calls of a run of sampler `name` (its `len`), or of its last `steps_run` steps (an edit):
    N for most, N + 1 for PNDM (its first step is taken twice), 2N - 1 for Heun (two per step but the last)."""
    n = num_inference_steps
    total = {"heun": 2 * n - 1, "pndm": n + 1 if n > 1 else 1}.get(name, n)
    skipped = 0 if steps_run is None else n - steps_run
    if name == "pndm" and skipped:  # an edit starts past PNDM's repeated level (pndm.PNDMSampler.start_index)
        return total - skipped - 1
    return total - skipped * (2 if name == "heun" else 1)
