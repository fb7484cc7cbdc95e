"""Training data: a folder of audio clips with captions, checked before the first step, then encoded once.

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

`EncodedDataset` then encodes each clip and caption once with the inference stages and caches the result
on disk, keyed by checkpoint and clip: waveform -> log-mel (mel.py) -> VAE posterior (vae.py
`encode_distribution`), caption -> GPT-2 and T5 states (conditioning.py `encode_prompt`). Training reads
the cache batch by batch, so each process reads only the clips of its share and memory does not grow with
the data set; under torchrun the processes split the encoding between them (`encode_missing(rank, world)`).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..console import read_table
from ..generation.audio_io import AudioInputError, read_audio
from ..generation.authors_models import AuthorsConditioner, runs_without_gpt2
from ..generation.conditioning import TextConditioner
from ..generation.loading import load_component
from ..generation.mel import MelConfig, waveform_to_mel

# what the cached latents and conditioning depend on
FROZEN_COMPONENTS = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "projection_model",
                     "language_model", "vae", "vocoder")

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
        return file, read_table(file)
    except (ValueError, UnicodeDecodeError) as error:
        raise DataError(f"cannot parse {file}: {error}") from None


def read_dataset(folder, skip_bad_rows: bool = False, check_audio=True) -> list[Clip]:
    """The clips of a data folder, every row checked first.

    `check_audio`: decode every file to check it (True), none (False), or those for which
    `check_audio(path)` is true (the training loop skips clips whose latents are cached).
    """
    folder = Path(folder).expanduser()
    file, rows = read_metadata(folder)
    columns = {c for _, row in rows for c in row if c}
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



# ----------------------------------------------------------------------------------------------
# Encoded once, cached on disk


def _hash(*parts) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:24]


def checkpoint_key(root: Path) -> str:
    """Identifies the frozen stages' files (names, sizes, modification times): a new checkpoint, a new cache."""
    files = [f for name in FROZEN_COMPONENTS if (root / name).is_dir() for f in sorted((root / name).rglob("*"))]
    return _hash(root.resolve(), *(f"{f.relative_to(root)}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
                                   for f in files if f.is_file()))


def clip_key(path: Path, num_samples: int) -> str:
    stat = path.stat()
    return _hash(path.resolve(), stat.st_size, stat.st_mtime_ns, num_samples)


def latent_file(cache: Path, path: Path, num_samples: int) -> Path:
    return cache / f"latent-{clip_key(path, num_samples)}.safetensors"


class EncodedDataset:
    """Every clip's VAE posterior (mean, std) and every caption's conditioning, as files in `cache`."""

    def __init__(self, clips: list[Clip], num_samples: int, cache: Path, reference: str = "diffusers"):
        self.clips, self.num_samples, self.cache, self.reference = clips, num_samples, cache, reference
        self.latent_files = [latent_file(cache, c.path, num_samples) for c in clips]
        captions = sorted({c.caption for c in clips} | {""})  # "" is the dropped caption
        # the reference changes every caption's conditioning (CLAP's eps) and the dropped one's (authors.py)
        self.text_files = {t: cache / f"text-{_hash(reference, t)}.safetensors" for t in captions}
        self.captions = [c.caption for c in clips]

    def __len__(self):
        return len(self.clips)

    def encode_missing(self, root: Path, mel_config: MelConfig, device, quiet: bool, rank: int = 0, world: int = 1):
        """Encode what is not cached yet: of the distinct clips and captions, those at positions rank, rank +
        world, ... (a share that depends on the data alone, not on what another process has written so far).
        The text stages and the VAE are loaded only if this share has something to encode."""
        from safetensors.torch import save_file
        from tqdm.auto import tqdm

        clip_of = {f: c for c, f in zip(self.clips, self.latent_files)}
        latents = [f for f in sorted(clip_of)[rank::world] if not f.is_file()]
        texts = [t for t in list(self.text_files)[rank::world] if not self.text_files[t].is_file()]
        if not latents and not texts:
            return
        self.cache.mkdir(parents=True, exist_ok=True)
        if runs_without_gpt2(root):  # the authors' 48 kHz / T5-only model: its one text stage; "" is its uncond
            conditioner = AuthorsConditioner.from_pretrained(root, device=device)
        else:
            conditioner = TextConditioner.from_pretrained(root, device=device, reference=self.reference)
        vae = load_component(root, "vae", device=device)
        with torch.no_grad():
            for caption in tqdm(texts, desc="encoding captions", disable=quiet):
                if caption == "" and self.reference == "authors" and isinstance(conditioner, TextConditioner):
                    # the dropped caption: what guidance uses
                    gpt2 = conditioner.gpt2.config  # zeros for GPT-2's slot, T5("") (one token) for T5's
                    generated = torch.zeros(1, gpt2.max_new_tokens, gpt2.n_embd, device=device)
                    t5_states, t5_mask = conditioner.empty_t5(1, device)
                else:
                    generated, t5_states, t5_mask = conditioner.encode_prompt(
                        caption, do_classifier_free_guidance=False, device=device)  # (1, N, 768), (1, L, 1024)
                save_atomic(save_file, {"generated": generated[0], "t5_states": t5_states[0],
                                        "t5_mask": t5_mask[0]}, self.text_files[caption])
            for file in tqdm(latents, desc="encoding clips", disable=quiet):
                waveform = read_audio(clip_of[file].path, target_rate=mel_config.sampling_rate)
                num_frames = mel_config.num_frames(self.num_samples)
                mel = waveform_to_mel(waveform[None].to(device), mel_config, num_frames)  # (1, T, n_mels)
                mean, logvar = vae.encode_distribution(mel[:, None])  # (1, C, T/4, n_mels/4) each
                save_atomic(save_file, {"mean": mean[0], "std": torch.exp(0.5 * logvar[0])}, file)

    def missing(self) -> list[Path]:
        return [f for f in [*self.latent_files, *self.text_files.values()] if not f.is_file()]

    def posterior(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the VAE posterior of the clips `indices`, float32 (B, C, T/4, F/4) each, from the cache."""
        from safetensors.torch import load_file

        tensors = [load_file(str(self.latent_files[i])) for i in indices]
        return (torch.stack([t["mean"] for t in tensors]).float(), torch.stack([t["std"] for t in tensors]).float())

    def conditioning(self, captions: list[str], device):
        """(generated (B, N, 768), T5 states (B, L, 1024), T5 mask (B, L)), T5 zero-padded to the longest."""
        from safetensors.torch import load_file

        texts = [load_file(str(self.text_files[c])) for c in captions]
        length = max(t["t5_mask"].shape[0] for t in texts)
        pad = lambda x: F.pad(x, (0, 0) * (x.ndim - 1) + (0, length - x.shape[0]))  # pad the token axis
        return (torch.stack([t["generated"] for t in texts]).float().to(device),
                torch.stack([pad(t["t5_states"]) for t in texts]).float().to(device),
                torch.stack([pad(t["t5_mask"]) for t in texts]).to(device))


def save_atomic(save, tensors, file: Path, **kwargs):
    """save(tensors, path) through a temporary file of this process's own, then one rename: a reader (or another
    process encoding the same clip) never sees half a file."""
    partial = file.with_name(f".partial-{os.getpid()}-{file.name}")
    save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(partial), **kwargs)
    os.replace(partial, file)
