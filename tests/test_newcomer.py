"""A newcomer's first hour through the Python API: the README's examples run as written on a CPU-only machine,
the device is chosen automatically, `seed=` works as promised, and every DDIM step count up to the
checkpoint's training steps runs (the CLI's side of the same hour is in test_cli.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from audioldm2_lite import AudioLDM2Pipeline
from audioldm2_lite.generation.pipeline import default_device
from audioldm2_lite.generation.samplers import SchedulerConfig, make_sampler
from audioldm2_lite.generation.samplers.sigmas import multistep_schedule

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")  # diffusers'

ROOT = Path(__file__).resolve().parents[1]
SCHEDULER_CONFIG = ROOT / "scripts/checkpoint_configs/audioldm2/scheduler/scheduler_config.json"


def readme_python_examples() -> list[str]:
    """The ```python blocks of the README's "Python" section, in order."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_opens_with_the_set_up_commands_then_the_reading_path():
    """The README's first two commands are the quick start and the test command (the one .ci/run runs), the next
    section is "Read the code", and the whole stays short enough to read (benchmarks: scripts/BENCHMARKS.md)."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 400
    first, second = re.findall(r"```\n(.*?)\n```", readme, flags=re.S)[:2]
    assert first == 'pip install -e . && audioldm2-lite "a hammer is hitting a wooden surface" -o hammer.wav'
    assert second == 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest -q'
    assert (ROOT / ".ci/run").read_text().rstrip().splitlines()[-1] == second
    sections = re.findall(r"^## (.+)$", readme, flags=re.M)
    assert sections[:2] == ["Quick start", "Read the code"], sections
    assert "(scripts/BENCHMARKS.md)" in readme and (ROOT / "scripts/BENCHMARKS.md").is_file()


def test_readme_python_examples_run_unchanged_on_the_cpu(tiny_checkpoint, tmp_path):
    """The first example (and the generate_latents one after it), the model id replaced by the tiny checkpoint,
    in a fresh process that sees no GPU: the device is chosen automatically and the file is written."""
    examples = readme_python_examples()
    assert len(examples) >= 2 and 'from_pretrained("cvssp/audioldm2")' in examples[0]
    script = "\n".join(examples[:2]).replace('"cvssp/audioldm2"', repr(str(tiny_checkpoint)))
    script += "\nprint('device', pipe.device, 'audio', out.audios.shape, 'latents', tuple(latents.shape), audio.shape)\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    # no time limit of its own: 2 x 200 tiny DDIM steps take seconds alone and minutes on a loaded 2-core machine;
    # pytest's own run bounds it
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "device cpu" in result.stdout  # no CUDA and (not a Mac) no MPS here
    audio, rate = soundfile.read(tmp_path / "techno.wav")
    assert rate == 16000 and audio.shape == (160000,) and np.abs(audio).max() > 0
    # the generate_latents example: 5 s is 500 mel frames, 125 latent frames (the tiny VAE also divides by 4)
    assert re.search(r"latents \(1, \d+, 125, \d+\) torch.Size\(\[1, 80000\]\)", result.stdout), result.stdout
    assert len(result.stdout.splitlines()) == 20 + 1  # one line per denoising step, then the summary


@pytest.mark.parametrize("cuda, mps, expected", [
    (True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu"),
])
def test_default_device_prefers_cuda_then_mps(monkeypatch, cuda, mps, expected):
    """The choice only: MPS is untested on real hardware (none here)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert default_device() == torch.device(expected)


@pytest.fixture(scope="module")
def tiny_pipe(tiny_checkpoint):
    return AudioLDM2Pipeline.from_pretrained(tiny_checkpoint)


def test_seed_is_a_cpu_generator(tiny_pipe):
    run = dict(prompt="a dog barks", audio_length_in_s=0.3, num_inference_steps=2)
    with_seed = tiny_pipe(**run, seed=7).audios
    with_generator = tiny_pipe(**run, generator=torch.Generator("cpu").manual_seed(7)).audios
    assert np.array_equal(with_seed, with_generator)  # the same noise, the same computation: bit-identical
    assert not np.allclose(tiny_pipe(**run, seed=8).audios, with_seed)


def test_every_step_count_up_to_the_training_steps():
    """DDIM: every N in 1..1000 gives N distinct timesteps within the training table, the same as diffusers'
    DDIMScheduler wherever it runs (N = 1000 indexes t = 1000 there, an IndexError: ours shifts to 999..0).
    DPM-Solver++ needs N + 1 grid points: 1..999, the same as diffusers wherever diffusers stays in range."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    hub = json.loads(SCHEDULER_CONFIG.read_text())
    config = SchedulerConfig.from_hub(hub)
    total = config.num_train_timesteps
    reference = {"ddim": DDIMScheduler.from_config(hub), "dpmsolver++": DPMSolverMultistepScheduler.from_config(hub)}
    # DPM-Solver++'s timesteps are sigmas.multistep_schedule's (the sampler's per-step coefficients, which every
    # N would build a thousand times over, are tested in test_samplers.py): checked at every N, the sampler at some
    timesteps_of = {"ddim": lambda n: make_sampler("ddim", config, n).timesteps,
                    "dpmsolver++": lambda n: torch.from_numpy(multistep_schedule(config, n)[0])}
    for n in (1, 2, 20, 500, total - 1):
        assert torch.equal(make_sampler("dpmsolver++", config, n).timesteps, timesteps_of["dpmsolver++"](n))
    for name, limit in (("ddim", total), ("dpmsolver++", total - 1)):
        for n in range(1, limit + 1):
            timesteps = timesteps_of[name](n)
            assert len(timesteps) == n and timesteps.max() <= total - 1 and timesteps.min() >= 0, (name, n)
            assert bool((timesteps[:-1] > timesteps[1:]).all()), (name, n)  # strictly descending
            reference[name].set_timesteps(n)
            if reference[name].timesteps.max() <= total - 1:  # where diffusers stays inside its table
                assert torch.equal(timesteps, reference[name].timesteps), (name, n)
        with pytest.raises(ValueError, match=f"takes at least 1 and at most {limit} steps"):
            make_sampler(name, config, limit + 1)
    # the largest counts run to a finite result (a smooth fake noise model stands in for the UNet)
    for name, n in (("ddim", total), ("dpmsolver++", total - 1)):
        sampler, x = make_sampler(name, config, n), torch.ones(1, 4)
        for i, t in enumerate(sampler.timesteps):
            x = sampler.step(0.1 * x + t / total, i, x)
        assert torch.isfinite(x).all(), name
