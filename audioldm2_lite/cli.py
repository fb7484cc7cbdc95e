"""`audioldm2-lite PROMPT -o out.wav`: text to audio from the command line.

Writes WAV (or FLAC, by the output file's extension) with soundfile, the generation settings in the file's
text fields. Everything a person can get wrong is checked before the model loads, by the small `check_*`
functions in `CHECKS` (add yours there). Every error a person can cause, argparse's included, ends in
`main` as one line `audioldm2-lite: error: ...` on stderr and a non-zero exit: 2 for the command line, 1 for
what happened after; no traceback, and no half-written output file.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import warnings
from pathlib import Path

PROG = "audioldm2-lite"
FORMATS = {".wav": "WAV", ".flac": "FLAC"}
DTYPES = ("float32", "float16", "bfloat16")
# Activation memory of the denoising loop per second of audio, per waveform in the UNet's batch (two with
# guidance) and per byte of dtype, from the README's measurement (150 s x 4 candidates, fp16, H100: 4.32 GiB
# peak of which 2.14 GiB weights), doubled for safety: a bound to refuse the impossible, not a prediction.
ACTIVATION_BYTES_PER_SECOND = 2 * 2.18 * 2**30 / (150 * 4 * 2 * 2)
OFFICIAL_WEIGHT_BYTES = 4.7e9  # cvssp/audioldm2 in float32, for a hub id not yet on disk
DEFAULT_SECONDS = 10.0
MIN_SECONDS = 0.01  # one mel frame: 160 samples at 16 kHz in every AudioLDM 2 checkpoint


class UsageError(Exception):
    """A mistake in the command line: one line, exit status 2, before anything is loaded."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + error and exits; we want the one line of `main`
        raise UsageError(f"{message} (see {PROG} --help)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = OneLineParser(prog=PROG, description="Generate audio from a text prompt with AudioLDM 2.")
    parser.add_argument("prompt", nargs="?", help="what the audio should sound like (or --prompts-file for many)")
    parser.add_argument("-o", "--output", default="out.wav", help="output file, .wav or .flac (default: out.wav)")
    parser.add_argument("--negative-prompt", default="", help="what to steer away from, e.g. 'low quality'")
    parser.add_argument("--transcription", default=None,
                        help="the words to say, with a text-to-speech model such as anhnct/audioldm2_gigaspeech "
                             "(the prompt then describes the voice)")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="audio length in seconds (default: 10)")
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps (default: 200 for ddim, 20 for dpmsolver++; at most 1000)")
    parser.add_argument("--scheduler", default="ddim", help="ddim (the checkpoint's default) or dpmsolver++")
    parser.add_argument("--karras", action="store_true",
                        help="dpmsolver++ on Karras noise levels (often better at few steps)")
    parser.add_argument("--guidance", type=float, default=3.5,
                        help="classifier-free guidance scale; 1 or below means no guidance (default: 3.5)")
    parser.add_argument("--candidates", type=int, default=1,
                        help="waveforms to generate; they are ranked by CLAP similarity to the prompt (default: 1)")
    parser.add_argument("--all", action="store_true",
                        help="with --candidates > 1, write every candidate (out_1.wav best, out_2.wav, ...)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random, and printed)")
    parser.add_argument("--model", default="cvssp/audioldm2",
                        help="hub id or local folder in hub layout (default: cvssp/audioldm2)")
    parser.add_argument("--lora", default=None, help="LoRA adapter file from audioldm2-lite-train (lora.safetensors)")
    parser.add_argument("--lora-scale", type=float, default=1.0, help="strength of the --lora adapter (default: 1)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda, then mps, then cpu)")
    parser.add_argument("--dtype", default=None, choices=DTYPES,
                        help="every stage's weights and activations (default, measured: float16 on CUDA; on a CPU "
                             "with native bf16 the UNet, text stages and vocoder in bfloat16, the VAE in float32; "
                             "float32 elsewhere; --dtype float32 opts out)")
    parser.add_argument("--compile", action="store_true",
                        help="on CUDA, torch.compile the UNet, VAE and vocoder first (minutes of compiling)")
    parser.add_argument("--offload", action="store_true",
                        help="keep weights in CPU memory, each stage on the GPU only while it runs")
    add_editing_arguments(parser)
    many = parser.add_argument_group("many prompts (README: Many prompts; torchrun for several GPUs)")
    many.add_argument("--prompts-file", help=".txt (a prompt a line), .csv or .jsonl (a 'prompt' column, optional "
                      "negative_prompt, seconds, seed, file_name, candidates, guidance); options are the defaults")
    many.add_argument("--output-dir", help="folder for the files and manifest.jsonl; rows already there are skipped")
    many.add_argument("--batch-size", type=int, default=1, help="rows per pipeline call (default: 1)")
    many.add_argument("--format", default="wav", choices=[f[1:] for f in FORMATS], help="file format (default: wav)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, no seed line")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


