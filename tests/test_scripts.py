"""The scripts a reader runs: the walkthrough, the benchmark and the parity check, at CI size (no timing assertions)."""

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
    # the CPU table: four runs, each with its time, ratio to diffusers' fastest, RSS; drift for the non-float32 ones
    for label in ("ours:float32", "ours:default", "diffusers:float32", "diffusers:bfloat16"):
        drift = r"-" if label.endswith("float32") else r"(\d+\.\d{4}|-)"  # the default may be float32 (precision.py)
        assert re.search(rf"^{label}\s+\d+\.\d+\s+\d+\.\d+x\s+\d+\.\d+\s+{drift}$", out, re.M), label
    assert re.search(r"^speedup_vs_diffusers: \d+\.\d\d$", out, re.M)


def test_benchmark_long_audio_reports_the_cost_and_agrees(tiny_checkpoint):
    out = run("benchmark_long_audio.py", "--model", str(tiny_checkpoint), "--seconds", "1.28", "2.56")
    rows = re.findall(r"^\| ([\d.]+) \| (one pass|tiles of \d+) \|.* \| (\S+) \|$", out, re.M)
    assert [row[:2] for row in rows] == [("1.28", "one pass"), ("1.28", "tiles of 16"), ("2.56", "one pass"),
                                         ("2.56", "tiles of 16")], out
    # tiled decoding is one pass up to float32 rounding (tests/test_long_audio.py)
    assert all(float(row[2]) <= 1e-5 for row in rows if row[1] != "one pass")


def test_sampler_study_runs_every_sampler(tiny_checkpoint, tmp_path):
    import json
    import math

    from audioldm2_lite.generation.samplers import SAMPLERS
    from audioldm2_lite.generation.samplers.extras import unet_calls

    out = run("sampler_study.py", "--checkpoint", str(tiny_checkpoint), "--seconds", "0.5", "--steps", "2", "3",
              "--reference-steps", "4", "--device", "cpu", "--json", str(tmp_path / "study.json"))
    assert "reference: DDIM 4 steps" in out
    study = json.loads((tmp_path / "study.json").read_text())
    assert [(row["sampler"], row["steps"]) for row in study["rows"]] == [(s, n) for s in SAMPLERS for n in (2, 3)]
    for row in study["rows"]:
        assert row["calls"] == unet_calls(row["sampler"], row["steps"])
        assert all(math.isfinite(row[key]) for key in ("latent", "mel", "clap", "seconds")), row
        assert re.search(rf"^{re.escape(row['sampler'])}\s+{row['steps']}\s+{row['calls']}\s", out, re.M)
    # DDIM's own steps from the reference's noise: fewer steps, farther from the reference
    ddim = {row["steps"]: row["latent"] for row in study["rows"] if row["sampler"] == "ddim"}
    assert 0 < ddim[3] < ddim[2]


# ---------------------------------------------------------------- check_against_diffusers.py

README = SCRIPTS.parent / "README.md"
README_ROWS = {  # the script's stage -> the start of its row in the README's "Parity with diffusers" table
    "CLAP text features": "CLAP text features",
    "Flan-T5 states": "Flan-T5 states",
    "encode_prompt: GPT-2 states": "`encode_prompt`",
    "encode_prompt: T5 states": "`encode_prompt`",
    "UNet": "UNet",
    "VAE decode": "VAE decode",
    "HiFi-GAN vocoder": "HiFi-GAN vocoder",
    "CLAP audio features": "CLAP audio features",
    "waveform, end to end (DPM-Solver++)": "waveform, end to end",
}


def test_check_against_diffusers_uses_the_readme_tolerances():
    from reference import TOLERANCES

    table = README.read_text().split("## Parity with diffusers")[1].split("\n## ")[0]
    assert set(README_ROWS) == set(TOLERANCES)
    for stage, row_start in README_ROWS.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| {row_start}"))
        assert float(row.split("|")[3]) == TOLERANCES[stage], (stage, row)


def test_check_against_diffusers_passes_on_the_tiny_checkpoint(tiny_checkpoint):
    from reference import TOLERANCES

    out = run("check_against_diffusers.py", "--model", str(tiny_checkpoint), "--seconds", "0.5", "--steps", "2")
    for stage in TOLERANCES:
        assert re.search(rf"^{re.escape(stage)}\s+\d\.\de[+-]\d\d\s+tolerance \S+\s+ok$", out, re.M), stage
    assert out.rstrip().endswith("every stage within tolerance")


def test_check_against_diffusers_fails_past_a_tolerance(tiny_checkpoint, monkeypatch, capsys):
    import check_against_diffusers
    import reference

    measured = [("CLAP text features", 1e-7), ("UNet", 3e-4), ("VAE decode", 0.0)]
    monkeypatch.setattr(reference, "stage_errors", lambda *args, **kwargs: iter(measured))
    monkeypatch.setattr(check_against_diffusers, "quiet_libraries", lambda: None)  # keep the session's logging
    assert check_against_diffusers.main(["--model", str(tiny_checkpoint)]) == 1
    out, err = capsys.readouterr()
    assert re.search(r"^UNet\s+3\.0e-04\s+tolerance 1e-05\s+PAST TOLERANCE$", out, re.M)
    assert err.strip().endswith("\ncheck_against_diffusers: 1 stage(s) past tolerance: UNet")  # after load progress


def test_check_against_diffusers_offline_says_so_in_one_line():
    result = subprocess.run([sys.executable, str(SCRIPTS / "check_against_diffusers.py"), "--model", "nobody/absent"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("check_against_diffusers: error: could not download 'nobody/absent'")
    assert len(result.stderr.strip().splitlines()) == 1


def test_profile_unet_counts_fewer_kernels_with_the_work_removed(tiny_checkpoint):
    out = run("profile_unet.py", "--config", str(tiny_checkpoint / "unet" / "config.json"), "--seconds", "0.32",
              "--device", "cpu")
    before, now = (int(n) for n in re.findall(r"(\d+) kernels per step", out))
    assert now < before  # the cross-attention projections leave the step


def test_speech_gpt2_benchmark_reports_a_ratio(tiny_speech_checkpoint):
    out = run("benchmark_speech_gpt2.py", str(tiny_speech_checkpoint), "--repeats", "1", "--states", "8")
    error = float(re.search(r"max_rel_error ([0-9.e+-]+)", out).group(1))
    assert "speedup" in out and error <= 1e-5  # the same 8 states as diffusers' loop, float32 rounding only
