"""Fine-tuning under torchrun (training/train.py, 5. processes): 2 gloo CPU processes against one process."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import torch
from safetensors.torch import load_file
from test_train import SECONDS, write_tones

from audioldm2_lite.training.train import TrainConfig, train

OPTIONS = dict(gradient_accumulation=2, learning_rate=1e-3, lr_scheduler="constant_with_warmup", lr_warmup_steps=2,
               ema_decay=0.9, caption_dropout=0.5, checkpoint_every=3)


def flags(options: dict) -> list[str]:
    return [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in options.items()]


def results(out):
    """(training state, exported UNet weights, (steps, 2) array of loss.csv's loss and grad_norm)."""
    state = torch.load(out / "training" / "state.pt", weights_only=True)
    logs = [[float(r["loss"]), float(r["grad_norm"])] for r in csv.DictReader((out / "training" / "loss.csv").open())]
    return state, load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors")), np.array(logs)


def drift(ours: dict, reference: dict, base: dict) -> float:
    """max |ours - reference| over every weight, relative to max |reference - base|: how far training moved them."""
    difference = max((ours[k] - reference[k]).abs().max() for k in reference)
    moved = max((reference[k] - base[k]).abs().max() for k in reference)
    assert moved > 1e-4, "training changed nothing"
    return (difference / moved).item()


def test_two_processes_equal_one_with_twice_the_batch(tiny_checkpoint, tmp_path):
    data = write_tones(tmp_path / "data", [220, 440, 880, 660, 330])  # 5 clips: batches cross epochs
    common = dict(model=str(tiny_checkpoint), seconds=SECONDS, cache_dir=str(tmp_path / "cache"), device="cpu",
                  quiet=True, **OPTIONS)

    # 3 steps on 2 processes, batch 1 each, the cache built from nothing by both (each encodes its share)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "audioldm2_lite.training.train", *flags(dict(data=data, output=tmp_path / "two", batch_size=1,
                                                          max_steps=3, **common))]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "two")  # printed by rank 0 alone
    assert len(list((tmp_path / "cache").rglob("latent-*"))) == 5

    # the same 3 steps on 1 process at batch 2; then both resumed on 1 process to step 5
    one = train(TrainConfig(data=str(data), output=str(tmp_path / "one"), batch_size=2, max_steps=3, **common))
    two = tmp_path / "two"
    (two_state, two_weights, two_logs), (one_state, one_weights, one_logs) = results(two), results(one)
    base = load_file(str(tiny_checkpoint / "unet" / "diffusion_pytorch_model.safetensors"))
    # Float32 rounding only: the gradients are summed in another order (per process, then all-reduced) and each
    # process pads its T5 states to its own longest caption (masked out): gradients agree to ~1e-7. AdamW then
    # divides each gradient element by its own running RMS, which magnifies the rounding of elements whose
    # gradient is near zero up to the scale of the learning rate. So the weights are compared relative to how
    # far training moved them: measured 6e-4 of that distance, allowed 1 %. The loss and the gradient norm
    # (which a wrong share or a gradient not averaged over processes would change) agree to loss.csv's 6 digits.
    assert drift(two_weights, one_weights, base) <= 1e-2
    for key in ("trainable", "ema"):
        assert drift(two_state[key], one_state[key], base) <= 1e-2
    np.testing.assert_allclose(two_logs, one_logs, rtol=1e-5)
    assert two_state["samples"] == one_state["samples"] == 3 * 2 * 2  # steps * accumulation * global batch
    assert torch.equal(two_state["rng"], one_state["rng"])  # the same random numbers were drawn

    # --resume with another number of processes: the run of 2 continues on 1 as the run of 1 does
    resumed = [train(TrainConfig(data=str(data), output=str(out), batch_size=2, max_steps=5, resume=True, **common))
               for out in (two, one)]
    (_, two_weights, two_logs), (_, one_weights, one_logs) = map(results, resumed)
    assert two_logs.shape == one_logs.shape == (5, 2)
    assert drift(two_weights, one_weights, base) <= 1e-2  # as above
    np.testing.assert_allclose(two_logs, one_logs, rtol=1e-5)
