"""PNDM's pseudo linear multistep method, PLMS (Liu et al., "Pseudo Numerical Methods for Diffusion Models
on Manifolds", arXiv:2202.09778): DDIM's transfer step driven by an Adams-Bashforth combination of the last
four noise predictions. diffusers' AudioLDM 2 fast-test fixture is saved with it (`skip_prk_steps=True`)."""

from __future__ import annotations

import torch

from .base import Sampler, SchedulerConfig, alphas_cumprod, spaced_timesteps


class PNDMSampler(Sampler):
    """PLMS, as diffusers' `PNDMScheduler(skip_prk_steps=True)`.

    With e_k the noise predictions so far (newest e_0), the combined prediction is

        e' = e_0                                              first step (kept, then redone below)
        e' = (e_0 + e_prev) / 2                               second call: the first step again, Heun-like
        e' = (3 e_0 - e_1) / 2,  (23 e_0 - 16 e_1 + 5 e_2) / 12,  (55 e_0 - 59 e_1 + 37 e_2 - 9 e_3) / 24

    and the transfer from timestep t to s = t - T // N (PNDM's eq. 11, DDIM with eta 0 in another form):

        x_s = sqrt(a_s / a_t) x_t - (a_s - a_t) e' / (a_t sqrt(1 - a_s) + sqrt(a_t (1 - a_t) a_s))

    Parity details (diffusers 0.42):
    - timesteps: the DDIM grid t_{N-1} > ... > t_0 with t_{N-2} repeated: N + 1 UNet calls for N steps
      (`len(sampler)`), the second call redoing the first step from its start with the averaged prediction.
    - the state is diffusers' call counter and list of predictions (the second call's is not kept).
    - a run started mid-schedule (audio editing) starts on a grid level after the repeated one
      (`start_index`) and warms up without the second call: first step e' = e_0, then the multistep
      formulas. diffusers' img2img rule would start inside its table, where the second call "redoes" a step
      from a level it never was at, and every later step is taken one level off.
    - v-prediction: the combined v is turned into eps with the current sample, after the combination.
    - the step is float32 tensor arithmetic in diffusers' order.
    """

    def __init__(self, config: SchedulerConfig, num_inference_steps: int, device=None):
        self.prediction_type = config.prediction_type
        self.ratio = config.num_train_timesteps // num_inference_steps
        grid = spaced_timesteps(config, num_inference_steps)[::-1]  # (N,) ascending
        calls = [*grid[:-1], *grid[-2:-1], *grid[-1:]][::-1]  # t_{N-1}, t_{N-2}, t_{N-2}, ..., t_0
        self.timesteps = torch.tensor(calls, dtype=torch.int64)
        self.steps = [int(t) for t in calls]  # host copies: the state machine indexes with them
        self.alpha_bar = alphas_cumprod(config)
        self.final_alpha_bar = torch.tensor(1.0) if config.set_alpha_to_one else self.alpha_bar[0]
        self.predictions, self.counter, self.first_sample = [], 0, None
        self.to(device if device is not None else "cpu")

    def start_index(self, skipped_steps: int) -> int:
        """The call an edit starts at after `skipped_steps` steps: past the repeated level (calls 1 and 2)."""
        return skipped_steps + 1 if skipped_steps > 0 else 0

    def noise_levels(self, i: int):
        alpha_bar = self.alpha_bar[self.steps[i]]
        return alpha_bar**0.5, (1 - alpha_bar) ** 0.5

    def step(self, model_output, i: int, sample, generator=None):
        e, x = model_output.float(), sample.float()
        if self.counter == 0 and i > 0:
            self.counter = 2  # a mid-schedule start: no second call (see the class docstring)
        t = self.steps[i]
        s = t - self.ratio
        if self.counter != 1:
            self.predictions = [*self.predictions[-3:], e]
        else:  # the second call redoes the first step, from t_{N-1} to the timestep it is given
            s, t = t, t + self.ratio
        ets = self.predictions
        if len(ets) == 1 and self.counter == 0:
            self.first_sample = x
        elif len(ets) == 1 and self.counter == 1:
            e, x = (e + ets[-1]) / 2, self.first_sample
        elif len(ets) == 1:  # the first step of a mid-schedule start: e' = e_0
            pass
        elif len(ets) == 2:
            e = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            e = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            e = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        self.counter += 1
        return self.transfer(x, t, s, e).to(sample.dtype)

    def transfer(self, x, t: int, s: int, e):
        a_t = self.alpha_bar[t]
        a_s = self.alpha_bar[s] if s >= 0 else self.final_alpha_bar
        b_t, b_s = 1 - a_t, 1 - a_s
        if self.prediction_type == "v_prediction":
            e = (a_t**0.5) * e + (b_t**0.5) * x
        denominator = a_t * b_s ** (0.5) + (a_t * b_t * a_s) ** (0.5)
        return (a_s / a_t) ** (0.5) * x - (a_s - a_t) * e / denominator
