"""Many prompts in one run: `audioldm2-lite --prompts-file FILE --output-dir DIR [--batch-size B]`.

A thin shell over the pipeline for synthetic data sets and sound libraries (thousands of clips):

    FILE (.txt / .csv / .jsonl) --read_rows, make_rows: checked, named, seeded before anything loads--> rows
         --this process's share (row index % WORLD_SIZE == RANK), rows whose file exists skipped-->
         --batches of rows with the same length and settings, `--batch-size` prompts per pipeline call-->
         DIR/<file> (atomic, cli.write_audio), then its line in DIR/manifest.jsonl

Each row's audio depends on the row alone, not on the batch, the number of processes or a resume: its seed
is its own `seed` or `row_seed(--seed, index)`, its initial latents are drawn from a generator of its own,
and its text conditioning is encoded alone (`row_conditioning`); batched UNet arithmetic moves it by float
rounding only (tests/test_batch.py measures it). Several GPUs or machines: launch with `torchrun`, which sets
RANK / WORLD_SIZE / LOCAL_RANK; each rank uses `cuda:LOCAL_RANK`, writes `manifest.rank-R.jsonl`, and rank 0
merges the parts into manifest.jsonl at the end.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from .cli import FORMATS, UsageError, run_checks, settings_metadata, write_audio

COLUMNS = ("prompt", "negative_prompt", "seconds", "seed", "file_name", "candidates", "guidance")
NUMBERS = {"seconds": float, "guidance": float, "seed": int, "candidates": int}
DEFAULT_SEED = 0  # without --seed a batch run is still reproducible, so a rerun resumes the same audio
MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class Row:
    index: int  # 0-based position among the file's prompts: names, seeds and the share of each rank follow it
    line: int  # line number in the file, for messages
    prompt: str
    negative_prompt: str
    seconds: float
    guidance: float
    candidates: int
    seed: int
    file_name: str


def row_seed(seed: int, index: int) -> int:
    """The seed of row `index` of a run with `--seed seed`: 63 bits of sha256("seed:index").

    A hash rather than `seed + index`, so that runs with neighbouring seeds do not share rows' noise."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "big") >> 1


def slug(prompt: str, length: int = 40) -> str:
    """'A dog barks, loudly!' -> 'a_dog_barks_loudly' (ASCII letters and digits, at most `length`)."""
    return re.sub(r"[^a-z0-9]+", "_", prompt.lower())[:length].strip("_")


