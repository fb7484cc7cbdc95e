"""Training data: a folder of audio clips with captions, checked before the first step.

The layout is Hugging Face's "audiofolder" convention, so datasets people already have work:

    DIR/metadata.csv  (or metadata.jsonl)   file_name,caption
    DIR/clips/dog.wav                       clips/dog.wav,"A dog barks twice."

`file_name` is relative to DIR; the caption column is `caption` or `text`. Audio is anything
`audio_io.read_audio` opens (WAV, FLAC, OGG, ... at any rate, mixed to mono and resampled to 16 kHz).
The training loop cuts or pads every clip to one fixed length (mel.py's `waveform_to_mel`): the
first `seconds` are kept (cut from the start, not a random crop, so the latent can be computed once
and cached) and a shorter clip is padded with silence at the end.

`read_dataset` checks every row (a missing column, file or caption; audio that cannot be read)
and raises one `DataError` listing all bad rows, or with `skip_bad_rows` warns and leaves them out.
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from .generation.audio_io import AudioInputError, read_audio

CAPTION_COLUMNS = ("caption", "text")


class DataError(ValueError):
    """The data folder cannot be used as it is; the message names every bad row."""


@dataclass(frozen=True)
class Clip:
    path: Path
    caption: str


def read_metadata(folder: Path) -> tuple[Path, list[tuple[int, dict]]]:
    """The metadata file of `folder` and its rows as (line number in the file, {column: value})."""
    files = [folder / name for name in ("metadata.csv", "metadata.jsonl") if (folder / name).is_file()]
    if not folder.is_dir():
        raise DataError(f"data folder '{folder}' does not exist")
    if len(files) != 1:
        raise DataError(f"data folder '{folder}' needs exactly one metadata.csv or metadata.jsonl "
                        f"(found {len(files)}) with a file_name and a caption (or text) column")
    file = files[0]
    try:
        if file.suffix == ".csv":
            with open(file, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                return file, [(reader.line_num, row) for row in reader]
        rows = []
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"line {number} is not a JSON object")
                rows.append((number, row))
        return file, rows
    except (ValueError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot parse {file}: {error}") from None


def read_dataset(folder, skip_bad_rows: bool = False, check_audio=True) -> list[Clip]:
    """The clips of a data folder, every row checked first.

    `check_audio`: decode every file to check it (True), none (False), or those for which
    `check_audio(path)` is true (the training loop skips clips whose latents are cached).
    """
    folder = Path(folder).expanduser()
    file, rows = read_metadata(folder)
    columns = {c for _, row in rows for c in row if c}  # a CSV row with extra fields has a None key
    caption_column = next((c for c in CAPTION_COLUMNS if c in columns), None)
    if "file_name" not in columns or caption_column is None:
        raise DataError(f"{file} must have a 'file_name' column and a 'caption' or 'text' column; "
                        f"it has {sorted(columns) or 'no rows'}")

    clips, problems = [], []
    for line, row in rows:
        name, caption = str(row.get("file_name") or "").strip(), str(row.get(caption_column) or "").strip()
        path = folder / name
        problem = None
        if not name:
            problem = "no file_name"
        elif not path.is_file():
            problem = f"{name}: file not found"
        elif not caption:
            problem = f"{name}: empty {caption_column}"
        elif check_audio(path) if callable(check_audio) else check_audio:
            try:
                read_audio(path)
            except AudioInputError as error:
                problem = f"{name}: unreadable audio ({error})"
        if problem:
            problems.append(f"line {line}: {problem}")
        else:
            clips.append(Clip(path, caption))

    if problems and not skip_bad_rows:
        listed = "\n  ".join(problems)
        raise DataError(f"{len(problems)} bad row(s) in {file} (fix them, or pass --skip-bad-rows to leave "
                        f"them out):\n  {listed}")
    if problems:
        warnings.warn(f"skipping {len(problems)} bad row(s) of {file}: " + "; ".join(problems))
    if not clips:
        raise DataError(f"{file} has no usable clips")
    return clips

