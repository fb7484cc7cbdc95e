"""Which dtype each stage runs in: the precision recipe.

AudioLDM 2 has four stages with different needs. The UNet does nearly all the work (a guided step per
sampler step); the text stages (CLAP, T5, projection, GPT-2) run once on a few tokens; the VAE decoder and the
HiFi-GAN vocoder run once on the whole spectrogram. Each can run in its own dtype: the pipeline casts the
latents to the UNet's dtype and to the VAE's at decoding, and the mel to the vocoder's.

The default:
- CUDA: float16 everywhere (T5 keeps its overflowing feed-forward in float32 by itself, t5.py).
- A CPU that multiplies bfloat16 natively (x86 AVX512-BF16 or AMX-BF16: Intel Xeon since Cooper / Sapphire
  Rapids, AMD Zen 4 and later; Arm cores with the BF16 extension): the UNet, the text stages and the vocoder in
  bfloat16, the VAE decoder in float32 (`CPU_BF16_RECIPE`; scripts/BENCHMARKS.md has the measurements).
- Any other CPU, and MPS: float32 everywhere. Without native bf16 instructions torch emulates bfloat16
  matmuls through float32 conversions, which is slower than float32 itself.
An explicit `dtype=` runs every stage in it; a `Precision` gives each stage its own.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import torch

STAGE_NAMES = {"unet": "UNet", "text": "text", "vae": "VAE", "vocoder": "vocoder"}


@dataclass(frozen=True)
class Precision:
    """The dtype of each stage's weights and activations."""

    text: torch.dtype = torch.float32  # CLAP text tower, T5, projection, GPT-2
    unet: torch.dtype = torch.float32  # also the latents' dtype (the pipeline's `dtype`)
    vae: torch.dtype = torch.float32  # the decoder (and the encoder, for editing)
    vocoder: torch.dtype = torch.float32
    why: str = ""  # what chose it, for the one line a program prints: "native bf16 CPU", "--dtype"

    @classmethod
    def uniform(cls, dtype: torch.dtype, why: str = "") -> "Precision":
        return cls(dtype, dtype, dtype, dtype, why)

    def describe(self) -> str:
        """'bfloat16 (UNet, text), float32 (VAE, vocoder)', or 'float32' when every stage agrees."""
        groups: dict[torch.dtype, list[str]] = {}
        for field, name in STAGE_NAMES.items():
            groups.setdefault(getattr(self, field), []).append(name)
        if len(groups) == 1:
            return dtype_name(next(iter(groups)))
        return ", ".join(f"{dtype_name(dtype)} ({', '.join(names)})" for dtype, names in groups.items())


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def native_bf16_cpu() -> bool:
    """Whether this CPU has bfloat16 multiply instructions that torch's kernels (oneDNN) use."""
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    if capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"):  # x86, read by torch's cpuinfo
        return True
    if platform.machine().lower() in ("aarch64", "arm64"):
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.is_file():  # Linux on Arm: the "Features" line names the BF16 extension as "bf16"
            return any(line.startswith("Features") and "bf16" in line.split()
                       for line in cpuinfo.read_text().splitlines())
    return False


# The default recipe on a CPU with native bf16: bfloat16 where it is faster and drifts little from float32 (the
# UNet, the text stages, the vocoder); the VAE decoder in float32, the stage whose mel drifts most in bfloat16.
# tests/test_precision.py bounds the recipe's drift by diffusers' own bf16 drift; the speed and drift figures
# are in scripts/BENCHMARKS.md.
CPU_BF16_RECIPE = Precision(text=torch.bfloat16, unet=torch.bfloat16, vae=torch.float32, vocoder=torch.bfloat16,
                            why="native bf16 CPU")


def default_precision(device: torch.device) -> Precision:
    """The measured default for `device` (see the module's docstring)."""
    if device.type == "cuda":
        return Precision.uniform(torch.float16, "CUDA")
    if device.type == "cpu" and native_bf16_cpu():
        return CPU_BF16_RECIPE
    return Precision.uniform(torch.float32, "CPU without native bf16" if device.type == "cpu" else device.type)


def resolve_precision(device: torch.device, dtype: torch.dtype | Precision | None = None) -> Precision:
    """The precision to run with: the default for the device, every stage in `dtype`, or `dtype` itself when it is
    a Precision."""
    if dtype is None:
        return default_precision(device)
    if isinstance(dtype, Precision):
        return dtype
    return Precision.uniform(dtype, "requested")
