"""Samplers: turn the UNet's noise prediction into a denoised latent, one step at a time.

    x_T ~ N(0, I) --(UNet(x_t, t) -> model output; sampler.step)--> x_{t-1} ... --> x_0 (B, 8, T/4, 16)

Two samplers, each a small class that reads like its paper's update rule:

- DDIM (Song et al., "Denoising Diffusion Implicit Models", arXiv:2010.02502, eq. 12): the checkpoints'
  own scheduler, 200 steps by default; `eta` > 0 adds fresh noise (eta = 1 is DDPM's ancestral step).
- DPM-Solver++(2M) (Lu et al., "DPM-Solver++", arXiv:2211.01095, algorithm 2): a second-order multistep
  solver of the diffusion ODE in log-SNR time, good in 20-25 steps; optionally on Karras et al.'s noise
  levels (arXiv:2206.00364, eq. 5, rho = 7).

Both are built from the checkpoint's `scheduler/scheduler_config.json` (`SchedulerConfig.from_hub`) and
match diffusers' `DDIMScheduler` and `DPMSolverMultistepScheduler.from_config(ddim_config)` (see each
class's docstring for the parity details). The config's class names the sampler a folder runs by default:
DDIMScheduler DDIM, DPMSolverMultistepScheduler DPM-Solver++ (with its own settings), any other class
DDIM on its settings, with a warning. The interface the pipeline's loop uses:

    sampler = make_sampler("ddim", config, num_inference_steps, device=device)
    x = x * sampler.init_noise_sigma
    for i, t in enumerate(sampler.timesteps):
        x = sampler.step(unet(x, t, ...), i, x)

Everything a step needs is precomputed at construction as float32 tables on the target device and
indexed with the Python step index `i`: a step does no host-device sync, no `.item()` and no branching
on tensor values, so the loop can be captured by CUDA graphs or torch.compile. The step arithmetic runs
in float32 whatever the model's dtype; the result comes back in the sample's dtype.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..models.hub_config import config_source, hub_field

# The diffusers scheduler classes a checkpoint may name, and the sampler here that runs each.
SCHEDULER_CLASSES = {"DDIMScheduler": "ddim", "DPMSolverMultistepScheduler": "dpmsolver++"}


@dataclass
class SchedulerConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    beta_schedule: str = "scaled_linear"  # or "linear"
    prediction_type: str = "epsilon"  # or "v_prediction"
    timestep_spacing: str = "leading"  # or "trailing", "linspace"
    steps_offset: int = 1  # added to "leading" timesteps
    set_alpha_to_one: bool = False  # DDIM's last step lands on alpha_bar = 1 (True) or alpha_bar_0 (False)
    use_karras_sigmas: bool = False  # DPM-Solver++ only: Karras noise levels instead of the spacing rule
    solver_order: int = 2  # DPM-Solver++ only: 2 = DPM-Solver++(2M), 1 = every step first order
    sampler: str = "ddim"  # the sampler the config's scheduler class asks for (SCHEDULER_CLASSES)

    @classmethod
    def from_hub(cls, config: dict) -> "SchedulerConfig":
        # options the AudioLDM 2 checkpoints leave off: refused rather than ignored
        for name, off in {"clip_sample": False, "thresholding": False, "rescale_betas_zero_snr": False}.items():
            hub_field(config, name, off, supported=(off,))
        hub_field(config, "trained_betas", None, supported=(None,))
        d = cls()
        class_name = config.get("_class_name", "DDIMScheduler")
        sampler = SCHEDULER_CLASSES.get(class_name)
        if sampler is None:  # as diffusers' DDIMScheduler.from_config(this config) would run it
            warnings.warn(f"{config_source(config)}: audioldm2_lite does not implement {class_name}; it samples "
                          f"with DDIM on its settings instead (or pass scheduler='dpmsolver++').", stacklevel=2)
            sampler = "ddim"
        solver_order = d.solver_order
        if sampler == "dpmsolver++":
            solver_order = check_dpmsolver_fields(config)
        return cls(
            num_train_timesteps=hub_field(config, "num_train_timesteps", d.num_train_timesteps),
            beta_start=hub_field(config, "beta_start", d.beta_start),
            beta_end=hub_field(config, "beta_end", d.beta_end),
            beta_schedule=hub_field(config, "beta_schedule", d.beta_schedule, supported=("linear", "scaled_linear")),
            prediction_type=hub_field(config, "prediction_type", d.prediction_type,
                                      supported=("epsilon", "v_prediction")),
            timestep_spacing=hub_field(config, "timestep_spacing", d.timestep_spacing,
                                       supported=("leading", "trailing", "linspace")),
            steps_offset=hub_field(config, "steps_offset", d.steps_offset),
            set_alpha_to_one=hub_field(config, "set_alpha_to_one", d.set_alpha_to_one),
            use_karras_sigmas=hub_field(config, "use_karras_sigmas", d.use_karras_sigmas),
            solver_order=solver_order,
            sampler=sampler,
        )


def check_dpmsolver_fields(config: dict) -> int:
    """The `solver_order` of a DPMSolverMultistepScheduler config, after refusing the variants not implemented
    here. Its `lower_order_final` and `euler_at_final` need no check: with the final sigma 0 ("zero") the
    last step is first order whatever they say, and no step is above second order."""
    hub_field(config, "algorithm_type", "dpmsolver++", supported=("dpmsolver++",))
    hub_field(config, "solver_type", "midpoint", supported=("midpoint",))
    hub_field(config, "final_sigmas_type", "zero", supported=("zero",))
    hub_field(config, "variance_type", None, supported=(None,))
    hub_field(config, "lambda_min_clipped", -float("inf"), supported=(-float("inf"),))
    for name in ("use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas"):
        hub_field(config, name, False, supported=(False,))
    return hub_field(config, "solver_order", 2, supported=(1, 2))


def alphas_cumprod(config: SchedulerConfig) -> torch.Tensor:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s) for t = 0 .. T-1, float32 (T,) as in training."""
    if config.beta_schedule == "scaled_linear":  # linear in sqrt(beta), as Stable Diffusion and AudioLDM
        betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, config.num_train_timesteps) ** 2
    else:
        betas = torch.linspace(config.beta_start, config.beta_end, config.num_train_timesteps)
    return torch.cumprod(1.0 - betas, dim=0)


