"""DDIM (Song et al., "Denoising Diffusion Implicit Models", arXiv:2010.02502, eq. 12): the checkpoints' own
scheduler, 200 steps by default; `eta` > 0 adds fresh noise (eta = 1 is DDPM's ancestral step)."""

from __future__ import annotations

import torch

from .base import Sampler, SchedulerConfig, alphas_cumprod, draw_noise, spaced_timesteps


class DDIMSampler(Sampler):
    """DDIM, as diffusers' `DDIMScheduler` (clip_sample and thresholding off).

    With alpha_bar_t the training schedule, t the current and s the previous timestep:

        x0    = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)        (eps = model output)
        sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s)
        x_s   = sqrt(alpha_bar_s) x0 + sqrt(1 - alpha_bar_s - sigma^2) eps + sigma z,   z ~ N(0, I)

    With v-prediction the model output is v and x0 = sqrt(a) x_t - sqrt(1 - a) v, eps = sqrt(a) v + sqrt(1 - a) x_t.

    Parity details (diffusers 0.42):
    - timesteps: "leading" k * (T // N) + steps_offset; "trailing" round(arange(T, 0, -T / N)) - 1;
      "linspace" round(linspace(0, T - 1, N)); all descending. Where "leading" would pass T - 1 (N = T with
      steps_offset 1, an IndexError in diffusers) it is shifted down to end at 0: every N in 1..T runs.
    - the previous timestep is always t - T // N, whatever the spacing (so with "trailing"/"linspace" it is
      not the next timestep in the list); below 0 it is alpha_bar_0, or 1 with set_alpha_to_one.
    - the noise z is drawn after the deterministic update, with the model output's shape and dtype, on the
      CPU when the generator is a CPU one (then moved), else on the sample's device; only when eta > 0.
    - coefficients are the same float32 expressions diffusers evaluates, so float32 runs agree to rounding.
      diffusers computes in the sample's dtype (float16 in, float16 arithmetic); here it is always float32.
    """

    def __init__(self, config: SchedulerConfig, num_inference_steps: int, eta: float = 0.0, device=None):
        total = config.num_train_timesteps
        self.prediction_type, self.eta = config.prediction_type, float(eta)

        n = num_inference_steps
        timesteps = spaced_timesteps(config, n)  # (N,) descending

        # alpha_bar at each step's timestep and at its predecessor t - T // N
        alpha_bar = alphas_cumprod(config)
        final = torch.tensor(1.0) if config.set_alpha_to_one else alpha_bar[0]
        previous = timesteps - total // n
        alpha_t = alpha_bar[timesteps]  # (N,)
        alpha_s = torch.where(torch.from_numpy(previous >= 0), alpha_bar[previous.clip(min=0)], final)  # (N,)
        beta_t, beta_s = 1 - alpha_t, 1 - alpha_s
        sigma = self.eta * ((beta_s / beta_t) * (1 - alpha_t / alpha_s)) ** 0.5

        self.timesteps = torch.from_numpy(timesteps.copy())
        self.sqrt_alpha_t, self.sqrt_beta_t = alpha_t**0.5, beta_t**0.5
        self.sqrt_alpha_s = alpha_s**0.5  # weight of x0 in x_s
        self.direction = (1 - alpha_s - sigma**2) ** 0.5  # weight of eps in x_s
        self.noise_std = sigma
        self.to(device if device is not None else "cpu")

    def noise_levels(self, i: int):
        return self.sqrt_alpha_t[i], self.sqrt_beta_t[i]  # sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)

    def step(self, model_output, i: int, sample, generator=None):
        x = sample.float()
        x0, eps = self.x0_and_noise(x, model_output.float(), self.sqrt_alpha_t[i], self.sqrt_beta_t[i])
        x = self.sqrt_alpha_s[i] * x0 + self.direction[i] * eps
        if self.eta > 0:
            z = draw_noise(model_output.shape, generator, model_output.device, model_output.dtype)
            x = x + self.noise_std[i] * z.float()
        return x.to(sample.dtype)