# ----------------------------------------------------------------------------------------------
# Checks on the arguments, before the model loads: each raises UsageError with one line


def check_values(args) -> None:
    if not args.prompt.strip():
        raise UsageError("the prompt is empty")
    if args.transcription is not None and not args.transcription.strip():
        raise UsageError("the transcription is empty")
    if not args.seconds > 0:
        raise UsageError(f"--seconds must be positive, got {args.seconds}")
    if args.seconds < MIN_SECONDS:
        raise UsageError(f"--seconds must be at least {MIN_SECONDS} (one mel frame), got {args.seconds}")
    if args.seed is not None and not 0 <= args.seed < 2**64:
        raise UsageError(f"--seed must be in 0 .. 2**64 - 1, got {args.seed}")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    if not args.guidance >= 0:
        raise UsageError(f"--guidance must be 0 or more (1 or below means no guidance), got {args.guidance}")
    if args.candidates < 1:
        raise UsageError(f"--candidates must be at least 1, got {args.candidates}")
    if args.lora is not None and not Path(args.lora).is_file():
        raise UsageError(f"--lora: no adapter file '{args.lora}'")
    if args.all and args.candidates < 2:
        raise UsageError("--all writes every candidate: give --candidates 2 or more with it")


def check_scheduler(args) -> None:
    from .generation.samplers import SAMPLERS

    if args.scheduler not in SAMPLERS:
        raise UsageError(f"unknown --scheduler '{args.scheduler}'; choose from {', '.join(SAMPLERS)}")
    if args.karras and args.scheduler != "dpmsolver++":
        raise UsageError("--karras applies to --scheduler dpmsolver++ only")


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


def check_editing(args) -> None:
    """Checks that need no model; with --audio sets args.seconds to the input's length and args.edit to the
    pipeline's editing options (empty without --audio)."""
    given = [flag for flag, value in (("--strength", args.strength), ("--regenerate-seconds", args.regenerate_seconds),
                                      ("--regenerate-above-hz", args.regenerate_above_hz)) if value is not None]
    args.edit = {}
    if args.audio is None:
        if given:
            raise UsageError(f"{given[0]} edits audio: give the file to edit with --audio")
        return
    from .generation.audio_io import AudioInputError, read_audio
    from .generation.editing import check_time_range

    try:
        waveform = read_audio(args.audio, target_rate=16000)  # read once: the pipeline gets the samples
        seconds = len(waveform) / 16000
    except AudioInputError as error:
        raise UsageError(str(error))
    # the output takes the input's length: a --seconds that disagrees is refused (the default cannot be told
    # from an explicit 10, so that value is taken as not given)
    if args.seconds != DEFAULT_SECONDS and abs(args.seconds - seconds) > 1e-3:
        raise UsageError(f"--seconds {args.seconds:g} disagrees with the length of --audio ({seconds:g} s); leave "
                     f"--seconds out: an edit keeps the input's length")
    strength = 1.0 if args.strength is None else args.strength
    if not 0 < strength <= 1:
        raise UsageError(f"--strength must be in (0, 1], got {args.strength:g}")
    time_range = None
    if args.regenerate_seconds is not None:
        try:
            time_range = check_time_range(args.regenerate_seconds.split(":"), seconds)
        except ValueError as error:
            raise UsageError(f"--regenerate-seconds: {error} (expected START:END in seconds, e.g. 2.0:4.5)")
    if args.regenerate_above_hz is not None and not args.regenerate_above_hz > 0:
        raise UsageError(f"--regenerate-above-hz must be positive, got {args.regenerate_above_hz:g}")
    args.seconds = seconds  # the input's length (the pipeline checks it against the audio it reads)
    args.edit = dict(audio=waveform, audio_sampling_rate=16000, strength=strength, regenerate_seconds=time_range,
                     regenerate_above_hz=args.regenerate_above_hz)


def output_paths(output: str, count: int) -> list[Path]:
    path = Path(output)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i + 1}{path.suffix}") for i in range(count)]


