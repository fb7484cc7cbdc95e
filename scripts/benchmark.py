"""Time audioldm2_lite against diffusers' AudioLDM2Pipeline with identical settings, side by side.

    python scripts/benchmark.py [--checkpoint DIR | --tiny] [--device cuda] [--dtype float16 | --runs ...]
        [--steps 20] [--scheduler dpmsolver++] [--seconds 10.24] [--candidates 1] [--rounds 2] [--repeats 3]
        [--compile] [--cuda-graphs] [--threads N]

A run is a side and a precision, `ours:default` (the pipeline's measured default, generation/precision.py),
`ours:float32`, `diffusers:bfloat16`, ... On the CPU the default table is the four runs ours float32 / ours
default / diffusers float32 / diffusers bfloat16 (`--dtype D` instead runs both sides in D only). Each run is
its own process (so peak RSS is its own), the runs alternating for `--rounds` rounds; each process warms up,
then times `--repeats` full calls (prompt to waveform) and one more call with per-stage hooks (text encoders,
GPT-2, UNet steps, VAE, vocoder, ranking). The warm-up call's waveform (seed 0) of every run that is not
float32 is compared with its side's float32 run: the drift is the relative L2 distance. Printed last:
`speedup_vs_diffusers: X.XX` = diffusers' fastest run (median total) / ours' headline run (`ours:default` when
it ran). Without --checkpoint a full-size random-weight checkpoint is built from
scripts/checkpoint_configs/audioldm2 (same shapes as cvssp/audioldm2).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a clone without installing
PROMPT, NEGATIVE = "techno music with a strong bass line and hand claps", "low quality, noise"


def stage_callables(side: str, pipe) -> dict:
    """(object, method name) whose time makes each stage, for the instrumented (eager) run."""
    if side == "diffusers":
        return {
            "clap_text": (pipe.text_encoder, "get_text_features"), "t5": (pipe.text_encoder_2, "forward"),
            "projection": (pipe.projection_model, "forward"), "gpt2": (pipe, "generate_language_model"),
            "unet": (pipe.unet, "forward"), "vae": (pipe.vae, "decode"), "vocoder": (pipe.vocoder, "forward"),
            "ranking": (pipe, "score_waveforms"),
        }
    c = pipe.conditioner
    return {
        "clap_text": (c.clap, "get_text_features"), "t5": (c.t5, "forward"), "projection": (c.projection, "forward"),
        "gpt2": (c.gpt2, "generate"), "unet": (pipe.runners, "unet"), "vae": (pipe.runners, "decode_mel"),
        "vocoder": (pipe.vocoder, "forward"), "ranking": (pipe, "rank_candidates"),
    }


def synchronize(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_stages(stages: dict, device: str, totals: dict):
    """Wrap each stage's method to add its synchronised wall time to totals[name]; returns an undo."""
    originals = []
    for name, (owner, method) in stages.items():
        original = getattr(owner, method)
        totals[name] = {"seconds": 0.0, "calls": 0}

        def timed(*args, _original=original, _name=name, **kwargs):
            synchronize(device)
            started = time.perf_counter()
            result = _original(*args, **kwargs)
            synchronize(device)
            totals[_name]["seconds"] += time.perf_counter() - started
            totals[_name]["calls"] += 1
            return result

        originals.append((owner, method, original, method in vars(owner)))
        setattr(owner, method, timed)

    def undo():
        for owner, method, original, own_attribute in originals:
            if own_attribute:  # an attribute of the object itself (the pipeline's runners): put it back
                setattr(owner, method, original)
            else:  # the instance attribute goes; the class's method shows through again
                delattr(owner, method)

    return undo


def load(side: str, precision: str, args):
    import torch

    dtype = None if precision == "default" else getattr(torch, precision)
    if side == "ours":
        from audioldm2_lite import AudioLDM2Pipeline

        pipe = AudioLDM2Pipeline.from_pretrained(args.checkpoint, device=args.device, dtype=dtype)
        print(f"PRECISION {pipe.precision.describe()} [{pipe.precision.why}]", flush=True)
        if args.compile or args.cuda_graphs:
            pipe.optimize(compile=args.compile, cuda_graphs=args.cuda_graphs)
        return pipe, {"scheduler": args.scheduler}
    sys.path.insert(0, str(HERE.parent / "tests"))
    import diffusers
    from reference import diffusers_pipeline

    from audioldm2_lite.generation.samplers import SAMPLERS

    pipe = diffusers_pipeline(args.checkpoint, dtype=dtype or torch.float32).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    spec = SAMPLERS[args.scheduler]  # diffusers' scheduler of the same name, as users swap it in
    extra = {"skip_prk_steps": True} if args.scheduler == "pndm" else {}
    pipe.scheduler = getattr(diffusers, spec.scheduler_class).from_config(pipe.scheduler.config,
                                                                          **dict(spec.options), **extra)
    if args.compile:  # diffusers' own best: a compiled UNet (the HF blog's recipe)
        pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)
    return pipe, {}


