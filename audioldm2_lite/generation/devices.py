"""Where the work runs: the one device default (CUDA, then Apple's MPS, then the CPU), a device name checked
with one line saying why it cannot be used here, and the memory free on it."""

from __future__ import annotations


import torch

from .request import RequestError


def default_device() -> torch.device:
    """CUDA when there is a GPU, then Apple's MPS, then the CPU (MPS is untested on real hardware)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(name: str | torch.device | None) -> torch.device:
    """The torch device for a name (None: `default_device()`), or a RequestError saying why not here."""
    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise RequestError(f"unknown device '{name}'; use cpu, cuda, cuda:N or mps") from None
    build = f"torch {torch.__version__} built for " + (f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RequestError(f"device {name}: CUDA is not available ({build}; no usable GPU found)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RequestError(f"device {name}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 ..)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise RequestError(f"device {name}: Apple's MPS is not available ({build}; MPS needs a Mac with Apple "
                               f"silicon)")
    elif device.type != "cpu":
        raise RequestError(f"device {name}: unsupported; use cpu, cuda, cuda:N or mps")
    return device
