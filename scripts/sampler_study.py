"""How many steps does each sampler need? One prompt and seed through every sampler at 5, 10, 20 and 50 steps.

    python scripts/sampler_study.py [--checkpoint cvssp/audioldm2] [--prompt "..."] [--seed 0] [--seconds 10.24]
        [--samplers ddim euler unipc ...] [--steps 5 10 20 50] [--reference-steps 200] [--karras]
        [--guidance 3.5] [--device cpu] [--dtype float32] [--json study.json]

Every run starts from the same initial noise and the same prompt conditioning (computed once). The reference
is DDIM at `--reference-steps` (200, the checkpoints' default) from that noise. For each sampler and step
count it prints:
- `latent`: relative distance of the final latent to the reference's, ||x - x_ref|| / ||x_ref||;
- `mel`: mean absolute difference of the decoded log-mel spectrograms (the VAE's output, natural-log units);
- `clap`: CLAP audio-text similarity of the waveform to the prompt (the checkpoint's own CLAP, as ranking);
- `calls`: UNet calls (Heun takes two per step, PNDM one extra), and `seconds` of denoising.

The stochastic samplers (Euler ancestral, DPM-Solver++ SDE) follow other paths than the ODE samplers by
design: their distance to the deterministic reference stays large at any step count. Small distances mean
"the same audio as 200 DDIM steps from this noise", not better audio; listen, or score many prompts with
scripts/sweep_recipes.py. With random weights (`--checkpoint` a tiny test checkpoint) the numbers say nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a clone without installing


def denoise(pipe, noise, conditioning, sampler: str, steps: int, args):
    """The final latent of one run and its seconds."""
    import torch

    start = time.perf_counter()
    latents = noise
    generator = torch.Generator().manual_seed(args.seed + 1)  # the stochastic samplers' draws
    karras = args.karras if "karras" in SAMPLERS[sampler].noise_levels else None
    for _, latents in pipe.generate_latents(noise.clone(), conditioning, steps, args.guidance, sampler,
                                            generator=generator, karras_sigmas=karras):
        pass
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    return latents, time.perf_counter() - start


def main(argv=None) -> int:
    global SAMPLERS
    from audioldm2_lite.generation.samplers import SAMPLERS
    from audioldm2_lite.generation.samplers.extras import unet_calls

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="cvssp/audioldm2", help="hub id or local folder")
    parser.add_argument("--prompt", default="A hammer is hitting a wooden surface")
    parser.add_argument("--negative-prompt", default="low quality")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=None, help="default: the model's (10.24)")
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--steps", nargs="+", type=int, default=[5, 10, 20, 50])
    parser.add_argument("--reference-steps", type=int, default=200)
    parser.add_argument("--karras", action="store_true", help="Karras noise levels where the sampler offers them")
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)

    import torch

    from audioldm2_lite import AudioLDM2Pipeline

    pipe = AudioLDM2Pipeline.from_pretrained(args.checkpoint, device=args.device, dtype=getattr(torch, args.dtype))
    seconds = args.seconds or pipe.limits().default_seconds
    frames, num_samples = pipe.latent_frames(seconds)
    with torch.inference_mode():
        conditioning = pipe.encode_prompt([args.prompt], [args.negative_prompt],
                                          do_classifier_free_guidance=args.guidance > 1)
        noise = pipe.prepare_latents(1, frames, torch.Generator().manual_seed(args.seed))

        def measure(latents):
            mel = pipe.decode_mel(latents).float()  # (1, T, 64)
            audio = pipe.decode(latents, num_samples)  # (1, samples)
            _, score = pipe.rank_candidates(args.prompt, audio, 1)
            return mel, float(score[0])

        reference, _ = denoise(pipe, noise, conditioning, "ddim", args.reference_steps, args)
        reference_mel, reference_clap = measure(reference)
        print(f"reference: DDIM {args.reference_steps} steps, clap {reference_clap:.4f}")
        print(f"{'sampler':20s} {'steps':>5s} {'calls':>5s} {'latent':>8s} {'mel':>8s} {'clap':>8s} {'seconds':>8s}")
        rows = []
        for sampler in args.samplers:
            for steps in args.steps:
                latents, elapsed = denoise(pipe, noise, conditioning, sampler, steps, args)
                mel, clap = measure(latents)
                row = dict(sampler=sampler, steps=steps, calls=unet_calls(sampler, steps),
                           latent=float((latents.float() - reference.float()).norm() / reference.float().norm()),
                           mel=float((mel - reference_mel).abs().mean()), clap=clap, seconds=elapsed)
                rows.append(row)
                print(f"{sampler:20s} {steps:5d} {row['calls']:5d} {row['latent']:8.4f} {row['mel']:8.4f} "
                      f"{clap:8.4f} {elapsed:8.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(dict(prompt=args.prompt, seed=args.seed, reference_steps=args.reference_steps,
                                             reference_clap=reference_clap, rows=rows), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
