"""Many prompts in one run: `audioldm2-lite --prompts-file FILE --output-dir DIR [--batch-size B]`.

A thin shell over the pipeline for synthetic data sets, sound libraries and folders of recordings to edit:

    FILE (.txt / .csv / .jsonl) --read_rows, make_rows: one Request per row (the options are its defaults),
         every row checked, named and seeded before anything loads--> rows
         --this process's share (row index % WORLD_SIZE == RANK), rows whose file exists skipped-->
         --`--batch-size` rows per `AudioLDM2Pipeline.generate` call (it batches those that can share)-->
         DIR/<file> (atomic, the request in its text fields), then its line in DIR/manifest.jsonl

Every mode runs from a file: a `transcription` column (speech checkpoints), an `audio` column (a recording to
edit, relative to the file's folder) with `strength`, `regenerate_seconds` ("START:END") and
`regenerate_above_hz`. Each row's audio depends on the row alone, not on the batch, the number of processes or
a resume: its seed is its own `seed` or `row_seed(--seed, index)`, and the pipeline draws its noise and encodes
its text alone (tests/test_prompt_files.py measures it). Several GPUs or machines: launch with `torchrun`, which sets
RANK / WORLD_SIZE / LOCAL_RANK; each rank uses `cuda:LOCAL_RANK`, writes `manifest.rank-R.jsonl`, and rank 0
merges the parts into manifest.jsonl at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from .console import (FORMATS, UsageError, check_local_model, check_model_options, describe_reference, file_metadata,
                      load_pipeline, read_table, request_from_args, resolve_device, slug, write_atomically, write_audio)
from .generation.request import Request

# the columns a row may set: every request field a person writes per row, and the file's name
COLUMNS = ("prompt", "negative_prompt", "transcription", "seconds", "seed", "file_name", "candidates", "guidance",
           "steps", "scheduler", "karras", "audio", "strength", "regenerate_seconds", "regenerate_above_hz")
NUMBERS = {"seconds": float, "guidance": float, "seed": int, "candidates": int, "steps": int, "strength": float,
           "regenerate_above_hz": float}
TRUTH = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}  # a CSV cell's booleans
DEFAULT_SEED = 0  # without --seed a batch run is still reproducible, so a rerun resumes the same audio
MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class Row:
    index: int  # 0-based position among the file's prompts: names, seeds and the share of each rank follow it
    line: int  # line number in the file, for messages
    file_name: str
    request: Request  # checked, its seed set


def row_seed(seed: int, index: int) -> int:
    """The seed of row `index` of a run with `--seed seed`: 63 bits of sha256("seed:index").

    A hash rather than `seed + index`, so that runs with neighbouring seeds do not share rows' noise."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "big") >> 1