# ----------------------------------------------------------------------------------------------
# The prompt file


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, {column: value}) per prompt in a .txt, .csv or .jsonl file; unset values left out."""
    suffix = path.suffix.lower()
    with open(path, encoding="utf-8-sig", newline="") as file:
        if suffix == ".txt":  # one prompt a line; blank lines and '#' comments skipped
            return [(n, {"prompt": line.strip()}) for n, line in enumerate(file, 1)
                    if line.strip() and not line.lstrip().startswith("#")]
        if suffix == ".csv":
            reader = csv.DictReader(file)
            if reader.fieldnames is None or "prompt" not in reader.fieldnames:
                raise ValueError(f"{path} line 1: the header needs a 'prompt' column, got {reader.fieldnames}")
            check_columns(path, 1, reader.fieldnames)
            rows = []
            for record in reader:  # a record may span lines (quoted newlines): reader.line_num is its last
                if None in record:
                    raise ValueError(f"{path} line {reader.line_num}: more values than the header has columns")
                rows.append((reader.line_num, {k: v for k, v in record.items() if k == "prompt" or v}))
            return rows
        if suffix == ".jsonl":
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
                check_columns(path, n, record)
                rows.append((n, {k: v for k, v in record.items() if v is not None}))
            return rows
    raise ValueError(f"--prompts-file must end in .txt, .csv or .jsonl, got '{path.name}'")


def check_columns(path: Path, line: int, columns) -> None:
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise ValueError(f"{path} line {line}: unknown column(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(COLUMNS)}")


def make_rows(path: Path, defaults: dict, seed: int, suffix: str) -> list[Row]:
    """Every row checked, named and seeded; the first bad row is a ValueError naming its line."""
    records = read_rows(path)
    if not records:
        raise ValueError(f"{path} holds no prompts")
    width = max(5, len(str(len(records) - 1)))
    rows, errors, names = [], [], {}
    for index, (line, record) in enumerate(records):
        try:
            row = make_row(index, line, {**defaults, **record}, seed, suffix, width)
            earlier = names.setdefault(row.file_name.casefold(), line)
            if earlier != line:
                raise ValueError(f"file_name '{row.file_name}' is also the name of line {earlier}")
            rows.append(row)
        except ValueError as error:
            errors.append(f"{path} line {line}: {error}")
    if errors:
        more = f" (and {len(errors) - 1} more bad rows)" if len(errors) > 1 else ""
        raise ValueError(errors[0] + more)
    return rows


def make_row(index: int, line: int, values: dict, seed: int, suffix: str, width: int) -> Row:
    prompt = values.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty")
    for column, kind in NUMBERS.items():
        if column in values:
            try:
                if isinstance(values[column], bool) or (kind is int and float(values[column]) % 1):
                    raise ValueError
                values[column] = kind(values[column])
            except (TypeError, ValueError):
                raise ValueError(f"{column} must be a{'n integer' if kind is int else ' number'}, "
                                 f"got {values[column]!r}") from None
    if not values["seconds"] > 0:
        raise ValueError(f"seconds must be positive, got {values['seconds']}")
    if values["candidates"] < 1:
        raise ValueError(f"candidates must be at least 1, got {values['candidates']}")
    if not 0 <= values.get("seed", 0) < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {values['seed']}")
    name = str(values.get("file_name") or f"{index:0{width}d}_{slug(prompt)}".rstrip("_"))
    return Row(
        index=index, line=line, prompt=prompt.strip(), negative_prompt=str(values.get("negative_prompt", "")),
        seconds=values["seconds"], guidance=values["guidance"], candidates=values["candidates"],
        seed=values["seed"] if "seed" in values else row_seed(seed, index),
        file_name=safe_file_name(name, suffix),
    )


def safe_file_name(name: str, suffix: str) -> str:
    """A plain file name inside the output folder: no folders, no '..', no hidden or temporary names."""
    if not name or "/" in name or "\\" in name or "\0" in name or name.startswith("."):
        raise ValueError(f"file_name '{name}' is unsafe: give a plain name, without folders or a leading '.'")
    if not Path(name).suffix:
        name += suffix
    if Path(name).suffix.lower() not in FORMATS:
        raise ValueError(f"file_name '{name}' must end in {' or '.join(FORMATS)}")
    return name


# ----------------------------------------------------------------------------------------------
# Generation: the pipeline, called on a batch of rows


def row_conditioning(pipe, rows: list[Row], guided: bool) -> dict:
    """Each row's text conditioning encoded alone, then stacked, as the pipeline's `*prompt_embeds` arguments.

    Encoded together, the text stages pad a batch to its longest prompt and cut each negative prompt to
    that length, which moves a row's audio by ~1e-5 (relative) with the batch's other prompts. Encoded
    alone, only the UNet sees padding, masked in its cross-attention: the same audio to float rounding.
    Every batch is padded to the T5 tokenizer's maximum (128 tokens), not to its longest prompt, so that the
    UNet sees one shape per batch size and length: one CUDA graph each (cuda_graphs.py), not one per length.
    """
    import torch
    import torch.nn.functional as F

    encoded = [pipe.encode_prompt(row.prompt, row.negative_prompt, 1, guided) for row in rows]  # [uncond, cond]
    length = pipe.conditioner.tokenizer_2.model_max_length

    def half(h: int):  # one half (0: uncond, 1: cond) of every row, T5 padded to `length` with a zero mask
        generated = torch.cat([g[h:h + 1] for g, _, _ in encoded])  # (B, N, 768)
        t5 = torch.cat([F.pad(s[h:h + 1], (0, 0, 0, length - s.shape[1])) for _, s, _ in encoded])  # (B, L, 1024)
        mask = torch.cat([F.pad(m[h:h + 1], (0, length - m.shape[1])) for _, _, m in encoded])  # (B, L)
        return generated, t5, mask

    generated, t5, mask = half(1 if guided else 0)
    embeds = dict(generated_prompt_embeds=generated, prompt_embeds=t5, attention_mask=mask)
    if guided:
        generated, t5, mask = half(0)
        embeds.update(negative_generated_prompt_embeds=generated, negative_prompt_embeds=t5,
                      negative_attention_mask=mask)
    return embeds


def generate(pipe, rows: list[Row], steps: int, scheduler: str, karras: bool):
    """Audio and CLAP score (None unless ranked) of the best candidate of each row: same length and settings."""
    import torch

    first = rows[0]
    frames, _ = pipe.latent_frames(first.seconds)
    # each row's noise from its own generator, on the CPU: the same on every device and in every batch
    latents = torch.cat([pipe.prepare_latents(row.candidates, frames, torch.Generator().manual_seed(row.seed))
                         for row in rows])  # (B * n, 8, T/4, 16)
    guided = first.guidance > 1.0
    result = pipe(
        [row.prompt for row in rows], audio_length_in_s=first.seconds, num_inference_steps=steps,
        guidance_scale=first.guidance, num_waveforms_per_prompt=first.candidates, latents=latents,
        scheduler=scheduler, karras_sigmas=karras, **row_conditioning(pipe, rows, guided),
    )
    best = range(0, len(result.audios), first.candidates)  # ranked best first within each row
    return [(result.audios[i], None if result.scores is None else float(result.scores[i])) for i in best]


def batches(rows: list[Row], batch_size: int) -> list[list[Row]]:
    """Rows with the same length and settings together, in row order, at most `batch_size` per batch."""
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault((row.seconds, row.guidance, row.candidates), []).append(row)
    return [group[i:i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


# ----------------------------------------------------------------------------------------------
# The manifest: one JSON line per finished row, appended after its audio file is in place


def manifest_line(row: Row, settings: dict, score: float | None = None) -> dict:
    line = dict(file=row.file_name, row=row.index, prompt=row.prompt, negative_prompt=row.negative_prompt,
                seed=row.seed, seconds=row.seconds, guidance=row.guidance, candidates=row.candidates, **settings)
    return line if score is None else {**line, "clap_score": score}


def append_line(path: Path, line: dict) -> None:
    with open(path, "a", encoding="utf-8") as file:  # one write() of one line, flushed to disk
        file.write(json.dumps(line, ensure_ascii=False) + "\n")
        file.flush()
        os.fsync(file.fileno())


def merge_manifests(out_dir: Path, rows: list[Row], settings: dict) -> int:
    """Fold manifest.jsonl and the ranks' parts into manifest.jsonl: one line per existing file, in row order.

    A row's file without its line (the process was killed between the two) gets its line back, marked
    "recovered" and without a CLAP score, which was not kept."""
    parts = sorted(out_dir.glob("manifest.rank-*.jsonl"))
    lines = {}
    for source in [out_dir / MANIFEST, *parts]:
        if source.exists():
            for text in source.read_text(encoding="utf-8").splitlines():
                try:
                    line = json.loads(text)
                except json.JSONDecodeError:  # a line cut short by a crash (power loss)
                    continue
                if (out_dir / line["file"]).exists():
                    lines[line["file"]] = line
    for row in rows:
        if row.file_name not in lines and (out_dir / row.file_name).exists():
            lines[row.file_name] = {**manifest_line(row, settings), "recovered": True}
    handle, temporary = tempfile.mkstemp(suffix=".jsonl", dir=out_dir, prefix=".partial-")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        for line in sorted(lines.values(), key=lambda line: (line.get("row", 0), line["file"])):
            file.write(json.dumps(line, ensure_ascii=False) + "\n")
    os.replace(temporary, out_dir / MANIFEST)
    for part in parts:
        part.unlink()
    return len(lines)


# ----------------------------------------------------------------------------------------------
# Processes: one, or one per GPU under torchrun


def start_distributed(device_name: str | None):
    """(rank, world size, device) from torchrun's environment, with the process group started when world > 1."""
    import torch

    from .generation.pipeline import default_device

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device(device_name) if device_name else default_device()
    if device.type == "cuda" and world > 1 and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if world > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(device)
        # ranks wait for the slowest one at the final barrier: allow far more than the default 30 minutes
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(days=7))
    return rank, world, device


