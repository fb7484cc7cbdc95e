"""Fine-tune the AudioLDM 2 UNet, all of it or LoRA adapters, on a folder of captioned audio.

    audioldm2-lite-train --data DIR --model cvssp/audioldm2 --output OUT [--lora-rank 8] [--max-steps 1000]
    torchrun --standalone --nproc-per-node N -m audioldm2_lite.training.train --data DIR --output OUT ...  # N processes

The loop, top to bottom (in the manner of karpathy/nanoGPT's train.py):
1. data: every row of DIR/metadata.csv (.jsonl) checked, each clip cut or padded to `seconds`, then each
   clip's VAE posterior and each caption's GPT-2 and T5 states encoded once with the inference stages and
   cached on disk (data.py). A second run starts training at once.
2. the model: the checkpoint's UNet in float32 (the master weights), all of it trainable, or frozen
   with rank-R adapters on its attention projections (lora.py). Text stages and VAE stay frozen and
   are not even loaded once everything is cached.
3. the loss: the recipe the checkpoints were trained with (AudioLDM 2, Liu et al. 2023; its training code
   is github.com/haoheliu/AudioLDM-training-finetuning). A latent z0 = scaling_factor * (mean + std * n)
   sampled from the VAE posterior, a timestep t uniform in [0, 1000), noise eps, and the DDPM forward
   process of the checkpoint's scheduler config:
       z_t = sqrt(alpha_bar_t) z0 + sqrt(1 - alpha_bar_t) eps
       loss = || UNet(z_t, t, text) - target ||^2,  target = eps (epsilon) or
              sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) z0 (v_prediction), per `prediction_type`.
   Each caption is replaced by the empty prompt with probability `caption_dropout` (10 %, the original
   `unconditional_prob_cfg`), which classifier-free guidance needs.
4. the step: AdamW at the rate of a schedule (schedules.py: diffusers' schedule names and formulas),
   gradient accumulation, gradient-norm clipping, autocast (bf16 on GPU by default, bf16 on request on
   the CPU, fp16 with a gradient scaler on GPU only; weights and optimizer stay float32), optionally an
   exponential moving average of the weights (`update_ema`) and the UNet blocks recomputed in the
   backward pass (gradient checkpointing).
5. processes: one, or one per GPU (or CPU process) under torchrun: DistributedDataParallel averages the
   gradients (NCCL on GPUs, gloo on CPUs). `batch_size` is per process. Every process draws the random
   numbers of the whole batch (batch_size * processes clips) as one process would, and computes its own
   slice of it, so N processes at batch b follow one process at batch N b (to float rounding), and a run
   resumes with another number of processes. Rank 0 alone reads and checks the data folder, writes the
   logs, checkpoints and exports, and runs validation; OUT and the cache must be on a filesystem every
   machine sees.
6. bookkeeping: tqdm progress, OUT/training/loss.csv and TensorBoard curves (with the `tensorboard`
   package), validation audio and scores every `validation_every` steps (validation.py), and every
   `checkpoint_every` steps and at the end OUT/training/state.pt (trainable weights, optimizer, EMA, RNG,
   step, so `resume` continues exactly) plus OUT itself exported as a complete hub-layout checkpoint: the
   trained UNet (LoRA merged in; the EMA weights when on) under its hub names, the language model rewritten in
   the layout current diffusers runs (GPT2LMHeadModel), the other components hard-linked or copied from the
   base checkpoint, and for LoRA the adapter alone in OUT/lora.safetensors.

Batches: clips in a fresh random order each epoch (a permutation seeded by seed and epoch), so the
batch follows from the count of samples drawn so far; everything else random (posterior sample, caption
dropout, timesteps, noise) comes from one generator whose state the checkpoint keeps.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..console import UsageError, describe_reference, one_line_warnings, report_errors, write_atomically
from ..generation.authors_models import folder_stage, model_folder, model_reference
from ..generation.loading import load_component, load_config
from ..generation.lora import apply_lora
from ..generation.mel import MelConfig
from ..generation.pipeline import default_device
from ..generation.request import ranks_candidates
from ..generation.samplers import SAMPLERS, SchedulerConfig, alphas_cumprod
from .command import PROG, TrainConfig, build_parser
from .data import EncodedDataset, checkpoint_key, latent_file, read_dataset
from .export import export_checkpoint
from .schedules import SCHEDULES, learning_rate, swapped, update_ema

# ----------------------------------------------------------------------------------------------
# 1. Data: which clips make each batch (the cache itself is data.py)


@functools.lru_cache(maxsize=4)
def epoch_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batch_indices(first_sample: int, batch_size: int, count: int, seed: int) -> list[int]:
    """The clips of samples first_sample .. first_sample + batch_size - 1, counted over all epochs."""
    samples = range(first_sample, first_sample + batch_size)
    return [int(epoch_order(count, seed, k // count)[k % count]) for k in samples]


# ----------------------------------------------------------------------------------------------
# 3. The loss


def diffusion_loss(unet, latents, conditioning, noise, timesteps, alpha_bar, prediction_type: str):
    """The noise-prediction MSE of `unet` (called as unet(z_t, t, *conditioning)) on clean latents z0.

    latents, noise (B, C, T, F) float32; timesteps (B,) int64; alpha_bar (1000,) float32 on the same device.
    """
    a = alpha_bar[timesteps].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise  # the DDPM forward process q(z_t | z0)
    target = noise if prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * latents
    prediction = unet(noisy, timesteps, *conditioning)
    return F.mse_loss(prediction.float(), target)


def draw_batch(data: EncodedDataset, indices, generator, caption_dropout: float, scaling_factor: float,
               num_train_timesteps: int, device, share: slice = slice(None)):
    """(z0, conditioning, noise, timesteps) of the clips indices[share]; randomness from `generator` (CPU).

    The random numbers of the whole batch `indices` are drawn, whatever the share: a process's slice of a
    batch is then the same as that slice of one process's batch, and the generator's state after it too.
    """
    mean, std = data.posterior(indices[share])  # (b, C, T/4, F/4) each
    shape = (len(indices), *mean.shape[1:])
    posterior_noise = torch.randn(shape, generator=generator)
    dropped = torch.rand(len(indices), generator=generator) < caption_dropout
    timesteps = torch.randint(0, num_train_timesteps, (len(indices),), generator=generator)
    noise = torch.randn(shape, generator=generator)
    latents = scaling_factor * (mean + std * posterior_noise[share])  # a sample of the posterior
    captions = ["" if drop else data.captions[i] for i, drop in zip(indices[share], dropped[share].tolist())]
    return latents.to(device), data.conditioning(captions, device), noise[share].to(device), timesteps[share].to(device)


# ----------------------------------------------------------------------------------------------
# 4. The step: gradient checkpointing (the schedule and the EMA are in schedules.py)


def checkpoint_unet_blocks(unet) -> None:
    """Recompute each down / mid / up block in the backward pass instead of keeping its activations."""

    def checkpointed(forward, *args):
        # the up blocks pop from their skip list: give each (re)computation its own copy
        return checkpoint(lambda *a: forward(*(list(x) if isinstance(x, list) else x for x in a)), *args,
                          use_reentrant=False)

    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        block.forward = functools.partial(checkpointed, block.forward)


# ----------------------------------------------------------------------------------------------
# 5. Processes: one, or one per GPU under torchrun


def start_processes(device_name: str | None):
    """(rank, world size, device) from torchrun's RANK / WORLD_SIZE / LOCAL_RANK, the process group started
    when there are several (NCCL on GPUs, gloo on CPUs); (0, 1, device) without torchrun."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device(device_name) if device_name else default_device()
    if world > 1:
        if device.type == "cuda":
            if device.index is None:
                device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        # rank 0 alone checks the data folder and runs validation while the others wait for it
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=24))
    return rank, world, device


