"""What every sampler shares: the scheduler config, the training noise schedule, noise levels, the loop.

    x_T ~ N(0, I) --(UNet(scale_model_input(x, i), t_i) -> model output; sampler.step)--> ... --> x_0 (B, 8, T/4, 16)

Each sampler family has its own module, imported only when it runs (`make_sampler`). `SAMPLERS` is the one table
of sampler names: default steps, the diffusers class each matches, its module, the options the name fixes.

The interface the loop (`denoise`) uses:

    sampler = make_sampler("euler", config, num_inference_steps, device=device)
    x = x * sampler.init_noise_sigma
    for i, t in enumerate(sampler.timesteps):           # len(sampler): one UNet call each
        x = sampler.step(unet(sampler.scale_model_input(x, i), t, ...), i, x)

DDIM, PNDM and the multistep solvers keep the training's latent x = alpha x0 + sigma' eps; the k-diffusion family
(LMS, Euler, Heun) works on x / alpha = x0 + sigma eps, starting from noise times `init_noise_sigma` and dividing
the UNet's input by sqrt(sigma^2 + 1) (`scale_model_input`), as diffusers. A step's tables are precomputed as
float32 and indexed with the Python step `i`: no host-device sync, no branching on tensor values.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

import numpy as np
import torch

from ...models.hub_config import config_source, hub_field


@dataclass(frozen=True)
class SamplerSpec:
    steps: int  # default number of steps (request.DEFAULT_STEPS)
    scheduler_class: str  # the diffusers scheduler it matches step for step
    module: str  # the module of this package that holds it
    sampler_class: str
    options: tuple = ()  # (SchedulerConfig field, value) pairs the name fixes
    noise_levels: tuple = ("karras", "exponential")  # the sigma options diffusers offers this class


_ODE = ("algorithm_type", "dpmsolver++")
_SDE = ("algorithm_type", "sde-dpmsolver++")
# The one table of sampler names. Default steps: DDIM 200 (diffusers' AudioLDM 2 default), DPM-Solver++ 20
# (the HF blog's recipe); the others are starting points for scripts/sampler_study.py, not measured optima.
SAMPLERS = {
    "ddim": SamplerSpec(200, "DDIMScheduler", "ddim", "DDIMSampler", noise_levels=()),
    "pndm": SamplerSpec(50, "PNDMScheduler", "pndm", "PNDMSampler", noise_levels=()),
    "lms": SamplerSpec(50, "LMSDiscreteScheduler", "lms", "LMSSampler"),
    "euler": SamplerSpec(50, "EulerDiscreteScheduler", "euler", "EulerSampler"),
    "euler-ancestral": SamplerSpec(50, "EulerAncestralDiscreteScheduler", "euler", "EulerAncestralSampler",
                                   noise_levels=()),
    "heun": SamplerSpec(25, "HeunDiscreteScheduler", "heun", "HeunSampler"),
    "dpmsolver++1": SamplerSpec(20, "DPMSolverMultistepScheduler", "dpmsolver", "DPMSolverPlusPlus",
                                (("solver_order", 1), _ODE)),
    "dpmsolver++": SamplerSpec(20, "DPMSolverMultistepScheduler", "dpmsolver", "DPMSolverPlusPlus",
                               (("solver_order", 2), _ODE)),
    "dpmsolver++3m": SamplerSpec(20, "DPMSolverMultistepScheduler", "dpmsolver", "DPMSolverPlusPlus",
                                 (("solver_order", 3), _ODE)),
    "dpmsolver++1-sde": SamplerSpec(20, "DPMSolverMultistepScheduler", "dpmsolver", "DPMSolverPlusPlus",
                                    (("solver_order", 1), _SDE)),
    "dpmsolver++2m-sde": SamplerSpec(20, "DPMSolverMultistepScheduler", "dpmsolver", "DPMSolverPlusPlus",
                                     (("solver_order", 2), _SDE)),
    "dpmsolver++3m-sde": SamplerSpec(20, "DPMSolverMultistepScheduler", "dpmsolver", "DPMSolverPlusPlus",
                                     (("solver_order", 3), _SDE)),
    "unipc": SamplerSpec(20, "UniPCMultistepScheduler", "unipc", "UniPCSampler", (("solver_type", "bh2"),)),
    "unipc-bh1": SamplerSpec(20, "UniPCMultistepScheduler", "unipc", "UniPCSampler", (("solver_type", "bh1"),)),
    "deis": SamplerSpec(20, "DEISMultistepScheduler", "deis", "DEISSampler"),
}

# diffusers' defaults for the solver options of each class: what a sampler named by the caller (not the
# folder's own) runs with, as `<Class>.from_config(ddim_config)` would
CLASS_DEFAULTS = {
    "DPMSolverMultistepScheduler": dict(solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint",
                                        lower_order_final=True),
    "UniPCMultistepScheduler": dict(solver_order=2, solver_type="bh2", lower_order_final=True),
    "DEISMultistepScheduler": dict(solver_order=2, algorithm_type="deis", solver_type="logrho", lower_order_final=True),
}
SOLVER_FIELDS = ("solver_order", "algorithm_type", "solver_type", "lower_order_final")  # multistep options
SCHEDULER_CLASSES = sorted({spec.scheduler_class for spec in SAMPLERS.values()})  # the classes a folder may name


@dataclass
class SchedulerConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    beta_schedule: str = "scaled_linear"  # or "linear"
    prediction_type: str = "epsilon"  # or "v_prediction"
    timestep_spacing: str = "leading"  # or "trailing", "linspace"
    steps_offset: int = 1  # added to "leading" timesteps
    set_alpha_to_one: bool = False  # DDIM/PNDM: the last step lands on alpha_bar = 1 (True) or alpha_bar_0 (False)
    use_karras_sigmas: bool = False  # Karras et al.'s noise levels instead of the spacing rule
    use_exponential_sigmas: bool = False  # noise levels evenly spaced in log sigma
    solver_order: int = 2  # multistep solvers: the order of their steps (DPM-Solver++ 1-3, UniPC, DEIS)
    algorithm_type: str = "dpmsolver++"  # DPM-Solver++: "dpmsolver++" (ODE) or "sde-dpmsolver++"
    solver_type: str = "midpoint"  # DPM-Solver++ "midpoint"/"heun"; UniPC "bh1"/"bh2"; DEIS "logrho"
    lower_order_final: bool = True  # multistep solvers: lower the last steps' order below 15 steps
    sampler: str = "ddim"  # the SAMPLERS name the config's scheduler class and options ask for

    @classmethod
    def from_hub(cls, config: dict) -> "SchedulerConfig":
        """The config of `scheduler/scheduler_config.json`. Its `_class_name` and options pick the sampler; a
        class not written here is refused with the list of those that are."""
        class_name = config.get("_class_name", "DDIMScheduler")
        if class_name not in SCHEDULER_CLASSES:
            raise NotImplementedError(f"{config_source(config)}: audioldm2_lite does not implement {class_name}; "
                                      f"it implements {', '.join(SCHEDULER_CLASSES)}")
        # options the AudioLDM 2 checkpoints leave off: refused rather than ignored
        for name, off in {"clip_sample": False, "thresholding": False, "rescale_betas_zero_snr": False,
                          "use_beta_sigmas": False, "use_flow_sigmas": False, "use_lu_lambdas": False,
                          "use_dynamic_shifting": False}.items():
            hub_field(config, name, off, supported=(off,))
        for name in ("trained_betas", "sigma_min", "sigma_max", "variance_type", "solver_p", "shift_terminal"):
            hub_field(config, name, None, supported=(None,))
        hub_field(config, "final_sigmas_type", "zero", supported=("zero",))
        hub_field(config, "timestep_type", "discrete", supported=("discrete",))
        hub_field(config, "interpolation_type", "linear", supported=("linear",))
        hub_field(config, "lambda_min_clipped", -float("inf"), supported=(-float("inf"),))
        hub_field(config, "skip_prk_steps", True, supported=(True,))  # PNDM: PLMS steps only
        hub_field(config, "predict_x0", True, supported=(True,))  # UniPC: on the data prediction
        if config.get("disable_corrector"):
            hub_field(config, "disable_corrector", [], supported=([],))
        d = cls()
        solver = CLASS_DEFAULTS.get(class_name, {})
        algorithms = {"DPMSolverMultistepScheduler": ("dpmsolver++", "sde-dpmsolver++")}.get(class_name)
        solver_types = {"DPMSolverMultistepScheduler": ("midpoint", "heun"), "UniPCMultistepScheduler": ("bh1", "bh2"),
                        "DEISMultistepScheduler": ("logrho",)}.get(class_name)
        fields = dict(
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
            use_karras_sigmas=hub_field(config, "use_karras_sigmas", False),
            use_exponential_sigmas=hub_field(config, "use_exponential_sigmas", False),
        )
        if solver:
            fields.update(
                solver_order=hub_field(config, "solver_order", solver["solver_order"], supported=(1, 2, 3)),
                algorithm_type=hub_field(config, "algorithm_type", solver.get("algorithm_type", d.algorithm_type),
                                         supported=algorithms or (solver.get("algorithm_type", d.algorithm_type),)),
                solver_type=hub_field(config, "solver_type", solver["solver_type"], supported=solver_types),
                lower_order_final=hub_field(config, "lower_order_final", True))
        if fields["use_karras_sigmas"] and fields["use_exponential_sigmas"]:
            raise NotImplementedError(f"{config_source(config)}: use_karras_sigmas and use_exponential_sigmas "
                                      f"are exclusive")
        config = cls(**fields)
        return dataclasses.replace(config, sampler=sampler_for(class_name, config))

    def for_sampler(self, name: str) -> "SchedulerConfig":
        """The config sampler `name` runs on: this one where it is the config's own sampler, else the training
        schedule and spacing of this one with the named class's defaults and the name's options (diffusers'
        `<Class>.from_config(ddim_config)`); noise-level options the class lacks are dropped."""
        if name == self.sampler:
            return self
        spec = sampler_spec(name)
        solver = {field: getattr(SchedulerConfig, field) for field in SOLVER_FIELDS}  # this dataclass's defaults
        solver.update(CLASS_DEFAULTS.get(spec.scheduler_class, {}))
        changes = {**solver, **dict(spec.options), "sampler": name}
        if "karras" not in spec.noise_levels:
            changes.update(use_karras_sigmas=False, use_exponential_sigmas=False)
        return dataclasses.replace(self, **changes)


def sampler_for(class_name: str, config: SchedulerConfig) -> str:
    """The SAMPLERS name of a diffusers scheduler class with these options."""
    for name, spec in SAMPLERS.items():
        if spec.scheduler_class == class_name and all(getattr(config, k) == v for k, v in spec.options):
            return name
    raise NotImplementedError(f"{class_name} with {config} has no sampler here")  # unreachable after from_hub


def sampler_spec(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler '{name}'; choose from {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


# ---------------------------------------------------------------------------------------------------------
# The training noise schedule and the noise levels built from it


def alphas_cumprod(config: SchedulerConfig) -> torch.Tensor:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s) for t = 0 .. T-1, float32 (T,) as in training."""
    if config.beta_schedule == "scaled_linear":  # linear in sqrt(beta), as Stable Diffusion and AudioLDM
        betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, config.num_train_timesteps) ** 2
    else:
        betas = torch.linspace(config.beta_start, config.beta_end, config.num_train_timesteps)
    return torch.cumprod(1.0 - betas, dim=0)