def check_output(args) -> None:
    """Every file the run will write: a known extension, not a folder, in an existing writable folder."""
    if Path(args.output).is_dir():
        raise UsageError(f"-o '{args.output}' is a directory; name a file in it, e.g. '{Path(args.output) / 'out.wav'}'")
    if Path(args.output).suffix.lower() not in FORMATS:
        raise UsageError(f"output must end in {' or '.join(FORMATS)}, got '{args.output}'")
    for path in output_paths(args.output, args.candidates if args.all else 1):
        if path.is_dir():
            raise UsageError(f"'{path}' (one of the --all outputs) is a directory; choose another -o name")
    folder = Path(args.output).expanduser().resolve().parent  # every output lies in it
    if not folder.is_dir():
        raise UsageError(f"cannot write '{args.output}': the folder '{folder}' does not exist")
    try:  # the real test (root passes os.access everywhere): create a file there
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise UsageError(f"cannot write '{args.output}': the folder '{folder}' is not writable ({error.strerror})") from None


def resolve_device(name: str | None):
    """The torch device for --device, or one line saying why it cannot be used here."""
    import torch

    from .generation.pipeline import default_device

    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown --device '{name}'; use cpu, cuda, cuda:N or mps") from None
    build = f"torch {torch.__version__} built for " + (f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available ({build}; no usable GPU found)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 ..)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {name}: Apple's MPS is not available ({build}; MPS needs a Mac with Apple silicon)")
    elif device.type != "cpu":
        raise UsageError(f"--device {name}: unsupported; use cpu, cuda, cuda:N or mps")
    return device


def check_device(args) -> None:
    device = resolve_device(args.device)
    if device.type == "cpu" and args.dtype == "float16":
        raise UsageError("--dtype float16 is for GPUs: on the CPU use float32 or bfloat16; torch's CPU float16 "
                         "kernels are tens of times slower")
    if args.compile and device.type != "cuda":
        raise UsageError(f"--compile applies on CUDA only; here the device is {device}")
    if args.offload and device.type == "cpu":
        raise UsageError("--offload keeps weights in CPU memory while a GPU runs them; here the device is the CPU")


def available_memory(device) -> int | None:
    """Free bytes where the work will run: the GPU's, or the machine's for the CPU; None when unknown."""
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu" and Path("/proc/meminfo").is_file():  # Linux; MemAvailable counts reclaimable cache
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def weight_bytes(model: str, dtype_bytes: int) -> float:
    """The weights' size in memory: the checkpoint's weight files (float32 on disk) scaled to the dtype."""
    folder = Path(model).expanduser()
    files = [f for f in folder.rglob("*") if f.suffix in (".safetensors", ".bin")] if folder.is_dir() else []
    on_disk = sum(f.stat().st_size for f in files) if files else OFFICIAL_WEIGHT_BYTES
    return on_disk * dtype_bytes / 4


def check_memory(args) -> None:
    """Refuse a length whose denoising cannot fit in the memory there is, naming the longest that would."""
    device = resolve_device(args.device)
    free = available_memory(device)
    if free is None:  # MPS: unknown
        return
    dtype = args.dtype or ("float16" if device.type == "cuda" else "float32")
    dtype_bytes = 4 if dtype == "float32" else 2
    weights = 0 if args.offload and device.type == "cuda" else weight_bytes(args.model, dtype_bytes)
    batch = args.candidates * (2 if args.guidance > 1 else 1)
    per_second = ACTIVATION_BYTES_PER_SECOND * batch * dtype_bytes
    if weights + args.seconds * per_second > free:
        longest = (free - weights) / per_second
        if longest < MIN_SECONDS:
            raise UsageError(f"the model's weights alone need about {weights / 2**30:.1f} GiB in {dtype}; "
                             f"{free / 2**30:.1f} GiB is free on {device}")
        raise UsageError(
            f"--seconds {args.seconds:g} with {args.candidates} candidate(s) needs about "
            f"{(weights + args.seconds * per_second) / 2**30:.1f} GiB; {free / 2**30:.1f} GiB is free on {device}: "
            f"the longest that fits is about {longest:.0f} s"
        )


CHECKS = [check_editing, check_values, check_scheduler, check_output, check_device, check_memory]


def run_checks(args) -> None:
    for check in CHECKS:
        check(args)


# ----------------------------------------------------------------------------------------------
# Writing


