"""Noise levels in sigma: what the multistep solvers (dpmsolver.py, unipc.py, deis.py) and the k-diffusion
family (lms.py, euler.py, heun.py) share beyond base.py. DDIM and PNDM need none of it.

sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) is the noise-to-signal ratio of training timestep t; Karras et
al.'s and exponentially spaced levels replace the spacing grid's where a config asks for them.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Sampler, SchedulerConfig, alphas_cumprod, spaced_timesteps


def training_sigmas(config: SchedulerConfig) -> np.ndarray:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), float32 (T,), increasing with t."""
    alpha_bar = alphas_cumprod(config)
    return (((1 - alpha_bar) / alpha_bar) ** 0.5).numpy()


def karras_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """Karras et al.'s N noise levels (arXiv:2206.00364, eq. 5, rho = 7), float64, descending."""
    rho = 7.0
    ramp = np.linspace(0, 1, n)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """N noise levels evenly spaced in log sigma, float64, descending."""
    return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), n))


def sigma_to_timestep(sigmas: np.ndarray, train_sigmas: np.ndarray) -> np.ndarray:
    """Each level's position in the training log-sigma table, linearly interpolated between the two entries
    around it and clamped at the ends (float64, not rounded), as diffusers' `_sigma_to_t`."""
    log_table = np.log(train_sigmas)  # (T,) float32, increasing
    log_sigma = np.log(np.maximum(sigmas, 1e-10))  # (N,)
    below = (log_table[:, None] <= log_sigma[None, :]).sum(axis=0) - 1  # last table entry <= each level
    low = below.clip(0, len(log_table) - 2)
    weight = ((log_table[low] - log_sigma) / (log_table[low] - log_table[low + 1])).clip(0, 1)
    return (1 - weight) * low + weight * (low + 1)


def multistep_schedule(config: SchedulerConfig, n: int):
    """The N timesteps (int64) and noise levels (float64) of the multistep solvers (DPM-Solver++, UniPC, DEIS).

    Spacing grid: "leading" and "linspace" take N + 1 points and drop the last, "trailing" N points. With
    Karras or exponential levels, N levels between the training extremes; each timestep is the level's
    position in the training table, rounded (Karras) or truncated to an integer (exponential), as diffusers.
    """
    train = training_sigmas(config)
    if config.use_karras_sigmas or config.use_exponential_sigmas:
        levels = karras_sigmas if config.use_karras_sigmas else exponential_sigmas
        sigmas = levels(float(train[0]), float(train[-1]), n)
        position = sigma_to_timestep(sigmas, train)
        timesteps = position.round() if config.use_karras_sigmas else np.trunc(position)
        return timesteps.astype(np.int64), sigmas
    trailing = config.timestep_spacing == "trailing"
    timesteps = spaced_timesteps(config, n) if trailing else spaced_timesteps(config, n + 1)[:-1]
    return timesteps, train[timesteps].astype(np.float64)


def discrete_sigma_schedule(config: SchedulerConfig, n: int):
    """The N timesteps (float32) and N + 1 noise levels (float32, the last 0) of LMS, Euler and Heun.

    As diffusers' k-diffusion ports: "leading" round(k T // N) + steps_offset; "trailing" round(arange(T, 0,
    -T / N)) - 1; "linspace" linspace(0, T - 1, N) not rounded, so timesteps may be fractional; each level
    the training sigma interpolated linearly at its timestep. Karras/exponential levels span the first and
    last of those levels (not the training extremes) and their timesteps stay fractional.
    """
    total = config.num_train_timesteps
    if config.timestep_spacing == "linspace":
        timesteps = np.linspace(0, total - 1, n, dtype=np.float32)[::-1].copy()
    elif config.timestep_spacing == "leading":
        timesteps = (np.arange(n) * (total // n)).round()[::-1].astype(np.float32) + config.steps_offset
    else:  # trailing
        timesteps = np.arange(total, 0, -total / n).round().astype(np.float32) - 1
    train = training_sigmas(config)
    sigmas = np.interp(timesteps, np.arange(total), train)  # float64
    if config.use_karras_sigmas or config.use_exponential_sigmas:
        levels = karras_sigmas if config.use_karras_sigmas else exponential_sigmas
        sigmas = levels(float(sigmas[-1]), float(sigmas[0]), n)
        timesteps = sigma_to_timestep(sigmas, train)
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)  # (N + 1,)
    return torch.from_numpy(timesteps.astype(np.float32)), torch.from_numpy(sigmas)


class SigmaSampler(Sampler):
    """The k-diffusion family (LMS, Euler, Heun): latents x = x0 + sigma eps (the VP latent over alpha)."""

    def setup_sigmas(self, config: SchedulerConfig, timesteps: torch.Tensor, sigmas: torch.Tensor):
        self.prediction_type = config.prediction_type
        self.timesteps, self.sigmas = timesteps, sigmas  # (N,), (N + 1,)
        largest = sigmas.max()
        # diffusers: sigma_max on "linspace"/"trailing" grids, sqrt(sigma_max^2 + 1) on "leading"
        self.init_noise_sigma = largest if config.timestep_spacing != "leading" else (largest**2 + 1) ** 0.5
        self.input_divisor = (sigmas**2 + 1) ** 0.5  # the VP latent x alpha = x / sqrt(sigma^2 + 1)

    def scale_model_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return x / self.input_divisor[i]

    def noise_levels(self, i: int):
        return torch.ones((), device=self.sigmas.device), self.sigmas[i]

    def x0(self, x, model_output, sigma):
        """The denoised estimate at level sigma: x - sigma eps, or from v (diffusers' expression)."""
        if self.prediction_type == "epsilon":
            return x - sigma * model_output
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (x / (sigma**2 + 1))
