"""Training speed and memory: steps/s and peak memory of one optimizer step of audioldm2-lite-train.

    python scripts/benchmark_training.py                       # the tiny checkpoint, built here
    python scripts/benchmark_training.py --model DIR --batch-sizes 1 2 --seconds 10.24

For each batch size, full fine-tuning vs LoRA (rank 8), with and without gradient checkpointing, it
times the loop's own step (training/train.py: `diffusion_loss`, backward, clipping, AdamW) on random latents
and conditioning of the clip length's shape (the cached data's shapes; encoding is a one-time cost
and not timed). Each configuration runs in a fresh process, so its peak memory is its own: on CUDA
the peak allocated by torch, on the CPU the process's peak resident set (which includes ~0.3 GB
for Python and torch themselves).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(model: str, batch: int, lora: bool, checkpointing: bool, seconds: float, steps: int, device: str,
            dtype: str) -> dict:
    import torch

    from audioldm2_lite.generation.loading import load_component, load_config
    from audioldm2_lite.generation.lora import apply_lora
    from audioldm2_lite.generation.mel import MelConfig
    from audioldm2_lite.generation.samplers import SchedulerConfig, alphas_cumprod
    from audioldm2_lite.training.train import checkpoint_unet_blocks, diffusion_loss

    device = torch.device(device)
    unet = load_component(model, "unet", device=device)
    parameters = apply_lora(unet, 8) if lora else list(unet.requires_grad_(True).parameters())
    if checkpointing:
        checkpoint_unet_blocks(unet)
    optimizer = torch.optim.AdamW(parameters, lr=1e-5)
    alpha_bar = alphas_cumprod(SchedulerConfig.from_hub(load_config(model, "scheduler"))).to(device)
    mel = MelConfig.from_hub(load_config(model, "vocoder"), load_config(model, "vae"))
    frames = mel.num_frames(round(seconds * mel.sampling_rate))
    c = unet.config
    gpt2_dim, t5_dim = [d for d in c.cross_attention_dim[1] if d is not None][:2]
    latents = torch.randn(batch, c.in_channels, frames // mel.frames_multiple, mel.n_mels // mel.frames_multiple,
                          device=device)  # (B, 8, T/4, 16)
    conditioning = (torch.randn(batch, 8, gpt2_dim, device=device), torch.randn(batch, 32, t5_dim, device=device),
                    torch.ones(batch, 32, dtype=torch.long, device=device))  # GPT-2 states, 32 T5 tokens
    autocast = torch.autocast(device.type, dtype=getattr(torch, dtype), enabled=dtype != "float32")

    def step():
        with autocast:
            loss = diffusion_loss(unet, latents, conditioning, torch.randn_like(latents),
                                  torch.randint(0, 1000, (batch,), device=device), alpha_bar, "epsilon")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocations, optimizer state
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        peak_gib = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux
    return {"steps_per_s": steps / elapsed, "peak_gib": peak_gib}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="hub-layout folder (default: a tiny checkpoint built here)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=None, help="clip length (default: the UNet's sample_size)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (after one warm-up)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--dtype", default=None, help="autocast dtype (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--measure", nargs=3, metavar=("BATCH", "LORA", "CHECKPOINTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")

    if args.measure:  # one configuration, in this fresh process
        batch, lora, checkpointing = int(args.measure[0]), args.measure[1] == "1", args.measure[2] == "1"
        print(json.dumps(measure(args.model, batch, lora, checkpointing, args.seconds, args.steps, args.device,
                                 dtype)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from make_tiny_checkpoint import make_tiny_checkpoint

            model = str(make_tiny_checkpoint(Path(tmp) / "tiny"))
        if args.seconds is None:  # the UNet's training size: sample_size latent frames of 4 hops
            from audioldm2_lite.generation.loading import load_config

            vocoder = load_config(model, "vocoder")
            args.seconds = load_config(model, "unet")["sample_size"] * 4 * 160 / vocoder["sampling_rate"]
        print(f"model {model}, {args.seconds:.2f} s clips, device {args.device}, autocast {dtype}, "
              f"{args.steps} timed steps")
        print(f"{'batch':>5} {'mode':>5} {'ckpt':>5} {'steps/s':>9} {'clips/s':>9} {'peak GiB':>8}")
        for batch in args.batch_sizes:
            for lora in (False, True):
                for checkpointing in (False, True):
                    command = [sys.executable, __file__, "--model", model, "--seconds", str(args.seconds),
                               "--steps", str(args.steps), "--device", args.device, "--dtype", dtype,
                               "--measure", str(batch), str(int(lora)), str(int(checkpointing))]
                    result = subprocess.run(command, capture_output=True, text=True)
                    if result.returncode != 0:
                        print(f"{batch:>5} {'lora' if lora else 'full':>5} {'on' if checkpointing else 'off':>5} "
                              f"failed: {result.stderr.strip().splitlines()[-1]}")
                        continue
                    r = json.loads(result.stdout.strip().splitlines()[-1])
                    print(f"{batch:>5} {'lora' if lora else 'full':>5} {'on' if checkpointing else 'off':>5} "
                          f"{r['steps_per_s']:>9.3f} {r['steps_per_s'] * batch:>9.2f} {r['peak_gib']:>8.2f}",
                          flush=True)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