def gather(value, world: int) -> list:
    if world == 1:
        return [value]
    import torch.distributed as dist

    values = [None] * world
    dist.all_gather_object(values, value)
    return values


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# ----------------------------------------------------------------------------------------------
# The run


def check_arguments(args) -> None:
    """The batch options, then the shared ones through the CLI's own checks."""
    if args.prompt is not None:
        raise UsageError("give a PROMPT or --prompts-file, not both")
    if args.output_dir is None:
        raise UsageError("--prompts-file needs --output-dir DIR")
    if args.audio is not None:
        raise UsageError("--audio edits one recording: give a PROMPT with it, not --prompts-file")
    if args.all:
        raise UsageError("--all writes one file per candidate; with --prompts-file each row keeps its best")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not Path(args.prompts_file).is_file():
        raise UsageError(f"--prompts-file '{args.prompts_file}' is not a file")
    try:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create --output-dir '{args.output_dir}' ({error.strerror})")
    stand_in = dict(prompt="(from the file)", output=str(Path(args.output_dir) / f"x.{args.format}"))
    run_checks(argparse.Namespace(**{**vars(args), **stand_in}))


def interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (torchrun, a scheduler, kill) ends the run as Ctrl-C does


def run(args) -> int:
    """Generate every row of `args.prompts_file` into `args.output_dir` not there yet; 1 if a row failed."""
    import torch

    from .generation.pipeline import AudioLDM2Pipeline

    out_dir = Path(args.output_dir)
    defaults = dict(negative_prompt=args.negative_prompt, seconds=args.seconds, guidance=args.guidance,
                    candidates=args.candidates)
    rows = make_rows(Path(args.prompts_file), defaults, DEFAULT_SEED if args.seed is None else args.seed,
                     f".{args.format}")
    steps = args.steps or (200 if args.scheduler == "ddim" else 20)
    settings = dict(steps=steps, scheduler=args.scheduler, karras=args.karras, model=args.model)
    quiet = getattr(args, "quiet", False)

    main_thread = threading.current_thread() is threading.main_thread()  # only there can signals be handled
    previous_handler = signal.signal(signal.SIGTERM, interrupt) if main_thread else None
    rank, world, device = start_distributed(args.device)
    if rank == 0:  # temporary files of a killed run: removed before any rank writes new ones
        for stale in out_dir.glob(".partial-*"):
            stale.unlink(missing_ok=True)
    barrier(world)
    mine = [row for row in rows if row.index % world == rank]  # by index: shares never depend on timing
    todo = [row for row in mine if not (out_dir / row.file_name).exists()]
    done, failed = 0, []
    try:
        pipe = AudioLDM2Pipeline.from_pretrained(
            args.model, device=device, dtype=getattr(torch, args.dtype) if args.dtype else None, offload=args.offload,
            lora=args.lora, lora_scale=args.lora_scale,
        ) if todo else None  # nothing left to make here: no need to load the model
        if todo and pipe.device.type == "cuda" and not args.offload:
            pipe.optimize(compile=args.compile, cuda_graphs=True)
        manifest = out_dir / (MANIFEST if world == 1 else f"manifest.rank-{rank}.jsonl")
        from tqdm.auto import tqdm

        with tqdm(total=len(todo), unit="clip", desc=f"rank 0 of {world}" if world > 1 else "rows",
                  disable=quiet or rank != 0, file=sys.stderr) as bar:
            for batch in batches(todo, args.batch_size):
                for finished, error in generate_and_write(pipe, batch, settings, out_dir, manifest):
                    if error is None:
                        done += len(finished)
                    else:
                        failed += [(row.line, row.file_name, error) for row in finished]
                    bar.update(len(finished))
    except KeyboardInterrupt:
        who = f"rank {rank}: " if world > 1 else ""
        print(f"audioldm2-lite: {who}interrupted after {done} new rows; the same command again finishes the rest",
              file=sys.stderr)
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous_handler)

    counts = gather((done, len(mine) - len(todo), failed), world)
    barrier(world)
    if rank == 0:
        lines = merge_manifests(out_dir, rows, settings)
        done, skipped = sum(c[0] for c in counts), sum(c[1] for c in counts)
        failures = sorted(f for c in counts for f in c[2])
        print(f"{done} rows done, {skipped} skipped (file exists), {len(failures)} failed; "
              f"{lines} lines in {out_dir / MANIFEST}")
        for line, name, error in failures[:20]:
            print(f"  failed: line {line} ({name}): {error}", file=sys.stderr)
    failed_anywhere = any(c[2] for c in counts)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 1 if failed_anywhere else 0


def generate_and_write(pipe, batch: list[Row], settings: dict, out_dir: Path, manifest: Path):
    """Yields (rows, None) once written or (rows, error); a failed batch is retried one row at a time."""
    try:
        results = generate(pipe, batch, settings["steps"], settings["scheduler"], settings["karras"])
    except (ValueError, RuntimeError) as error:
        if len(batch) > 1:
            for row in batch:
                yield from generate_and_write(pipe, [row], settings, out_dir, manifest)
        else:
            yield batch, f"{type(error).__name__}: {error}"
        return
    for row, (audio, score) in zip(batch, results):
        metadata = settings_metadata(row.prompt, row.negative_prompt, row.seed, settings["steps"],
                                     settings["scheduler"], settings["karras"], row.guidance, row.seconds,
                                     settings["model"], pipe.precision.describe())
        write_audio(out_dir / row.file_name, audio, pipe.sampling_rate, metadata)
        append_line(manifest, manifest_line(row, settings, score))  # after its file: never a line without one
        yield [row], None
