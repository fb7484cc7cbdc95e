"""What the console programs share (`audioldm2-lite`, its prompt files, `-eval`, `-train`, `-app`): the one
error rule, the one-line argument parser, atomic writes, the file-name slug, the table reader, and the model
options with the one loader that builds a pipeline from them.

The exit-code rule, for every command: 2 for a usage mistake (`UsageError`, which is the generation core's
`RequestError`: a bad request is a bad command line), 1 for what happened after (the model, the files, the
run), 130 for Ctrl-C; each as one line `PROG: error: ...` on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from .generation.request import Request, RequestError
from .models.hub_config import CheckpointError

UsageError = RequestError  # a mistake in the command line or a request: exit status 2, before anything loads
FORMATS = {".wav": "WAV", ".flac": "FLAC"}
DTYPES = ("float32", "float16", "bfloat16")


class OneLineParser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line) instead of printing its usage and exiting."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # values such as "-1:2" (--regenerate-seconds) are values, not options: none of our options looks like one
        self._negative_number_matcher = re.compile(r"^-\d*\.?\d+(:-?\d*\.?\d*)?$")

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def report_errors(prog: str, work, interrupted: str = "interrupted") -> int:
    """`work()`'s exit status, with every error a person can cause turned into one line on stderr."""

    def fail(message: str, status: int) -> int:
        print(f"{prog}: error: {message}", file=sys.stderr)
        return status

    try:
        return work()
    except UsageError as error:
        return fail(str(error), 2)
    except (CheckpointError, ValueError) as error:  # ours, worded for a person
        return fail(str(error), 1)
    except (RuntimeError, OSError) as error:  # torch's out-of-memory is a RuntimeError
        return fail(f"{type(error).__name__}: {error}", 1)
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130


def one_line_warnings(prog: str):
    """A `warnings.showwarning` that prints `PROG: warning: message` alone on a line (above any progress bar),
    without the source path and line a raw UserWarning shows."""

    def show(message, category, filename, lineno, file=None, line=None):
        from tqdm.auto import tqdm

        tqdm.write(f"{prog}: warning: {message}", file=file or sys.stderr)

    return show


# ----------------------------------------------------------------------------------------------
# Files


def write_atomically(path, write, mode: str = "wb") -> None:
    """Call write(file object) on a temporary file in the same folder, then rename it to `path`: never a
    half-written file. The file gets the permissions of any new file (0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(suffix=path.suffix, dir=path.resolve().parent, prefix=".partial-")
    try:
        with os.fdopen(handle, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as out:
            write(out)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def pcm16(audio):
    """Float samples (full scale +-1) as 16-bit PCM, as libsndfile converts them (x 32767, rounded), clipped:
    what every file holds and what the page plays, so that the two are the same numbers."""
    import numpy as np

    return np.clip(np.rint(np.asarray(audio, dtype=np.float64) * 32767), -32768, 32767).astype(np.int16)


def write_audio(path, audio, sampling_rate: int, metadata: dict[str, str] | None = None) -> None:
    """16-bit PCM WAV or FLAC (by the extension), written atomically; `metadata` fills soundfile's text fields
    (title, comment, software, ...), which both formats carry."""
    import soundfile

    path = Path(path)

    def write(out):
        with soundfile.SoundFile(out, "w", sampling_rate, 1, format=FORMATS[path.suffix.lower()],
                                 subtype="PCM_16") as file:
            for field, text in (metadata or {}).items():
                setattr(file, field, text)
            file.write(pcm16(audio))

    write_atomically(path, write)


def slug(text: str, length: int = 40) -> str:
    """The file-name rule of every program: 'A dog barks, loudly!' -> 'a_dog_barks_loudly' (ASCII letters and
    digits joined by '_', at most `length` characters; empty for a prompt without any)."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower())[:length].strip("_")


