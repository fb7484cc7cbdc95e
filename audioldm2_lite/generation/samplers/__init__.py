"""Samplers: turn the UNet's noise prediction into a denoised latent, one step at a time.

One module per family, each readable alone (k-diffusion style), its update rule and parity details in its
docstrings: ddim.py, pndm.py (PLMS), lms.py, euler.py (and ancestral), heun.py, dpmsolver.py (DPM-Solver++
orders 1-3, ODE and SDE), unipc.py, deis.py. base.py holds what all share (config, schedule, loop, the `SAMPLERS`
table), sigmas.py the sigma-based ones' noise levels, extras.py what the engine asks beyond running them.
Importing this package imports base.py only; `make_sampler` imports the sampler it builds.
"""

from __future__ import annotations

import importlib

from .base import (  # noqa: F401
    SAMPLERS,
    SCHEDULER_CLASSES,
    Sampler,
    SamplerSpec,
    SchedulerConfig,
    alphas_cumprod,
    check_steps,
    denoise,
    draw_noise,
    make_sampler,
    max_steps,
    sampler_spec,
    spaced_timesteps,
)

_CLASSES = {"DDIMSampler": "ddim", "DPMSolverPlusPlus": "dpmsolver", "DPMSolverPlusPlus2M": "dpmsolver",
            "PNDMSampler": "pndm", "LMSSampler": "lms", "EulerSampler": "euler", "EulerAncestralSampler": "euler",
            "HeunSampler": "heun", "UniPCSampler": "unipc", "DEISSampler": "deis"}


def __getattr__(name: str):  # the sampler classes, imported on first use
    if name in _CLASSES:
        return getattr(importlib.import_module(f".{_CLASSES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
