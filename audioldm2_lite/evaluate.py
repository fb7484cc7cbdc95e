"""Evaluation: did quality move? CLAP score, Fréchet distance of CLAP embeddings and LSD, from folders of audio.

    audioldm2-lite-eval GENERATED_DIR [--reference DIR | --reference-stats STATS.npz] [--prompts FILE]

Audio is scored with the CLAP model that every AudioLDM 2 checkpoint carries (hub components
`text_encoder`, `tokenizer`, `feature_extractor`; an authors' file's ranking CLAP, through the conversion the
pipeline reads it with); the UNet, VAE, GPT-2 and T5 are not loaded, and nothing else is downloaded. The audio
side, per file:

    any file soundfile reads (any rate, any channels) --(audio_io.read_audio: averaged to mono, soxr straight
    to 48 kHz)--> (T,) --(audio_features.clap_input_features: first 10 s, or repeat-padded to 10 s; log-mel)
    --> (1, 1, frames, mels) --(clap_audio: HTSAT, projection, L2 norm)--> embedding (D,), D = 512

Clips longer than the front end's 10 s window are scored on their first 10 s (the reference extractor
crops at random; a fixed crop keeps scores reproducible), as candidate ranking does.

Metrics, the keys of the JSON report:
- `clap_score`: mean over files of the cosine similarity between a file's audio embedding and its prompt's
  CLAP text embedding. Plain cosine in [-1, 1] (papers often print 100 times it).
- `fd_clap`: the Fréchet distance between Gaussians fitted to two sets of audio embeddings,
  |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), with S the covariance with N - 1 (`np.cov`), in float64:
  FAD (Kilgour et al., 2019) with the checkpoint's CLAP in place of VGGish. With N <= D files the covariance
  is rank-deficient and the estimate biased; a note says so.
- `lsd` (paired: both folders hold the same file names): the log-spectral distance of bandwidth extension
  (Kuleshov et al., 2017; Liu et al., AudioSR 2023). Both files mono at 16 kHz, cut to the shorter;
  power spectra P from an STFT (n_fft 2048, hop 512, periodic Hann, centred, reflect padding);
  per frame sqrt(mean over bins of (log10(P_ref + 1e-8) - log10(P_gen + 1e-8))^2); mean over frames, then
  over files.
- `clap_audio_similarity` (paired): mean cosine between the two files' audio embeddings.

Tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of S1 S2, which equal those of the
symmetric positive semi-definite S1^(1/2) S2 S1^(1/2): computed so with `numpy.linalg.eigh` there is no
imaginary residue to drop (the `scipy.linalg.sqrtm` route of pytorch-fid and FAD drops one), and rank-deficient
covariances give no NaN. The tests compare it with the scipy computation.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .console import OneLineParser, UsageError, add_model_arguments, read_table, report_errors, write_atomically

from .generation.audio_io import AudioInputError, read_audio
from .generation.ranking import ClapScorer

PROG = "audioldm2-lite-eval"
# Suffixes listed as audio (other files, e.g. a manifest.jsonl next to the audio, are ignored).
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd",
                  ".caf", ".w64", ".rf64", ".wv"}

# LSD's spectrogram (see the module docstring)
LSD_SAMPLING_RATE = 16000
LSD_N_FFT = 2048
LSD_HOP = 512
LSD_EPS = 1e-8


class EvaluationError(ValueError):
    """Bad input (folder, prompts file, stats file): the message is the one line the user sees."""


# ----------------------------------------------------------------------------------------------
# Metrics


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of (N, D) arrays (CLAP embeddings are unit vectors already, up to rounding)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def gaussian_stats(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> mean (D,) and covariance (D, D) with N - 1, in float64."""
    x = np.asarray(embeddings, np.float64)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians, in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)

    def nonnegative(values):  # eigenvalues at rounding level (and below zero) are taken as 0
        return np.where(values > values.max() * values.size * np.finfo(np.float64).eps, values, 0)

    values, vectors = np.linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(nonnegative(values))) @ vectors.T  # (D, D) S1^(1/2)
    middle = root1 @ sigma2 @ root1  # (D, D), symmetric PSD, same eigenvalues as S1 S2
    trace_sqrt = np.sqrt(nonnegative(np.linalg.eigvalsh((middle + middle.T) / 2))).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def log_spectral_distance(reference: torch.Tensor, generated: torch.Tensor) -> float:
    """LSD of two mono 16 kHz waveforms (T,), cut to the shorter (definition in the module docstring)."""
    n = min(reference.numel(), generated.numel())
    if n <= LSD_N_FFT // 2:
        raise EvaluationError(f"LSD needs more than {LSD_N_FFT // 2} samples at 16 kHz; a pair has only {n}")
    x = torch.stack([reference[:n], generated[:n]]).double()  # (2, n)
    window = torch.hann_window(LSD_N_FFT, periodic=True, dtype=torch.float64)
    spectrum = torch.stft(x, LSD_N_FFT, hop_length=LSD_HOP, window=window, center=True, pad_mode="reflect",
                          return_complex=True)  # (2, n_fft/2 + 1, frames)
    log_power = torch.log10(spectrum.real**2 + spectrum.imag**2 + LSD_EPS)
    per_frame = ((log_power[0] - log_power[1]) ** 2).mean(dim=0).sqrt()  # (frames,)
    return per_frame.mean().item()


