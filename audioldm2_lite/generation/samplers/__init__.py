"""Samplers: turn the UNet's noise prediction into a denoised latent, one step at a time.

One module per family, each readable alone (k-diffusion's `sampling.py` style), the update rule and the
details that make it match diffusers in its docstrings:

- ddim.py       DDIM (the checkpoints' own scheduler), with eta
- pndm.py       PNDM's pseudo linear multistep (PLMS, diffusers' `skip_prk_steps`)
- lms.py        linear multistep in sigma (order 4)
- euler.py      Euler and Euler ancestral (Karras et al. 2022, algorithm 2; k-diffusion)
- heun.py       Heun's second-order method (Karras et al. 2022, algorithm 1)
- dpmsolver.py  DPM-Solver++ of orders 1-3, multistep, and its SDE variant
- unipc.py      UniPC, predictor-corrector with B(h) = h (bh1) or e^h - 1 (bh2)
- deis.py       DEIS, exponential integrator in rho = sigma / alpha

base.py holds what they share (the config, noise levels, the loop, the `SAMPLERS` table). Importing this
package imports base.py only; a sampler's module loads when `make_sampler` builds it (or on first use of
its class name here).
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
    unet_calls,
)

_CLASSES = {"DDIMSampler": "ddim", "DPMSolverPlusPlus": "dpmsolver", "DPMSolverPlusPlus2M": "dpmsolver",
            "PNDMSampler": "pndm", "LMSSampler": "lms", "EulerSampler": "euler", "EulerAncestralSampler": "euler",
            "HeunSampler": "heun", "UniPCSampler": "unipc", "DEISSampler": "deis"}


def __getattr__(name: str):  # the sampler classes, imported on first use
    if name in _CLASSES:
        return getattr(importlib.import_module(f".{_CLASSES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
