"""DEIS (Zhang and Chen, "Fast Sampling of Diffusion Models with Exponential Integrator",
arXiv:2204.13902): a multistep exponential integrator on the noise prediction, with its polynomial
extrapolation done in log rho, rho = sigma / alpha ("logrho")."""

from __future__ import annotations

import numpy as np
import torch

from .base import Sampler, SchedulerConfig, alphas_cumprod
from .sigmas import multistep_schedule
from .dpmsolver import multistep_orders


def deis_coefficients(rho: torch.Tensor, i: int, order: int):
    """The weights of eps_i, eps_{i-1}, eps_{i-2} in step i (rho_t = rho[i + 1]): the integrals from rho_i to
    rho_t of the Lagrange polynomials in log rho through the earlier levels (DEIS's eq. 15, in closed form as
    diffusers writes it). float32, with numpy's log as diffusers takes it (torch's differs in the last bit,
    which these differences of nearly equal terms amplify past 1e-6)."""

    def log(v):
        return torch.from_numpy(np.log(v.numpy().reshape(1))).reshape(())

    t, s0 = rho[i + 1], rho[i]
    if order == 2:
        s1 = rho[i - 1]

        def integral(t, b, c):
            return t * (-log(c) + log(t) - 1) / (log(b) - log(c))

        return (integral(t, s0, s1) - integral(s0, s0, s1), integral(t, s1, s0) - integral(s0, s1, s0))
    s1, s2 = rho[i - 1], rho[i - 2]

    def integral(t, b, c, d):
        numerator = t * (log(c) * (log(d) - log(t) + 1) - log(d) * log(t) + log(d) + log(t) ** 2 - 2 * log(t) + 2)
        return numerator / ((log(b) - log(c)) * (log(b) - log(d)))

    return (integral(t, s0, s1, s2) - integral(s0, s0, s1, s2), integral(t, s1, s2, s0) - integral(s0, s1, s2, s0),
            integral(t, s2, s0, s1) - integral(s0, s2, s0, s1))


class DEISSampler(Sampler):
    """DEIS (multistep, orders 1-3), as diffusers' `DEISMultistepScheduler`:

        order 1: x_t = (alpha_t / alpha_s) x_s - sigma'_t (e^h - 1) eps_s        (DDIM, h = lambda_t - lambda_s)
        order k: x_t = alpha_t (x_s / alpha_s + sum_j c_j eps_{s-j})             (`deis_coefficients`)

    Parity details (diffusers 0.42):
    - timesteps as DPM-Solver++'s (sigmas.multistep_schedule), but the schedule ends at the smallest training
      sigma (the last Karras/exponential level repeated), not 0: the last step is a real step of its order.
    - the model output becomes x0 and then eps again, eps = (x - alpha x0) / sigma', as diffusers converts it.
    - orders as DPM-Solver++'s (dpmsolver.multistep_orders), the last step lowered only below 15 steps.
    """

    def __init__(self, config: SchedulerConfig, num_inference_steps: int, device=None):
        self.prediction_type = config.prediction_type
        timesteps, sigmas = multistep_schedule(config, num_inference_steps)
        n = len(timesteps)
        if config.use_karras_sigmas or config.use_exponential_sigmas:
            last = torch.tensor([sigmas[-1]]).float()
        else:
            alpha_bar_0 = alphas_cumprod(config)[0]
            last = (((1 - alpha_bar_0) / alpha_bar_0) ** 0.5).reshape(1)  # the smallest training sigma
        sigmas = torch.cat([torch.from_numpy(sigmas).float(), last])  # (N + 1,)
        alpha = 1 / ((sigmas**2 + 1) ** 0.5)
        sigma = sigmas * alpha
        lam = torch.log(alpha) - torch.log(sigma)
        rho = sigma / alpha

        self.timesteps, self.alpha, self.sigma = torch.from_numpy(timesteps), alpha, sigma
        self.orders = multistep_orders(config, n, final_is_zero=False)
        h = lam[1:] - lam[:-1]
        self.first = (alpha[1:] / alpha[:-1], sigma[1:] * (torch.exp(h) - 1.0))  # (N,) each
        self.higher = [{p: deis_coefficients(rho, i, p) for p in range(2, min(i + 1, 3) + 1)} for i in range(n)]
        self.history = []
        self.to(device if device is not None else "cpu")

    def to(self, device):
        super().to(device)
        if hasattr(self, "higher"):
            self.first = tuple(v.to(device) for v in self.first)
            self.higher = [{p: tuple(c.to(device) for c in cs) for p, cs in step.items()} for step in self.higher]
        return self

    def noise_levels(self, i: int):
        return self.alpha[i], self.sigma[i]

    def step(self, model_output, i: int, sample, generator=None):
        x = sample.float()
        alpha, sigma = self.alpha[i], self.sigma[i]
        x0, _ = self.x0_and_noise(x, model_output.float(), alpha, sigma)
        eps = (x - alpha * x0) / sigma
        self.history = [*self.history[-2:], eps]
        order = min(self.orders[i], len(self.history))
        if order == 1:
            x_next = self.first[0][i] * x - self.first[1][i] * eps
        else:
            weights = self.higher[i][order]
            total = x / alpha
            for c, e in zip(weights, reversed(self.history)):
                total = total + c * e
            x_next = self.alpha[i + 1] * total
        return x_next.to(sample.dtype)
