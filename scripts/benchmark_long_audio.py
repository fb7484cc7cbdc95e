"""Cost of decoding long audio in windows (long_audio.py): the VAE decoder chunked vs in one pass.

    python scripts/benchmark_long_audio.py --model path/to/checkpoint --latent-frames 1024 --chunk 768

Prints both times, their ratio and the largest relative difference of the two mel spectrograms.
Latent frames: 25 per second of audio; the pipeline decodes in chunks of 768 (30.72 s) past that.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="hub id or hub-layout folder (its vae/ is used)")
    parser.add_argument("--latent-frames", type=int, default=1024, help="25 per second of audio (default 1024)")
    parser.add_argument("--chunk", type=int, default=768, help="latent frames per window (default 768)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)

    from reference import max_rel_error

    from audioldm2_lite.generation.loading import load_component, resolve_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    vae = load_component(resolve_checkpoint(args.model, ("vae",)), "vae")
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, vae.config.latent_channels, args.latent_frames, 16, generator=generator)
    with torch.no_grad():
        one_pass, one_pass_s = timed(lambda: vae.decode(latents))
        chunked, chunked_s = timed(lambda: vae.decode(latents, chunk_frames=args.chunk))
    print(f"{args.latent_frames} latent frames ({args.latent_frames * 0.04:.2f} s), windows of {args.chunk}: "
          f"one pass {one_pass_s:.1f} s, chunked {chunked_s:.1f} s, ratio {chunked_s / one_pass_s:.1f}x, "
          f"max_rel_error {max_rel_error(chunked, one_pass):.1e}")


if __name__ == "__main__":
    main()