def child(side: str, precision: str, args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    pipe, extra = load(side, precision, args)
    load_s = time.perf_counter() - started

    def call():
        generator = torch.Generator(args.device).manual_seed(0)
        return pipe(PROMPT, negative_prompt=NEGATIVE, audio_length_in_s=args.seconds,
                    num_inference_steps=args.steps, guidance_scale=3.5, num_waveforms_per_prompt=args.candidates,
                    generator=generator, **extra)

    output = None
    for _ in range(args.warmup):
        output = call()
    audio = output.audios if output is not None else call().audios
    finite = bool(np.isfinite(np.asarray(audio)).all())
    np.save(args.waveform, np.asarray(audio, dtype=np.float32))  # for the parent's drift between runs
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        synchronize(args.device)
        t0 = time.perf_counter()
        call()
        synchronize(args.device)
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if args.device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    stages = {}
    if not (args.compile or args.cuda_graphs):  # wrapping compiled code would time its recompilation
        undo = time_stages(stage_callables(side, pipe), args.device, stages)
        call()
        undo()
    return {"side": side, "precision": precision, "finite": finite, "times": times, "peak_bytes": peak,
            "load_s": load_s, "stages": stages, "threads": torch.get_num_threads()}


def machine() -> str:
    """The CPU (and GPU) in words, for the tables of scripts/BENCHMARKS.md."""
    import torch

    from audioldm2_lite.generation.precision import native_bf16_cpu

    name = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        name = names[0] if names else name
    flags = [f for f in ("avx512_bf16", "amx_bf16") if torch.cpu.get_capabilities().get(f)] \
        if hasattr(torch.cpu, "get_capabilities") else []
    text = (f"{name}, {os.cpu_count()} logical CPUs, native bf16: {native_bf16_cpu()} ({', '.join(flags) or '-'}), "
            f"PyTorch {torch.__version__}")
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()}"
    return text


def default_runs(args) -> list[str]:
    if args.dtype:
        return [f"ours:{args.dtype}", f"diffusers:{args.dtype}"]
    if args.device.startswith("cuda"):
        return ["ours:default", "diffusers:float16"]
    return ["ours:float32", "ours:default", "diffusers:float32", "diffusers:bfloat16"]


def drift(waveform: np.ndarray, reference: np.ndarray) -> float:
    """Relative L2 distance of two runs' waveforms (the same seed and settings)."""
    return float(np.linalg.norm(waveform - reference) / np.linalg.norm(reference))


