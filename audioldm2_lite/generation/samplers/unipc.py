"""UniPC (Zhao et al., "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models",
arXiv:2302.04867): a multistep predictor (UniP) on the data prediction and, after each new model call, a
corrector (UniC) that reuses that call to refine the previous step, so it costs no extra UNet call."""

from __future__ import annotations

import torch

from .base import Sampler, SchedulerConfig
from .sigmas import multistep_schedule


def unipc_weights(lam: torch.Tensor, t: int, s0: int, earlier: list[int], order: int, bh1: bool, corrector: bool):
    """The weights of a UniP (predictor) or UniC (corrector) step of `order` from level s0 to level t, with the
    order - 1 `earlier` levels: (r_k = (lambda_k - lambda_s0) / h, h phi_1(-h) = e^{-h} - 1, B(h), rho).

    B(h) is -h (bh1) or e^{-h} - 1 (bh2). rho solves R rho = b with R_ik = r_k^(i-1) and b_i = i! phi_{i+1}(-h)
    h / B(h) (the paper's algorithms 1 and 2): the predictor uses the first order - 1 rows and columns (rho = 1/2
    at order 2), the corrector all of them, the last weighting the new estimate (rho = 1/2 at order 1). 0-d and
    (K,) float32 tensors from diffusers' expressions, solved once here rather than at every step.
    """
    h = lam[t] - lam[s0]
    rks = torch.stack([(lam[k] - lam[s0]) / h for k in earlier[:order - 1]] + [torch.ones(())])
    hh = -h  # on the data prediction
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    b_h = hh if bh1 else torch.expm1(hh)
    powers, b = [], []
    for i in range(1, order + 1):
        powers.append(torch.pow(rks, i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    powers, b = torch.stack(powers), torch.stack(b)
    if corrector:
        rhos = torch.ones(1) * 0.5 if order == 1 else torch.linalg.solve(powers, b)
    else:
        rhos = torch.ones(1) * 0.5 if order <= 2 else torch.linalg.solve(powers[:-1, :-1], b[:-1])
    return rks, h_phi_1, b_h, rhos


class UniPCSampler(Sampler):
    """UniPC with B(h) = h ("bh1") or e^h - 1 ("bh2"), as diffusers' `UniPCMultistepScheduler` (predict_x0).

    With m_k the data predictions at levels k (newest m_0 at s0), D_k = (m_k - m_0) / r_k:

        UniP:  x_t = (sigma'_t / sigma'_s0) x_s0 - alpha_t (e^{-h} - 1) m_0 - alpha_t B(h) sum_k rho_k D_k
        UniC:  x_s0 <- the same step from the previous start, with rho^c over the D_k and D_t = m_t - m_0

    (`unipc_weights`). Parity details (diffusers 0.42):
    - timesteps and levels as DPM-Solver++ (sigmas.multistep_schedule), ending at sigma = 0.
    - predictor order per step: `solver_order`, lowered to the steps left with `lower_order_final`, warming up
      from 1 as steps are taken; the corrector at step i uses step i - 1's predictor order, and runs from the
      second step taken on. The model output at step i is converted to x0 with the uncorrected sample.
    - the last step (to sigma 0) is a first-order prediction and adds no B(h) term: it returns m_0. diffusers
      returns NaN there with bh1 (-inf x 0), inf and NaN without `lower_order_final` (r = 0); every
      other step agrees with diffusers to rounding (its float32 expressions, its einsum).
    """

    def __init__(self, config: SchedulerConfig, num_inference_steps: int, device=None):
        self.prediction_type = config.prediction_type
        timesteps, sigmas = multistep_schedule(config, num_inference_steps)
        n = len(timesteps)
        sigmas = torch.cat([torch.from_numpy(sigmas).float(), torch.zeros(1)])  # (N + 1,)
        alpha = 1 / ((sigmas**2 + 1) ** 0.5)
        sigma = sigmas * alpha
        lam = torch.log(alpha) - torch.log(sigma)

        self.timesteps, self.alpha, self.sigma = torch.from_numpy(timesteps), alpha, sigma
        if config.lower_order_final:
            self.orders = [min(config.solver_order, n - i) for i in range(n)]
        else:  # but the last step, to sigma 0, is first order (diffusers divides by r_k = 0 there: NaN)
            self.orders = [config.solver_order] * (n - 1) + [1]
        bh1 = config.solver_type == "bh1"
        # the predictor from level i to i + 1 (earlier levels i - 1, i - 2), the corrector from i - 1 to i
        # (earlier i - 2, i - 3), for every order step i can run at
        self.predictor = [{p: unipc_weights(lam, i + 1, i, [i - 1, i - 2], p, bh1, False)
                           for p in range(1, min(self.orders[i], i + 1) + 1)} for i in range(n)]
        self.corrector = [{p: unipc_weights(lam, i, i - 1, [i - 2, i - 3], p, bh1, True)
                           for p in range(1, min(self.orders[i - 1], i) + 1)} if i else {} for i in range(n)]
        self.history, self.last_sample, self.last_order = [], None, None
        self.to(device if device is not None else "cpu")

    def to(self, device):
        super().to(device)
        for table in ("predictor", "corrector"):
            if hasattr(self, table):
                setattr(self, table, [{p: tuple(v.to(device) for v in weights) for p, weights in step.items()}
                                      for step in getattr(self, table)])
        return self

    def noise_levels(self, i: int):
        return self.alpha[i], self.sigma[i]

    def update(self, x, weights, t: int, s0: int, order: int, rhos, new_term=None):
        """x at level s0 -> level t: the first-order part, minus alpha_t B(h) (sum_k rho_k D_k [+ new_term])."""
        rks, h_phi_1, b_h, _ = weights
        m0 = self.history[-1]
        x_t = self.sigma[t] / self.sigma[s0] * x - self.alpha[t] * h_phi_1 * m0
        if order > 1:  # the differences to the earlier estimates, one per earlier level
            d1s = torch.stack([(self.history[-(k + 1)] - m0) / rks[k - 1] for k in range(1, order)], dim=1)
            res = torch.einsum("k,bkc...->bc...", rhos, d1s)
            res = res if new_term is None else res + new_term
        elif new_term is None:
            return x_t  # a first-order prediction (see the class docstring on bh1)
        else:
            res = new_term
        return x_t - self.alpha[t] * b_h * res

    def step(self, model_output, i: int, sample, generator=None):
        x = sample.float()
        x0, _ = self.x0_and_noise(x, model_output.float(), self.alpha[i], self.sigma[i])
        if self.last_sample is not None:  # UniC: redo the previous step with this call's estimate
            weights = self.corrector[i][self.last_order]
            rhos = weights[3]
            x = self.update(self.last_sample, weights, i, i - 1, self.last_order, rhos[:-1],
                            rhos[-1] * (x0 - self.history[-1]))
        self.history = [*self.history[-2:], x0]
        order = min(self.orders[i], len(self.history))
        weights = self.predictor[i][order]
        self.last_sample, self.last_order = x, order
        return self.update(x, weights, i + 1, i, order, weights[3]).to(sample.dtype)
