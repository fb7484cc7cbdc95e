"""Batch runs (prompt_files.py): prompt files checked up front, rows independent of batching, resume after
SIGTERM and SIGKILL, and torchrun on two CPU processes, all on the tiny checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from reference import max_rel_error

from audioldm2_lite import AudioLDM2Pipeline
from audioldm2_lite import prompt_files
from audioldm2_lite.prompt_files import Row, batches, generate, manifest_line, merge_manifests, row_seed
from audioldm2_lite.cli import build_parser, main
from audioldm2_lite.generation.request import ModelLimits, Request

ROOT = Path(__file__).resolve().parents[1]


def make_rows(path: Path, seed: int = 0, suffix: str = ".wav", *options: str):
    """The rows of a prompt file with the command line's defaults (and `options`)."""
    args = build_parser().parse_args(["--prompts-file", str(path), "--output-dir", "out", *options])
    return prompt_files.make_rows(path, args, seed, suffix, ModelLimits())

# Batched vs one row at a time: the UNet, VAE and vocoder reduce over the batch's rows in another order, and
# the UNet's cross-attention sees each row's T5 states padded (masked) to the batch's longest. Measured
# 0.8e-7 to 1.6e-7 of the peak (fp32, tiny checkpoint); another row differs by 2e-3 (the tiny random model barely
# varies its output) and a full-size one by ~1.
BATCHING_TOLERANCE = 1e-5
# In 16-bit WAV files that rounding can flip a sample across a quantisation step: one step at most.
WAV_STEPS_TOLERANCE = 1


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model gains nothing from intra-op threads, and on a busy machine idle threads spin: one thread
    here and in the subprocesses (OMP_NUM_THREADS), as torchrun sets for its workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_lines(path: Path, lines) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# The prompt file, without a model


def test_txt_csv_and_jsonl_rows(tmp_path):
    txt = write_lines(tmp_path / "p.txt", ["# sounds", "", "A dog barks!", "  rain on a roof  ", "# end"])
    rows = make_rows(txt, 7, ".wav")
    assert [(r.index, r.line, r.request.prompt, r.file_name) for r in rows] == [
        (0, 3, "A dog barks!", "00000_a_dog_barks.wav"), (1, 4, "rain on a roof", "00001_rain_on_a_roof.wav")]
    assert [r.request.seed for r in rows] == [row_seed(7, 0), row_seed(7, 1)] and row_seed(7, 0) != row_seed(8, 0)

    csv = write_lines(tmp_path / "p.csv", ["prompt,seconds,seed,file_name,candidates,guidance,negative_prompt",
                                           'rain,2.5,11,wet.flac,3,1.0,"low quality, noise"', "wind,,,,,,"])
    wet, wind = make_rows(csv, 0, ".wav")
    r = wet.request
    assert (r.seconds, r.seed, wet.file_name, r.candidates, r.guidance, r.negative_prompt) == (
        2.5, 11, "wet.flac", 3, 1.0, "low quality, noise")
    assert (wind.request.seconds, wind.request.seed, wind.file_name, wind.line) == (
        10.24, row_seed(0, 1), "00001_wind.wav", 3)  # the model's length: the one default (request.py)

    jsonl = write_lines(tmp_path / "p.jsonl", ['{"prompt": "thunder", "file_name": "storm"}', "",
                                               '{"prompt": "birds", "seconds": 4, "seed": null}'])
    storm, birds = make_rows(jsonl, 0, ".flac")
    assert (storm.file_name, birds.file_name, birds.request.seconds, birds.line) == (
        "storm.flac", "00001_birds.flac", 4.0, 3)