def draw_noise(shape, generator, device, dtype) -> torch.Tensor:
    """The one rule for every random draw of a generation (initial latents, DDIM's eta noise, a VAE posterior
    sample). Standard normal noise as diffusers' `randn_tensor` draws it: where a CPU generator lives (then moved
    to `device`), else on `device`; with a list of generators, row i from generator i (so each row equals
    the row a single run with that generator draws)."""
    generators = generator if isinstance(generator, (list, tuple)) else [generator]
    if len(generators) not in (1, shape[0]):
        raise ValueError(f"{len(generators)} generators for a batch of {shape[0]}: give one generator, or one per "
                         f"output waveform (batch x num_waveforms_per_prompt)")
    first = generators[0]
    noise_device = first.device if first is not None and first.device.type == "cpu" else device
    if len(generators) == 1:
        return torch.randn(shape, generator=first, device=noise_device, dtype=dtype).to(device)
    rows = [torch.randn((1, *shape[1:]), generator=g, device=noise_device, dtype=dtype) for g in generators]
    return torch.cat(rows).to(device)  # (B, ...)


def spaced_timesteps(config: SchedulerConfig, count: int) -> np.ndarray:
    """`count` training timesteps on the config's spacing grid, descending (int64), as diffusers spaces them:
    "leading" k * (T // count) + steps_offset for k = count - 1 .. 0 (shifted down where it would pass T - 1,
    an IndexError in diffusers); "trailing" round(arange(T, 0, -T / count)) - 1; "linspace"
    round(linspace(0, T - 1, count)), reversed. DDIM runs `count` = N of them, DPM-Solver++ N + 1 but the last."""
    total = config.num_train_timesteps
    if config.timestep_spacing == "leading":
        timesteps = np.arange(count)[::-1] * (total // count) + config.steps_offset
        timesteps -= max(0, timesteps[0] - (total - 1))
    elif config.timestep_spacing == "trailing":
        timesteps = np.round(np.arange(total, 0, -total / count)) - 1
    else:  # linspace
        timesteps = np.linspace(0, total - 1, count).round()[::-1]
    return np.ascontiguousarray(timesteps.astype(np.int64))


def max_steps(name: str, config: SchedulerConfig) -> int:
    """The most steps sampler `name` can take: the training steps T for DDIM; T - 1 for DPM-Solver++ on the
    "leading" and "linspace" grids (it needs N + 1 distinct timesteps there), T with Karras levels or "trailing"."""
    total = config.num_train_timesteps
    if name == "ddim" or config.use_karras_sigmas or config.timestep_spacing == "trailing":
        return total
    return total - 1


def check_steps(name: str, config: SchedulerConfig, num_inference_steps: int) -> None:
    limit = max_steps(name, config)
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) \
            or not 1 <= num_inference_steps <= limit:
        label = {"ddim": "DDIM", "dpmsolver++": "DPM-Solver++"}.get(name, name)
        raise ValueError(f"{label} takes at least 1 and at most {limit} steps with this checkpoint's "
                         f"{config.num_train_timesteps} training steps, got {num_inference_steps!r}")


