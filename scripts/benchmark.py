"""Time audioldm2_lite against diffusers' AudioLDM2Pipeline with identical settings, side by side.

    python scripts/benchmark.py [--checkpoint DIR | --tiny] [--device cuda] [--dtype float16]
        [--steps 20] [--scheduler dpmsolver++] [--seconds 10.24] [--candidates 1] [--rounds 2] [--repeats 3]
        [--compile] [--cuda-graphs] [--threads N]

Each side runs in its own process (so peak RSS is its own), alternating ours / diffusers for `--rounds`
rounds; each process warms up, then times `--repeats` full calls (prompt to waveform) and one more call with
per-stage hooks (text encoders, GPT-2, UNet steps, VAE, vocoder, ranking). Printed last:
`speedup_vs_diffusers: X.XX` = diffusers' median total / ours. Without --checkpoint a full-size random-weight
checkpoint is built from scripts/checkpoint_configs/audioldm2 (same shapes as cvssp/audioldm2).
"""

from __future__ import annotations

import argparse
import json
import os
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
        "gpt2": (c.gpt2, "generate"), "unet": (pipe.unet, "forward"), "vae": (pipe.runners, "decode_mel"),
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


def load(side: str, args):
    import torch

    dtype = getattr(torch, args.dtype)
    if side == "ours":
        from audioldm2_lite import AudioLDM2Pipeline

        pipe = AudioLDM2Pipeline.from_pretrained(args.checkpoint, device=args.device, dtype=dtype)
        if args.compile or args.cuda_graphs:
            pipe.optimize(compile=args.compile, cuda_graphs=args.cuda_graphs)
        return pipe, {"scheduler": args.scheduler}
    sys.path.insert(0, str(HERE.parent / "tests"))
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
    from reference import diffusers_pipeline

    pipe = diffusers_pipeline(args.checkpoint, dtype=dtype).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    scheduler_class = DPMSolverMultistepScheduler if args.scheduler == "dpmsolver++" else DDIMScheduler
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    if args.compile:  # diffusers' own best: a compiled UNet (the HF blog's recipe)
        pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)
    return pipe, {}


def child(side: str, args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    pipe, extra = load(side, args)
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
    return {"side": side, "finite": finite, "times": times, "peak_bytes": peak, "load_s": load_s, "stages": stages}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="hub-layout folder (default: build a full-size random one)")
    parser.add_argument("--tiny", action="store_true", help="build and use the tiny random checkpoint (CI-sized)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scheduler", default="dpmsolver++", choices=["ddim", "dpmsolver++"])
    parser.add_argument("--seconds", type=float, default=10.24)
    parser.add_argument("--candidates", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of ours / diffusers")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per process")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (both sides)")
    parser.add_argument("--cuda-graphs", action="store_true", help="ours: replay every stage as a CUDA graph")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--side", choices=["ours", "diffusers"], help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="also write all numbers as JSON to stdout's last line")
    args = parser.parse_args()

    if args.side:  # a child process: one side, one JSON line
        print("RESULT " + json.dumps(child(args.side, args)), flush=True)
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

    results = {"ours": [], "diffusers": []}
    for round_index in range(args.rounds):
        for side in ("ours", "diffusers"):
            process = subprocess.run([sys.executable, __file__, *forwarded, "--side", side], capture_output=True,
                                     text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
            if process.returncode != 0 or not lines:
                sys.exit(f"{side} failed:\n{process.stderr[-3000:]}")
            results[side].append(json.loads(lines[-1][len("RESULT "):]))
            print(f"round {round_index + 1} {side:9s} " + " ".join(f"{t:.3f}s" for t in results[side][-1]["times"]),
                  flush=True)

    summary = {}
    print(f"\ncheckpoint {args.checkpoint}\ndevice {args.device}  dtype {args.dtype}  steps {args.steps} "
          f"({args.scheduler})  audio {args.seconds}s  candidates {args.candidates}  guidance 3.5 with negative prompt"
          f"  compile {args.compile}  cuda_graphs {args.cuda_graphs}  threads {args.threads or 'default'}")
    print(f"{'stage':12s} {'ours (s)':>10s} {'diffusers (s)':>14s} {'ratio':>7s}")
    last = {side: runs[-1]["stages"] for side, runs in results.items()}
    for stage in last["diffusers"]:
        ours = last["ours"].get(stage, {"seconds": float("nan")})["seconds"]
        theirs = last["diffusers"][stage]["seconds"]
        print(f"{stage:12s} {ours:10.4f} {theirs:14.4f} {theirs / ours if ours else float('nan'):7.2f}")
    if not last["diffusers"]:
        print("(per-stage times come from eager runs only)")
    for side, runs in results.items():
        times = [t for run in runs for t in run["times"]]
        summary[side] = {"median_s": statistics.median(times), "peak_bytes": max(run["peak_bytes"] for run in runs)}
    memory = "peak_gpu_memory" if args.device.startswith("cuda") else "peak_rss"
    for side in ("ours", "diffusers"):
        if not all(run["finite"] for run in results[side]):
            print(f"WARNING: {side} produced NaN or inf audio")
        print(f"total_{side}: {summary[side]['median_s']:.4f} s   {memory}_{side}: "
              f"{summary[side]['peak_bytes'] / 2**30:.2f} GiB")
    if args.json:
        print(json.dumps({"args": vars(args), "results": results, "summary": summary}))
    print(f"speedup_vs_diffusers: {summary['diffusers']['median_s'] / summary['ours']['median_s']:.2f}")


if __name__ == "__main__":
    main()