@pytest.mark.parametrize("name, lines, message", [
    ("p.txt", ["rain", "", "   "], None),  # blank lines are skipped, not errors
    ("p.csv", ["prompt,seconds", "rain,1", ",2"], "p.csv line 3: the prompt is empty"),
    ("p.csv", ["prompt,sconds", "rain,1"], "p.csv line 1: unknown column(s) 'sconds'"),
    ("p.csv", ["text", "rain"], "p.csv line 1: the header needs a 'prompt' column"),
    ("p.csv", ["prompt,seconds", "rain,1", "wind,2,3"], "p.csv line 3: more values than the header has columns"),
    ("p.jsonl", ['{"prompt": "rain"}', '{"prompt": "wind", "seconds": -1}'], "line 2: seconds must be positive"),
    ("p.jsonl", ['{"prompt": "rain", "seed": 1.5}'], "line 1: seed must be an integer"),
    ("p.jsonl", ['{"prompt": "rain", "candidates": "two"}'], "line 1: candidates must be an integer"),
    ("p.jsonl", ['{"prompt": "rain"', '{"prompt": "x"}'], "p.jsonl line 1: not JSON"),
    ("p.jsonl", ['["rain"]'], "line 1: expected an object"),
    ("p.jsonl", ['{"prompt": "a", "file_name": "../a.wav"}'], "line 1: file_name '../a.wav' is unsafe"),
    ("p.jsonl", ['{"prompt": "a", "file_name": "/tmp/a.wav"}'], "is unsafe"),
    ("p.jsonl", ['{"prompt": "a", "file_name": "sub\\\\a.wav"}'], "is unsafe"),
    ("p.jsonl", ['{"prompt": "a", "file_name": ".hidden.wav"}'], "is unsafe"),
    ("p.jsonl", ['{"prompt": "a", "file_name": "a.mp3"}'], "must end in .wav or .flac"),
    ("p.jsonl", ['{"prompt": "a", "file_name": "A.wav"}', "", '{"prompt": "b", "file_name": "a.WAV"}'],
     "line 3: file_name 'a.WAV' is also the name of line 1"),
    ("p.jsonl", ['{"prompt": "a", "file_name": "00001_b.wav"}', '{"prompt": "b"}'], "also the name of line 1"),
    ("p.jsonl", ['{"prompt": ""}', '{"prompt": " "}'], "line 1: the prompt is empty (and 1 more bad rows)"),
    ("p.md", ["rain"], "--prompts-file must end in .txt, .csv or .jsonl"),
])
def test_bad_rows_are_named_by_line(tmp_path, name, lines, message):
    path = write_lines(tmp_path / name, lines)
    if message is None:
        assert [r.request.prompt for r in make_rows(path)] == ["rain"]
        return
    with pytest.raises(ValueError) as error:
        make_rows(path)
    assert message in str(error.value)


