"""Samplers: parity of every sampler with diffusers' scheduler of the same config
(`<Class>.from_config(ddim_config, **options)`, as users swap them), DDIM and DPM-Solver++ in most detail.

A deterministic fake noise model (a smooth function of sample and timestep) drives both sides from the
same initial latent, each side scaling the model input its own way; every step's sample is compared, not
only the last.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reference import max_rel_error

from audioldm2_lite.generation.samplers import (
    SAMPLERS,
    DDIMSampler,
    DPMSolverPlusPlus2M,
    SchedulerConfig,
    make_sampler,
)
from audioldm2_lite.generation.samplers.extras import to_hub, unet_calls

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
              pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context")]  # diffusers' DEIS: np.log

OFFICIAL_CONFIG = Path(__file__).parents[1] / "scripts/checkpoint_configs/audioldm2/scheduler/scheduler_config.json"
STEPS = [1, 2, 3, 10, 20, 25, 50, 200]
SPACINGS = ["leading", "trailing", "linspace"]
PREDICTIONS = ["epsilon", "v_prediction"]
SHAPE = (2, 8, 12, 16)  # (B, 8, T/4, 16), a short latent


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are tiny: a second intra-op thread only adds contention (40x slower on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def hub_config(**changes) -> dict:
    return {**json.loads(OFFICIAL_CONFIG.read_text()), **changes}


def fake_model(sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth stand-in for the UNet: depends on the sample and the timestep, output in the sample's dtype."""
    x, s = sample.float(), t.float() / 1000
    return (torch.tanh(x) * (0.6 + 0.3 * s) + 0.2 * torch.sin(3 * x + 5 * s)).to(sample.dtype)


def initial_latent(dtype=torch.float32):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).to(dtype)


def diffusers_scheduler(name: str, config: dict, steps: int, karras: bool = False):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    ddim = DDIMScheduler.from_config(config)
    if name == "ddim":
        scheduler = ddim
    else:  # the AudioLDM 2 blog's recipe: the DPM scheduler built from the checkpoint's DDIM config
        scheduler = DPMSolverMultistepScheduler.from_config(ddim.config, use_karras_sigmas=karras)
    scheduler.set_timesteps(steps)
    return scheduler


def run_diffusers(scheduler, latent, eta=0.0, seed=None):
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    kwargs = {"eta": eta, "generator": generator} if eta else {}
    trajectory = []
    for t in scheduler.timesteps:
        latent = scheduler.step(fake_model(latent, t), t, latent, **kwargs).prev_sample
        trajectory.append(latent)
    return trajectory


def run_ours(sampler, latent, seed=None):
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    latent = latent * sampler.init_noise_sigma
    trajectory = []
    for i, t in enumerate(sampler.timesteps):
        latent = sampler.step(fake_model(latent, t), i, latent, generator=generator)
        trajectory.append(latent)
    return trajectory


def assert_same_trajectory(ours, reference, tolerance):
    assert len(ours) == len(reference)
    for i, (a, b) in enumerate(zip(ours, reference)):
        assert a.dtype == b.dtype, (i, a.dtype, b.dtype)
        error = max_rel_error(a, b)
        assert error <= tolerance, f"step {i}: max_rel_error {error:.3g} > {tolerance}"


# ---------------------------------------------------------------- config


def test_config_defaults_are_the_official_scheduler_config():
    assert SchedulerConfig.from_hub(hub_config()) == SchedulerConfig()


def test_config_refuses_unsupported_options():
    with pytest.raises(NotImplementedError):
        SchedulerConfig.from_hub(hub_config(clip_sample=True))
    with pytest.raises(NotImplementedError):
        SchedulerConfig.from_hub(hub_config(beta_schedule="squaredcos_cap_v2"))
    with pytest.raises(NotImplementedError):
        SchedulerConfig.from_hub(hub_config(prediction_type="sample"))


