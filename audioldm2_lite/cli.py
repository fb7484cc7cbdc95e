"""`audioldm2-lite PROMPT -o out.wav`: text to audio from the command line.

Writes WAV (or FLAC, by the output file's extension) with soundfile. Bad arguments and unreachable models
end with one clear line and a non-zero exit; no traceback, and no half-written output file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

FORMATS = {".wav": "WAV", ".flac": "FLAC"}
DTYPES = ("float32", "float16", "bfloat16")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audioldm2-lite", description="Generate audio from a text prompt with AudioLDM 2."
    )
    parser.add_argument("prompt", help="what the audio should sound like")
    parser.add_argument("-o", "--output", default="out.wav", help="output file, .wav or .flac (default: out.wav)")
    parser.add_argument("--negative-prompt", default="", help="what to steer away from, e.g. 'low quality'")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length in seconds (default: 10)")
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps (default: 200 for ddim, 20 for dpmsolver++)")
    parser.add_argument("--scheduler", default="ddim", help="ddim (the checkpoint's default) or dpmsolver++")
    parser.add_argument("--karras", action="store_true",
                        help="dpmsolver++ on Karras noise levels (often better at few steps)")
    parser.add_argument("--guidance", type=float, default=3.5, help="classifier-free guidance scale (default: 3.5)")
    parser.add_argument("--candidates", type=int, default=1,
                        help="waveforms to generate; they are ranked by CLAP similarity to the prompt (default: 1)")
    parser.add_argument("--all", action="store_true",
                        help="with --candidates > 1, write every candidate (out_1.wav best, out_2.wav, ...)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--model", default="cvssp/audioldm2",
                        help="hub id or local folder in hub layout (default: cvssp/audioldm2)")
    parser.add_argument("--lora", default=None, help="LoRA adapter file from audioldm2-lite-train (lora.safetensors)")
    parser.add_argument("--lora-scale", type=float, default=1.0, help="strength of the --lora adapter (default: 1)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=DTYPES,
                        help="weights and activations (default: float16 on GPU, float32 on CPU)")
    parser.add_argument("--compile", action="store_true",
                        help="on CUDA, torch.compile the UNet, VAE and vocoder first (minutes of compiling)")
    parser.add_argument("--offload", action="store_true",
                        help="keep weights in CPU memory, each stage on the GPU only while it runs")
    add_editing_arguments(parser)
    return parser


def check_arguments(args, parser) -> None:
    from .samplers import SAMPLERS

    if not args.prompt.strip():
        parser.error("the prompt is empty")
    if not args.seconds > 0:
        parser.error(f"--seconds must be positive, got {args.seconds}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.scheduler not in SAMPLERS:
        parser.error(f"unknown --scheduler '{args.scheduler}'; choose from {', '.join(SAMPLERS)}")
    if args.karras and args.scheduler != "dpmsolver++":
        parser.error("--karras applies to --scheduler dpmsolver++ only")
    if args.candidates < 1:
        parser.error(f"--candidates must be at least 1, got {args.candidates}")
    if args.lora is not None and not Path(args.lora).is_file():
        parser.error(f"--lora: no adapter file '{args.lora}'")
    suffix = Path(args.output).suffix.lower()
    if suffix not in FORMATS:
        parser.error(f"output must end in {' or '.join(FORMATS)}, got '{args.output}'")
    folder = Path(args.output).expanduser().resolve().parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        parser.error(f"cannot write to '{folder}' (missing or not writable)")


# ----------------------------------------------------------------------------------------------
# Editing audio (editing.py): --audio with --strength, --regenerate-seconds, --regenerate-above-hz


def add_editing_arguments(parser) -> None:
    group = parser.add_argument_group("editing audio", "edit an existing recording; the output keeps its length")
    group.add_argument("--audio", default=None, help="the audio file to edit (WAV, FLAC, OGG, ...; any rate, channels)")
    group.add_argument("--strength", type=float, default=None,
                       help="style transfer: how much of the noise schedule to redo, in (0, 1] (default: 1, all)")
    group.add_argument("--regenerate-seconds", default=None, metavar="START:END",
                       help="inpainting: regenerate this time range (e.g. 2.0:4.5) and keep the rest")
    group.add_argument("--regenerate-above-hz", type=float, default=None, metavar="HZ",
                       help="bandwidth extension: regenerate above this frequency and keep below (0 - 8000)")


def check_editing_arguments(args, parser) -> None:
    """Checks that need no model; with --audio sets args.seconds to the input's length and args.edit to the
    pipeline's editing options (empty without --audio)."""
    given = [flag for flag, value in (("--strength", args.strength), ("--regenerate-seconds", args.regenerate_seconds),
                                      ("--regenerate-above-hz", args.regenerate_above_hz)) if value is not None]
    args.edit = {}
    if args.audio is None:
        if given:
            parser.error(f"{given[0]} edits audio: give the file to edit with --audio")
        return
    from .audio_io import AudioInputError, read_audio
    from .editing import check_time_range

    try:
        seconds = len(read_audio(args.audio, target_rate=16000)) / 16000
    except AudioInputError as error:
        parser.error(str(error))
    # the output takes the input's length: a --seconds that disagrees is refused (the default cannot be told
    # from an explicit 10, so that value is taken as not given)
    if args.seconds != parser.get_default("seconds") and abs(args.seconds - seconds) > 1e-3:
        parser.error(f"--seconds {args.seconds:g} disagrees with the length of --audio ({seconds:g} s); leave "
                     f"--seconds out: an edit keeps the input's length")
    strength = 1.0 if args.strength is None else args.strength
    if not 0 < strength <= 1:
        parser.error(f"--strength must be in (0, 1], got {args.strength:g}")
    time_range = None
    if args.regenerate_seconds is not None:
        try:
            time_range = check_time_range(args.regenerate_seconds.split(":"), seconds)
        except ValueError as error:
            parser.error(f"--regenerate-seconds: {error} (expected START:END in seconds, e.g. 2.0:4.5)")
    if args.regenerate_above_hz is not None and not args.regenerate_above_hz > 0:
        parser.error(f"--regenerate-above-hz must be positive, got {args.regenerate_above_hz:g}")
    args.seconds = seconds  # the input's length (the pipeline checks it against the audio it reads)
    args.edit = dict(audio=args.audio, strength=strength, regenerate_seconds=time_range,
                     regenerate_above_hz=args.regenerate_above_hz)