class Sampler:
    """Shared plumbing: the timesteps, `init_noise_sigma` and moving the precomputed tables."""

    init_noise_sigma = 1.0  # both samplers start from x_T ~ N(0, I), unscaled

    def to(self, device):
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self

    def __len__(self):
        return len(self.timesteps)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        """x0 noised to the level of step i's input, `signal x0 + noise_std noise`: diffusers' `add_noise`
        at `timesteps[i]`. Audio editing starts from it (SDEdit) and re-noises the kept region with it."""
        signal, noise_std = self.noise_levels(i)
        return (signal * x0.float() + noise_std * noise.float()).to(x0.dtype)

    def x0_and_noise(self, x, model_output, alpha, sigma):
        """The model's estimates of x0 and eps in x = alpha x0 + sigma eps, from its output: eps itself
        ("epsilon"), or v = alpha eps - sigma x0 ("v_prediction")."""
        if self.prediction_type == "epsilon":
            return (x - sigma * model_output) / alpha, model_output
        return alpha * x - sigma * model_output, alpha * model_output + sigma * x


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
        check_steps("ddim", config, num_inference_steps)
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


class DPMSolverPlusPlus2M(Sampler):
    """DPM-Solver++(2M), as diffusers' `DPMSolverMultistepScheduler.from_config(ddim_config)`.

    In terms of sigma_i = sqrt((1 - alpha_bar) / alpha_bar) at step i, alpha_i = 1 / sqrt(1 + sigma_i^2),
    sigma'_i = sigma_i alpha_i (the VP noise scale) and lambda_i = log(alpha_i / sigma'_i) (half the log-SNR):

        x0_i  = (x_i - sigma'_i eps) / alpha_i                     (data prediction; v: alpha x - sigma' v)
        h_i   = lambda_{i+1} - lambda_i,   r_i = h_{i-1} / h_i
        D_i   = x0_i                                                first order (= DDIM, eta 0)
        D_i   = x0_i + (x0_i - x0_{i-1}) / (2 r_i)                  second order ("midpoint")
        x_{i+1} = (sigma'_{i+1} / sigma'_i) x_i + alpha_{i+1} (1 - exp(-h_i)) D_i

    Parity details (diffusers 0.42; `from_config` of the DDIM config keeps its betas, prediction_type,
    timestep_spacing and steps_offset, and takes DPM's defaults: algorithm_type "dpmsolver++",
    solver_order 2, solver_type "midpoint", lower_order_final True, euler_at_final False,
    final_sigmas_type "zero", lambda_min_clipped -inf):
    - timesteps (N of them): "leading" k * (T // (N + 1)) + steps_offset for k = N .. 1; "trailing"
      round(arange(T, 0, -T / N)) - 1; "linspace" round(linspace(0, T - 1, N + 1)) without its final 0.
      sigma_i is the training sigma at timestep i; one more level, sigma = 0, ends the schedule.
    - Karras: N levels (sigma_max^(1/7) + k/(N-1) (sigma_min^(1/7) - sigma_max^(1/7)))^7 between the
      training extremes, then 0; each timestep is the level's position in the training log-sigma table,
      interpolated linearly and rounded to an integer.
    - the first step is first order (no history yet) and so is the last one (final sigma 0: it returns x0);
      every other step is second order (first order too with `solver_order` 1).
    - the second-order correction is added as its own term, alpha_{i+1} (1 - e^{-h}) / 2 * (x0_i - x0_{i-1}) / r_i,
      grouped as diffusers groups it (grouped as D_i above, a run drifts from diffusers by float rounding).
    - the update runs in float32; diffusers forms x0 in the sample's dtype (float16 in, float16 x0), here
      x0 is float32 too. Coefficients are diffusers' float32 expressions, so float32 runs agree to rounding.
    """

    def __init__(self, config: SchedulerConfig, num_inference_steps: int, device=None):
        n = num_inference_steps
        check_steps("dpmsolver++", config, n)
        self.prediction_type = config.prediction_type
        alpha_bar = alphas_cumprod(config)
        train_sigmas = ((1 - alpha_bar) / alpha_bar) ** 0.5  # (T,) float32, increasing with t

        # timesteps, descending, and their noise levels
        if config.use_karras_sigmas:
            sigmas, timesteps = karras_schedule(train_sigmas, n)
        else:  # N + 1 points of the spacing grid without the last ("trailing" ends before 0 already)
            trailing = config.timestep_spacing == "trailing"
            timesteps = spaced_timesteps(config, n) if trailing else spaced_timesteps(config, n + 1)[:-1]
            sigmas = train_sigmas[timesteps]
        sigmas = torch.cat([sigmas, torch.zeros(1)])  # (N + 1,): the last step goes to sigma = 0
        n = len(timesteps)

        # the VP parametrisation of each level, and the log-SNR steps between them
        alpha = 1 / (sigmas**2 + 1) ** 0.5  # (N + 1,)
        sigma = sigmas * alpha
        lam = torch.log(alpha) - torch.log(sigma)  # +inf at the final sigma = 0
        h = lam[1:] - lam[:-1]  # (N,)
        r = torch.cat([torch.ones(1), h[:-1] / h[1:]])  # (N,) r_i = h_{i-1} / h_i; unused at i = 0

        self.order = [1 if i == 0 or i == n - 1 or config.solver_order == 1 else 2 for i in range(n)]
        second = torch.tensor(self.order) == 2
        self.timesteps = torch.from_numpy(np.ascontiguousarray(timesteps))
        self.alpha, self.sigma = alpha[:-1], sigma[:-1]  # at the step's own level, for x0
        self.sample_coef = sigma[1:] / sigma[:-1]  # (N,)
        self.denoised_coef = -(alpha[1:] * (torch.exp(-h) - 1.0))  # (N,) alpha_{i+1} (1 - e^{-h_i})
        self.inverse_r = torch.where(second, 1 / r, torch.zeros(()))  # (N,) 1 / r_i, 0 where unused
        self.previous_x0 = None
        self.to(device if device is not None else "cpu")

    def noise_levels(self, i: int):
        return self.alpha[i], self.sigma[i]

    def step(self, model_output, i: int, sample, generator=None):
        x = sample.float()
        x0, _ = self.x0_and_noise(x, model_output.float(), self.alpha[i], self.sigma[i])
        x_next = self.sample_coef[i] * x + self.denoised_coef[i] * x0  # first order: D = x0
        # D = x0 + (x0 - x0_prev) / 2r, its correction added as a separate term; a run that starts mid-schedule
        # (audio editing) takes its first step at first order, as diffusers counts the steps taken
        if self.order[i] == 2 and self.previous_x0 is not None:
            x_next = x_next + (0.5 * self.denoised_coef[i]) * (self.inverse_r[i] * (x0 - self.previous_x0))
        self.previous_x0 = x0
        return x_next.to(sample.dtype)


