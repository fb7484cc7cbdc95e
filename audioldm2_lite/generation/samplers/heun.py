"""Heun's second-order method in sigma (Karras et al., "Elucidating the Design Space of Diffusion-Based
Generative Models", arXiv:2206.00364, algorithm 1 without churn; k-diffusion's `sample_heun`)."""

from __future__ import annotations

import torch

from .base import SchedulerConfig
from .sigmas import SigmaSampler, discrete_sigma_schedule


class HeunSampler(SigmaSampler):
    """Heun's method, as diffusers' `HeunDiscreteScheduler`: an Euler step, then the trapezoid rule with the
    slope at its end (no correction on the last step, which ends at sigma = 0):

        d   = (x_i - x0(x_i, sigma_i)) / sigma_i,          x'  = x_i + (sigma_{i+1} - sigma_i) d
        d'  = (x' - x0(x', sigma_{i+1})) / sigma_{i+1},    x_{i+1} = x_i + (sigma_{i+1} - sigma_i) (d + d') / 2

    Parity details (diffusers 0.42): its tables hold every UNet call, 2N - 1 for N steps: timesteps t_0, t_1,
    t_1, ..., t_{N-1}, t_{N-1} and levels sigma_0, sigma_1, sigma_1, ..., sigma_{N-1}, sigma_{N-1}, 0, so
    `len(sampler)` counts UNet calls and `order` = 2 (editing's start index is steps x 2, as diffusers'
    img2img). Whether a call is an Euler or a correction call is diffusers' state (is a predictor pending).
    """

    order = 2

    def __init__(self, config: SchedulerConfig, num_inference_steps: int, device=None):
        timesteps, sigmas = discrete_sigma_schedule(config, num_inference_steps)
        sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])  # (2N,)
        timesteps = torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)])  # (2N - 1,)
        self.setup_sigmas(config, timesteps, sigmas)
        self.pending = None  # (slope d, step dt, x_i) of the Euler half awaiting its correction
        self.to(device if device is not None else "cpu")

    def step(self, model_output, i: int, sample, generator=None):
        if self.pending is None:  # Euler half: from sigma_i = sigmas[i] to sigmas[i + 1]
            sigma = self.sigmas[i]
            derivative = (sample - self.x0(sample, model_output, sigma)) / sigma
            dt = self.sigmas[i + 1] - sigma
            self.pending = (derivative, dt, sample)
        else:  # correction: the slope at the Euler step's end (level sigmas[i]) averaged with the first
            sigma_next = self.sigmas[i]
            derivative = (sample - self.x0(sample, model_output, sigma_next)) / sigma_next
            first, dt, sample = self.pending
            derivative = (first + derivative) / 2
            self.pending = None
        return sample + derivative * dt