def from_rank_0(value, world: int):
    """Rank 0's `value`, on every rank (any picklable object)."""
    if world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------------------------
# 6. Checkpoints and curves (export: export.py)


def trainable_state(unet) -> dict:
    return {n: p.detach().clone() for n, p in unet.named_parameters() if p.requires_grad}


def open_tensorboard(folder: Path, purge_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("no TensorBoard curves: the `tensorboard` package is not installed "
                      "(pip install 'audioldm2-lite[train]'); loss.csv has the numbers")
        return None
    # events from purge_step on, of an earlier attempt, are dropped: after a resume's checkpoint, or all of them
    return SummaryWriter(str(folder), purge_step=purge_step)


# ----------------------------------------------------------------------------------------------
# The loop


def train(config: TrainConfig) -> Path:
    """Run the fine-tuning described by `config`; returns OUT, a checkpoint in hub layout."""
    from tqdm.auto import tqdm

    c = config
    out, lora = Path(c.output).expanduser(), c.lora_rank is not None
    state_file, log_file = out / "training" / "state.pt", out / "training" / "loss.csv"
    check_config(c, state_file)
    rank, world, device = start_processes(c.device)
    amp_dtype = getattr(torch, c.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    peak_rate = c.learning_rate or (1e-4 if lora else 1e-5)

    # 1. data: checked by rank 0, encoded by all (each its share), read by each process batch by batch
    root = model_folder(c.model, c.text_models)  # an authors' file: converted once, as the pipeline does
    if out.resolve() == root.resolve():
        raise UsageError(f"--output {out} is the checkpoint being fine-tuned: choose another folder")
    if c.validation_prompts and not ranks_candidates(root):
        raise UsageError(f"--validation-prompts scores with CLAP's audio tower, and {c.model} has none (its "
                         f"text_encoder has no audio_config): fine-tune without it")
    reference = model_reference(root, c.reference)  # the model trained, and its unconditional input
    if rank == 0 and not c.quiet:
        print(f"{PROG}: model: {describe_reference(reference, root)}", file=sys.stderr)
    validation = None
    if rank == 0 and c.validation_prompts:
        from .validation import Validation  # its prompts and reference checked before anything loads

        validation = Validation(root, c.validation_prompts, c.validation_reference, c.validation_steps, c.seconds,
                                device, reference, c.validation_scheduler)
    mel_config = MelConfig.from_hub(load_config(root, "vocoder"), load_config(root, "vae"))
    num_samples = round(c.seconds * mel_config.sampling_rate)
    cache = Path(c.cache_dir or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "audioldm2-lite" / "train")
    cache = cache.expanduser() / checkpoint_key(root)
    uncached = lambda path: not latent_file(cache, path, num_samples).is_file()
    clips = from_rank_0(read_dataset(c.data, c.skip_bad_rows, check_audio=uncached) if rank == 0 else None, world)
    data = EncodedDataset(clips, num_samples, cache, reference)
    data.encode_missing(root, mel_config, device, c.quiet or rank != 0, rank, world)
    if world > 1:
        dist.barrier()
    missing = data.missing()
    if missing:
        raise ValueError(f"{len(missing)} encoded files are missing from {cache} after encoding: with "
                         "several machines, --cache-dir must be a folder that every machine sees")
    scheduler = SchedulerConfig.from_hub(load_config(root, "scheduler"))
    alpha_bar = alphas_cumprod(scheduler).to(device)  # (1000,) the training schedule
    scaling_factor = load_config(root, "vae")["scaling_factor"]

    # 2. the model: float32 master weights, one replica per process
    unet = load_component(root, "unet", dtype=torch.float32, device=device, reference=reference,
                          stage=folder_stage(root, "unet"))  # the FiLM UNet of audioldm_48k
    torch.manual_seed(c.seed)  # the adapters' random initialisation: the same run from the same seed
    if lora:
        parameters = apply_lora(unet, c.lora_rank, c.lora_alpha)
    else:
        parameters = list(unet.requires_grad_(True).parameters())
    unet.train()
    if c.gradient_checkpointing:
        checkpoint_unet_blocks(unet)
    model = unet if world == 1 else torch.nn.parallel.DistributedDataParallel(
        unet, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(parameters, lr=peak_rate, weight_decay=c.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    autocast = nullcontext() if amp_dtype == torch.float32 else torch.autocast(device.type, dtype=amp_dtype)
    generator = torch.Generator().manual_seed(c.seed)
    names = [n for n, p in unet.named_parameters() if p.requires_grad]  # of `parameters`, in their order

    step, samples, log_rows, seconds, state = 0, 0, [], 0.0, {}
    if c.resume:
        state = torch.load(state_file, map_location=device, weights_only=True)
        if state["trainable"].keys() != set(names):
            raise ValueError(f"{state_file} was saved by a different run (full vs LoRA, or another rank)")
        with torch.no_grad():
            for name, parameter in unet.named_parameters():
                if name in names:
                    parameter.copy_(state["trainable"][name])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["rng"].cpu())
        step = state["step"]
        samples = state.get("samples", step * c.gradient_accumulation * c.batch_size)  # (older states: 1 process)
        rows = list(csv.reader(log_file.read_text().splitlines()))
        log_rows = [r for r in rows[1:] if int(r[0]) <= step]  # drop what was logged after the checkpoint
        seconds = float(log_rows[-1][4]) if log_rows else 0.0  # the clock goes on from there
    ema = None  # rank 0 alone uses it; a run that had none starts its average from the resumed weights
    if c.ema_decay and rank == 0:
        ema = [state["ema"][n] for n in names] if "ema" in state else [p.detach().clone() for p in parameters]
    del state

    if rank == 0:
        out.joinpath("training").mkdir(parents=True, exist_ok=True)
        (out / "training" / "config.json").write_text(json.dumps({**asdict(c), "processes": world}, indent=2))
        log = log_file.open("w", newline="")
        writer = csv.writer(log)
        writer.writerows([["step", "loss", "grad_norm", "learning_rate", "seconds"], *log_rows])
        board = open_tensorboard(out / "training" / "tensorboard", step + 1 if c.resume else 0)

    def validate():  # rank 0: the prompts from the current weights (EMA when on), heard and scored
        with swapped(parameters, ema):
            unet.eval()
            validation(unet, step, out / "training", board)
            unet.train()

    if validation:
        validation.forget_after(out / "training", step if c.resume else -1)  # rows of what is done again
        if step == 0:
            validate()  # the base model: what the fine-tune is measured against

    # the loop
    global_batch, share = c.batch_size * world, slice(rank * c.batch_size, (rank + 1) * c.batch_size)
    progress = tqdm(total=c.max_steps, initial=step, desc="training", unit="step", disable=c.quiet or rank != 0)
    start = time.time() - seconds
    while step < c.max_steps:
        rate = learning_rate(step, peak_rate, c.lr_scheduler, c.lr_warmup_steps, c.max_steps, c.lr_num_cycles,
                             c.lr_power)
        for group in optimizer.param_groups:
            group["lr"] = rate
        loss_sum = torch.zeros((), device=device)
        for micro in range(c.gradient_accumulation):
            indices = batch_indices(samples, global_batch, len(data), c.seed)
            samples += global_batch
            latents, conditioning, noise, timesteps = draw_batch(
                data, indices, generator, c.caption_dropout, scaling_factor, scheduler.num_train_timesteps, device,
                share)
            last = micro == c.gradient_accumulation - 1
            with nullcontext() if world == 1 or last else model.no_sync():  # all-reduce once, at the last
                with autocast:
                    loss = diffusion_loss(model, latents, conditioning, noise, timesteps, alpha_bar,
                                          scheduler.prediction_type)
                scaler.scale(loss / c.gradient_accumulation).backward()
            loss_sum += loss.detach().float()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, c.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if ema is not None:
            update_ema(ema, parameters, step, c.ema_decay)
        if world > 1:
            dist.all_reduce(loss_sum)  # for the log: the whole batch's loss

        if rank != 0:
            continue
        loss_value, norm = loss_sum.item() / (c.gradient_accumulation * world), grad_norm.item()
        writer.writerow([step, f"{loss_value:.6g}", f"{norm:.6g}", f"{rate:.6g}", f"{time.time() - start:.2f}"])
        if board:
            for key, value in (("loss", loss_value), ("learning_rate", rate), ("grad_norm", norm)):
                board.add_scalar(f"train/{key}", value, step)
        progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{rate:.3g}")
        progress.update()
        if step % c.checkpoint_every == 0 or step == c.max_steps:
            log.flush()
            state = {"step": step, "samples": samples, "trainable": trainable_state(unet),
                     "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": generator.get_state()}
            if ema is not None:
                state["ema"] = dict(zip(names, ema))
            write_atomically(state_file, lambda file: torch.save(state, file))
            with swapped(parameters, ema):  # the EMA is what users get, when on
                export_checkpoint(unet, root, out, lora)
        if validation and (step % c.validation_every == 0 or step == c.max_steps):
            validate()
    progress.close()
    if rank == 0:
        log.close()
        if board:
            board.close()
    if world > 1:
        dist.destroy_process_group()
    return out


def check_config(c: TrainConfig, state_file: Path) -> None:
    """Mistakes in the settings, found before anything is loaded: UsageError (the command line's exit status 2)."""
    positive = {"max_steps": c.max_steps, "batch_size": c.batch_size, "checkpoint_every": c.checkpoint_every,
                "gradient_accumulation": c.gradient_accumulation, "seconds": c.seconds,
                "validation_every": c.validation_every, "validation_steps": c.validation_steps}
    if c.validation_scheduler not in SAMPLERS:
        raise UsageError(f"validation_scheduler: unknown scheduler '{c.validation_scheduler}'; choose from "
                         f"{', '.join(SAMPLERS)}")
    for name, value in positive.items():
        if not value > 0:
            raise UsageError(f"{name} must be positive, got {value}")
    if c.lora_rank is not None and c.lora_rank < 1:
        raise UsageError(f"lora_rank must be at least 1, got {c.lora_rank}")
    if not 0 <= c.caption_dropout <= 1:
        raise UsageError(f"caption_dropout must be in [0, 1], got {c.caption_dropout}")
    if c.learning_rate is not None and not c.learning_rate > 0:
        raise UsageError(f"learning_rate must be positive, got {c.learning_rate}")
    if c.lr_scheduler not in SCHEDULES:
        raise UsageError(f"lr_scheduler must be one of {', '.join(SCHEDULES)}, got {c.lr_scheduler!r}")
    if c.lr_warmup_steps < 0 or c.lr_num_cycles < 1:
        raise UsageError("lr_warmup_steps must be at least 0 and lr_num_cycles at least 1")
    if c.ema_decay is not None and not 0 < c.ema_decay < 1:
        raise UsageError(f"ema_decay must be between 0 and 1 (e.g. 0.9999), got {c.ema_decay}")
    if c.validation_reference and not c.validation_prompts:
        raise UsageError("--validation-reference needs --validation-prompts")
    if c.dtype not in (None, "float32", "bfloat16", "float16"):
        raise UsageError(f"dtype must be float32, bfloat16 or float16, got {c.dtype!r}")
    if c.dtype == "float16" and torch.device(c.device or default_device()).type != "cuda":
        raise UsageError("float16 autocast (with its gradient scaler) needs a GPU; use bfloat16 or float32 here")
    out = state_file.parents[1]
    if c.resume and not state_file.is_file():
        raise UsageError(f"--resume: no training state at {state_file}")
    if not c.resume and state_file.is_file():
        raise UsageError(f"{out} already holds a training run: pass --resume to continue it, or another --output")
    if c.resume:  # the step alone: mmap reads no weights
        done = torch.load(state_file, map_location="cpu", mmap=True, weights_only=True)["step"]
        if c.max_steps <= done:
            raise UsageError(f"the run in {out} is at step {done}: --max-steps {c.max_steps} leaves nothing to do "
                             f"(give more than {done})")


def main(argv=None) -> int:
    """audioldm2-lite-train: the options (command.py) into a TrainConfig, then `train`; a mistake in the settings
    exits with status 2 and one line, as every program here does."""
    args = build_parser().parse_args(argv)

    def work() -> int:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warnings(PROG)
            out = train(TrainConfig(**vars(args)))
        if int(os.environ.get("RANK", 0)) == 0:
            print(out)
        return 0

    return report_errors(PROG, work, interrupted="interrupted (the last checkpoint is kept; --resume continues it)")


if __name__ == "__main__":
    sys.exit(main())
