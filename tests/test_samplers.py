"""Samplers: parity with diffusers' DDIMScheduler and DPMSolverMultistepScheduler.from_config(ddim_config).

A deterministic fake noise model (a smooth function of sample and timestep) drives both sides from the
same initial latent; every step's sample is compared, not only the last.
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

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

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
    assert dpm.sampler == "dpmsolver++" and dpm.solver_order == 1
    with pytest.warns(UserWarning, match="EulerDiscreteScheduler.*DDIM"):
        assert SchedulerConfig.from_hub(hub_config(_class_name="EulerDiscreteScheduler")).sampler == "ddim"
    # DPM-Solver variants not implemented here: refused, one line each
    for field, value in (("algorithm_type", "sde-dpmsolver++"), ("solver_order", 3), ("solver_type", "heun"),
                         ("final_sigmas_type", "sigma_min"), ("use_lu_lambdas", True)):
        with pytest.raises(NotImplementedError, match=f"{field} = "):
            SchedulerConfig.from_hub(hub_config(_class_name="DPMSolverMultistepScheduler", **{field: value}))


def test_make_sampler_by_name():
    config = SchedulerConfig()
    assert isinstance(make_sampler("ddim", config, 10), DDIMSampler)
    assert isinstance(make_sampler("dpmsolver++", config, 10), DPMSolverPlusPlus2M)
    assert set(SAMPLERS) == {"ddim", "dpmsolver++"}
    with pytest.raises(ValueError):
        make_sampler("euler", config, 10)
    with pytest.raises(ValueError):
        make_sampler("dpmsolver++", config, 10, eta=0.5)


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
    assert sampler.order == [1, 2, 2, 2, 1]
    assert make_sampler("dpmsolver++", SchedulerConfig(), 1).order == [1]


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


@pytest.mark.parametrize("name,eta", [("ddim", 0.0), ("ddim", 0.5), ("dpmsolver++", 0.0)])
def test_steps_do_not_read_tensor_values(name, eta, no_host_sync):
    sampler = make_sampler(name, SchedulerConfig(), 5, eta=eta)
    latent, generator = initial_latent(), torch.Generator().manual_seed(0)
    outputs = [fake_model(latent, t) for t in sampler.timesteps]  # the model runs before arming
    no_host_sync()
    with pytest.raises(AssertionError):  # the trap is live
        bool(latent.sum() > 0)
    for i in range(len(outputs)):
        latent = sampler.step(outputs[i], i, latent, generator=generator)


@pytest.mark.parametrize("name", ["ddim", "dpmsolver++"])
def test_tables_live_on_the_target_device(name):
    """Every precomputed tensor moves with the sampler, and steps run on the meta device (no CPU fallback)."""
    sampler = make_sampler(name, SchedulerConfig(), 5, device="meta")
    tensors = {key: value for key, value in vars(sampler).items() if isinstance(value, torch.Tensor)}
    assert "timesteps" in tensors and all(value.device.type == "meta" for value in tensors.values())
    latent = torch.empty(SHAPE, device="meta")
    for i in range(len(sampler)):
        latent = sampler.step(torch.empty(SHAPE, device="meta"), i, latent)
    assert latent.device.type == "meta" and latent.shape == SHAPE


@pytest.mark.parametrize("name", ["ddim", "dpmsolver++"])
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