def write_audio(path: Path, audio, sampling_rate: int, metadata: dict[str, str] | None = None) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written file.

    The file gets the permissions of any new file (0666 less the umask); `metadata` fills soundfile's text
    fields (title, comment, software, ...), which WAV and FLAC both carry."""
    import soundfile

    handle, temporary = tempfile.mkstemp(suffix=path.suffix, dir=path.resolve().parent, prefix=".partial-")
    os.close(handle)
    try:
        with soundfile.SoundFile(temporary, "w", sampling_rate, 1, format=FORMATS[path.suffix.lower()]) as file:
            for field, text in (metadata or {}).items():
                setattr(file, field, text)
            file.write(audio)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp made it 0600
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def settings_metadata(prompt: str, negative_prompt: str, seed: int, steps: int, scheduler: str, karras: bool,
                      guidance: float, seconds: float, model: str, precision: str | None = None) -> dict[str, str]:
    """How the file was made, in soundfile's text fields (`precision`: `Precision.describe()` of the run)."""
    from . import __version__

    settings = [f"negative prompt: {negative_prompt!r}", f"seed: {seed}", f"steps: {steps}",
                f"scheduler: {scheduler}{' (karras)' if karras else ''}", f"guidance: {guidance:g}",
                f"seconds: {seconds:g}", f"model: {model}"] + ([f"precision: {precision}"] if precision else [])
    return {"title": prompt, "comment": "; ".join(settings), "software": f"{PROG} {__version__}"}


# ----------------------------------------------------------------------------------------------


def generate(args) -> int:
    import torch

    from . import AudioLDM2Pipeline

    if args.quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    steps = args.steps or (200 if args.scheduler == "ddim" else 20)
    pipe = AudioLDM2Pipeline.from_pretrained(
        args.model, device=resolve_device(args.device), dtype=getattr(torch, args.dtype) if args.dtype else None,
        offload=args.offload, progress=not args.quiet, lora=args.lora, lora_scale=args.lora_scale,
    )
    if not args.quiet:
        print(f"{PROG}: precision: {pipe.precision.describe()} [{pipe.precision.why}]", file=sys.stderr)
    seed = args.seed
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
        if not args.quiet:
            print(f"{PROG}: seed {seed} (use --seed {seed} to make this again)", file=sys.stderr)
    if pipe.device.type == "cuda" and not args.offload:  # CUDA graphs: same audio, about 10x faster
        pipe.optimize(compile=args.compile, cuda_graphs=True)
    result = pipe(
        args.prompt, negative_prompt=args.negative_prompt, audio_length_in_s=args.seconds,
        num_inference_steps=steps, guidance_scale=args.guidance, num_waveforms_per_prompt=args.candidates,
        scheduler=args.scheduler, karras_sigmas=args.karras, seed=seed, progress=not args.quiet,
        transcription=args.transcription, **args.edit,
    )
    audios = result.audios if args.all else result.audios[:1]  # ranked best first
    metadata = settings_metadata(args.prompt, args.negative_prompt, seed, steps, args.scheduler, args.karras,
                                 args.guidance, args.seconds, args.model, pipe.precision.describe())
    for path, audio in zip(output_paths(args.output, len(audios)), audios):
        write_audio(path, audio, pipe.sampling_rate, metadata)
        print(path)
    return 0


def one_line_warning(message, category, filename, lineno, file=None, line=None):
    from tqdm.auto import tqdm

    tqdm.write(f"{PROG}: warning: {message}", file=file or sys.stderr)  # on its own line, above any bar


def report_errors(prog: str, work, interrupted: str = "interrupted") -> int:
    """`work()`'s exit status, with every error a person can cause turned into one line `PROG: error: ...` on
    stderr instead of a traceback: 2 for the command line, 1 for what happened after, 130 for Ctrl-C. The
    console scripts (`audioldm2-lite`, `-eval`, `-train`) all end through it."""
    from .generation.loading import CheckpointError

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


def main(argv=None) -> int:
    """Parse, check, generate; the one place where a person's mistakes become one line."""

    def work() -> int:
        args = build_parser().parse_args(argv)
        if args.prompts_file is not None:  # many prompts from a file: batch.py checks its own options first
            from . import batch

            batch.check_arguments(args)
        elif args.prompt is None:
            raise UsageError("give a PROMPT, or --prompts-file FILE for many")
        else:
            run_checks(args)
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning
            return batch.run(args) if args.prompts_file is not None else generate(args)

    return report_errors(PROG, work)


if __name__ == "__main__":
    sys.exit(main())
