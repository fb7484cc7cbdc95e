"""audioldm2-lite-eval: metrics vs scipy / numpy / transformers, prompt files, and every bad input via the CLI.

- CLAP audio and text embeddings vs transformers' `ClapModel.get_audio_features` / `get_text_features` from
  the same checkpoint, the audio through `ClapFeatureExtractor` at 48 kHz.
- fd_clap vs the scipy computation (`scipy.linalg.sqrtm`, real part), LSD vs numpy written from the definition.
- A folder against itself: fd_clap 0, LSD 0; stats saved and read back give the same fd_clap.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from reference import PROMPTS, max_rel_error, randomize_untrained_audio_tensors

from audioldm2_lite.generation.audio_io import read_audio
from audioldm2_lite.evaluate import (
    ClapScorer,
    EvaluationError,
    embed_files,
    embed_texts,
    evaluate,
    frechet_distance,
    gaussian_stats,
    log_spectral_distance,
    match_prompts,
    read_prompt_rows,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clap_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint's CLAP components only (nothing else is needed), with the tensors a fresh init
    leaves trivial (relative position bias tables: 0; BatchNorm statistics: 0 and 1) made random, so that
    a wrong bias lookup or a skipped normalisation in our audio tower cannot pass unnoticed."""
    from transformers import ClapModel

    out = tmp_path_factory.mktemp("clap") / "clap-only"
    out.mkdir()
    shutil.copy(tiny_checkpoint / "model_index.json", out)
    for name in ("tokenizer", "feature_extractor"):
        shutil.copytree(tiny_checkpoint / name, out / name)
    model = ClapModel.from_pretrained(str(tiny_checkpoint / "text_encoder"))
    randomize_untrained_audio_tensors(model)
    model.save_pretrained(str(out / "text_encoder"))
    return out


def sound(seconds: float, rate: int, seed: int, channels: int = 1) -> np.ndarray:
    """(samples, channels) a few random partials and noise: distinct, deterministic test audio."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * rng.uniform(100, 6000) * t) for _ in range(4))
    x = tone[:, None] + 0.05 * rng.standard_normal((t.size, channels))
    return x.astype(np.float32)


# name: (seconds, rate, channels), chosen to cover the front end's cases: repeat-pad from 16 / 44.1 / 48 kHz,
# stereo averaged, exactly 10 s, and a 12 s clip scored on its first 10 s
FILES = {"a.wav": (3.0, 48000, 1), "b.flac": (2.0, 44100, 2), "c.wav": (10.0, 16000, 1),
         "sub/d.wav": (12.0, 48000, 1)}


def write_folder(folder: Path, files=FILES, seed: int = 0) -> Path:
    for i, (name, (seconds, rate, channels)) in enumerate(files.items()):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(folder / name, sound(seconds, rate, seed + i, channels), rate)
    return folder


def write_prompts(file: Path, names) -> Path:
    with open(file, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "text"])
        writer.writerows([name, PROMPTS[i % 2 * 3]] for i, name in enumerate(names))  # two distinct prompts
    return file


def run_eval(*args):
    return subprocess.run([sys.executable, "-m", "audioldm2_lite.evaluate", "--quiet", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


# ----------------------------------------------------------------------------------------------
# metrics against scipy / numpy


def scipy_frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """As pytorch-fid / FAD compute it: scipy's matrix square root of S1 S2, real part."""
    from scipy import linalg

    root = linalg.sqrtm(sigma1 @ sigma2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1 + sigma2 - 2 * root.real))


@pytest.mark.parametrize("count, dim", [(400, 128), (200, 16), (10, 16)])
def test_frechet_distance_matches_scipy(count, dim):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((count, dim))
    b = 0.8 * rng.standard_normal((count, dim)) + rng.uniform(-0.3, 0.3, dim)
    a /= np.linalg.norm(a, axis=1, keepdims=True)  # unit vectors, as CLAP embeddings
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    stats_a, stats_b = gaussian_stats(a), gaussian_stats(b)
    assert np.allclose(stats_a[1], np.cov(a.T)) and stats_a[1].dtype == np.float64
    got, expected = frechet_distance(*stats_a, *stats_b), scipy_frechet_distance(*stats_a, *stats_b)
    # N > D: the same number up to float64 rounding (measured 1.8e-14 relative). N <= D: S1 S2 is singular,
    # where scipy's sqrtm loses accuracy (measured 1.5e-8 relative); ours takes the exact eigenvalues
    assert abs(got - expected) <= (1e-12 if count > dim else 1e-6) * abs(expected)
    # a set against itself is 0 to float64 rounding of the traces (about 1)
    assert abs(frechet_distance(*stats_a, *stats_a)) <= 1e-12