def test_scheduler_class_names_the_sampler():
    assert SchedulerConfig.from_hub(hub_config()).sampler == "ddim"
    dpm = SchedulerConfig.from_hub(hub_config(_class_name="DPMSolverMultistepScheduler", solver_order=1))
    assert dpm.sampler == "dpmsolver++1" and dpm.solver_order == 1
    for class_name, options, name in (
            ("PNDMScheduler", {"skip_prk_steps": True}, "pndm"), ("LMSDiscreteScheduler", {}, "lms"),
            ("EulerDiscreteScheduler", {}, "euler"), ("EulerAncestralDiscreteScheduler", {}, "euler-ancestral"),
            ("HeunDiscreteScheduler", {}, "heun"), ("DPMSolverMultistepScheduler", {}, "dpmsolver++"),
            ("DPMSolverMultistepScheduler", {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"},
             "dpmsolver++3m-sde"),
            ("UniPCMultistepScheduler", {}, "unipc"), ("UniPCMultistepScheduler", {"solver_type": "bh1"}, "unipc-bh1"),
            ("DEISMultistepScheduler", {}, "deis")):
        assert SchedulerConfig.from_hub(hub_config(_class_name=class_name, **options)).sampler == name
    # variants not implemented here: refused, one line each
    for field, value in (("algorithm_type", "dpmsolver"), ("solver_order", 4), ("final_sigmas_type", "sigma_min"),
                         ("use_lu_lambdas", True), ("use_beta_sigmas", True)):
        with pytest.raises(NotImplementedError, match=f"{field} = "):
            SchedulerConfig.from_hub(hub_config(_class_name="DPMSolverMultistepScheduler", **{field: value}))
    with pytest.raises(NotImplementedError, match="skip_prk_steps = False"):
        SchedulerConfig.from_hub(hub_config(_class_name="PNDMScheduler", skip_prk_steps=False))


def test_a_class_not_written_here_is_refused_with_the_list():
    with pytest.raises(NotImplementedError) as caught:
        SchedulerConfig.from_hub(hub_config(_class_name="KDPM2DiscreteScheduler"))
    message = str(caught.value)
    assert "KDPM2DiscreteScheduler" in message and "\n" not in message
    assert all(spec.scheduler_class in message for spec in SAMPLERS.values())


def test_make_sampler_by_name():
    config = SchedulerConfig()
    assert isinstance(make_sampler("ddim", config, 10), DDIMSampler)
    assert isinstance(make_sampler("dpmsolver++", config, 10), DPMSolverPlusPlus2M)
    with pytest.raises(ValueError, match="unknown sampler 'kdpm2'; choose from ddim, pndm"):
        make_sampler("kdpm2", config, 10)
    with pytest.raises(ValueError):
        make_sampler("dpmsolver++", config, 10, eta=0.5)
    for name in SAMPLERS:  # len(sampler) counts UNet calls, as unet_calls says without building one
        for steps in (1, 2, 7):
            assert len(make_sampler(name, config, steps)) == unet_calls(name, steps)


def test_running_one_sampler_imports_only_its_module():
    """A later 'core' must carry only the sampler it runs: the package imports base.py alone."""
    import subprocess
    import sys

    code = ("import sys; from audioldm2_lite.generation.samplers import SchedulerConfig, make_sampler; "
            "make_sampler('ddim', SchedulerConfig(), 3); "
            "print(sorted(m.rsplit('.', 1)[1] for m in sys.modules "
            "if m.startswith('audioldm2_lite.generation.samplers.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1]).stdout
    families = {spec.module for spec in SAMPLERS.values()}  # the modules that hold samplers (not base, extras)
    loaded = set(eval(out.strip()))  # noqa: S307  (our own print of a list of names)
    assert "base" in loaded and loaded & families == {"ddim"}


# ---------------------------------------------------------------- DDIM


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_matches_diffusers(steps, spacing, prediction_type, eta):
    config = hub_config(timestep_spacing=spacing, prediction_type=prediction_type)
    reference = diffusers_scheduler("ddim", config, steps)
    sampler = make_sampler("ddim", SchedulerConfig.from_hub(config), steps, eta=eta)
    assert sampler.timesteps.dtype == torch.long and torch.equal(sampler.timesteps, reference.timesteps)
    latent = initial_latent()
    seed = 1 if eta else None
    # float32 on both sides and the same float32 coefficients: only the order of roundings can differ
    assert_same_trajectory(run_ours(sampler, latent, seed), run_diffusers(reference, latent, eta, seed), 1e-6)


def test_ddim_set_alpha_to_one():
    config = hub_config(set_alpha_to_one=True)
    reference = diffusers_scheduler("ddim", config, 10)
    sampler = make_sampler("ddim", SchedulerConfig.from_hub(config), 10)
    latent = initial_latent()
    # float32 both sides: rounding only
    assert_same_trajectory(run_ours(sampler, latent), run_diffusers(reference, latent), 1e-6)


def test_ddim_noise_uses_the_generator():
    """eta > 0 draws from the caller's generator: same seed same result, another seed another one."""
    sampler = lambda: make_sampler("ddim", SchedulerConfig(), 5, eta=1.0)  # noqa: E731
    latent = initial_latent()
    first, again, other = run_ours(sampler(), latent, 3), run_ours(sampler(), latent, 3), run_ours(sampler(), latent, 4)
    assert torch.equal(first[-1], again[-1])
    assert max_rel_error(first[-1], other[-1]) > 1e-2


# ---------------------------------------------------------------- DPM-Solver++(2M)


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("karras", [False, True])
def test_dpmsolver_matches_diffusers(steps, spacing, prediction_type, karras):
    config = hub_config(timestep_spacing=spacing, prediction_type=prediction_type)
    reference = diffusers_scheduler("dpmsolver++", config, steps, karras=karras)
    sampler = make_sampler("dpmsolver++", SchedulerConfig.from_hub({**config, "use_karras_sigmas": karras}), steps)
    assert sampler.timesteps.dtype == torch.long and torch.equal(sampler.timesteps, reference.timesteps)
    latent = initial_latent()
    # float32 on both sides, the same float32 noise levels and coefficients: rounding only (the last step's
    # x0 divides by alpha_bar ~ 0.005 at the first step's level, so it feels every earlier rounding)
    assert_same_trajectory(run_ours(sampler, latent), run_diffusers(reference, latent), 1e-6)


def test_dpmsolver_orders():
    """First order first (no history) and last (final sigma 0), second order in between."""
    sampler = make_sampler("dpmsolver++", SchedulerConfig(), 5)
    assert sampler.orders == [2, 2, 2, 2, 1]  # each step runs at min(this, steps taken + 1)
    assert make_sampler("dpmsolver++", SchedulerConfig(), 1).orders == [1]
    assert make_sampler("dpmsolver++3m", SchedulerConfig(), 5).orders == [3, 3, 3, 2, 1]  # below 15 steps
    assert make_sampler("dpmsolver++3m", SchedulerConfig(), 20).orders == [3] * 19 + [1]


# ---------------------------------------------------------------- half precision


@pytest.mark.parametrize("name", ["ddim", "dpmsolver++"])
def test_half_precision_input_keeps_float32_math(name):
    """A float16 sample and model output: our step is the float32 step rounded once to float16.

    Teacher-forced: at every step both sides get the same float16 sample and model output.
    """
    config = SchedulerConfig()
    ours, ours_fp32 = make_sampler(name, config, 20), make_sampler(name, config, 20)
    reference = diffusers_scheduler(name, hub_config(), 20)
    half_reference = diffusers_scheduler(name, hub_config(), 20)
    latent = initial_latent(torch.float16)
    for i, t in enumerate(ours.timesteps):
        noise = fake_model(latent, t)
        step = ours.step(noise, i, latent)
        assert step.dtype == torch.float16
        # float32 internal math: exactly the float32 step on the upcast inputs, then rounded
        assert torch.equal(step, ours_fp32.step(noise.float(), i, latent.float()).half())
        # diffusers on the upcast inputs, its result rounded to float16: at most one float16 rounding apart
        expected = reference.step(noise.float(), t, latent.float()).prev_sample.half()
        assert max_rel_error(step, expected) <= 2**-10
        # diffusers on the float16 inputs themselves rounds inside the step too (DDIM computes in float16,
        # DPM forms x0 in float16); a few float16 roundings apart
        half_expected = half_reference.step(noise, t, latent).prev_sample
        assert half_expected.dtype == torch.float16
        assert max_rel_error(step, half_expected) <= 1e-2
        latent = step


# ---------------------------------------------------------------- capturable steps


@pytest.fixture
def no_host_sync(monkeypatch):
    """Make every tensor -> Python conversion raise: a step that syncs with the host would call one."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a sampler step read a tensor value on the host")

    def arm():
        for name in ["item", "tolist", "__bool__", "__int__", "__float__", "__index__", "__array__", "numpy"]:
            monkeypatch.setattr(torch.Tensor, name, forbidden)

    return arm


@pytest.mark.parametrize("name,eta", [("ddim", 0.0), ("ddim", 0.5)] + [(name, 0.0) for name in list(SAMPLERS)[1:]])
def test_steps_do_not_read_tensor_values(name, eta, no_host_sync):
    sampler = make_sampler(name, SchedulerConfig(), 5, eta=eta)
    latent, generator = initial_latent(), torch.Generator().manual_seed(0)
    outputs = [fake_model(latent, t) for t in sampler.timesteps]  # the model runs before arming
    no_host_sync()
    with pytest.raises(AssertionError):  # the trap is live
        bool(latent.sum() > 0)
    for i in range(len(outputs)):
        sampler.scale_model_input(latent, i)
        latent = sampler.step(outputs[i], i, latent, generator=generator)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_tables_live_on_the_target_device(name):
    """Every precomputed tensor moves with the sampler, and steps run on the meta device (no CPU fallback)."""
    sampler = make_sampler(name, SchedulerConfig(), 5, device="meta")
    tensors = {key: value for key, value in vars(sampler).items() if isinstance(value, torch.Tensor)}
    assert "timesteps" in tensors and all(value.device.type == "meta" for value in tensors.values())
    latent = torch.empty(SHAPE, device="meta")
    for i in range(len(sampler)):
        assert sampler.scale_model_input(latent, i).device.type == "meta"
        latent = sampler.step(torch.empty(SHAPE, device="meta"), i, latent)
    assert latent.device.type == "meta" and latent.shape == SHAPE


@pytest.mark.parametrize("name", ["ddim", "dpmsolver++", "euler", "heun", "dpmsolver++3m"])
def test_step_traces_as_one_graph(name):
    """torch.compile(fullgraph=True) refuses graph breaks: no data-dependent Python in a step."""
    sampler = make_sampler(name, SchedulerConfig(), 3)
    step = torch.compile(sampler.step, backend="eager", fullgraph=True)
    reference = make_sampler(name, SchedulerConfig(), 3)
    latent = expected = initial_latent()
    for i, t in enumerate(sampler.timesteps):
        latent = step(fake_model(latent, t), i, latent)
        expected = reference.step(fake_model(expected, t), i, expected)
    assert torch.equal(latent, expected)
    torch._dynamo.reset()


# ---------------------------------------------------------------- every sampler against its diffusers twin

NOISE_LEVELS = {"karras": {"use_karras_sigmas": True}, "exponential": {"use_exponential_sigmas": True}}
# (steps, options): each sampler at a few step counts on the checkpoint's own settings, then the other
# spacings and v-prediction, then the noise-level options its diffusers class offers
CASES = [(steps, {}) for steps in (1, 2, 3, 10, 50)] + [
    (10, {"timestep_spacing": "trailing"}), (10, {"timestep_spacing": "linspace"}),
    (10, {"prediction_type": "v_prediction"})]
LEVEL_CASES = [(steps, "karras") for steps in (2, 5, 25)] + [(10, "exponential")]


def diffusers_twin(name: str, steps: int, **options):
    """diffusers' scheduler of `name`, from the checkpoint's DDIM config as users swap it in, set for `steps`."""
    import diffusers

    spec = SAMPLERS[name]
    extra = {"skip_prk_steps": True} if name == "pndm" else {}  # the fast-test fixture's PNDM
    ddim = diffusers.DDIMScheduler.from_config(hub_config())
    twin = getattr(diffusers, spec.scheduler_class).from_config(ddim.config, **dict(spec.options), **extra, **options)
    twin.set_timesteps(steps)
    return twin


def run_pair(name: str, steps: int, seed: int = 1, **options):
    """Both samplers from the same latent through the fake model, each scaling the model input its own way:
    (our trajectory, diffusers' trajectory). The stochastic ones draw from generators seeded alike."""
    twin = diffusers_twin(name, steps, **options)
    ours = make_sampler(name, SchedulerConfig.from_hub({**twin.config, "_class_name": type(twin).__name__}), steps)
    assert torch.equal(ours.timesteps.double(), twin.timesteps.double())
    assert len(ours) == len(twin.timesteps)
    ours_generator, twin_generator = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    takes_generator = "generator" in twin.step.__code__.co_varnames
    a = b = initial_latent()
    a, b = a * ours.init_noise_sigma, b * twin.init_noise_sigma
    ours_steps, twin_steps = [], []
    for i, t in enumerate(twin.timesteps):
        kwargs = {"generator": twin_generator} if takes_generator else {}
        b = twin.step(fake_model(twin.scale_model_input(b, t), t), t, b, **kwargs).prev_sample
        a = ours.step(fake_model(ours.scale_model_input(a, i), ours.timesteps[i]), i, a, generator=ours_generator)
        ours_steps.append(a)
        twin_steps.append(b)
    return ours_steps, twin_steps


def assert_matches_twin(name, ours, reference):
    if name == "unipc-bh1" or not reference[-1].isfinite().all():
        # diffusers' UniPC on its last step, to sigma 0: -inf * 0 with bh1 (NaN), a division by r = 0 without
        # lower_order_final (inf and NaN)
        assert name.startswith("unipc") and not reference[-1].isfinite().any() and ours[-1].isfinite().all()
        # our last step returns the data prediction, as bh2 does there: test_unipc_bh1_last_step_is_the_data_prediction
        ours, reference = ours[:-1], reference[:-1]
    # float32 both sides, the same float32 tables and diffusers' expressions in its order: rounding only.
    # LMS: its coefficients are exact Gauss-Legendre integrals here, diffusers' quad over a float32 integrand
    # there (a few 1e-7 apart)
    assert_same_trajectory(ours, reference, 1e-6)


@pytest.mark.parametrize("steps,options", CASES, ids=lambda v: str(v) if isinstance(v, int) else
                         "-".join(f"{k}={x}" for k, x in v.items()) or "default")
@pytest.mark.parametrize("name", list(SAMPLERS)[1:])
def test_sampler_matches_diffusers(name, steps, options):
    assert_matches_twin(name, *run_pair(name, steps, **options))


@pytest.mark.parametrize("steps,levels", LEVEL_CASES)
@pytest.mark.parametrize("name", [name for name, spec in SAMPLERS.items() if spec.noise_levels])
def test_sampler_noise_levels_match_diffusers(name, steps, levels):
    ours, reference = run_pair(name, steps, **NOISE_LEVELS[levels])
    assert_matches_twin(name, ours, reference)
    plain, _ = run_pair(name, steps)
    if steps > 2:  # the option changed the run (at 2 steps the Karras and spaced levels nearly coincide)
        assert max_rel_error(ours[-1], plain[-1]) > 1e-4


@pytest.mark.parametrize("steps", [4, 20])
@pytest.mark.parametrize("name,options", [
    ("unipc", {"solver_order": 3}), ("unipc-bh1", {"solver_order": 3}), ("unipc", {"lower_order_final": False}),
    ("deis", {"solver_order": 3}), ("deis", {"solver_order": 3, "lower_order_final": False}),
    ("dpmsolver++", {"solver_type": "heun"}), ("dpmsolver++2m-sde", {"solver_type": "heun"}),
    ("dpmsolver++3m", {"lower_order_final": False}), ("dpmsolver++3m-sde", {"use_karras_sigmas": True})])
def test_solver_options_match_diffusers(name, options, steps):
    """The multistep solvers' own options, read from the folder's config (`solver_order`, `solver_type`,
    `lower_order_final`): the config's sampler runs with them."""
    assert_matches_twin(name, *run_pair(name, steps, **options))


def test_unipc_bh1_last_step_is_the_data_prediction():
    """Where diffusers' bh1 returns NaN (its last step), ours returns what the same step of bh2 returns:
    the first-order step to sigma 0 is the data prediction whatever B(h) is."""
    bh1, bh2 = make_sampler("unipc-bh1", SchedulerConfig(), 4), make_sampler("unipc", SchedulerConfig(), 4)
    latent = initial_latent()
    bh2.last_sample, bh2.last_order, bh2.history = None, None, []
    x = bh1.step(fake_model(latent, bh1.timesteps[3]), 3, latent)
    assert torch.equal(x, bh2.step(fake_model(latent, bh2.timesteps[3]), 3, latent))


@pytest.mark.parametrize("name", ["euler-ancestral", "dpmsolver++2m-sde"])
def test_stochastic_samplers_draw_from_the_generator(name):
    """Same seed same result, another seed another one (the draws diffusers makes, checked above)."""
    first, again, other = (run_pair(name, 5, seed)[0][-1] for seed in (3, 3, 4))
    assert torch.equal(first, again)
    assert max_rel_error(first, other) > 1e-3


# ---------------------------------------------------------------- editing with every sampler


def oracle_model(source: torch.Tensor, config: SchedulerConfig):
    """The exact noise prediction when the data is `source` alone: eps = (x - sqrt(a_t) x0) / sqrt(1 - a_t) for
    the model's (variance-preserving) input x at integer timestep t. Every sampler then lands on `source`."""
    from audioldm2_lite.generation.samplers import alphas_cumprod

    alpha_bar = alphas_cumprod(config)

    def predict_noise(x, t):
        a = alpha_bar[int(t)]
        return (x - a**0.5 * source) / (1 - a) ** 0.5

    return predict_noise


@pytest.mark.parametrize("name", [name for name in SAMPLERS if name != "deis"])  # DEIS ends at sigma_min, not 0
def test_style_transfer_starts_at_the_samplers_own_noise_level(name):
    """SDEdit from step (N - int(N s)) x order (PNDM: past its repeated level), the source noised there with
    the sampler's own add_noise: with the exact denoiser of the source, every sampler (VP or sigma-scaled,
    deterministic or not) returns the source; a start at another parametrisation's level would not."""
    from audioldm2_lite.generation.samplers import denoise

    # DDIM and PNDM end on alpha_bar_0 unless set_alpha_to_one (then on the data, as the others)
    config, steps, strength = SchedulerConfig(set_alpha_to_one=True), 10, 0.6
    sampler = make_sampler(name, config, steps)
    start = sampler.start_index(steps - int(steps * strength))
    assert len(sampler) - start == unet_calls(name, steps, int(steps * strength))
    source, noise = initial_latent(), torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    outputs = list(denoise(sampler, oracle_model(source, config), noise, source, start,
                           generator=torch.Generator().manual_seed(6)))
    assert len(outputs) == len(sampler) - start
    # float32 rounding through a few steps, relative to the latent's peak
    assert max_rel_error(outputs[-1][1], source) <= 1e-4


@pytest.mark.parametrize("name", ["euler", "heun", "lms", "dpmsolver++", "pndm"])
def test_inpainting_keeps_the_known_region_at_each_steps_level(name):
    """Outside the regenerated region, after step i the latent is the source noised to step i + 1's level
    (sigma samplers: source + sigma noise, the latent they step), and the source itself after the last."""
    from audioldm2_lite.generation.samplers import denoise

    sampler = make_sampler(name, SchedulerConfig(), 6)
    source, noise = initial_latent(), torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    regenerate = torch.zeros(SHAPE[-2:], dtype=torch.bool)
    regenerate[:6] = True  # the first 6 latent frames regenerated, the rest kept
    steps = list(denoise(sampler, lambda x, t: fake_model(x, t), noise, source, 0, regenerate))
    for i, (_, latent) in enumerate(steps[:-1]):
        signal, noise_std = sampler.noise_levels(i + 1)
        assert torch.equal(latent[..., 6:, :], (signal * source + noise_std * noise)[..., 6:, :])
    if hasattr(sampler, "sigmas"):  # a sigma sampler's latent: x0 + sigma eps, unscaled
        signal, noise_std = sampler.noise_levels(1)
        assert signal == 1 and noise_std == sampler.sigmas[1]
    assert torch.equal(steps[-1][1][..., 6:, :], source[..., 6:, :])
    assert not torch.equal(steps[-1][1][..., :6, :], source[..., :6, :])


# ---------------------------------------------------------------- every surface names samplers from the one table


def test_every_surface_names_samplers_from_the_one_table(tmp_path):
    from audioldm2_lite import cli
    from audioldm2_lite.web import app
    from audioldm2_lite.console import UsageError
    from audioldm2_lite.generation.request import DEFAULT_STEPS, Request, RequestError
    from audioldm2_lite.training.train import TrainConfig, check_config

    assert DEFAULT_STEPS == {name: spec.steps for name, spec in SAMPLERS.items()}
    assert list(app.SCHEDULERS.values()) == list(SAMPLERS)  # the page's dropdown
    help_text = " ".join(cli.build_parser().format_help().split())
    assert all(name in help_text for name in SAMPLERS)  # --scheduler
    for name in SAMPLERS:  # Python, the CLI and prompt files all check a Request
        request = Request("rain", scheduler=name).check()
        assert request.steps == SAMPLERS[name].steps and request.karras is False
    assert Request("rain", scheduler="unipc", karras=True).check().karras
    with pytest.raises(RequestError, match="karras noise levels apply to these schedulers only: lms, euler, heun"):
        Request("rain", scheduler="euler-ancestral", karras=True).check()
    with pytest.raises(UsageError, match="validation_scheduler: unknown scheduler 'kdpm2'; choose from ddim, pndm"):
        check_config(TrainConfig(data="d", output="o", validation_scheduler="kdpm2"), tmp_path / "state.pt")


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_config_round_trips_through_diffusers(name):
    """`to_hub` is a config diffusers' `from_config` takes (the drop-in idiom's `pipe.scheduler.config`), and
    the scheduler diffusers builds from it reads back as the same sampler and options, for every class
    built from every other one's config."""
    import diffusers

    for start in ("ddim", "unipc", "dpmsolver++3m-sde", "euler"):
        config = SchedulerConfig().for_sampler(start).for_sampler(name)
        scheduler_class = getattr(diffusers, SAMPLERS[name].scheduler_class)
        twin = scheduler_class.from_config(to_hub(config))
        back = SchedulerConfig.from_hub({**twin.config, "_class_name": scheduler_class.__name__})
        assert back == config, (start, {k: (v, getattr(config, k)) for k, v in vars(back).items()
                                        if v != getattr(config, k)})
