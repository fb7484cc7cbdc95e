"""The command line: audio files on success; one clear line, a non-zero exit and no file on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import audioldm2_lite
from audioldm2_lite.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, env=None, cwd=None):
    """The entry point in a subprocess, as a user runs it (so we see tracebacks if any), on this checkout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "audioldm2_lite.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def run_main(args, capsys) -> subprocess.CompletedProcess:
    """The entry point in this process, for argument checks that load nothing (a few seconds less than a process
    each); the tests that run it as a process (run_cli) show that a process prints what `main` prints."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:  # argparse's own exits (--help, --version)
        code = exit.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def assert_one_line_error(result, message, status=2):
    """What the README promises: exit status 1 or 2, one line `audioldm2-lite: error: ...`, nothing else."""
    assert result.returncode == status, result.stderr
    assert result.stderr.startswith("audioldm2-lite: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert result.stdout == ""


NO_CUDA = "checks the error for --device cuda where CUDA is missing; CUDA is available here, so there is no error to check"
NO_MPS = "MPS is available here, so --device mps is not a mistake"


@pytest.mark.parametrize("args, message", [
    ([], "give a PROMPT, or --prompts-file FILE for many"),
    (["rain", "--steps", "many"], "argument --steps: invalid int value: 'many' (see audioldm2-lite --help)"),  # argparse's
    (["rain", "--dtype", "float64"], "argument --dtype: invalid choice: 'float64'"),
    (["rain", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    (["   "], "the prompt is empty"),
    (["rain", "--seconds", "0"], "--seconds must be positive"),
    (["rain", "--seconds", "-2"], "--seconds must be positive"),
    (["rain", "--seconds", "nan"], "--seconds must be positive"),
    (["rain", "--seconds", "0.001"], "--seconds must be positive, at least 0.01 (one mel frame of this model)"),
    (["rain", "--seed", "-1"], "--seed must be in 0 .. 2**64 - 1"),
    (["rain", "--seconds", "1e6"], "the longest that fits is about"),  # before loading, from free memory
    (["rain", "--steps", "0"], "--steps: DDIM takes at least 1 and at most 1000 steps"),
    (["rain", "--scheduler", "kdpm2"], "unknown scheduler 'kdpm2'; choose from ddim, pndm, lms, euler"),
    (["rain", "--karras"], "--karras noise levels apply to these schedulers only: lms, euler, heun"),
    (["rain", "--guidance", "-1"], "--guidance must be a finite number at least 0, got -1.0"),
    (["rain", "--candidates", "0"], "--candidates must be a whole number, at least 1"),
    (["rain", "--all"], "--all writes every candidate: give --candidates 2 or more"),
    (["rain", "--device", "tpu"], "unknown --device 'tpu'; use cpu, cuda, cuda:N or mps"),
    (["rain", "--device", "cuda:x"], "unknown --device 'cuda:x'"),
    pytest.param(["rain", "--device", "cuda"], "--device cuda: CUDA is not available (torch ",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason=NO_CUDA)),
    pytest.param(["rain", "--device", "cuda:1"], "--device cuda:1: CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason=NO_CUDA)),
    pytest.param(["rain", "--device", "mps"], "--device mps: Apple's MPS is not available",
                 marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason=NO_MPS)),
    (["rain", "--device", "cpu", "--dtype", "float16"], "--dtype float16 is for GPUs: on the CPU use float32 or bfloat16"),
    (["rain", "--device", "cpu", "--offload"], "--offload keeps weights in CPU memory while a GPU runs them; here the device is the CPU"),
    (["rain", "--device", "cpu", "--compile"], "--compile applies on CUDA only"),
    (["rain", "-o", "out.mp3"], "output must end in .wav or .flac"),
    (["rain", "-o", "/no/such/folder/out.wav"], "the folder '/no/such/folder' does not exist"),
    pytest.param(["rain", "-o", "/proc/out.wav"], "the folder '/proc' is not writable",  # even for root
                 marks=pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux's /proc")),
])
def test_bad_arguments_end_with_one_line(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    result = run_main(args, capsys)
    assert_one_line_error(result, message)
    assert list(tmp_path.iterdir()) == []


def test_output_checks_come_before_loading(tmp_path):
    """A folder named as output, or as one of the --all names, is refused before the (missing) model loads."""
    missing = str(tmp_path / "no-model")  # loading would fail with 'does not exist'
    result = run_cli("rain", "-o", str(tmp_path), "--model", missing)
    assert_one_line_error(result, f"-o '{tmp_path}' is a directory; name a file in it")
    (tmp_path / "rain_3.wav").mkdir()
    result = run_cli("rain", "-o", str(tmp_path / "rain.wav"), "--candidates", "3", "--all", "--model", missing)
    assert_one_line_error(result, "rain_3.wav' (one of the --all outputs) is a directory")
    result = run_cli("rain", "-o", str(tmp_path / "rain.wav"), "--candidates", "3", "--model", missing)
    assert_one_line_error(result, "does not exist")  # without --all only rain.wav is written; a usage mistake


def test_version_is_the_package_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout == f"audioldm2-lite {audioldm2_lite.__version__}\n"
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'version = { attr = "audioldm2_lite.__version__" }' in pyproject


def test_every_command_of_the_package_answers_help(capsys):
    """Each [project.scripts] entry names a function that exists and prints its usage (a moved `main` breaks the
    installed command, which the other tests, calling the modules, would not notice)."""
    import importlib
    import tomllib

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"audioldm2-lite", "audioldm2-lite-app", "audioldm2-lite-eval", "audioldm2-lite-train"}
    for command, target in scripts.items():
        module, function = target.split(":")
        with pytest.raises(SystemExit) as exit_:
            getattr(importlib.import_module(module), function)(["--help"])
        assert exit_.value.code == 0 and capsys.readouterr().out.startswith(f"usage: {command} ")


def test_unreachable_model_is_one_line_and_leaves_no_file(tmp_path):
    out = tmp_path / "out.wav"
    result = run_cli("rain", "-o", str(out), "--model", "cvssp/audioldm2",
                     env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")})
    assert result.returncode == 1
    assert "local checkpoint folder" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.glob("*.wav")) == []


def test_missing_local_folder(tmp_path):
    result = run_cli("rain", "-o", str(tmp_path / "out.wav"), "--model", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_generates_wav_flac_and_all_candidates(tiny_checkpoint, tmp_path, capsys):
    common = ["--model", str(tiny_checkpoint), "--seconds", "0.5", "--steps", "2", "--seed", "0", "--device", "cpu"]
    assert main(["a dog barks", "-o", str(tmp_path / "dog.wav"), *common]) == 0
    audio, rate = soundfile.read(tmp_path / "dog.wav")
    assert rate == 16000 and audio.shape == (8000,)

    assert main(["a dog barks", "-o", str(tmp_path / "dog.flac"), "--scheduler", "dpmsolver++", *common]) == 0
    assert soundfile.info(str(tmp_path / "dog.flac")).format == "FLAC"

    assert main(["rain", "-o", str(tmp_path / "rain.wav"), "--candidates", "3", "--all", *common]) == 0
    assert sorted(p.name for p in tmp_path.glob("rain_*.wav")) == ["rain_1.wav", "rain_2.wav", "rain_3.wav"]
    assert not list(tmp_path.glob(".partial-*"))


LONG_PROMPT = "a dog barks " + "and a cat meows loudly " * 20  # past the tiny CLAP (40) and T5 (24) maximum


@pytest.fixture
def umask_027():
    old = os.umask(0o027)  # the subprocess inherits it
    yield
    os.umask(old)


def test_what_happened_is_said_and_kept(tiny_checkpoint, tmp_path, umask_027):
    """Without --seed: the seed is printed and, with every setting, written into the file's text fields;
    progress names each loading step and stage; a too-long prompt is one warning line; the file has the
    user's umask. The printed seed then makes the same audio again, and --quiet prints no progress."""
    common = ["--model", str(tiny_checkpoint), "--seconds", "0.5", "--steps", "2", "--negative-prompt", "hum"]
    first = run_cli(LONG_PROMPT, "-o", str(tmp_path / "first.flac"), *common)
    assert first.returncode == 0 and first.stdout == f"{tmp_path / 'first.flac'}\n", first.stderr
    assert "Traceback" not in first.stderr
    for stage in ("loading the text encoders", "loading unet", "loading vae", "loading vocoder",
                  "encoding the prompt", "denoising", "decoding"):
        assert stage in first.stderr
    assert first.stderr.count("audioldm2-lite: model: diffusers' conversion") == 1  # what ran, said once
    seed = int(first.stderr.split("audioldm2-lite: seed ")[1].split()[0])
    warning = [line for line in first.stderr.splitlines() if line.startswith("audioldm2-lite: warning:")]
    assert len(warning) == 1 and "is too long: CLAP kept 40 of" in warning[0] and "T5 kept 24 of" in warning[0]
    assert (tmp_path / "first.flac").stat().st_mode & 0o777 == 0o640  # 0666 less the umask, as any new file

    with soundfile.SoundFile(tmp_path / "first.flac") as file:
        assert file.title == LONG_PROMPT
        assert file.software.startswith(f"audioldm2-lite {audioldm2_lite.__version__}")
        record = json.loads(file.comment)  # the request, complete, the model that ran, and each stage's precision
        assert isinstance(record.pop("precision"), str)
        assert record.pop("reference") == "diffusers"  # the tiny checkpoint is not an official one (authors.py)
        assert record == dict(prompt=LONG_PROMPT, negative_prompt="hum", seconds=0.5, steps=2, scheduler="ddim",
                              karras=False, guidance=3.5, candidates=1, seed=seed, strength=1.0, lora_scale=1.0,
                              model=str(tiny_checkpoint))
        first_audio = file.read()

    again = run_cli(LONG_PROMPT, "-o", str(tmp_path / "again.wav"), "--seed", str(seed), "--quiet", *common)
    assert again.returncode == 0
    assert again.stderr.splitlines() == warning  # --quiet: no progress, no seed line; the warning stays
    again_audio, _ = soundfile.read(tmp_path / "again.wav")
    # both 16-bit PCM; two processes' float32 runs may differ in the last bits, which rounding to 16 bits can
    # turn into one step (2^-15 = 3.1e-5) on a few samples: the same audio within 2 steps
    assert np.abs(again_audio - first_audio).max() <= 2 / 2**15
    with soundfile.SoundFile(tmp_path / "again.wav") as file:  # WAV carries the same text fields
        assert file.title == LONG_PROMPT and json.loads(file.comment)["seed"] == seed


