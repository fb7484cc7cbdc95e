"""Count the kernels of one guided UNet step, the way the pipeline ran it before and the way it runs it now.

    python scripts/profile_unet.py [--config scripts/checkpoint_configs/audioldm2/unet/config.json]
                                   [--seconds 10.24] [--device cpu|cuda] [--dtype float32|float16]

"before": the core's plain UNet on [x, x], the conditioning's keys and values computed inside the call (every
step); "now": the engine's `GuidedUNet`, its `context` computed once per generation (outside the step) and
`repeats=2` (the layers before the first attention run once). Random weights from the config: the count does not
depend on them. On the CPU a kernel is an operator the model's Python code calls (a top-level aten
operator of the profile; views and empty allocations are not counted); on CUDA it is a GPU kernel launch. Also prints the time per step (median of 3) and the max relative
difference of the two outputs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from audioldm2_lite.generation.guided_unet import GuidedUNet
from audioldm2_lite.models.unet import UNet, UNetConfig
from timing import seconds_per_call

ROOT = Path(__file__).resolve().parents[1]
# operators that only make a new view or an empty tensor: no arithmetic, not counted as kernels on the CPU
METADATA_OPS = {
    "aten::view", "aten::_unsafe_view", "aten::reshape", "aten::as_strided", "aten::empty", "aten::empty_strided",
    "aten::transpose", "aten::permute", "aten::expand", "aten::t", "aten::unsqueeze", "aten::squeeze", "aten::slice",
    "aten::select", "aten::split", "aten::chunk", "aten::narrow", "aten::alias", "aten::detach", "aten::lift_fresh",
    "aten::resolve_conj", "aten::resolve_neg", "aten::result_type", "aten::contiguous",
}


def count_kernels(step, device: torch.device) -> int:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    if device.type == "cuda":
        return sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    top_level = lambda e: e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")
    return sum(1 for e in events if e.name.startswith("aten::") and top_level(e) and e.name not in METADATA_OPS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "scripts/checkpoint_configs/audioldm2/unet/config.json"))
    parser.add_argument("--seconds", type=float, default=10.24)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    config = UNetConfig.from_hub(json.loads(Path(args.config).read_text()))
    model = UNet(config).to(device, dtype).eval()
    frames = int(args.seconds * 100) // 4  # latent frames: 100 mel frames per second, VAE factor 4
    gpt2_dim, t5_dim = [d for d in config.cross_attention_dim[1] if d is not None][:2]
    x = torch.randn(1, config.in_channels, frames, 16, device=device, dtype=dtype)
    t = torch.tensor(500, device=device)
    conditioning = (torch.randn(2, 8, gpt2_dim, device=device, dtype=dtype),
                    torch.randn(2, 20, t5_dim, device=device, dtype=dtype),
                    torch.ones(2, 20, dtype=torch.long, device=device))
    with torch.no_grad():
        guided = GuidedUNet(model)
        context = guided.context(*conditioning)
        before = lambda: model(torch.cat([x, x]), t, *conditioning)
        now = lambda: guided(x, t, context, 2)
        before(), now()  # warm-up
        rows = {name: (count_kernels(step, device), seconds_per_call(step, device)) for name, step in
                (("before", before), ("now", now))}
        difference = ((before() - now()).abs().max() / before().abs().max()).item()
    print(f"UNet {Path(args.config).parent.parent.name}, {frames} latent frames, guided batch 2, {device}, {args.dtype}")
    for name, (kernels, seconds) in rows.items():
        print(f"  {name:6s}: {kernels:5d} kernels per step, {seconds * 1e3:8.1f} ms per step")
    print(f"  ratio : {rows['before'][1] / rows['now'][1]:.3f}x faster; max relative difference {difference:.1e}")


if __name__ == "__main__":
    main()
