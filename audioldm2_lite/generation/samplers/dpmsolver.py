"""DPM-Solver++ (Lu et al., "DPM-Solver++", arXiv:2211.01095): multistep solvers of the diffusion ODE in
log-SNR time, of orders 1 to 3, and its SDE variant (the same paper's section 5 / k-diffusion's
dpmpp_2m_sde, dpmpp_3m_sde), which adds fresh noise at every step."""

from __future__ import annotations

import torch

from .base import Sampler, SchedulerConfig, draw_noise
from .sigmas import multistep_schedule


def multistep_orders(config: SchedulerConfig, n: int, final_is_zero: bool = True) -> list[int]:
    """The order of each step of a full run, as diffusers' multistep schedulers plan it: `solver_order`,
    lowered to 1 on the last step where the final level is 0, and (below 15 steps, with
    `lower_order_final`) to at most 1 on the last and 2 on the one before it. A run takes each step at
    min(this, steps taken + 1): the first steps warm up from first order."""
    short = config.lower_order_final and n < 15
    orders = []
    for i in range(n):
        order = config.solver_order
        if i == n - 1 and (final_is_zero or short):
            order = 1
        elif i == n - 2 and short:
            order = min(order, 2)
        orders.append(order)
    return orders


class DPMSolverPlusPlus(Sampler):
    """DPM-Solver++ (multistep, orders 1-3; ODE "dpmsolver++" or SDE "sde-dpmsolver++"), as diffusers'
    `DPMSolverMultistepScheduler`.

    With sigma_i = sqrt((1 - alpha_bar) / alpha_bar) at step i, alpha_i = 1 / sqrt(1 + sigma_i^2),
    sigma'_i = sigma_i alpha_i, lambda_i = log(alpha_i / sigma'_i), h = lambda_{i+1} - lambda_i, and the data
    predictions m_0 = x0_i, m_1 = x0_{i-1}, m_2 = x0_{i-2} with r_k = (lambda_{i-k} - lambda_{i-k-1}) / h:

        ODE:  x_{i+1} = (sigma'_{i+1} / sigma'_i) x_i + alpha_{i+1} (1 - e^{-h}) D0
                        - alpha_{i+1} ((e^{-h} - 1) / h + 1) D1 ... (order 2 "heun", 3)
        SDE:  x_{i+1} = (sigma'_{i+1} / sigma'_i) e^{-h} x_i + alpha_{i+1} (1 - e^{-2h}) D0 + ...
                        + sigma'_{i+1} sqrt(1 - e^{-2h}) z,   z ~ N(0, I)

        order 1: D0 = m_0
        order 2: D1 = (m_0 - m_1) / r_0, weighted 1/2 ("midpoint") or ((1 - e^{-h})/h - 1) ("heun")
        order 3: D1_0 = (m_0 - m_1) / r_0, D1_1 = (m_1 - m_2) / r_1,
                 D1 = D1_0 + r_0 / (r_0 + r_1) (D1_0 - D1_1),  D2 = (D1_0 - D1_1) / (r_0 + r_1),
                 weights ((e^{-h} - 1)/h + 1) and ((e^{-h} - 1 + h)/h^2 - 1/2) (SDE: with 2h for h)

    Parity details (diffusers 0.42):
    - timesteps (N of them): "leading" k * (T // (N + 1)) + steps_offset for k = N .. 1; "trailing"
      round(arange(T, 0, -T / N)) - 1; "linspace" round(linspace(0, T - 1, N + 1)) without its final 0;
      one more level, sigma = 0, ends the schedule. Karras/exponential: N levels between the training
      extremes, each timestep the level's position in the training table (sigmas.multistep_schedule).
    - orders: `multistep_orders`; the last step (to sigma 0) is first order and returns x0 (plus no noise).
    - every coefficient is diffusers' float32 expression, evaluated once per step at construction, and the
      terms are summed in diffusers' order, so float32 runs agree to rounding.
    - the SDE variant draws z (float32, the model output's shape) at every step, before the update, from
      the generator as diffusers' `randn_tensor` does (base.draw_noise).
    """

    def __init__(self, config: SchedulerConfig, num_inference_steps: int, device=None):
        self.prediction_type = config.prediction_type
        self.sde = config.algorithm_type == "sde-dpmsolver++"
        timesteps, sigmas = multistep_schedule(config, num_inference_steps)
        n = len(timesteps)
        sigmas = torch.cat([torch.from_numpy(sigmas).float(), torch.zeros(1)])  # (N + 1,) the last step to 0

        # the VP parametrisation of each level, and its log-SNR
        alpha = 1 / ((sigmas**2 + 1) ** 0.5)  # (N + 1,)
        sigma = sigmas * alpha
        lam = torch.log(alpha) - torch.log(sigma)  # +inf at the final sigma = 0

        self.timesteps = torch.from_numpy(timesteps)
        self.alpha, self.sigma = alpha, sigma
        self.orders = multistep_orders(config, n)
        self.coefficients = [self.step_coefficients(i, lam, config.solver_type) for i in range(n)]
        self.history = []  # the x0 estimates of the steps taken, newest last
        self.to(device if device is not None else "cpu")

    def step_coefficients(self, i: int, lam: torch.Tensor, solver_type: str) -> dict:
        """Step i's weights, per order that step i can run at (0-d float32 tensors, diffusers' expressions)."""
        alpha_t, sigma_t, sigma_s0 = self.alpha[i + 1], self.sigma[i + 1], self.sigma[i]
        h = lam[i + 1] - lam[i]
        out = {}
        if self.sde:
            out["x"] = sigma_t / sigma_s0 * torch.exp(-h)
            out["d0"] = alpha_t * (1 - torch.exp(-2.0 * h))
            out["noise"] = sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h))
        else:
            out["x"] = sigma_t / sigma_s0
            out["d0"] = -(alpha_t * (torch.exp(-h) - 1.0))
        if i >= 1:  # second order: one earlier estimate
            r0 = (lam[i] - lam[i - 1]) / h
            out["inverse_r0"] = 1.0 / r0
            if solver_type == "midpoint":
                out["d1_order2"] = 0.5 * out["d0"]
            elif self.sde:
                out["d1_order2"] = alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)
            else:
                out["d1_order2"] = alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)
        if i >= 2:  # third order: two earlier estimates
            r1 = (lam[i - 1] - lam[i - 2]) / h
            out["inverse_r1"], out["r0_share"], out["inverse_r01"] = 1.0 / r1, r0 / (r0 + r1), 1.0 / (r0 + r1)
            if self.sde:
                out["d1_order3"] = alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)
                out["d2"] = alpha_t * ((1.0 - torch.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5)
            else:
                out["d1_order3"] = alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)
                out["d2"] = -(alpha_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5))
        return out

    def to(self, device):
        super().to(device)
        if hasattr(self, "coefficients"):
            self.coefficients = [{k: v.to(device) for k, v in c.items()} for c in self.coefficients]
        return self

    def noise_levels(self, i: int):
        return self.alpha[i], self.sigma[i]

    def step(self, model_output, i: int, sample, generator=None):
        x = sample.float()
        x0, _ = self.x0_and_noise(x, model_output.float(), self.alpha[i], self.sigma[i])
        self.history = [*self.history[-2:], x0]
        order = min(self.orders[i], len(self.history))
        c = self.coefficients[i]
        if self.sde:
            z = draw_noise(model_output.shape, generator, model_output.device, torch.float32)
        x_next = c["x"] * x + c["d0"] * x0
        if order == 2:
            d1 = c["inverse_r0"] * (x0 - self.history[-2])
            x_next = x_next + c["d1_order2"] * d1
        elif order == 3:
            d1_0 = c["inverse_r0"] * (x0 - self.history[-2])
            d1_1 = c["inverse_r1"] * (self.history[-2] - self.history[-3])
            d1 = d1_0 + c["r0_share"] * (d1_0 - d1_1)
            d2 = c["inverse_r01"] * (d1_0 - d1_1)
            x_next = x_next + c["d1_order3"] * d1 + c["d2"] * d2
        if self.sde:
            x_next = x_next + c["noise"] * z
        return x_next.to(sample.dtype)


DPMSolverPlusPlus2M = DPMSolverPlusPlus  # the name of the second-order solver before the others joined it