def karras_schedule(train_sigmas: torch.Tensor, n: int):
    """Karras et al.'s N noise levels between the training extremes (rho = 7), and their timesteps.

    Returns (float32 sigmas (N,), int64 timesteps (N,)), as diffusers' `use_karras_sigmas=True`:
    each level's timestep is its position in the training log-sigma table, linearly interpolated
    between the two entries around it (clamped at the ends) and rounded half to even.
    """
    rho = 7.0
    sigma_min, sigma_max = float(train_sigmas[0]), float(train_sigmas[-1])
    ramp = np.linspace(0, 1, n)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho  # float64

    log_table = np.log(train_sigmas.numpy())  # (T,) float32, increasing
    log_sigma = np.log(np.maximum(sigmas, 1e-10))  # (N,)
    below = (log_table[:, None] <= log_sigma[None, :]).sum(axis=0) - 1  # last table entry <= each level
    low = below.clip(0, len(log_table) - 2)
    weight = ((log_table[low] - log_sigma) / (log_table[low] - log_table[low + 1])).clip(0, 1)
    timesteps = ((1 - weight) * low + weight * (low + 1)).round().astype(np.int64)
    return torch.from_numpy(sigmas.astype(np.float32)), timesteps


SAMPLERS = ("ddim", "dpmsolver++")  # the names make_sampler takes