def test_cli_reports_a_bad_row_in_one_line_before_loading(tmp_path, capsys):
    path = write_lines(tmp_path / "p.txt", ["rain"] * 3)
    bad = write_lines(tmp_path / "bad.jsonl", ['{"prompt": "rain"}', '{"prompt": "wind", "guidance": "x"}'])
    # no model at this path: the row is reported first, so the model is never reached
    assert main(["--prompts-file", str(bad), "--output-dir", str(tmp_path / "out"), "--model", "nowhere"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl line 2: guidance must be a number" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # a refused file leaves no empty --output-dir behind
    for args, message in [([str(path)], "not both"), (["--all"], "--all writes one file per candidate"),
                          (["--batch-size", "0"], "--batch-size must be at least 1"),
                          (["--seconds", "0"], "seconds must be positive"),
                          (["-o", "x.wav"], "-o names one file"), (["--lora-scale", "2"], "--lora-scale needs --lora")]:
        extra = ["rain"] if args == [str(path)] else args
        assert main([*extra, "--prompts-file", str(path), "--output-dir", str(tmp_path / "out")]) == 2  # usage
        assert message in capsys.readouterr().err
    assert main(["--prompts-file", str(path)]) == 2
    assert "--prompts-file needs --output-dir" in capsys.readouterr().err


def test_manifest_parts_merge_into_one_line_per_file(tmp_path):
    rows = make_rows(write_lines(tmp_path / "p.txt", ["rain", "wind", "fire", "snow"]))
    settings = "tiny"  # the model
    for row in rows[:3]:
        (tmp_path / row.file_name).write_bytes(b"audio")  # rows 0-2 have files; row 3 was never made
    (tmp_path / "manifest.jsonl").write_text(json.dumps(manifest_line(rows[1], settings, 0.5)) + "\n")
    (tmp_path / "manifest.rank-0.jsonl").write_text(
        json.dumps(manifest_line(rows[0], settings)) + "\n" + json.dumps(manifest_line(rows[3], settings))  # no file
        + "\n" + '{"file": "00002_fi')  # a line cut short by a crash
    assert merge_manifests(tmp_path, rows, settings) == 3
    lines = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert [line["row"] for line in lines] == [0, 1, 2] and lines[1]["clap_score"] == 0.5
    assert lines[2] == {**manifest_line(rows[2], settings), "recovered": True}  # file present, line lost
    assert not list(tmp_path.glob("manifest.rank-*")) and not list(tmp_path.glob(".partial-*"))


# ----------------------------------------------------------------------------------------------
# Each row's audio depends on the row alone


def test_rows_give_the_same_audio_in_any_batch(tiny_checkpoint):
    pipe = AudioLDM2Pipeline.from_pretrained(tiny_checkpoint, device="cpu", dtype=torch.float32)
    prompts = ["a dog barks", "techno music with a strong bass line and a fast hi-hat", "rain",
               "birds chirping in a forest at dawn", "thunder", "a cat meows twice"]
    negatives = ["", "low quality", "noise and hum in a big hall with people talking", "", "muffled", ""]
    rows = [Row(i, i + 1, f"{i}.wav", Request(p, n, seconds=0.32, steps=2, candidates=2, seed=row_seed(0, i)).check())
            for i, (p, n) in enumerate(zip(prompts, negatives))]

    def audio(batch_size):
        return {row: result for rows_together in batches(rows, batch_size)
                for row, result in zip(rows_together, generate(pipe, rows_together))}

    alone, in_threes, all_six = audio(1), audio(3), audio(6)
    errors = [max_rel_error(torch.as_tensor(other[row][0]), torch.as_tensor(alone[row][0]))
              for other in (in_threes, all_six) for row in rows]
    print(f"batched vs alone: max_rel_error {max(errors):.2e}")  # measured 7.8e-8
    assert max(errors) < BATCHING_TOLERANCE
    assert all(abs(all_six[row][1] - alone[row][1]) < 1e-5 for row in rows)  # the CLAP score of the best
    # the tolerance still tells rows apart: a neighbour differs by 2e-3 even on the tiny random model
    neighbour = max_rel_error(torch.as_tensor(alone[rows[1]][0]), torch.as_tensor(alone[rows[0]][0]))
    assert neighbour > 100 * BATCHING_TOLERANCE

    # a row with its own seed S sounds like `audioldm2-lite PROMPT --seed S` on the CPU
    single = pipe(prompts[2], negative_prompt=negatives[2], audio_length_in_s=0.32, num_inference_steps=2,
                  num_waveforms_per_prompt=2, generator=torch.Generator().manual_seed(rows[2].request.seed)).audios[0]
    error = max_rel_error(torch.as_tensor(all_six[rows[2]][0]), torch.as_tensor(single))
    print(f"batched vs the pipeline on one prompt: max_rel_error {error:.2e}")  # measured 7.8e-8
    assert error < BATCHING_TOLERANCE


def test_a_failing_row_is_reported_and_the_others_written(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    def generate_unless_boom(pipe, rows, *args):
        if any(row.request.prompt == "boom" for row in rows):
            raise RuntimeError("CUDA out of memory")
        return generate(pipe, rows, *args)

    monkeypatch.setattr(prompt_files, "generate", generate_unless_boom)
    prompts = write_lines(tmp_path / "p.txt", ["rain", "# a comment", "boom", "wind"])
    assert main(["--prompts-file", str(prompts), "--output-dir", str(tmp_path / "out"), "--batch-size", "3",
                 "--model", str(tiny_checkpoint), "--seconds", "0.32", "--steps", "2", "--device", "cpu"]) == 1
    out, err = capsys.readouterr()
    assert "2 rows done, 0 skipped (file exists), 1 failed" in out  # the batch was retried one row at a time
    assert "failed: line 3 (00001_boom.wav): RuntimeError: CUDA out of memory" in err
    assert sorted(line["file"] for line in manifest(tmp_path / "out")) == ["00000_rain.wav", "00002_wind.wav"]


# ----------------------------------------------------------------------------------------------
# 200 rows: uninterrupted; interrupted by SIGTERM and SIGKILL then resumed; two processes under torchrun

SOUNDS = ["a dog barks", "rain on a tin roof", "techno music", "birds chirping at dawn", "a door closes",
          "ocean waves", "a crowd cheers", "an old clock ticks", "thunder rumbles", "a string quartet"]
PLACES = ["", " in the distance", " in a quiet room", " on a busy street", " in a forest"]


def two_hundred_rows() -> list[str]:
    """A mixed file: some rows set their own length, guidance, candidates, seed, negative prompt or name."""
    records = []
    for i in range(200):
        record = {"prompt": SOUNDS[i % 10] + PLACES[i // 10 % 5] + f" {i}"}
        if i % 7 == 5:
            record["seconds"] = 0.48
        if i % 9 == 2:
            record["guidance"] = 1.0
        if i % 10 == 3:
            record["candidates"] = 2
        if i % 25 == 4:
            record["seed"] = 1000 * i
        if i % 6 == 1:
            record["negative_prompt"] = "low quality, noise"
        if i % 40 == 9:
            record["file_name"] = f"custom {i}.flac"
        records.append(json.dumps(record))
    return records


def command(prompts: Path, out_dir: Path, checkpoint: Path, batch_size: int) -> list[str]:
    return ["--prompts-file", str(prompts), "--output-dir", str(out_dir), "--model", str(checkpoint),
            "--seconds", "0.32", "--steps", "2", "--seed", "7", "--device", "cpu", "--batch-size", str(batch_size),
            "--dtype", "float32"]  # the batching tolerances below are float32's (bfloat16 rounds per batch shape)


def cli(args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, **kwargs)


def manifest(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "manifest.jsonl").read_text().splitlines()]


def audio_files(out_dir: Path) -> dict[str, np.ndarray]:
    return {p.name: soundfile.read(p, dtype="int16")[0] for p in sorted(out_dir.iterdir())
            if p.suffix in (".wav", ".flac") and not p.name.startswith(".")}


def assert_same_audio(ours: dict, reference: dict):
    assert ours.keys() == reference.keys()
    steps = max(int(np.abs(ours[n].astype(int) - reference[n]).max()) for n in ours)
    print(f"largest difference: {steps} 16-bit steps over {len(ours)} files")
    assert steps <= WAV_STEPS_TOLERANCE


@pytest.fixture(scope="module")
def reference_run(tiny_checkpoint, tmp_path_factory):
    """The 200 rows in one uninterrupted process, 8 rows per batch."""
    folder = tmp_path_factory.mktemp("batch")
    prompts = write_lines(folder / "prompts.jsonl", two_hundred_rows())
    assert main(command(prompts, folder / "reference", tiny_checkpoint, 8)) == 0
    return prompts, folder / "reference"


def test_two_hundred_rows_uninterrupted(reference_run):
    prompts, out_dir = reference_run
    files, lines = audio_files(out_dir), manifest(out_dir)
    assert len(files) == 200 and [line["row"] for line in lines] == list(range(200))
    assert {line["file"] for line in lines} == files.keys() and "custom 9.flac" in files
    assert all(len(files[line["file"]]) == int(line["seconds"] * 16000) for line in lines)
    ranked = [line for line in lines if line["candidates"] == 2]
    assert len(ranked) == 20 and all("clap_score" in line for line in ranked)
    assert lines[4]["seed"] == 4000 and lines[5]["seed"] == row_seed(7, 5) and lines[0]["model"]


def wait_for_lines(process, out_dir: Path, count: int):
    path = out_dir / "manifest.jsonl"
    while not path.exists() or path.read_text().count("\n") < count:  # whole lines only: it is being written
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.05)


def check_consistent(out_dir: Path):
    """Every manifest line has its complete file, once."""
    files, lines = audio_files(out_dir), manifest(out_dir)
    assert len({line["file"] for line in lines}) == len(lines)
    assert all(len(files[line["file"]]) == int(line["seconds"] * 16000) for line in lines)
    return files, lines


def test_interrupted_runs_resume_to_the_same_audio(reference_run, tiny_checkpoint, tmp_path):
    prompts, reference = reference_run
    out_dir = tmp_path / "out"

    process = cli(["-m", "audioldm2_lite.cli", *command(prompts, out_dir, tiny_checkpoint, 5)])
    wait_for_lines(process, out_dir, 10)
    process.send_signal(signal.SIGTERM)  # as Ctrl-C: the batch in flight is dropped, its temporary file removed
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "the same command again finishes the rest" in err
    assert not list(out_dir.glob(".partial-*"))
    files, lines = check_consistent(out_dir)
    assert len(lines) < 200
    first = len(lines)

    process = cli(["-m", "audioldm2_lite.cli", *command(prompts, out_dir, tiny_checkpoint, 4)])
    wait_for_lines(process, out_dir, first + 10)
    process.kill()  # SIGKILL: no clean-up at all; a temporary file may stay, hidden, until the next run
    process.communicate(timeout=60)
    files, lines = check_consistent(out_dir)
    assert first + 10 <= len(lines) < 200

    assert main(command(prompts, out_dir, tiny_checkpoint, 6)) == 0
    files, lines = check_consistent(out_dir)
    assert [line["row"] for line in lines] == list(range(200)) and not list(out_dir.glob(".partial-*"))
    unscored = [{k: v for k, v in line.items() if k not in ("clap_score", "recovered")} for line in lines]
    assert unscored == [{k: v for k, v in line.items() if k != "clap_score"} for line in manifest(reference)]
    assert_same_audio(files, audio_files(reference))
    # all done: a rerun skips every row without loading the model
    assert main(command(prompts, out_dir, "nobody/no-model-here", 6)) == 0 and manifest(out_dir) == lines


def test_torchrun_two_processes_match_one(reference_run, tiny_checkpoint, tmp_path):
    prompts, reference = reference_run
    first_rows = write_lines(tmp_path / "prompts.jsonl", prompts.read_text().splitlines()[:24])
    out_dir = tmp_path / "out"
    process = cli(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "audioldm2_lite.cli", *command(first_rows, out_dir, tiny_checkpoint, 4)])
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    assert "24 rows done, 0 skipped" in out and "rank 0 of 2" in err
    assert not list(out_dir.glob("manifest.rank-*"))  # the parts are merged into manifest.jsonl
    files, lines = check_consistent(out_dir)
    assert [line["row"] for line in lines] == list(range(24))
    expected = audio_files(reference)
    assert_same_audio(files, {name: expected[name] for name in files})
    assert files.keys() == {line["file"] for line in manifest(reference)[:24]}