# ----------------------------------------------------------------------------------------------
# Inputs: audio folders, prompts, stats files


def list_audio(folder) -> dict[str, Path]:
    """{path relative to `folder` (posix): file} for every audio file under `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"'{folder}' is not a folder")
    files = {f.relative_to(folder).as_posix(): f for f in sorted(folder.rglob("*"))
             if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES and not f.name.startswith(".")}
    if not files:
        raise EvaluationError(f"'{folder}' holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
    return files


def read_prompt_rows(file) -> list[tuple[str | None, str]]:
    """(file name or None, prompt) per row of a CSV or JSONL file.

    Columns / keys: `file_name` (or `file`, as a batch run's manifest.jsonl writes it) and `prompt` (or
    `text`, the audiofolder caption column). Other columns are ignored.
    """
    file = Path(file)
    if not file.is_file():
        raise EvaluationError(f"prompts file '{file}' does not exist")
    if file.suffix.lower() not in (".csv", ".jsonl", ".json"):
        raise EvaluationError(f"prompts file '{file}' must be .csv or .jsonl")
    try:
        records = read_table(file)
    except (ValueError, UnicodeDecodeError) as error:
        raise EvaluationError(f"cannot read prompts file '{file}': {error}") from None
    rows = []
    for line, record in records:
        if not isinstance(record, dict):
            raise EvaluationError(f"{file}:{line}: expected an object with 'file_name' and 'prompt'")
        name = record.get("file_name", record.get("file"))
        prompt = record.get("prompt", record.get("text"))
        if not isinstance(prompt, str):
            raise EvaluationError(f"{file}:{line}: no 'prompt' (or 'text') string")
        rows.append((str(name) if name not in (None, "") else None, prompt))
    if not rows:
        raise EvaluationError(f"prompts file '{file}' has no rows")
    return rows


def match_prompts(rows, files: dict[str, Path], folder, prompts_file) -> dict[str, str]:
    """{file name: prompt} for every file of the folder; each row's file name is looked up relative to the
    folder, then to the prompts file's folder, then to the working directory (a manifest may hold any)."""
    root = Path(folder).resolve()
    by_path = {path.resolve(): name for name, path in files.items()}
    prompts, absent = {}, []
    for name, prompt in rows:
        if name is None:
            raise EvaluationError(f"prompts file '{prompts_file}' has a row without 'file_name' (or 'file')")
        candidates = [Path(name)] if Path(name).is_absolute() else \
            [root / name, Path(prompts_file).resolve().parent / name, Path.cwd() / name]
        found = next((by_path[c.resolve()] for c in candidates if c.resolve() in by_path), None)
        if found is None:
            absent.append(name)
        elif prompts.setdefault(found, prompt) != prompt:
            raise EvaluationError(f"prompts file '{prompts_file}' gives '{found}' two different prompts")
    if absent:
        raise EvaluationError(f"prompts file '{prompts_file}' names {len(absent)} file(s) not in '{folder}': "
                              f"{', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}")
    missing = [name for name in files if name not in prompts]
    if missing:
        raise EvaluationError(f"prompts file '{prompts_file}' has no prompt for {len(missing)} file(s) in "
                              f"'{folder}': {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return prompts


def read_stats(file) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean (D,), covariance (D, D) and file count from a `--save-stats` file."""
    try:
        with np.load(file, allow_pickle=False) as data:
            mean, cov, count = data["mean"], data["cov"], int(data["num_files"])
    except Exception as error:  # missing, not an npz, or without those arrays
        raise EvaluationError(f"cannot read stats file '{file}' (expected an .npz with mean, cov, num_files from "
                              f"--save-stats): {error}") from None
    if mean.ndim != 1 or cov.shape != (mean.size, mean.size):
        raise EvaluationError(f"stats file '{file}': mean {mean.shape} and cov {cov.shape} do not fit together")
    return mean.astype(np.float64), cov.astype(np.float64), count


def write_stats(path, mean: np.ndarray, cov: np.ndarray, num_files: int) -> None:
    write_atomically(path, lambda out: np.savez(out, mean=mean, cov=cov, num_files=num_files))


# ----------------------------------------------------------------------------------------------
# Embedding with the checkpoint's CLAP


def embed_files(scorer: ClapScorer, files: list[Path], batch_size: int = 8, progress: bool = True,
                desc: str = "CLAP audio") -> np.ndarray:
    """(N, D) float64 unit vectors, one per audio file, read at CLAP's rate."""
    from tqdm.auto import tqdm

    rate = scorer.feature_config.sampling_rate
    out = []
    with torch.inference_mode(), tqdm(total=len(files), desc=desc, unit="file", disable=not progress) as bar:
        for start in range(0, len(files), batch_size):
            waveforms = [read_named(file, rate) for file in files[start:start + batch_size]]  # (T,) each at 48 kHz
            out.append(scorer.embed_waveforms(waveforms, rate).double().cpu())
            bar.update(len(waveforms))
    return torch.cat(out).numpy()


def embed_texts(scorer: ClapScorer, texts: list[str], batch_size: int = 8) -> np.ndarray:
    """(N, D) float64 unit vectors, one per text."""
    with torch.inference_mode():
        return scorer.embed_text(texts, batch_size).double().cpu().numpy()


def read_named(file: Path, rate: int) -> torch.Tensor:
    """read_audio, with the file named in the error."""
    try:
        return read_audio(file, target_rate=rate)
    except AudioInputError as error:
        message = str(error)
        raise EvaluationError(message if str(file) in message else f"{file}: {message}") from None


# ----------------------------------------------------------------------------------------------
# The evaluation


def evaluate(generated, reference=None, reference_stats=None, prompts=None, model=None, batch_size: int = 8,
             device=None, save_stats=None, progress: bool = True, scorer: ClapScorer | None = None,
             model_reference: str | None = None, text_models_dir=None) -> dict:
    """Score the audio files under `generated`; returns the report (see the module docstring for the metrics).

    `reference` (a folder) or `reference_stats` (a `save_stats` file) gives `fd_clap`, and with a folder of the
    same file names `lsd` and `clap_audio_similarity`; `prompts` (CSV / JSONL) gives `clap_score`.
    `save_stats` writes the generated set's embedding mean and covariance. `scorer` reuses a loaded CLAP.
    `model_reference` ("authors" or "diffusers"): the CLAP text tower's reading (generation/authors.py; default: the
    checkpoint's own), recorded in the report as `model`.
    Bad input raises EvaluationError before anything is written.
    """
    if reference is not None and reference_stats is not None:
        raise EvaluationError("give a reference folder or a reference stats file, not both")
    if reference is None and reference_stats is None and prompts is None and save_stats is None:
        raise EvaluationError("nothing to compute: give a reference folder, reference stats, prompts or save_stats")
    if batch_size < 1:
        raise EvaluationError(f"batch size must be at least 1, got {batch_size}")
    files = list_audio(generated)
    file_prompts = match_prompts(read_prompt_rows(prompts), files, generated, prompts) if prompts else None
    reference_files = list_audio(reference) if reference is not None else None
    stats = read_stats(reference_stats) if reference_stats is not None else None
    if (reference is not None or stats is not None or save_stats is not None) and len(files) < 2:
        raise EvaluationError(f"a covariance needs at least 2 files; '{generated}' holds {len(files)}")
    if reference_files is not None and len(reference_files) < 2:
        raise EvaluationError(f"a covariance needs at least 2 files; '{reference}' holds {len(reference_files)}")

    scorer = scorer or ClapScorer(model, device, reference=model_reference, text_models_dir=text_models_dir)
    if stats is not None and stats[0].size != scorer.dim:
        raise EvaluationError(f"stats file '{reference_stats}' holds {stats[0].size}-d embeddings, but this "
                              f"checkpoint's CLAP makes {scorer.dim}-d ones: it comes from another model")

    names = list(files)
    embeddings = embed_files(scorer, list(files.values()), batch_size, progress, "CLAP audio (generated)")
    report = {"generated": str(generated), "num_files": len(names), "embedding_dim": scorer.dim,
              "model": scorer.reference, "notes": [],
              "files": {name: {} for name in names}}

    if file_prompts is not None:
        texts = sorted(set(file_prompts.values()))
        text_embeddings = dict(zip(texts, embed_texts(scorer, texts, batch_size)))
        scores = cosine(embeddings, np.stack([text_embeddings[file_prompts[n]] for n in names]))
        for name, score in zip(names, scores):
            report["files"][name].update(prompt=file_prompts[name], clap_score=float(score))
        report["prompts"] = str(prompts)
        report["clap_score"] = float(scores.mean())

    if reference_files is not None or stats is not None or save_stats is not None:  # (at least 2 files: checked)
        mean, cov = gaussian_stats(embeddings)
    if reference_files is not None or stats is not None:
        if reference_files is not None:
            reference_embeddings = embed_files(scorer, list(reference_files.values()), batch_size, progress,
                                                      "CLAP audio (reference)")
            reference_mean, reference_cov = gaussian_stats(reference_embeddings)
            report.update(reference=str(reference), num_reference_files=len(reference_files))
        else:
            reference_mean, reference_cov, count = stats
            report.update(reference_stats=str(reference_stats), num_reference_files=count)
        report["fd_clap"] = frechet_distance(mean, cov, reference_mean, reference_cov)
        fewest = min(len(names), report["num_reference_files"])
        if fewest <= scorer.dim:
            report["notes"].append(f"fd_clap: {fewest} files but {scorer.dim}-d embeddings: the covariance is "
                                   f"rank-deficient and the estimate biased (use more than {scorer.dim} files)")

    if reference_files is not None and set(reference_files) == set(files):
        similarities = cosine(embeddings, reference_embeddings[[list(reference_files).index(n) for n in names]])
        distances = []
        for name, similarity in zip(names, similarities):
            distance = log_spectral_distance(read_named(reference_files[name], LSD_SAMPLING_RATE),
                                             read_named(files[name], LSD_SAMPLING_RATE))
            distances.append(distance)
            report["files"][name].update(lsd=distance, clap_audio_similarity=float(similarity))
        report["lsd"] = float(np.mean(distances))
        report["clap_audio_similarity"] = float(similarities.mean())
    elif reference_files is not None:
        report["notes"].append("lsd, clap_audio_similarity: not computed, the folders do not hold the same file names")

    if save_stats is not None:
        write_stats(save_stats, mean, cov, len(names))
        report["saved_stats"] = str(save_stats)
    return report


def format_table(report: dict) -> str:
    """The metrics present in `report`, one per line."""
    counts = f"{report['num_files']} files"
    if "num_reference_files" in report:
        counts += f" vs {report['num_reference_files']} reference"
    lines = [f"{'metric':<24}value   ({counts})"]
    for key in ("clap_score", "fd_clap", "lsd", "clap_audio_similarity"):
        if key in report:
            lines.append(f"{key:<24}{report[key]:.4f}")
    return "\n".join(lines) if len(lines) > 1 else ""  # no metric asked for (--save-stats alone): no table


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG, description="Score a folder of audio with the checkpoint's own CLAP: CLAP score against "
        "prompts, Fréchet distance (fd_clap) against a reference folder or stats file, and LSD for paired files.")
    parser.add_argument("generated", help="folder of audio files (WAV, FLAC, ... at any rate; searched recursively)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--reference", help="folder of reference audio: fd_clap; lsd and clap_audio_similarity "
                       "when it holds the same file names")
    group.add_argument("--reference-stats", help="a --save-stats file of the reference set: fd_clap")
    parser.add_argument("--prompts", help="CSV or JSONL with file_name (or file) and prompt (or text) per file, "
                        "e.g. a batch run's manifest.jsonl: clap_score")
    add_model_arguments(parser, generating=False)
    parser.add_argument("--model-reference", choices=("authors", "diffusers"), default=None,
                        help="CLAP's text tower as the authors' model (LayerNorm eps 1e-5) or as diffusers reads the "
                             "config (default: authors for the official checkpoints, diffusers for other folders)")
    parser.add_argument("--batch-size", type=int, default=8, help="files per CLAP batch (default: 8)")
    parser.add_argument("--output", help="write the report (metrics, per-file scores) to this JSON file")
    parser.add_argument("--save-stats", help="write the generated set's embedding mean and covariance (.npz)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    def work() -> int:
        args = build_parser().parse_args(argv)
        for path in (args.output, args.save_stats):
            folder = Path(path).expanduser().resolve().parent if path else None
            if folder is not None and (not folder.is_dir() or not os.access(folder, os.W_OK)):
                raise UsageError(f"cannot write to '{folder}' (missing or not writable)")
        report = evaluate(args.generated, args.reference, args.reference_stats, args.prompts, args.model,
                          args.batch_size, args.device, args.save_stats, progress=not args.quiet,
                          model_reference=args.model_reference, text_models_dir=args.text_models)
        if args.output:
            text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
            write_atomically(args.output, lambda out: out.write(text.encode()))
        for note in report["notes"]:
            print(f"{PROG}: note: {note}", file=sys.stderr)
        table = format_table(report)
        if table.strip():
            print(table)
        if args.save_stats:
            print(f"saved the embedding statistics of {report['num_files']} files to {args.save_stats}")
        if args.output:
            print(f"saved the report to {args.output}")
        return 0

    return report_errors(PROG, work)


if __name__ == "__main__":
    sys.exit(main())
