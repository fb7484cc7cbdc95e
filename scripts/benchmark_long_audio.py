"""Decoding long audio: time per audio second and peak memory, in one pass and in tiles.

    python scripts/benchmark_long_audio.py --model path/to/checkpoint --seconds 10.24 40.96 163.84 300

For each length, `pipe.decode` (VAE decoder and vocoder, what the pipeline runs after denoising) on a
random latent, once in one pass and once in tiles (the VAE layer by layer over time tiles, the vocoder
in windows: long_audio.py), forced with `max_memory` set just under what one pass needs, which picks the
largest tiles that fit (memory.py; tiles of 256 latent frames from about 35 s on). It prints a Markdown
table: wall and CPU time (the process's, which a shared machine disturbs less than the wall clock), CPU
seconds per audio second and that relative to the first length's one pass, the VAE's mid block (its
attention spans the whole latent, so its cost per second grows with the length) and the rest per audio
second relative to the first one pass, the peak RSS during the call and above the RSS before it, the
memory estimate the pipeline plans with (memory.py), and how far the tiled waveform is from one pass.

Only the VAE and the vocoder are loaded. Peak RSS is read from /proc (Linux), reset before each call.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

GIB = 2**30


def proc_status(field: str) -> int | None:
    """A byte count from /proc/self/status (VmRSS, VmHWM), or None off Linux."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def reset_peak_rss() -> None:
    """Make VmHWM (the peak RSS) start again from the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class StageTimer:
    """CPU time spent inside a module's forward, accumulated through hooks."""

    def __init__(self, module):
        self.seconds, self.started = 0.0, None
        module.register_forward_pre_hook(lambda *_: setattr(self, "started", time.process_time()))
        module.register_forward_hook(lambda *_: setattr(self, "seconds", self.seconds + time.process_time() - self.started))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="hub id or hub-layout folder (its vae/ and vocoder/ are used)")
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.24, 40.96, 163.84],
                        help="audio lengths to decode (default 10.24 40.96 163.84)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)

    from reference import max_rel_error

    from audioldm2_lite.generation.hub import resolve_checkpoint
    from audioldm2_lite.generation.loading import load_component
    from audioldm2_lite.generation.memory import decode_bytes, plan_decode
    from audioldm2_lite.generation.pipeline import AudioLDM2Pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    root = resolve_checkpoint(args.model, ("vae", "vocoder"))
    vae, vocoder = load_component(root, "vae"), load_component(root, "vocoder")
    # decoding needs only these two stages; the pipeline's constructor only keeps the others
    pipe = AudioLDM2Pipeline(SimpleNamespace(encode_tokens=None), None, vae, vocoder, None, device="cpu")
    mid_block = StageTimer(vae.decoder.mid_block)
    bins = vocoder.config.model_in_dim // vae.upsampling_factor  # latent bins: 16
    with torch.no_grad():  # first calls set up the CPU kernels: not part of any measurement
        for max_memory in (2**62, 0):
            pipe.decode(torch.randn(args.batch, vae.config.latent_channels, 32, bins), max_memory=max_memory)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, batch {args.batch}; "
          f"RSS before decoding {(proc_status('VmRSS') or 0) / GIB:.2f} GiB")
    print("| audio (s) | decoding | wall (s) | CPU (s) | CPU per audio second (s) | vs first one pass "
          "| mid block CPU (s) | rest vs first one pass | peak RSS (GiB) | above start (GiB) | estimate (GiB) "
          "| max rel. error vs one pass |")
    print("| " + " | ".join(["---"] * 12) + " |")
    first = None  # (CPU per second, rest per second) of the first length's one pass
    generator = torch.Generator().manual_seed(0)
    for seconds in args.seconds:
        samples = int(seconds * pipe.sampling_rate)
        frames = round(seconds * pipe.sampling_rate / pipe.hop_length / pipe.vae_scale_factor)
        latents = torch.randn(args.batch, vae.config.latent_channels, frames, bins, generator=generator)
        one_pass_bytes = decode_bytes(vae, vocoder, args.batch, frames, bins, torch.float32)
        one_pass = None
        for max_memory in (2**62, one_pass_bytes - 1):
            plan = plan_decode(vae, vocoder, latents.shape, torch.float32, "cpu", max_memory)
            mid_block.seconds = 0.0
            start_rss = proc_status("VmRSS") or 0
            reset_peak_rss()
            wall, cpu = time.perf_counter(), time.process_time()
            with torch.no_grad():
                audio = pipe.decode(latents * vae.config.scaling_factor, samples, max_memory=max_memory)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            peak = proc_status("VmHWM") or 0  # 0 off Linux
            per_second, rest = cpu / seconds, (cpu - mid_block.seconds) / seconds
            first = first or (per_second, rest)
            error = "-" if one_pass is None else f"{max_rel_error(audio, one_pass):.1e}"
            one_pass = audio if one_pass is None else one_pass
            label = "one pass" if plan.one_pass else f"tiles of {plan.tile_frames}"
            print(f"| {seconds:g} | {label} | {wall:.1f} | {cpu:.1f} | {per_second:.3f} | {per_second / first[0]:.2f}x "
                  f"| {mid_block.seconds:.1f} | {rest / first[1]:.2f}x | {peak / GIB:.2f} | {(peak - start_rss) / GIB:.2f} "
                  f"| {plan.estimate / GIB:.2f} | {error} |", flush=True)
            del audio

if __name__ == "__main__":
    main()
