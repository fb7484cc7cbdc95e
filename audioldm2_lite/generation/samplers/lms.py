"""Linear multistep in sigma (k-diffusion's `sample_lms`; Adams-Bashforth on the probability-flow ODE of
Karras et al., arXiv:2206.00364). diffusers' AudioLDM 2 slow tests run it."""

from __future__ import annotations

import numpy as np

from .base import SchedulerConfig
from .sigmas import SigmaSampler, discrete_sigma_schedule


def lms_coefficient(sigmas: np.ndarray, i: int, order: int, j: int) -> float:
    """The weight of the slope of step i - j in step i: the integral from sigma_i to sigma_{i+1} of the
    Lagrange basis polynomial that is 1 at sigma_{i-j} and 0 at the other order - 1 levels.

    diffusers integrates it with scipy's `quad`; the integrand is a polynomial of degree order - 1, so an
    `order`-point Gauss-Legendre rule (numpy's `leggauss`) gives the integral exactly, without scipy.
    """
    nodes, weights = np.polynomial.legendre.leggauss(order)
    lo, hi = float(sigmas[i]), float(sigmas[i + 1])
    tau = (hi - lo) / 2 * nodes + (hi + lo) / 2  # Legendre nodes mapped from [-1, 1] onto [lo, hi]
    basis = np.ones_like(tau)
    for k in range(order):
        if k != j:
            basis *= (tau - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k])
    return float((hi - lo) / 2 * np.sum(weights * basis))


class LMSSampler(SigmaSampler):
    """LMS of order 4, as diffusers' `LMSDiscreteScheduler`:

        d_i     = (x_i - x0_i) / sigma_i
        x_{i+1} = x_i + sum_j c_ij d_{i-j},   j < min(i + 1, 4)   (c_ij: `lms_coefficient`)

    Parity details (diffusers 0.42): noise levels as Euler's (sigmas.discrete_sigma_schedule, ending at 0);
    coefficients in float64 from the float32 levels (diffusers: quad over a float32 integrand). The order is
    min(steps taken + 1, 4). On a full run that is diffusers' min(i + 1, 4); a run started mid-schedule (audio
    editing) warms up from first order here, where diffusers would weight its one slope with a fourth-order
    coefficient (its lists are zipped), which is not the integral of that slope.
    """

    def __init__(self, config: SchedulerConfig, num_inference_steps: int, device=None, order: int = 4):
        timesteps, sigmas = discrete_sigma_schedule(config, num_inference_steps)
        self.setup_sigmas(config, timesteps, sigmas)
        levels = sigmas.double().numpy()
        # per step i and order p <= min(i + 1, 4): the weights of the last p slopes, newest first
        self.coefficients = [{p: [lms_coefficient(levels, i, p, j) for j in range(p)]
                              for p in range(1, min(i + 1, order) + 1)} for i in range(len(timesteps))]
        self.order_limit, self.slopes = order, []
        self.to(device if device is not None else "cpu")

    def step(self, model_output, i: int, sample, generator=None):
        sigma = self.sigmas[i]
        self.slopes = [*self.slopes[-(self.order_limit - 1):], (sample - self.x0(sample, model_output, sigma)) / sigma]
        weights = self.coefficients[i][min(len(self.slopes), len(self.coefficients[i]))]
        update = sum(c * d for c, d in zip(weights, reversed(self.slopes)))
        return sample + update