def output_paths(output: str, count: int) -> list[Path]:
    path = Path(output)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i + 1}{path.suffix}") for i in range(count)]


def write_audio(path: Path, audio, sampling_rate: int) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written file."""
    import soundfile

    handle, temporary = tempfile.mkstemp(suffix=path.suffix, dir=path.resolve().parent, prefix=".partial-")
    os.close(handle)
    try:
        soundfile.write(temporary, audio, sampling_rate, format=FORMATS[path.suffix.lower()])
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_editing_arguments(args, parser)
    check_arguments(args, parser)

    import torch

    from . import AudioLDM2Pipeline, CheckpointError

    steps = args.steps or (200 if args.scheduler == "ddim" else 20)
    try:
        pipe = AudioLDM2Pipeline.from_pretrained(
            args.model, device=args.device, dtype=getattr(torch, args.dtype) if args.dtype else None,
            offload=args.offload, lora=args.lora, lora_scale=args.lora_scale,
        )
        if pipe.device.type == "cuda" and not args.offload:  # CUDA graphs: same audio, about 10x faster
            pipe.optimize(compile=args.compile, cuda_graphs=True)
        generator = torch.Generator(pipe.device).manual_seed(args.seed) if args.seed is not None else None
        result = pipe(
            args.prompt, negative_prompt=args.negative_prompt, audio_length_in_s=args.seconds,
            num_inference_steps=steps, guidance_scale=args.guidance, num_waveforms_per_prompt=args.candidates,
            scheduler=args.scheduler, karras_sigmas=args.karras, generator=generator, progress=True, **args.edit,
        )
        audios = result.audios if args.all else result.audios[:1]  # ranked best first
        for path, audio in zip(output_paths(args.output, len(audios)), audios):
            write_audio(path, audio, pipe.sampling_rate)
            print(path)
    except CheckpointError as error:
        print(f"audioldm2-lite: error: {error}", file=sys.stderr)
        return 1
    except (ValueError, RuntimeError, OSError) as error:
        print(f"audioldm2-lite: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("audioldm2-lite: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