def read_table(path) -> list[tuple[int, dict]]:
    """(line number, {column: value}) for each record of a .csv (with a header) or .jsonl file.

    Every malformed record is one ValueError naming the file and the line."""
    path = Path(path)
    suffix = path.suffix.lower()
    with open(path, encoding="utf-8-sig", newline="") as file:
        if suffix == ".csv":
            reader = csv.DictReader(file)
            rows = []
            try:
                for record in reader:  # a record may span lines (quoted newlines): reader.line_num is its last
                    if None in record:
                        raise ValueError(f"{path} line {reader.line_num}: more values than the header has columns")
                    rows.append((reader.line_num, record))
            except csv.Error as error:
                raise ValueError(f"{path} line {reader.line_num}: {error}") from None
            return rows
        if suffix in (".jsonl", ".json"):
            rows = []
            for n, line in enumerate(file, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path} line {n}: not JSON ({error.msg})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{path} line {n}: expected an object like {{\"prompt\": \"...\"}}")
                rows.append((n, record))
            return rows
    raise ValueError(f"'{path.name}' must end in .csv or .jsonl")


# ----------------------------------------------------------------------------------------------
# The generation options of the command line (audioldm2-lite, its prompt files) and the request they make


def add_editing_arguments(parser) -> None:
    group = parser.add_argument_group("editing audio", "edit an existing recording; the output keeps its length")
    group.add_argument("--audio", default=None, help="the audio file to edit (WAV, FLAC, OGG, ...; any rate, channels)")
    group.add_argument("--strength", type=float, default=None,
                       help="style transfer: how much of the noise schedule to redo, in (0, 1] (default: 1, all)")
    group.add_argument("--regenerate-seconds", default=None, metavar="START:END",
                       help="inpainting: regenerate this time range (e.g. 2.0:4.5) and keep the rest")
    group.add_argument("--regenerate-above-hz", type=float, default=None, metavar="HZ",
                       help="bandwidth extension: regenerate above this frequency and keep below (0 - 8000)")


def time_range(text: str | None) -> tuple[float, float] | None:
    """'2.0:4.5' -> (2.0, 4.5); the request checks the values."""
    if text is None:
        return None
    try:
        start, end = text.split(":")
        return float(start), float(end)
    except ValueError:
        raise UsageError(f"--regenerate-seconds expects START:END in seconds (e.g. 2.0:4.5), got {text!r}") from None


def request_from_args(args, **row) -> Request:
    """The request the options describe; a prompt-file row (prompt_files.py) overrides them with its columns."""
    options = dict(
        prompt=args.prompt, negative_prompt=args.negative_prompt, transcription=args.transcription,
        seconds=args.seconds, steps=args.steps, scheduler=args.scheduler, karras=args.karras, guidance=args.guidance,
        candidates=args.candidates, seed=args.seed, audio=args.audio,
        strength=1.0 if args.strength is None else args.strength,
        regenerate_seconds=time_range(args.regenerate_seconds), regenerate_above_hz=args.regenerate_above_hz,
        lora=args.lora, lora_scale=1.0 if args.lora_scale is None else args.lora_scale,
    )
    return Request(**{**options, **row})


def as_options(message: str) -> str:
    """A request's message in the command line's words: 'strength must be ...' -> '--strength must be ...'."""
    return re.sub(r"^([a-z]+(?:_[a-z]+)*)\b", lambda m: "--" + m.group(1).replace("_", "-")
                  if m.group(1) in Request.__dataclass_fields__ and m.group(1) != "prompt" else m.group(1), message)


def resolve_device(name: str | None):
    """The torch device for --device, or one line saying why it cannot be used here."""
    from .generation.devices import resolve_device as resolve

    try:
        return resolve(name)
    except UsageError as error:
        raise UsageError(str(error).replace("device", "--device", 1)) from None


# ----------------------------------------------------------------------------------------------
# The model options of every program (all of them for the command line, its prompt files and the page; --model and
# --device for -eval), their checks, and the one loader that builds a pipeline from them


def add_model_arguments(parser, generating: bool = True) -> None:
    """--model, --device and --text-models, for every program that reads a checkpoint; for those that generate (the
    command line, its prompt files, the page) also --lora, --lora-scale, --dtype, --reference, --compile and --offload, which
    `check_model_options` checks and `load_pipeline` reads."""
    parser.add_argument("--model", default="cvssp/audioldm2",
                        help="hub id or local folder in hub layout, or an authors' .pth / haoheliu/<name> such as "
                             "haoheliu/audioldm_48k (default: cvssp/audioldm2)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda, then mps, then cpu)")
    parser.add_argument("--text-models", default=None,
                        help="for an authors' .pth: folder holding roberta-base/, google/flan-t5-large/, gpt2/ "
                             "(default: those folders here, else the hub cache)")
    if not generating:
        return
    parser.add_argument("--lora", default=None, help="LoRA adapter file from audioldm2-lite-train (lora.safetensors)")
    parser.add_argument("--lora-scale", type=float, default=None, help="strength of the --lora adapter (default: 1)")
    parser.add_argument("--dtype", default=None, choices=DTYPES,
                        help="every stage's weights and activations (default: the device's precision recipe, "
                             "generation/precision.py, printed when the model loads; --dtype float32 opts out)")
    parser.add_argument("--reference", default=None, choices=("authors", "diffusers"),
                        help="authors: the model the weights were trained as (heads of 32 channels, the zero unconditional sequence, CLAP eps 1e-5); diffusers: what diffusers computes (default: authors for the official "
                             "checkpoints, diffusers for other folders; README: The authors' model and diffusers)")
    parser.add_argument("--compile", action="store_true",
                        help="on CUDA, torch.compile the UNet, VAE and vocoder first (minutes of compiling)")
    parser.add_argument("--offload", action="store_true",
                        help="keep weights in CPU memory, each stage on the GPU only while it runs")


def check_model_options(args) -> None:
    """What the model options refuse on their own, before anything loads: a dtype, --compile or --offload the
    device cannot run, and a LoRA scale without its adapter or an adapter file that is not there."""
    check_device(args)
    if args.lora_scale is not None and args.lora is None:
        raise UsageError("--lora-scale needs --lora (the adapter it scales)")
    if args.lora is not None and not Path(args.lora).is_file():
        raise UsageError(f"--lora: no LoRA adapter file '{args.lora}'")


def check_device(args) -> None:
    device = resolve_device(args.device)
    if device.type == "cpu" and args.dtype == "float16":
        raise UsageError("--dtype float16 is for GPUs: on the CPU use float32 or bfloat16; torch's CPU float16 "
                         "kernels are tens of times slower")
    if args.compile and device.type != "cuda":
        raise UsageError(f"--compile applies on CUDA only; here the device is {device}")
    if args.offload and device.type == "cpu":
        raise UsageError("--offload keeps weights in CPU memory while a GPU runs them; here the device is the CPU")


def check_local_model(model: str) -> None:
    """A --model that names a folder here (a path with a separator, or one that exists) must be a checkpoint:
    not taken for a hub id, which would then be looked up on the hub and fail there."""
    path = Path(model).expanduser()
    if path.suffix in (".pth", ".ckpt"):  # an authors' checkpoint file (generation/authors_checkpoint.py)
        if not path.is_file():
            raise UsageError(f"--model '{model}' does not exist; give an authors' .pth/.ckpt file or haoheliu/<name>")
        return
    looks_local = path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model \
        or (path.parent != Path(".") and path.parent.is_dir())  # weights/audioldm2, with weights/ here
    if looks_local and not (path / "model_index.json").is_file():
        what = "does not exist" if not path.exists() else "is not a checkpoint folder (no model_index.json)"
        raise UsageError(f"--model '{model}' {what}; give a local folder in hub layout (python "
                         f"scripts/download_weights.py cvssp/audioldm2 --out {model} on a machine with internet) or a "
                         f"hub id such as cvssp/audioldm2")


def file_metadata(request: Request, model: str, precision: str | None = None,
                  reference: str | None = None) -> dict[str, str]:
    """How a file was made, in soundfile's text fields: the prompt as its title, the complete request (and the
    model, which reference of it ran (authors' or diffusers'), and the precision each stage ran in) as JSON in its
    comment, so the file alone says how to make it again."""
    import json

    from . import __version__

    record = {**request.record(), "model": model} | ({"reference": reference} if reference else {}) \
        | ({"precision": precision} if precision else {})
    return {"title": request.prompt, "comment": json.dumps(record, ensure_ascii=False),
            "software": f"audioldm2-lite {__version__}"}


def load_pipeline(args, progress: bool = True):
    """The pipeline the model options describe: the one loader of the command line, its prompt files and the page.
    On CUDA without --offload it runs with CUDA graphs (the same audio as without; scripts/BENCHMARKS.md has
    the speed-up), after torch.compile with --compile."""
    import torch

    from . import AudioLDM2Pipeline

    pipe = AudioLDM2Pipeline.from_pretrained(
        args.model, device=resolve_device(args.device), dtype=getattr(torch, args.dtype) if args.dtype else None,
        offload=args.offload, progress=progress, lora=args.lora,
        lora_scale=1.0 if args.lora_scale is None else args.lora_scale, reference=args.reference,
        text_models_dir=args.text_models,
    )
    if pipe.device.type == "cuda" and not args.offload:
        pipe.optimize(compile=args.compile, cuda_graphs=True)
    return pipe


def describe_reference(reference: str, checkpoint=None) -> str:
    """One line on what ran, for the console and the page (`checkpoint`, the folder loaded, may hold one of the
    authors' AudioLDM-1-style models, whose unconditional input is their text stage's of "")."""
    from .generation.authors_checkpoint import AUTHORS_CONFIGS
    from .generation.authors_models import authors_model_of, runs_without_gpt2

    if checkpoint is not None and runs_without_gpt2(checkpoint):
        kind = authors_model_of(checkpoint)
        text_stage = "CLAP" if AUTHORS_CONFIGS[kind].family == "film" else "Flan-T5"
        return f"the authors' {kind} (heads of 32 channels, unconditional {text_stage}(''))"
    if reference == "authors":
        return "the authors' model (heads of 32 channels, zero unconditional sequence, CLAP eps 1e-5)"
    return "diffusers' conversion (attention_head_dim as heads, unconditional from '', CLAP eps from the config)"