def numpy_lsd(reference: np.ndarray, generated: np.ndarray) -> float:
    """LSD from the definition: 16 kHz, cut to the shorter; STFT n_fft 2048, hop 512, periodic Hann, centred
    with reflect padding; power; per-frame sqrt of the mean over bins of the squared log10 difference."""
    n_fft, hop = 2048, 512
    n = min(reference.size, generated.size)

    def log_power(x):
        x = np.pad(x[:n].astype(np.float64), n_fft // 2, mode="reflect")
        frames = np.stack([x[i:i + n_fft] for i in range(0, x.size - n_fft + 1, hop)])  # (frames, n_fft)
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
        return np.log10(np.abs(np.fft.rfft(frames * window, axis=1)) ** 2 + 1e-8)  # (frames, bins)

    return float(np.sqrt(((log_power(reference) - log_power(generated)) ** 2).mean(axis=1)).mean())


def test_lsd_matches_numpy_definition():
    reference = sound(1.3, 16000, 0)[:, 0]
    generated = (reference[:19000] + 0.1 * sound(1.2, 16000, 1)[:19000, 0]).astype(np.float32)
    got = log_spectral_distance(torch.from_numpy(reference), torch.from_numpy(generated))
    expected = numpy_lsd(reference, generated)
    # float64 on both sides, the same sums in another order (FFT sizes): rounding only
    assert abs(got - expected) <= 1e-9 * expected and expected > 0.1
    assert log_spectral_distance(torch.from_numpy(reference), torch.from_numpy(reference)) == 0.0
    with pytest.raises(EvaluationError, match="LSD needs more than 1024 samples"):
        log_spectral_distance(torch.zeros(1024), torch.zeros(5000))


# ----------------------------------------------------------------------------------------------
# embeddings against transformers


def test_embeddings_and_clap_score_match_transformers(clap_checkpoint, tmp_path):
    from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

    folder = write_folder(tmp_path / "gen")
    prompts = write_prompts(tmp_path / "prompts.csv", FILES)
    scorer = ClapScorer(clap_checkpoint, device="cpu")
    report = evaluate(folder, prompts=prompts, scorer=scorer, progress=False)
    got = embed_files(scorer, [folder / name for name in FILES], batch_size=3, progress=False)

    extractor = ClapFeatureExtractor.from_pretrained(str(clap_checkpoint / "feature_extractor"))
    model = ClapModel.from_pretrained(str(clap_checkpoint / "text_encoder")).eval()
    # the same 48 kHz audio (read_audio: mono, soxr from the file's rate); the extractor crops longer audio at
    # random, we keep the first 10 s: give it that crop
    audio = [read_audio(folder / name, target_rate=48000).numpy()[:480000] for name in FILES]
    inputs = extractor(audio, sampling_rate=48000, return_tensors="pt")
    texts = [row["text"] for row in csv.DictReader(open(prompts))]
    tokens = AutoTokenizer.from_pretrained(str(clap_checkpoint / "tokenizer"))(texts, padding=True,
                                                                              return_tensors="pt")
    with torch.no_grad():
        expected = model.get_audio_features(input_features=inputs.input_features).pooler_output.double()
        expected_text = model.get_text_features(**tokens).pooler_output.double()
    # fp32, the same operations up to summation order (the front ends agree to float32 rounding of the
    # dB values; see test_clap_audio.py): a few ulp of a unit vector. Measured 1.1e-7 (audio and text)
    assert max_rel_error(torch.from_numpy(got), expected) <= 1e-5
    assert max_rel_error(torch.from_numpy(embed_texts(scorer, texts, batch_size=3)), expected_text) <= 1e-5
    expected_scores = torch.nn.functional.cosine_similarity(expected, expected_text).numpy()
    assert [report["files"][name]["clap_score"] for name in FILES] == pytest.approx(expected_scores, abs=1e-5)
    assert report["clap_score"] == pytest.approx(expected_scores.mean(), abs=1e-5)
    assert len(set(np.round(expected_scores, 6))) == len(FILES)  # distinct audio, distinct scores


def test_one_file_with_its_prompt_is_scored_without_warnings(clap_checkpoint, tmp_path):
    """clap_score needs no covariance: one file with its prompt is scored, and NumPy is not asked for the
    covariance of one sample (which it answers with a division by zero)."""
    import warnings

    folder = write_folder(tmp_path / "gen", {"a.wav": FILES["a.wav"]})
    prompts = write_prompts(tmp_path / "prompts.csv", ["a.wav"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        report = evaluate(folder, prompts=prompts, scorer=ClapScorer(clap_checkpoint, device="cpu"), progress=False)
    assert report["num_files"] == 1 and -1 <= report["clap_score"] <= 1


# ----------------------------------------------------------------------------------------------
# the command line


def test_folder_against_itself_and_saved_stats(clap_checkpoint, tmp_path):
    folder = write_folder(tmp_path / "gen")
    other = write_folder(tmp_path / "other", seed=10)
    prompts = write_prompts(tmp_path / "prompts.csv", FILES)
    result = run_eval(folder, "--reference", folder, "--prompts", prompts, "--model", clap_checkpoint,
                      "--output", tmp_path / "self.json", "--save-stats", tmp_path / "stats.npz")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "self.json").read_text())
    # identical embeddings: |mu1 - mu2|^2 = 0 exactly, the traces cancel to float64 rounding (traces about 1)
    assert abs(report["fd_clap"]) <= 1e-12
    assert report["lsd"] == 0.0  # the same samples: every log difference is exactly 0
    assert report["clap_audio_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert set(report["files"]) == set(FILES) and report["num_files"] == len(FILES)
    # 4 files, 16-d embeddings: the note on the biased estimate, one line
    assert "biased" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    for key in ("clap_score", "fd_clap", "lsd", "clap_audio_similarity"):
        assert key in result.stdout

    with np.load(tmp_path / "stats.npz") as stats:
        assert stats["mean"].shape == (16,) and stats["cov"].shape == (16, 16) and int(stats["num_files"]) == 4
    scorer = ClapScorer(clap_checkpoint, device="cpu")
    a = evaluate(other, reference=folder, scorer=scorer, progress=False)
    b = evaluate(other, reference_stats=tmp_path / "stats.npz", scorer=scorer, progress=False)
    assert a["fd_clap"] > 1e-3 and a["fd_clap"] == pytest.approx(b["fd_clap"], rel=1e-12)
    assert a["lsd"] > 0.1  # same names, different audio


def test_prompts_from_csv_jsonl_and_manifest(tmp_path):
    folder = tmp_path / "out"
    files = {"x.wav": folder / "x.wav", "y/z.flac": folder / "y/z.flac"}
    (tmp_path / "p.jsonl").write_text(
        json.dumps({"file_name": "x.wav", "prompt": "a dog"}) + "\n\n" + json.dumps({"file_name": "y/z.flac",
                                                                                      "text": "rain"}) + "\n")
    # a batch run's manifest as it writes it: paths absolute or relative to the manifest's folder, extra keys
    (tmp_path / "manifest.jsonl").write_text(
        json.dumps({"file": str(folder / "x.wav"), "prompt": "a dog", "seed": 1}) + "\n"
        + json.dumps({"file": "out/y/z.flac", "prompt": "rain", "steps": 20}) + "\n")
    write_prompts(tmp_path / "p.csv", ["x.wav"])
    assert match_prompts(read_prompt_rows(tmp_path / "p.jsonl"), files, folder, tmp_path / "p.jsonl") == \
        {"x.wav": "a dog", "y/z.flac": "rain"}
    manifest = tmp_path / "manifest.jsonl"
    assert match_prompts(read_prompt_rows(manifest), files, folder, manifest) == {"x.wav": "a dog", "y/z.flac": "rain"}
    with pytest.raises(EvaluationError, match=r"no prompt for 1 file\(s\) .*y/z.flac"):
        match_prompts(read_prompt_rows(tmp_path / "p.csv"), files, folder, tmp_path / "p.csv")
    (tmp_path / "bad.jsonl").write_text('{"file_name": "x.wav"}\n')
    with pytest.raises(EvaluationError, match=r"bad.jsonl:1: no 'prompt'"):
        read_prompt_rows(tmp_path / "bad.jsonl")


def bad_inputs(tmp_path: Path) -> dict[str, tuple[list, str]]:
    """name: (arguments after GENERATED_DIR's folder, expected words of the one-line error)."""
    good = write_folder(tmp_path / "good", {"a.wav": (1.0, 16000, 1), "b.wav": (1.0, 16000, 1)})
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    broken = write_folder(tmp_path / "broken", {"a.wav": (1.0, 16000, 1)})
    (broken / "bad.wav").write_bytes(b"RIFF not really a wav file")
    write_prompts(tmp_path / "short.csv", ["a.wav"])
    write_prompts(tmp_path / "extra.csv", ["a.wav", "b.wav", "gone.wav"])
    np.savez(tmp_path / "other.npz", mean=np.zeros(8), cov=np.eye(8), num_files=10)
    return {
        "empty folder": ([tmp_path / "empty"], "holds no audio files"),
        "unreadable file": ([broken, "--reference", good], "bad.wav"),
        "prompts missing a file": ([good, "--prompts", tmp_path / "short.csv"], "no prompt for 1 file(s)"),
        "prompts naming absent files": ([good, "--prompts", tmp_path / "extra.csv"], "gone.wav"),
        "stats of another size": ([good, "--reference-stats", tmp_path / "other.npz"], "8-d embeddings"),
    }


@pytest.mark.parametrize("case", ["empty folder", "unreadable file", "prompts missing a file",
                                  "prompts naming absent files", "stats of another size"])
def test_bad_input_is_one_line_and_writes_nothing(clap_checkpoint, tmp_path, case):
    args, words = bad_inputs(tmp_path)[case]
    out = tmp_path / "written"
    out.mkdir()
    result = run_eval(*args, "--model", clap_checkpoint, "--output", out / "report.json",
                      "--save-stats", out / "stats.npz")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("audioldm2-lite-eval: error:") and words in lines[0], lines
    assert list(out.iterdir()) == []


def test_usage_errors_are_one_line_and_files_follow_the_umask(clap_checkpoint, tmp_path):
    result = run_eval()  # no folder: argparse's error, as one line with exit status 2 like every command
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("audioldm2-lite-eval: error: the following arguments are required: generated")
    folder = write_folder(tmp_path / "gen", {"a.wav": (1.0, 16000, 1), "b.wav": (1.0, 16000, 1)})
    old = os.umask(0o022)  # the subprocess inherits it
    try:
        result = run_eval(folder, "--model", clap_checkpoint, "--save-stats", tmp_path / "stats.npz",
                          "--output", tmp_path / "report.json")
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    for name in ("stats.npz", "report.json"):  # 0666 less the umask, as the audio files: not mkstemp's 0600
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    # --save-stats alone asks for no metric: no empty table, and a line saying what was saved
    assert "metric" not in result.stdout
    assert f"saved the embedding statistics of 2 files to {tmp_path / 'stats.npz'}" in result.stdout


# ----------------------------------------------------------------------------------------------
# scripts/sweep_recipes.py, at CI size (no timing assertions)


def test_sweep_recipes_prints_a_row_per_setting(tiny_checkpoint, tmp_path):
    reference = write_folder(tmp_path / "reference", {"0000.wav": (0.5, 16000, 1), "0001.wav": (0.5, 16000, 1)})
    (tmp_path / "prompts.txt").write_text(f"# two prompts\n{PROMPTS[0]}\n\n{PROMPTS[3]}\n")  # the comment is no prompt
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/sweep_recipes.py"), "--prompts", tmp_path / "prompts.txt",
         "--reference", reference, "--out", tmp_path / "sweep", "--samplers", "ddim", "dpmsolver++karras",
         "--steps", "1", "2", "--model", tiny_checkpoint, "--seconds", "0.5", "--device", "cpu"],
        capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    number = r"-?\d+\.\d+"
    for setting in ("ddim\\s+1", "ddim\\s+2", "dpmsolver\\+\\+karras\\s+1", "dpmsolver\\+\\+karras\\s+2"):
        # sampler, steps, s/clip, clap_score, fd_clap, lsd (the reference has the same file names)
        assert re.search(rf"^{setting}(\s+{number}){{4}}\s*$", result.stdout, re.M), (setting, result.stdout)
    reports = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert sorted(reports) == ["ddim-1", "ddim-2", "dpmsolver++karras-1", "dpmsolver++karras-2"]
    for name, report in reports.items():
        assert sorted(report["files"]) == ["0000.wav", "0001.wav"] and np.isfinite(report["fd_clap"])
        assert report["files"]["0000.wav"]["prompt"] == PROMPTS[0]
        assert soundfile.info(tmp_path / "sweep" / name / "0000.wav").frames == 8000  # 0.5 s at 16 kHz