def test_steps_past_the_training_steps_is_one_line(tiny_checkpoint, tmp_path):
    result = run_cli("rain", "-o", str(tmp_path / "out.wav"), "--model", str(tiny_checkpoint), "--seconds", "0.1",
                     "--steps", "1001", "--quiet")
    assert_one_line_error(result, "--steps: DDIM takes at least 1 and at most 1000 steps with this checkpoint's 1000 "
                                  "training steps, got 1001")  # before loading: a usage mistake
    assert list(tmp_path.iterdir()) == []


def test_lora_scale_without_lora_and_a_local_path_not_made_yet(tmp_path):
    result = run_cli("rain", "--lora-scale", "0.5", cwd=tmp_path)
    assert_one_line_error(result, "--lora-scale needs --lora (the adapter it scales)")
    (tmp_path / "weights").mkdir()  # the README's layout: weights/ exists, weights/audioldm2 not yet
    result = run_cli("rain", "--model", "weights/audioldm2", cwd=tmp_path)
    assert_one_line_error(result, "--model 'weights/audioldm2' does not exist")  # a folder, not a hub id
    assert "--model weights/audioldm2`" not in result.stderr  # no suggestion of the very path that is missing


@pytest.mark.skipif(torch.cuda.is_available(), reason=NO_CUDA)
def test_from_pretrained_on_a_missing_device_is_one_clear_error(tiny_checkpoint):
    from audioldm2_lite import AudioLDM2Pipeline

    with pytest.raises(ValueError, match="device cuda: CUDA is not available"):  # not torch's bare AssertionError
        AudioLDM2Pipeline.from_pretrained(tiny_checkpoint, device="cuda")


def test_a_lora_already_merged_into_its_export_is_a_warning(tiny_checkpoint, tmp_path, recwarn):
    import shutil

    from audioldm2_lite import AudioLDM2Pipeline, load_component
    from audioldm2_lite.generation.lora import apply_lora, save_lora

    export = tmp_path / "export"  # audioldm2-lite-train's layout: the merged checkpoint, the adapter beside it
    shutil.copytree(tiny_checkpoint, export)
    unet = load_component(tiny_checkpoint, "unet")
    apply_lora(unet, rank=2)
    save_lora(unet, export / "lora.safetensors")
    AudioLDM2Pipeline.from_pretrained(export, device="cpu", lora=export / "lora.safetensors")
    assert any("merged in already: applying it again doubles it" in str(w.message) for w in recwarn)
    recwarn.clear()
    AudioLDM2Pipeline.from_pretrained(tiny_checkpoint, device="cpu", lora=export / "lora.safetensors")  # the base
    assert not any("doubles it" in str(w.message) for w in recwarn)
