"""UniPC (Zhao et al., "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models",
arXiv:2302.04867): a multistep predictor (UniP) on the data prediction and, after each new model call, a
corrector (UniC) that reuses that call to refine the previous step, so it costs no extra UNet call."""

from __future__ import annotations

import torch

from .base import Sampler, SchedulerConfig, multistep_schedule


def unipc_terms(lam: torch.Tensor, t: int, s0: int, earlier: list[int], order: int, bh1: bool):
    """The weights of a UniP/UniC step from level s0 to level t with `order` - 1 `earlier` levels (0-d float32
    tensors in diffusers' expressions): h, the r_k = (lambda_k - lambda_s0) / h, h phi_1(-h) = e^{-h} - 1,
    B(h) (bh1: -h; bh2: e^{-h} - 1) and the solutions rho of R rho = b (paper's algorithm 1 / 2):
    R_{ik} = r_k^(i-1), b_i = i! phi_{i+1}(-h) h / B(h)."""
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
    return rks, torch.stack(powers), torch.stack(b), h_phi_1, b_h


class UniPCSampler(Sampler):
    """UniPC with B(h) = h ("bh1") or e^h - 1 ("bh2"), as diffusers' `UniPCMultistepScheduler` (predict_x0).

    With m_k the data predictions at levels k (newest m_0 at s0), D_k = (m_k - m_0) / r_k:

        UniP:  x_t = (sigma'_t / sigma'_s0) x_s0 - alpha_t (e^{-h} - 1) m_0 - alpha_t B(h) sum_k rho^p_k D_k
        UniC:  x_s0 <- the same from the previous step's start, with rho^c over D_k and D_t = m_t - m_0

    where rho^p = 1/2 at order 2 and the solution of R[:-1, :-1] rho = b[:-1] above it; rho^c = 1/2 at order 1
    and the solution of R rho = b above it (`unipc_terms`).

    Parity details (diffusers 0.42):
    - timesteps and levels as DPM-Solver++ (base.multistep_schedule), ending at sigma = 0.
    - predictor order per step: `solver_order`, lowered to the steps left with `lower_order_final`, warming up
      from 1 as steps are taken; the corrector at step i uses step i - 1's predictor order, and runs from the
      second step taken on. The model output at step i is converted to x0 with the uncorrected sample.
    - the last step (to sigma 0) returns m_0 exactly: diffusers' bh1 forms -inf x 0 there and returns NaN;
      bh2 and every other step agree with diffusers to rounding (its float32 expressions, its einsum).
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
        else:
            self.orders = [config.solver_order] * n
        bh1 = config.solver_type == "bh1"
        # predictor from level i to i + 1 with earlier levels i - 1, i - 2; corrector from i - 1 to i with i - 2, ..
        self.predictor = [{p: unipc_terms(lam, i + 1, i, [i - 1, i - 2], p, bh1) for p in range(1, min(i + 1, 3) + 1)}
                          for i in range(n)]
        self.corrector = [{p: unipc_terms(lam, i, i - 1, [i - 2, i - 3], p, bh1) for p in range(1, min(i, 3) + 1)}
                          for i in range(n)]
        self.history, self.last_sample, self.last_order = [], None, None
        self.to(device if device is not None else "cpu")

    def to(self, device):
        super().to(device)
        for table in ("predictor", "corrector"):
            if hasattr(self, table):
                setattr(self, table, [{p: tuple(v.to(device) for v in terms) for p, terms in step.items()}
                                      for step in getattr(self, table)])
        return self

    def noise_levels(self, i: int):
        return self.alpha[i], self.sigma[i]

    def update(self, x, terms, t: int, s0: int, history, order: int, rhos, extra=None):
        """x at level s0 -> level t: the shared first-order part, minus alpha_t B(h) (sum_k rho_k D_k [+ extra])."""
        rks, _, _, h_phi_1, b_h = terms
        m0 = history[-1]
        x_t = self.sigma[t] / self.sigma[s0] * x - self.alpha[t] * h_phi_1 * m0
        if order > 1:  # the differences to the earlier estimates, one per earlier level
            d1s = torch.stack([(history[-(k + 1)] - m0) / rks[k - 1] for k in range(1, order)], dim=1)  # (B, K, ..)
            res = torch.einsum("k,bkc...->bc...", rhos, d1s)
            res = res if extra is None else res + extra
        elif extra is None:
            return x_t  # first-order prediction: nothing more (see the class docstring on bh1)
        else:
            res = extra
        return x_t - self.alpha[t] * b_h * res

    def step(self, model_output, i: int, sample, generator=None):
        x = sample.float()
        x0, _ = self.x0_and_noise(x, model_output.float(), self.alpha[i], self.sigma[i])
        if self.last_sample is not None:  # UniC: redo the previous step with this call's estimate
            p = self.last_order
            rks, powers, b, _, _ = terms = self.corrector[i][p]
            rhos = torch.ones(1) * 0.5 if p == 1 else torch.linalg.solve(powers, b)
            rhos = rhos.to(x.device)
            correction = rhos[-1] * (x0 - self.history[-1])  # the new estimate's weight times D_t
            x = self.update(self.last_sample, terms, i, i - 1, self.history, p, rhos[:-1], correction)
        self.history = [*self.history[-2:], x0]
        order = min(self.orders[i], len(self.history))
        rks, powers, b, _, _ = terms = self.predictor[i][order]
        rhos = torch.ones(1, device=x.device) * 0.5 if order == 2 else (
            torch.linalg.solve(powers[:-1, :-1], b[:-1]) if order > 2 else None)
        self.last_sample, self.last_order = x, order
        return self.update(x, terms, i + 1, i, self.history, order, rhos).to(sample.dtype)
