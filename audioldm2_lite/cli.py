"""`audioldm2-lite PROMPT -o out.wav`: text to audio (speech, editing) from the command line.

    command line --request_from_args--> Request --check (request.py), before the model loads-->
        --AudioLDM2Pipeline.generate--> WAV / FLAC, the request (complete) in the file's text fields

Many prompts from a file (`--prompts-file`) are prompt_files.py's: the same options, one Request per row. Every error
a person can cause ends in `main` as one line `audioldm2-lite: error: ...` on stderr: exit status 2 for the
command line (anything `Request.check` or the checks here refuse), 1 for what happened after; no traceback,
and no half-written output file (console.py).
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

from .console import (FORMATS, OneLineParser, UsageError, add_editing_arguments, add_model_arguments, as_options,
                      check_local_model, check_model_options, describe_reference, file_metadata, load_pipeline,
                      one_line_warnings, report_errors, request_from_args, resolve_device, write_audio)
from .generation.request import DEFAULT_GUIDANCE, DEFAULT_STEPS, Request
from .generation.samplers import SAMPLERS

PROG = "audioldm2-lite"
# Activation memory of the denoising loop per second of audio, per waveform in the UNet's batch (two with
# guidance) and per byte of dtype: twice the measured figure (scripts/BENCHMARKS.md, "Measurements moved from
# docstrings"), a bound to refuse the impossible, not a prediction.
ACTIVATION_BYTES_PER_SECOND = 2 * 975_000
OFFICIAL_WEIGHT_BYTES = 4.7e9  # cvssp/audioldm2 in float32, for a hub id not yet on disk


def build_parser() -> OneLineParser:
    from . import __version__

    parser = OneLineParser(prog=PROG, description="Generate audio from a text prompt with AudioLDM 2.")
    parser.add_argument("prompt", nargs="?", help="what the audio should sound like (or --prompts-file for many)")
    parser.add_argument("-o", "--output", default=None, help="output file, .wav or .flac (default: out.wav)")
    parser.add_argument("--negative-prompt", default="", help="what to steer away from, e.g. 'low quality'")
    parser.add_argument("--transcription", default=None,
                        help="the words to say, with a text-to-speech model such as anhnct/audioldm2_gigaspeech "
                             "(the prompt then describes the voice)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="audio length in seconds (default: the model's, 10.24; an edit keeps its input's)")
    steps = ", ".join(f"{n} for {name}" for name, n in DEFAULT_STEPS.items())
    parser.add_argument("--steps", type=int, default=None, help=f"denoising steps (default: {steps}; at most 1000)")
    parser.add_argument("--scheduler", default=None, metavar="NAME",
                        help=f"the sampler: {', '.join(SAMPLERS)} (default: the checkpoint's, ddim)")
    karras = ", ".join(name for name, spec in SAMPLERS.items() if "karras" in spec.noise_levels)
    parser.add_argument("--karras", action="store_true", default=None,
                        help=f"Karras noise levels, for {karras}")
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                        help=f"classifier-free guidance scale; 1 or below means no guidance (default: {DEFAULT_GUIDANCE})")
    parser.add_argument("--candidates", type=int, default=1,
                        help="waveforms to generate; they are ranked by CLAP similarity to the prompt (default: 1)")
    parser.add_argument("--all", action="store_true",
                        help="with --candidates > 1, write every candidate (out_1.wav best, out_2.wav, ...)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random, and printed)")
    add_model_arguments(parser)
    add_editing_arguments(parser)
    many = parser.add_argument_group("many prompts (README: Many prompts; torchrun for several GPUs)")
    many.add_argument("--prompts-file", help=".txt (a prompt a line), .csv or .jsonl (a 'prompt' column, optional "
                      "negative_prompt, transcription, seconds, seed, file_name, candidates, guidance, steps, "
                      "scheduler, karras, audio, strength, regenerate_seconds, regenerate_above_hz); options are the "
                      "defaults")
    many.add_argument("--output-dir", help="folder for the files and manifest.jsonl; rows already there are skipped")
    many.add_argument("--batch-size", type=int, default=1, help="rows per pipeline call (default: 1)")
    many.add_argument("--format", default="wav", choices=[f[1:] for f in FORMATS], help="file format (default: wav)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, no seed line")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


# ----------------------------------------------------------------------------------------------
# The command line -> the request, and the checks that are the command line's own


def checked_request(args, limits=None, **row) -> Request:
    """`request_from_args` checked against the model's limits (read from a local checkpoint's configs)."""
    from .generation.request import checkpoint_limits

    try:
        return request_from_args(args, **row).check(limits or checkpoint_limits(args.model))
    except UsageError as error:
        raise UsageError(as_options(str(error))) from None


def output_paths(output: str, count: int) -> list[Path]:
    path = Path(output)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i + 1}{path.suffix}") for i in range(count)]


def check_output(args, candidates: int) -> None:
    """Every file the run will write: a known extension, not a folder, in an existing writable folder."""
    if args.all and candidates < 2:
        raise UsageError("--all writes every candidate: give --candidates 2 or more with it")
    if Path(args.output).is_dir():
        raise UsageError(f"-o '{args.output}' is a directory; name a file in it, e.g. '{Path(args.output) / 'out.wav'}'")
    if Path(args.output).suffix.lower() not in FORMATS:
        raise UsageError(f"output must end in {' or '.join(FORMATS)}, got '{args.output}'")
    for path in output_paths(args.output, candidates if args.all else 1):
        if path.is_dir():
            raise UsageError(f"'{path}' (one of the --all outputs) is a directory; choose another -o name")
    folder = Path(args.output).expanduser().resolve().parent  # every output lies in it
    if not folder.is_dir():
        raise UsageError(f"cannot write '{args.output}': the folder '{folder}' does not exist")
    try:  # the real test (root passes os.access everywhere): create a file there
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise UsageError(f"cannot write '{args.output}': the folder '{folder}' is not writable ({error.strerror})") from None


def weight_bytes(model: str, dtype_bytes: int) -> float:
    """The weights' size in memory: the checkpoint's weight files (float32 on disk) scaled to the dtype."""
    folder = Path(model).expanduser()
    files = [f for f in folder.rglob("*") if f.suffix in (".safetensors", ".bin")] if folder.is_dir() else []
    on_disk = sum(f.stat().st_size for f in files) if files else OFFICIAL_WEIGHT_BYTES
    return on_disk * dtype_bytes / 4


def check_memory(args, request: Request) -> None:
    """Refuse a length whose denoising cannot fit in the memory there is, naming the longest that would."""
    from .generation.memory import available_memory
    from .generation.precision import dtype_name, resolve_precision

    device = resolve_device(args.device)
    free = available_memory(device)
    if free is None or request.seconds is None:  # MPS: unknown; an edit: its input's length, already on disk
        return
    dtype = args.dtype or dtype_name(resolve_precision(device).unet)
    dtype_bytes = 4 if dtype == "float32" else 2
    weights = 0 if args.offload and device.type == "cuda" else weight_bytes(args.model, dtype_bytes)
    batch = request.candidates * (2 if request.guided else 1)
    per_second = ACTIVATION_BYTES_PER_SECOND * batch * dtype_bytes
    if weights + request.seconds * per_second > free:
        longest = (free - weights) / per_second
        if longest < 0.01:
            raise UsageError(f"the model's weights alone need about {weights / 2**30:.1f} GiB in {dtype}; "
                             f"{free / 2**30:.1f} GiB is free on {device}")
        raise UsageError(
            f"--seconds {request.seconds:g} with {request.candidates} candidate(s) needs about "
            f"{(weights + request.seconds * per_second) / 2**30:.1f} GiB; {free / 2**30:.1f} GiB is free on "
            f"{device}: the longest that fits is about {longest:.0f} s"
        )


def check_arguments(args) -> Request:
    """Every check of a one-prompt run, before the model loads; the checked request."""
    if args.prompt is None:
        raise UsageError("give a PROMPT, or --prompts-file FILE for many")
    for option in ("output_dir", "format"):
        if getattr(args, option) != build_parser().get_default(option):
            raise UsageError(f"--{option.replace('_', '-')} is for --prompts-file; one prompt writes -o FILE")
    args.output = args.output or "out.wav"
    check_model_options(args)
    request = checked_request(args)
    check_output(args, request.candidates)
    check_local_model(args.model)
    check_memory(args, request)
    return request


# ----------------------------------------------------------------------------------------------
# Running


def generate(args, request: Request) -> int:
    from .generation.pipeline import AudioLDM2Pipeline

    if args.quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    pipe = load_pipeline(args, progress=not args.quiet)
    if not args.quiet:
        print(f"{PROG}: model: {describe_reference(pipe.reference, pipe.checkpoint)}", file=sys.stderr)
        print(f"{PROG}: precision: {pipe.precision.describe()} [{pipe.precision.why}]", file=sys.stderr)
    if request.seed is None:
        request = AudioLDM2Pipeline.with_seed(request)
        if not args.quiet:
            print(f"{PROG}: seed {request.seed} (use --seed {request.seed} to make this again)", file=sys.stderr)
    [result] = pipe.generate(request, progress=not args.quiet)
    audios = result.audios if args.all else result.audios[:1]  # ranked best first
    for path, audio in zip(output_paths(args.output, len(audios)), audios):
        write_audio(path, audio, pipe.sampling_rate,
                    file_metadata(result.request, args.model, pipe.precision.describe(), pipe.reference))
        print(path)
    return 0


def main(argv=None) -> int:
    """Parse, check, generate; the one place where a person's mistakes become one line."""

    def work() -> int:
        args = build_parser().parse_args(argv)
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warnings(PROG)
            if args.prompts_file is not None:  # many prompts from a file: prompt_files.py
                from . import prompt_files

                return prompt_files.run(args, prompt_files.check_arguments(args))
            return generate(args, check_arguments(args))

    return report_errors(PROG, work)


if __name__ == "__main__":
    sys.exit(main())