def spaced_timesteps(config: SchedulerConfig, count: int) -> np.ndarray:
    """`count` training timesteps on the config's spacing grid, descending (int64), as diffusers spaces them:
    "leading" k * (T // count) + steps_offset for k = count - 1 .. 0 (shifted down where it would pass T - 1,
    an IndexError in diffusers); "trailing" round(arange(T, 0, -T / count)) - 1; "linspace"
    round(linspace(0, T - 1, count)), reversed. DDIM runs `count` = N of them, the multistep solvers N + 1 but
    the last."""
    total = config.num_train_timesteps
    if config.timestep_spacing == "leading":
        timesteps = np.arange(count)[::-1] * (total // count) + config.steps_offset
        timesteps -= max(0, timesteps[0] - (total - 1))
    elif config.timestep_spacing == "trailing":
        timesteps = np.round(np.arange(total, 0, -total / count)) - 1
    else:  # linspace
        timesteps = np.linspace(0, total - 1, count).round()[::-1]
    return np.ascontiguousarray(timesteps.astype(np.int64))


def draw_noise(shape, generator, device, dtype) -> torch.Tensor:
    """The one rule for every random draw of a generation (initial latents, a stochastic sampler's noise, a VAE
    posterior sample). Standard normal noise as diffusers' `randn_tensor` draws it: where a CPU generator lives
    (then moved to `device`), else on `device`; with a list of generators, row i from generator i (so each row
    equals the row a single run with that generator draws)."""
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


# ---------------------------------------------------------------------------------------------------------
# Steps a sampler can take


def max_steps(name: str, config: SchedulerConfig) -> int:
    """The most steps sampler `name` can take: T for the samplers on N timesteps; T - 1 for the multistep
    solvers on the "leading" and "linspace" grids (they need N + 1 distinct timesteps there), T with Karras or
    exponential levels or "trailing"."""
    total = config.num_train_timesteps
    spec = sampler_spec(name)
    if spec.scheduler_class not in CLASS_DEFAULTS or config.timestep_spacing == "trailing" \
            or config.use_karras_sigmas or config.use_exponential_sigmas:
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
    """Shared plumbing: `init_noise_sigma`, the identity input scaling, `add_noise`, moving the tables."""

    init_noise_sigma = 1.0  # variance-preserving samplers start from x_T ~ N(0, I), unscaled
    order = 1  # UNet calls per step, diffusers' `scheduler.order` (Heun: 2); editing's start index uses it

    def to(self, device):
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self

    def __len__(self):
        return len(self.timesteps)  # UNet calls of a full run

    def scale_model_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return x

    def start_index(self, skipped_steps: int) -> int:
        """The index of the call an edit starts at when it skips the first `skipped_steps` steps: diffusers'
        img2img rule, steps x `order` (Heun's 2 calls per step)."""
        return skipped_steps * self.order

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


# ---------------------------------------------------------------------------------------------------------
# Building a sampler, and the loop every mode runs


def make_sampler(name: str, config: SchedulerConfig, num_inference_steps: int, device=None, eta: float = 0.0):
    """A fresh sampler (it keeps per-run state) by its SAMPLERS name, on `config.for_sampler(name)`. Only
    the named sampler's module is imported."""
    spec = sampler_spec(name)
    config = config.for_sampler(name)
    check_steps(name, config, num_inference_steps)
    sampler_class = getattr(importlib.import_module(f".{spec.module}", __package__), spec.sampler_class)
    if name == "ddim":
        return sampler_class(config, num_inference_steps, eta=eta, device=device)
    if eta != 0:
        raise ValueError(f"eta (fresh noise per step) is a DDIM option; {name} does not take it")
    return sampler_class(config, num_inference_steps, device=device)


def denoise(sampler: Sampler, predict_noise, noise: torch.Tensor, source: torch.Tensor | None = None, start: int = 0,
            regenerate: torch.Tensor | None = None, generator=None, start_from_noise: bool | None = None):
    """The denoising loop of every mode: run the sampler's steps start .. len - 1, yielding (timestep, latent)
    after each.

    predict_noise(latents, t) -> the (guided) model output, given the sampler's scaled input. The run starts
    from `noise` times the sampler's init_noise_sigma (text to audio; `start_from_noise`, the default without a
    `source`), else from `source` noised to step `start` (SDEdit). Where `regenerate` (broadcastable bool) is
    False, each step's result is replaced by `source` noised to the next step's level, and by `source` itself
    after the last step (inpainting, bandwidth extension).
    """
    if start_from_noise is None:
        start_from_noise = source is None
    latents = noise * sampler.init_noise_sigma if start_from_noise else sampler.add_noise(source, noise, start)
    last = len(sampler) - 1
    for i in range(start, last + 1):
        t = sampler.timesteps[i]
        model_output = predict_noise(sampler.scale_model_input(latents, i), t)
        latents = sampler.step(model_output, i, latents, generator=generator)
        if regenerate is not None:
            known = sampler.add_noise(source, noise, i + 1) if i < last else source.to(latents.dtype)
            latents = torch.where(regenerate, latents, known)
        yield t, latents
