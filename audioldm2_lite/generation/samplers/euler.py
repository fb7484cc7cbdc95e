"""Euler and Euler ancestral samplers in sigma (Karras et al., "Elucidating the Design Space of
Diffusion-Based Generative Models", arXiv:2206.00364, algorithm 2 without churn; k-diffusion's
`sample_euler`, `sample_euler_ancestral`)."""

from __future__ import annotations

from .base import SchedulerConfig, draw_noise
from .sigmas import SigmaSampler, discrete_sigma_schedule


class EulerSampler(SigmaSampler):
    """Euler's method on the probability-flow ODE dx/dsigma = (x - x0(x, sigma)) / sigma, as diffusers'
    `EulerDiscreteScheduler` (s_churn 0):

        d = (x_i - x0_i) / sigma_i,    x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d

    on latents x = x0 + sigma eps (sigmas.SigmaSampler: the UNet sees x / sqrt(sigma^2 + 1)). Noise levels and
    timesteps: sigmas.discrete_sigma_schedule (spacing rule, Karras or exponential), ending at sigma = 0; the
    step is diffusers' float32 arithmetic in its order.
    """

    def __init__(self, config: SchedulerConfig, num_inference_steps: int, device=None):
        self.setup_sigmas(config, *discrete_sigma_schedule(config, num_inference_steps))
        self.to(device if device is not None else "cpu")

    def step(self, model_output, i: int, sample, generator=None):
        x, sigma = sample.float(), self.sigmas[i]
        derivative = (x - self.x0(x, model_output, sigma)) / sigma
        x = x + derivative * (self.sigmas[i + 1] - sigma)
        return x.to(model_output.dtype)


class EulerAncestralSampler(SigmaSampler):
    """Euler ancestral, as diffusers' `EulerAncestralDiscreteScheduler`: an Euler step down to sigma_down, then
    fresh noise back up to sigma_{i+1} (the DDPM posterior's variance):

        sigma_up   = sqrt(sigma_{i+1}^2 (sigma_i^2 - sigma_{i+1}^2) / sigma_i^2)
        sigma_down = sqrt(sigma_{i+1}^2 - sigma_up^2)
        x_{i+1}    = x_i + (sigma_down - sigma_i) (x_i - x0_i) / sigma_i + sigma_up z,   z ~ N(0, I)

    Parity details: the spacing rule's levels only (diffusers offers no Karras levels for this class); z is
    drawn at every step, after the deterministic update, with the model output's shape and dtype
    (base.draw_noise, as diffusers' `randn_tensor`).
    """

    def __init__(self, config: SchedulerConfig, num_inference_steps: int, device=None):
        self.setup_sigmas(config, *discrete_sigma_schedule(config, num_inference_steps))
        self.to(device if device is not None else "cpu")

    def step(self, model_output, i: int, sample, generator=None):
        x, sigma, sigma_to = sample.float(), self.sigmas[i], self.sigmas[i + 1]
        sigma_up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        derivative = (x - self.x0(x, model_output, sigma)) / sigma
        x = x + derivative * (sigma_down - sigma)
        z = draw_noise(model_output.shape, generator, model_output.device, model_output.dtype)
        x = x + z * sigma_up
        return x.to(model_output.dtype)