def make_sampler(name: str, config: SchedulerConfig, num_inference_steps: int, device=None, eta: float = 0.0):
    """A fresh sampler (it keeps per-run state) by name: "ddim" or "dpmsolver++"."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler '{name}'; choose from {', '.join(SAMPLERS)}")
    if name == "ddim":
        return DDIMSampler(config, num_inference_steps, eta=eta, device=device)
    if eta != 0:
        raise ValueError("eta (fresh noise per step) is a DDIM option; DPM-Solver++(2M) is deterministic")
    return DPMSolverPlusPlus2M(config, num_inference_steps, device=device)


def denoise(sampler: Sampler, predict_noise, noise: torch.Tensor, source: torch.Tensor | None = None, start: int = 0,
            regenerate: torch.Tensor | None = None, generator=None, start_from_noise: bool | None = None):
    """The denoising loop of every mode: run the sampler's steps start .. N-1, yielding (timestep, latent) after each.

    predict_noise(latents, t) -> the (guided) model output. The run starts from `noise` times the sampler's
    init_noise_sigma (text to audio; `start_from_noise`, the default without a `source`), else from `source`
    noised to step `start` (SDEdit). Where `regenerate` (broadcastable bool) is False, each step's result is
    replaced by `source` noised to the next step's level, and by `source` itself after the last step
    (inpainting, bandwidth extension).
    """
    if start_from_noise is None:
        start_from_noise = source is None
    latents = noise * sampler.init_noise_sigma if start_from_noise else sampler.add_noise(source, noise, start)
    last = len(sampler) - 1
    for i in range(start, last + 1):
        t = sampler.timesteps[i]
        latents = sampler.step(predict_noise(latents, t), i, latents, generator=generator)
        if regenerate is not None:
            known = sampler.add_noise(source, noise, i + 1) if i < last else source.to(latents.dtype)
            latents = torch.where(regenerate, latents, known)
        yield t, latents
