"""Wall-clock time of one call of a function, synchronising with the GPU so that its work is counted too."""

from __future__ import annotations

import statistics
import time

import torch


def seconds_per_call(step, device: torch.device, repeats: int = 3) -> float:
    """Median wall-clock seconds of `repeats` calls of `step()`."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