# ----------------------------------------------------------------------------------------------
# The prompt file


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, {column: value}) per prompt in a .txt, .csv or .jsonl file; unset values left out."""
    if path.suffix.lower() == ".txt":  # one prompt a line; blank lines and '#' comments skipped
        with open(path, encoding="utf-8-sig") as file:
            return [(n, {"prompt": line.strip()}) for n, line in enumerate(file, 1)
                    if line.strip() and not line.lstrip().startswith("#")]
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise ValueError(f"--prompts-file must end in .txt, .csv or .jsonl, got '{path.name}'")
    rows = read_table(path)
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as file:
            header = next(iter(__import__("csv").reader(file)), None)
        if not header or "prompt" not in header:
            raise ValueError(f"{path} line 1: the header needs a 'prompt' column, got {header}")
        check_columns(path, 1, header)
        return [(line, {k: v for k, v in record.items() if k == "prompt" or v}) for line, record in rows]
    for line, record in rows:
        check_columns(path, line, record)
    return [(line, {k: v for k, v in record.items() if v is not None}) for line, record in rows]


def check_columns(path: Path, line: int, columns) -> None:
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise ValueError(f"{path} line {line}: unknown column(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(COLUMNS)}")


def make_rows(path: Path, args, seed: int, suffix: str, limits) -> list[Row]:
    """Every row as a checked request (the options `args` give the defaults); the first bad row is a
    UsageError naming its line."""
    records = read_rows(path)
    if not records:
        raise ValueError(f"{path} holds no prompts")
    width = max(5, len(str(len(records) - 1)))
    rows, errors, names = [], [], {}
    for index, (line, record) in enumerate(records):
        try:
            row = make_row(index, line, record, args, seed, suffix, width, path.parent, limits)
            earlier = names.setdefault(row.file_name.casefold(), line)
            if earlier != line:
                raise ValueError(f"file_name '{row.file_name}' is also the name of line {earlier}")
            rows.append(row)
        except ValueError as error:
            errors.append(f"{path} line {line}: {error}")
    if errors:
        more = f" (and {len(errors) - 1} more bad rows)" if len(errors) > 1 else ""
        raise UsageError(errors[0] + more)
    return rows


def make_row(index: int, line: int, values: dict, args, seed: int, suffix: str, width: int, folder: Path,
             limits) -> Row:
    values = dict(values)
    for column, kind in NUMBERS.items():
        if column in values:
            try:
                if isinstance(values[column], bool) or (kind is int and float(values[column]) % 1):
                    raise ValueError
                values[column] = kind(values[column])
            except (TypeError, ValueError):
                raise ValueError(f"{column} must be a{'n integer' if kind is int else ' number'}, "
                                 f"got {values[column]!r}") from None
    if "karras" in values and not isinstance(values["karras"], bool):
        if str(values["karras"]).strip().lower() not in TRUTH:
            raise ValueError(f"karras must be true or false, got {values['karras']!r}")
        values["karras"] = TRUTH[str(values["karras"]).strip().lower()]
    if "regenerate_seconds" in values:  # "START:END" in a CSV cell, [start, end] in JSON
        text = values["regenerate_seconds"]
        values["regenerate_seconds"] = tuple(text.split(":")) if isinstance(text, str) else text
    if "audio" in values:  # relative to the prompt file's folder
        values["audio"] = str(folder / Path(values["audio"]).expanduser())
    name = values.pop("file_name", None)
    if "seed" not in values:
        values["seed"] = row_seed(seed, index)
    request = request_from_args(args, **values).check(limits)
    name = str(name or f"{index:0{width}d}_{slug(request.prompt)}".rstrip("_"))
    return Row(index=index, line=line, file_name=safe_file_name(name, suffix),
               request=dataclasses.replace(request, prompt=request.prompt.strip()))


def safe_file_name(name: str, suffix: str) -> str:
    """A plain file name inside the output folder: no folders, no '..', no hidden or temporary names."""
    if not name or "/" in name or "\\" in name or "\0" in name or name.startswith("."):
        raise ValueError(f"file_name '{name}' is unsafe: give a plain name, without folders or a leading '.'")
    if not Path(name).suffix:
        name += suffix
    if Path(name).suffix.lower() not in FORMATS:
        raise ValueError(f"file_name '{name}' must end in {' or '.join(FORMATS)}")
    return name


def batches(rows: list[Row], batch_size: int) -> list[list[Row]]:
    """Rows that can share a pipeline call together (the pipeline's rule, `batchable`), in row order, at most
    `batch_size` per batch."""
    from .generation.batching import batchable

    groups = batchable([row.request for row in rows])
    return [[rows[i] for i in group[k:k + batch_size]] for group in groups for k in range(0, len(group), batch_size)]


# ----------------------------------------------------------------------------------------------
# The manifest: one JSON line per finished row, appended after its audio file is in place


def manifest_line(row: Row, model: str, score: float | None = None, precision: str | None = None,
                  reference: str | None = None) -> dict:
    """A finished row: its file, its place in the prompt file and its request, complete (as the file's metadata)."""
    line = dict(file=row.file_name, row=row.index,
                **json.loads(file_metadata(row.request, model, precision, reference)["comment"]))
    return line if score is None else {**line, "clap_score": score}


def append_line(path: Path, line: dict) -> None:
    with open(path, "a", encoding="utf-8") as file:  # one write() of one line, flushed to disk
        file.write(json.dumps(line, ensure_ascii=False) + "\n")
        file.flush()
        os.fsync(file.fileno())


def merge_manifests(out_dir: Path, rows: list[Row], model: str) -> int:
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
            lines[row.file_name] = {**manifest_line(row, model), "recovered": True}

    def write(file):
        for line in sorted(lines.values(), key=lambda line: (line.get("row", 0), line["file"])):
            file.write(json.dumps(line, ensure_ascii=False) + "\n")

    write_atomically(out_dir / MANIFEST, write, mode="w")
    for part in parts:
        part.unlink()
    return len(lines)


# ----------------------------------------------------------------------------------------------
# Processes: one, or one per GPU under torchrun


def start_distributed(device_name: str | None):
    """(rank, world size, device) from torchrun's environment, with the process group started when world > 1."""
    import torch

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(device_name)
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


def check_arguments(args) -> list[Row]:
    """The batch options, the CLI's own checks, then every row as a checked request: before anything loads,
    and before the output folder is made (a refused run leaves nothing behind)."""
    from .generation.request import checkpoint_limits

    if args.prompt is not None:
        raise UsageError("give a PROMPT or --prompts-file, not both")
    if args.output_dir is None:
        raise UsageError("--prompts-file needs --output-dir DIR")
    if args.output is not None:
        raise UsageError("-o names one file; with --prompts-file the files go to --output-dir, named by file_name")
    if args.all:
        raise UsageError("--all writes one file per candidate; with --prompts-file each row keeps its best")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not Path(args.prompts_file).is_file():
        raise UsageError(f"--prompts-file '{args.prompts_file}' is not a file")
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise UsageError(f"--output-dir '{args.output_dir}' is a file, not a folder")
    check_local_model(args.model)
    check_model_options(args)
    try:
        return make_rows(Path(args.prompts_file), args, DEFAULT_SEED if args.seed is None else args.seed,
                         f".{args.format}", checkpoint_limits(args.model))
    except UsageError:
        raise
    except ValueError as error:  # the file itself: not UTF-8, malformed CSV / JSON
        raise UsageError(str(error)) from None


def interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (torchrun, a scheduler, kill) ends the run as Ctrl-C does


def run(args, rows: list[Row]) -> int:
    """Generate every row not in `args.output_dir` yet; 1 if a row failed."""
    out_dir = Path(args.output_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create --output-dir '{args.output_dir}' ({error.strerror})") from None
    quiet = getattr(args, "quiet", False)

    main_thread = threading.current_thread() is threading.main_thread()  # only there can signals be handled
    previous_handler = signal.signal(signal.SIGTERM, interrupt) if main_thread else None
    rank, world, device = start_distributed(args.device)
    args.device = str(device)
    if rank == 0:  # temporary files of a killed run: removed before any rank writes new ones
        for stale in out_dir.glob(".partial-*"):
            stale.unlink(missing_ok=True)
    barrier(world)
    mine = [row for row in rows if row.index % world == rank]  # by index: shares never depend on timing
    todo = [row for row in mine if not (out_dir / row.file_name).exists()]
    done, failed = 0, []
    try:
        pipe = load_pipeline(args, progress=not quiet) if todo else None  # nothing left here: no need to load the model
        if pipe is not None and rank == 0 and not quiet:  # what ran, once (every file and manifest line keeps it)
            print(f"audioldm2-lite: model: {describe_reference(pipe.reference, pipe.checkpoint)}; precision: "
                  f"{pipe.precision.describe()}", file=sys.stderr)
        manifest = out_dir / (MANIFEST if world == 1 else f"manifest.rank-{rank}.jsonl")
        from tqdm.auto import tqdm

        with tqdm(total=len(todo), unit="clip", desc=f"rank 0 of {world}" if world > 1 else "rows",
                  disable=quiet or rank != 0, file=sys.stderr) as bar:
            for batch in batches(todo, args.batch_size):
                for finished, error in generate_and_write(pipe, batch, args.model, out_dir, manifest):
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
        lines = merge_manifests(out_dir, rows, args.model)
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


def generate(pipe, rows: list[Row]) -> list[tuple]:
    """(best audio, its CLAP score or None) of each row: one pipeline call for rows that can share one."""
    results = pipe.generate([row.request for row in rows])
    return [(r.audios[0], None if r.scores is None else float(r.scores[0])) for r in results]


def generate_and_write(pipe, batch: list[Row], model: str, out_dir: Path, manifest: Path):
    """Yields (rows, None) once written or (rows, error); a failed batch is retried one row at a time."""
    try:
        results = generate(pipe, batch)
    except (ValueError, RuntimeError) as error:
        if len(batch) > 1:
            for row in batch:
                yield from generate_and_write(pipe, [row], model, out_dir, manifest)
        else:
            yield batch, f"{type(error).__name__}: {error}"
        return
    for row, (audio, score) in zip(batch, results):
        precision = pipe.precision.describe()
        write_audio(out_dir / row.file_name, audio, pipe.sampling_rate,
                    file_metadata(row.request, model, precision, pipe.reference))
        # after its file: never a line without one
        append_line(manifest, manifest_line(row, model, score, precision, pipe.reference))
        yield [row], None
