"""The training step's schedules: the learning rate over the run, and the moving average of the weights.

`learning_rate` gives, by name, the schedules people pass to diffusers' training scripts
(`--lr_scheduler`, `--lr_warmup_steps`, `--lr_num_cycles`, `--lr_power`; diffusers/optimization.py), as a
plain function of the step, so a resumed run continues on the same curve. `update_ema` keeps an
exponential moving average of the trained weights with the warm-up of diffusers' `EMAModel`
(training_utils.py); `swapped` puts the average into the model for an export or a validation.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


def learning_rate(step: int, peak: float, schedule: str, warmup: int, total: int, cycles: int = 1,
                  power: float = 1.0, end: float = 1e-7) -> float:
    """The rate of the optimizer step that follows `step` steps: what diffusers' `get_scheduler(schedule,
    num_warmup_steps=warmup, num_training_steps=total, num_cycles=cycles, power=power)` gives. After a linear
    warmup from 0 (none for "constant"), `progress` runs from 0 to 1 over the remaining steps."""
    if schedule == "constant":
        return peak
    if step < warmup:
        return peak * step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "constant_with_warmup":
        return peak
    if schedule == "linear":  # down to 0
        return peak * max(0.0, 1 - progress)
    if schedule == "cosine":  # half a cosine period, down to 0
        return peak * max(0.0, 0.5 * (1 + math.cos(math.pi * progress)))
    if schedule == "cosine_with_restarts":  # `cycles` half periods, each from the peak down to 0
        return 0.0 if progress >= 1 else peak * 0.5 * (1 + math.cos(math.pi * (cycles * progress % 1)))
    return end + (peak - end) * max(0.0, 1 - progress) ** power  # polynomial: from the peak down to `end`


@torch.no_grad()
def update_ema(ema: list[torch.Tensor], parameters, step: int, decay: float) -> None:
    """ema <- d * ema + (1 - d) * weights after optimizer step `step` (1, 2, ...). d warms up as diffusers'
    EMAModel does: 0 at step 1 (a copy), then (1 + n) / (10 + n) with n = step - 1, capped at `decay`, so the
    average soon forgets the early weights."""
    n = step - 1
    d = 0.0 if n == 0 else min(decay, (1 + n) / (10 + n))
    for average, weight in zip(ema, parameters):
        average.lerp_(weight, 1 - d)


@contextmanager
def swapped(parameters, tensors):
    """Inside the block `parameters` hold `tensors` (the EMA, for export and validation) and the other way
    round; swapped back after. No copy is made. `tensors` None: nothing to swap."""
    def swap():
        for parameter, tensor in zip(parameters, tensors):
            parameter.data, tensor.data = tensor.data, parameter.data

    if tensors is None:
        yield
        return
    swap()
    try:
        yield
    finally:
        swap()
