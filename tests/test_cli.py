"""The command line: audio files on success; one clear line, a non-zero exit and no file on bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import soundfile

from audioldm2_lite.cli import main


def run_cli(*args, env=None):
    """The installed entry point in a subprocess, as a user runs it (so we see tracebacks if any)."""
    return subprocess.run([sys.executable, "-m", "audioldm2_lite.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["   "], "the prompt is empty"),
    (["rain", "--seconds", "0"], "--seconds must be positive"),
    (["rain", "--seconds", "-2"], "--seconds must be positive"),
    (["rain", "--steps", "0"], "--steps must be at least 1"),
    (["rain", "--scheduler", "euler"], "unknown --scheduler 'euler'"),
    (["rain", "--candidates", "0"], "--candidates must be at least 1"),
    (["rain", "-o", "out.mp3"], "output must end in .wav or .flac"),
    (["rain", "-o", "/no/such/folder/out.wav"], "cannot write to"),
])
def test_bad_arguments_end_with_one_line(args, message, tmp_path):
    result = run_cli(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


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
    assert result.returncode == 1 and "does not exist" in result.stderr and "Traceback" not in result.stderr


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
