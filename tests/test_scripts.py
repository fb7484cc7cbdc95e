"""The scripts a reader runs: the walkthrough and the benchmark, at CI size (no timing assertions)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run(script, *args):
    result = subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True,
                            timeout=900, env={**os.environ, "TQDM_DISABLE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_walkthrough_prints_every_stage(tiny_checkpoint):
    out = run("walkthrough.py", "--model", str(tiny_checkpoint), "--seconds", "0.5", "--steps", "2", "--device", "cpu")
    for file in ("clap.py", "t5.py", "projection.py", "gpt2.py", "unet.py", "vae.py", "vocoder.py", "clap_audio.py",
                 "audio_io.py", "mel.py", "editing.py"):
        assert file in out
    assert "(1, 8000)" in out  # 0.5 s at 16 kHz


def test_benchmark_reports_a_ratio(tiny_checkpoint):
    out = run("benchmark.py", "--checkpoint", str(tiny_checkpoint), "--seconds", "0.5", "--steps", "2",
              "--rounds", "1", "--repeats", "1", "--warmup", "0", "--candidates", "2")
    for stage in ("clap_text", "t5", "gpt2", "unet", "vae", "vocoder", "ranking"):
        assert re.search(rf"^{stage}\s+\d+\.\d+\s+\d+\.\d+", out, re.M), stage
    assert "NaN or inf" not in out
    assert re.search(r"^speedup_vs_diffusers: \d+\.\d\d$", out, re.M)