def main():
    from audioldm2_lite.generation.samplers import SAMPLERS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="hub-layout folder (default: build a full-size random one)")
    parser.add_argument("--tiny", action="store_true", help="build and use the tiny random checkpoint (CI-sized)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="run both sides in this dtype only (default: see --runs)")
    parser.add_argument("--runs", default=None,
                        help="comma-separated SIDE:PRECISION (ours|diffusers : default|float32|bfloat16|float16); "
                             "default on the CPU: ours:float32,ours:default,diffusers:float32,diffusers:bfloat16")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scheduler", default="dpmsolver++", choices=list(SAMPLERS))
    parser.add_argument("--seconds", type=float, default=10.24)
    parser.add_argument("--candidates", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of ours / diffusers")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per process")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (both sides)")
    parser.add_argument("--cuda-graphs", action="store_true", help="ours: replay every stage as a CUDA graph")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--side", choices=["ours", "diffusers"], help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--waveform", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="also write all numbers as JSON to stdout's last line")
    args = parser.parse_args()

    if args.side:  # a child process: one side, one JSON line
        print("RESULT " + json.dumps(child(args.side, args.precision, args)), flush=True)
        return

    if not args.checkpoint:
        sys.path.insert(0, str(HERE))
        out = Path(tempfile.mkdtemp(prefix="audioldm2-bench-"))
        if args.tiny:
            from make_tiny_checkpoint import make_tiny_checkpoint

            args.checkpoint = str(make_tiny_checkpoint(out / "tiny"))
        else:
            from make_random_checkpoint import make_random_checkpoint

            args.checkpoint = str(make_random_checkpoint(HERE / "checkpoint_configs" / "audioldm2", out / "random"))
    forwarded = [a for a in sys.argv[1:] if a != "--tiny"]
    if "--checkpoint" not in forwarded:
        forwarded += ["--checkpoint", args.checkpoint]
    runs = args.runs.split(",") if args.runs else default_runs(args)
    for run in runs:
        side, _, precision = run.partition(":")
        if side not in ("ours", "diffusers") or precision not in ("default", "float32", "bfloat16", "float16") or \
                (side == "diffusers" and precision == "default"):
            sys.exit(f"unknown run '{run}': use ours:default, ours:float32, diffusers:bfloat16, ...")
    waveforms = Path(tempfile.mkdtemp(prefix="audioldm2-bench-waveforms-"))

    results = {run: [] for run in runs}
    precisions = {}
    for round_index in range(args.rounds):
        for run in runs:
            side, _, precision = run.partition(":")
            wave = waveforms / f"{run.replace(':', '-')}.npy"
            process = subprocess.run([sys.executable, __file__, *forwarded, "--side", side, "--precision", precision,
                                      "--waveform", str(wave)], capture_output=True, text=True,
                                     env={**os.environ, "TQDM_DISABLE": "1"})
            lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
            if process.returncode != 0 or not lines:
                sys.exit(f"{run} failed:\n{process.stderr[-3000:]}")
            results[run].append(json.loads(lines[-1][len("RESULT "):]))
            described = [line[len("PRECISION "):] for line in process.stdout.splitlines() if line.startswith("PRECISION ")]
            precisions[run] = described[0] if described else precision
            print(f"round {round_index + 1} {run:18s} " + " ".join(f"{t:.3f}s" for t in results[run][-1]["times"]),
                  flush=True)

    threads = results[runs[0]][-1]["threads"]
    print(f"\nmachine: {machine()}\ncheckpoint {args.checkpoint}\ndevice {args.device}  steps {args.steps} "
          f"({args.scheduler})  audio {args.seconds}s  candidates {args.candidates}  guidance 3.5 with negative prompt"
          f"  compile {args.compile}  cuda_graphs {args.cuda_graphs}  threads {threads}")
    for run in runs:
        print(f"  {run}: {precisions[run]}")
    summary = {}
    for run in runs:
        side = run.partition(":")[0]
        times = [t for result in results[run] for t in result["times"]]
        reference = waveforms / f"{side}-float32.npy"
        run_drift = None
        if not run.endswith(":float32") and reference.exists():
            run_drift = drift(np.load(waveforms / f"{run.replace(':', '-')}.npy"), np.load(reference))
        summary[run] = {"median_s": statistics.median(times), "peak_bytes": max(r["peak_bytes"] for r in results[run]),
                        "drift": run_drift, "finite": all(r["finite"] for r in results[run])}
    diffusers_runs = [run for run in runs if run.startswith("diffusers:")]
    ours_runs = [run for run in runs if run.startswith("ours:")]
    best = min(diffusers_runs, key=lambda run: summary[run]["median_s"]) if diffusers_runs else None
    headline = "ours:default" if "ours:default" in runs else (ours_runs[0] if ours_runs else None)

    # per stage (seconds, from the instrumented eager call of the last round)
    stages = {run: results[run][-1]["stages"] for run in runs}
    names = list(next((s for s in stages.values() if s), {}))
    if names:
        print("\n" + f"{'stage':12s}" + "".join(f"{run:>20s}" for run in runs))
        for stage in names:
            row = [stages[run].get(stage, {"seconds": float("nan")})["seconds"] for run in runs]
            print(f"{stage:12s}" + "".join(f"{value:20.4f}" for value in row))
    else:
        print("(per-stage times come from eager runs only)")
    memory = "peak_gpu_memory" if args.device.startswith("cuda") else "peak_rss"
    print(f"\n{'run':20s} {'median (s)':>11s} {'vs ' + (best or '-'):>26s} {memory + ' (GiB)':>22s} {'drift':>8s}")
    for run in runs:
        entry = summary[run]
        ratio = summary[best]["median_s"] / entry["median_s"] if best else float("nan")
        shown_drift = "-" if entry["drift"] is None else f"{entry['drift']:.4f}"
        print(f"{run:20s} {entry['median_s']:11.3f} {ratio:25.2f}x {entry['peak_bytes'] / 2**30:22.2f} {shown_drift:>8s}")
        if not entry["finite"]:
            print(f"WARNING: {run} produced NaN or inf audio")
    for side, run in (("ours", headline), ("diffusers", best)):
        if run:
            print(f"total_{side}: {summary[run]['median_s']:.4f} s ({run})   {memory}_{side}: "
                  f"{summary[run]['peak_bytes'] / 2**30:.2f} GiB")
    if args.json:
        print(json.dumps({"args": vars(args), "machine": machine(), "precisions": precisions, "results": results,
                          "summary": summary}))
    if headline and best:
        print(f"speedup_vs_diffusers: {summary[best]['median_s'] / summary[headline]['median_s']:.2f}")


if __name__ == "__main__":
    main()
