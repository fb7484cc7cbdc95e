"""Fine-tune the AudioLDM 2 UNet, all of it or LoRA adapters, on a folder of captioned audio.

    audioldm2-lite-train --data DIR --model cvssp/audioldm2 --output OUT [--lora-rank 8] [--max-steps 1000]

The loop, top to bottom (in the manner of karpathy/nanoGPT's train.py):
1. data: every row of DIR/metadata.csv (.jsonl) checked (train_data.py), each clip cut or padded to
   `seconds`, then encoded once with the inference stages and cached on disk, keyed by checkpoint and
   clip: waveform -> log-mel (mel.py) -> VAE posterior (vae.py `encode_distribution`), caption ->
   GPT-2 and T5 states (conditioning.py `encode_prompt`). A second run starts training at once.
2. the model: the checkpoint's UNet in float32 (the master weights), all of it trainable, or frozen
   with rank-R adapters on its attention projections (lora.py). Text stages and VAE stay frozen and
   are not even loaded once everything is cached.
3. the loss: the original recipe (REFERENCE_NOTES "Training"). A latent z0 = scaling_factor * (mean
   + std * n) sampled from the VAE posterior, a timestep t uniform in [0, 1000), noise eps, and the
   DDPM forward process of the checkpoint's scheduler config:
       z_t = sqrt(alpha_bar_t) z0 + sqrt(1 - alpha_bar_t) eps
       loss = || UNet(z_t, t, text) - target ||^2,  target = eps (epsilon) or
              sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) z0 (v_prediction), per `prediction_type`.
   Each caption is replaced by the empty prompt with probability `caption_dropout` (10 %), which
   classifier-free guidance needs.
4. the step: AdamW, gradient accumulation, gradient-norm clipping, bf16/fp16 autocast on GPU (the
   weights and the optimizer stay float32; fp16 with a gradient scaler), optionally the UNet blocks
   recomputed in the backward pass (gradient checkpointing).
5. bookkeeping: tqdm progress (loss, steps/s), OUT/training/loss.csv, and every `checkpoint_every`
   steps and at the end OUT/training/state.pt (trainable weights, optimizer, RNG and step, so
   `resume` continues exactly) plus OUT itself exported as a complete hub-layout checkpoint: the
   trained UNet (LoRA merged in) under its hub names, the language model rewritten in the layout
   current diffusers runs (GPT2LMHeadModel), the other components hard-linked or copied from the base
   checkpoint, and for LoRA the adapter alone in OUT/lora.safetensors.

Batches: clips in a fresh random order each epoch (a permutation seeded by seed and epoch), so the
batch of every step follows from the step number; everything else random (posterior sample, caption
dropout, timesteps, noise) comes from one generator whose state the checkpoint keeps.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .generation.audio_io import read_audio
from .generation.conditioning import TextConditioner
from .generation.loading import (
    DEFAULT_CHECKPOINT, load_component, load_config, read_json, read_weights, resolve_checkpoint,
)
from .generation.lora import apply_lora, merged_state_dict, save_lora
from .generation.mel import MelConfig, waveform_to_mel
from .generation.samplers import SchedulerConfig, alphas_cumprod
from .models import gpt2
from .train_data import read_dataset

FROZEN_COMPONENTS = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "projection_model",
                     "language_model", "vae", "vocoder")  # what the cached latents and conditioning depend on


@dataclass
class TrainConfig:
    data: str  # folder with metadata.csv / metadata.jsonl and the audio
    output: str  # the fine-tuned checkpoint (hub layout), its training state and loss log
    model: str = DEFAULT_CHECKPOINT  # hub id or local hub-layout folder to start from
    lora_rank: int | None = None  # None: fine-tune every UNet weight; R: train rank-R LoRA adapters only
    lora_alpha: float | None = None  # LoRA scaling alpha / rank; default alpha = rank
    max_steps: int = 1000  # optimizer steps (each of batch_size * gradient_accumulation clips)
    batch_size: int = 4
    gradient_accumulation: int = 1
    learning_rate: float | None = None  # default 1e-5 for full fine-tuning, 1e-4 for LoRA
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    caption_dropout: float = 0.1  # probability of training on the empty prompt instead of the caption
    seconds: float = 10.24  # every clip cut (from the start) or padded (with silence) to this length
    seed: int = 0
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end)
    resume: bool = False  # continue from OUT/training/state.pt
    device: str | None = None  # default cuda if available
    dtype: str | None = None  # autocast dtype: float32, bfloat16, float16 (default bfloat16 on CUDA)
    gradient_checkpointing: bool = False
    skip_bad_rows: bool = False
    cache_dir: str | None = None  # default $XDG_CACHE_HOME/audioldm2-lite/train
    quiet: bool = False


# ----------------------------------------------------------------------------------------------
# 1. Data: validate, encode once, cache


def _hash(*parts) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:24]


def checkpoint_key(root: Path) -> str:
    """Identifies the frozen stages' files (names, sizes, modification times): a new checkpoint, a new cache."""
    files = [f for name in FROZEN_COMPONENTS if (root / name).is_dir() for f in sorted((root / name).rglob("*"))]
    return _hash(root.resolve(), *(f"{f.relative_to(root)}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
                                   for f in files if f.is_file()))


def clip_key(path: Path, num_samples: int) -> str:
    stat = path.stat()
    return _hash(path.resolve(), stat.st_size, stat.st_mtime_ns, num_samples)


class EncodedDataset:
    """Every clip's VAE posterior (mean, std) and conditioning, encoded once and cached on disk."""

    def __init__(self, root: Path, clips, mel_config: MelConfig, num_samples: int, cache: Path, device, quiet):
        from safetensors.torch import load_file, save_file
        from tqdm.auto import tqdm

        cache.mkdir(parents=True, exist_ok=True)
        latent_files = [cache / f"latent-{clip_key(c.path, num_samples)}.safetensors" for c in clips]
        captions = sorted({c.caption for c in clips} | {""})  # "" is the dropped caption
        text_files = {t: cache / f"text-{_hash(t)}.safetensors" for t in captions}

        missing = [(c, f) for c, f in zip(clips, latent_files) if not f.is_file()]
        missing_text = [t for t, f in text_files.items() if not f.is_file()]
        if missing or missing_text:
            conditioner = TextConditioner.from_pretrained(root, device=device)
            vae = load_component(root, "vae", device=device)
            with torch.no_grad():
                for caption in tqdm(missing_text, desc="encoding captions", disable=quiet):
                    generated, t5_states, t5_mask = conditioner.encode_prompt(
                        caption, do_classifier_free_guidance=False, device=device)  # (1, N, 768), (1, L, 1024)
                    _save_atomic(save_file, {"generated": generated[0], "t5_states": t5_states[0],
                                             "t5_mask": t5_mask[0]}, text_files[caption])
                for clip, file in tqdm(missing, desc="encoding clips", disable=quiet):
                    waveform = read_audio(clip.path, target_rate=mel_config.sampling_rate)
                    num_frames = mel_config.num_frames(num_samples)
                    mel = waveform_to_mel(waveform[None].to(device), mel_config, num_frames)  # (1, T, n_mels)
                    mean, logvar = vae.encode_distribution(mel[:, None])  # (1, C, T/4, n_mels/4) each
                    _save_atomic(save_file, {"mean": mean[0], "std": torch.exp(0.5 * logvar[0])}, file)
            del conditioner, vae

        latents = [load_file(str(f)) for f in latent_files]
        self.mean = torch.stack([x["mean"] for x in latents]).float()  # (N, C, T/4, F/4)
        self.std = torch.stack([x["std"] for x in latents]).float()
        self.texts = {t: load_file(str(f)) for t, f in text_files.items()}
        self.captions = [c.caption for c in clips]

    def __len__(self):
        return len(self.captions)

    def conditioning(self, captions: list[str], device):
        """(generated (B, N, 768), T5 states (B, L, 1024), T5 mask (B, L)), T5 zero-padded to the longest."""
        texts = [self.texts[c] for c in captions]
        length = max(t["t5_mask"].shape[0] for t in texts)
        pad = lambda x: F.pad(x, (0, 0) * (x.ndim - 1) + (0, length - x.shape[0]))  # pad the token axis
        return (torch.stack([t["generated"] for t in texts]).float().to(device),
                torch.stack([pad(t["t5_states"]) for t in texts]).float().to(device),
                torch.stack([pad(t["t5_mask"]) for t in texts]).to(device))


def _save_atomic(save, tensors, file: Path, **kwargs):
    partial = file.with_name(f".partial-{file.name}")
    save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(partial), **kwargs)
    os.replace(partial, file)


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
               num_train_timesteps: int, device):
    """(z0, conditioning, noise, timesteps) for the clips `indices`; randomness from `generator` (CPU)."""
    mean, std = data.mean[indices], data.std[indices]
    latents = scaling_factor * (mean + std * torch.randn(mean.shape, generator=generator))  # posterior sample
    dropped = torch.rand(len(indices), generator=generator) < caption_dropout
    captions = ["" if drop else data.captions[i] for i, drop in zip(indices, dropped.tolist())]
    timesteps = torch.randint(0, num_train_timesteps, (len(indices),), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    return latents.to(device), data.conditioning(captions, device), noise.to(device), timesteps.to(device)


# ----------------------------------------------------------------------------------------------
# 4. Gradient checkpointing, without touching unet.py


def checkpoint_unet_blocks(unet) -> None:
    """Recompute each down / mid / up block in the backward pass instead of keeping its activations."""

    def checkpointed(forward, *args):
        # the up blocks pop from their skip list: give each (re)computation its own copy
        return checkpoint(lambda *a: forward(*(list(x) if isinstance(x, list) else x for x in a)), *args,
                          use_reentrant=False)

    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        block.forward = functools.partial(checkpointed, block.forward)


# ----------------------------------------------------------------------------------------------
# 5. Checkpoints and export


def export_checkpoint(unet, root: Path, out: Path, lora: bool) -> None:
    """OUT as a hub-layout checkpoint: the trained UNet (adapters merged) plus the base's other components,
    the language model in the layout current diffusers generates with (export_language_model)."""
    from safetensors.torch import save_file

    for item in sorted(root.iterdir()):
        if item.name == "unet" or item.name.startswith("."):
            continue
        for file in [item] if item.is_file() else sorted(p for p in item.rglob("*") if p.is_file()):
            target = out / file.relative_to(root)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(file.resolve(), target)  # the base's files, shared rather than copied
                except OSError:
                    shutil.copy2(file.resolve(), target)
    (out / "unet").mkdir(exist_ok=True)
    shutil.copyfile(root / "unet" / "config.json", out / "unet" / "config.json")
    _save_atomic(save_file, merged_state_dict(unet), out / "unet" / "diffusion_pytorch_model.safetensors",
                 metadata={"format": "pt"})
    if lora:
        save_lora(unet, out / "lora.safetensors")
    export_language_model(root, out)


def export_language_model(root: Path, out: Path) -> None:
    """The base's `language_model` as a GPT2LMHeadModel (the weights under `transformer.`, the head tied to the
    token embedding), and model_index.json naming that class: diffusers 0.33 and later generate through it
    (with a GPT2Model they fail on recent transformers, diffusers #12630); our loader reads both layouts."""
    from safetensors.torch import save_file

    folder = out / "language_model"
    state_dict, _ = read_weights(root / "language_model")
    for file in folder.iterdir():  # the base's weights, linked above: replaced by one file in the new layout
        if file.name.endswith((".safetensors", ".bin", ".index.json")) and file.name != "model.safetensors":
            file.unlink()
    _save_atomic(save_file, gpt2.lm_head_state_dict(state_dict), folder / "model.safetensors",
                 metadata={"format": "pt"})
    config = dict(read_json(root / "language_model" / "config.json"), architectures=["GPT2LMHeadModel"])
    index = dict(read_json(root / "model_index.json"), language_model=["transformers", "GPT2LMHeadModel"])
    for file, content in ((folder / "config.json", config), (out / "model_index.json", index)):
        partial = file.with_name(f".partial-{file.name}")  # a new file in place of the link to the base's
        partial.write_text(json.dumps(content, indent=2) + "\n")
        os.replace(partial, file)


def trainable_state(unet) -> dict:
    return {n: p.detach().clone() for n, p in unet.named_parameters() if p.requires_grad}


# ----------------------------------------------------------------------------------------------
# The loop


def train(config: TrainConfig) -> Path:
    """Run the fine-tuning described by `config`; returns OUT, a checkpoint in hub layout."""
    from tqdm.auto import tqdm

    c = config
    check_config(c)
    device = torch.device(c.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp_dtype = getattr(torch, c.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    out, lora = Path(c.output).expanduser(), c.lora_rank is not None
    learning_rate = c.learning_rate or (1e-4 if lora else 1e-5)
    state_file, log_file = out / "training" / "state.pt", out / "training" / "loss.csv"
    if c.resume and not state_file.is_file():
        raise ValueError(f"--resume: no training state at {state_file}")
    if not c.resume and state_file.is_file():
        raise ValueError(f"{out} already holds a training run: pass --resume to continue it, or another --output")

    # 1. data
    root = resolve_checkpoint(c.model)
    if out.resolve() == root.resolve():
        raise ValueError(f"--output {out} is the checkpoint being fine-tuned: choose another folder")
    mel_config = MelConfig.from_hub(load_config(root, "vocoder"), load_config(root, "vae"))
    num_samples = round(c.seconds * mel_config.sampling_rate)
    cache = Path(c.cache_dir or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "audioldm2-lite" / "train")
    cache = cache.expanduser() / checkpoint_key(root)
    cached = lambda path: (cache / f"latent-{clip_key(path, num_samples)}.safetensors").is_file()
    clips = read_dataset(c.data, c.skip_bad_rows, check_audio=lambda path: not cached(path))
    data = EncodedDataset(root, clips, mel_config, num_samples, cache, device, c.quiet)
    scheduler = SchedulerConfig.from_hub(load_config(root, "scheduler"))
    alpha_bar = alphas_cumprod(scheduler).to(device)  # (1000,) the training schedule
    scaling_factor = load_config(root, "vae")["scaling_factor"]

    # 2. the model: float32 master weights
    unet = load_component(root, "unet", dtype=torch.float32, device=device)
    if lora:
        parameters = apply_lora(unet, c.lora_rank, c.lora_alpha)
    else:
        parameters = list(unet.requires_grad_(True).parameters())
    unet.train()
    if c.gradient_checkpointing:
        checkpoint_unet_blocks(unet)
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=c.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    autocast = nullcontext() if amp_dtype == torch.float32 else torch.autocast(device.type, dtype=amp_dtype)
    generator = torch.Generator().manual_seed(c.seed)

    step = 0
    if c.resume:
        state = torch.load(state_file, map_location=device, weights_only=True)
        names = trainable_state(unet).keys()
        if state["trainable"].keys() != names:
            raise ValueError(f"{state_file} was saved by a different run (full vs LoRA, or another rank)")
        with torch.no_grad():
            for name, parameter in unet.named_parameters():
                if name in names:
                    parameter.copy_(state["trainable"][name])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["rng"].cpu())
        step = state["step"]
        rows = list(csv.reader(log_file.read_text().splitlines()))
        log_rows = [r for r in rows[1:] if int(r[0]) <= step]  # drop what was logged after the checkpoint
    else:
        log_rows = []
    out.joinpath("training").mkdir(parents=True, exist_ok=True)
    (out / "training" / "config.json").write_text(json.dumps(asdict(c), indent=2))
    log = log_file.open("w", newline="")
    writer = csv.writer(log)
    writer.writerows([["step", "loss", "grad_norm", "learning_rate", "seconds"], *log_rows])

    # the loop
    progress = tqdm(total=c.max_steps, initial=step, desc="training", unit="step", disable=c.quiet)
    start = time.time()
    while step < c.max_steps:
        loss_sum = 0.0
        for micro in range(c.gradient_accumulation):
            sample = (step * c.gradient_accumulation + micro) * c.batch_size
            indices = batch_indices(sample, c.batch_size, len(data), c.seed)
            latents, conditioning, noise, timesteps = draw_batch(
                data, indices, generator, c.caption_dropout, scaling_factor, scheduler.num_train_timesteps, device)
            with autocast:
                loss = diffusion_loss(unet, latents, conditioning, noise, timesteps, alpha_bar,
                                      scheduler.prediction_type)
            scaler.scale(loss / c.gradient_accumulation).backward()
            loss_sum += loss.item()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, c.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        loss_value = loss_sum / c.gradient_accumulation
        writer.writerow([step, f"{loss_value:.6g}", f"{grad_norm.item():.6g}", learning_rate,
                         f"{time.time() - start:.2f}"])
        progress.set_postfix(loss=f"{loss_value:.4f}")
        progress.update()
        if step % c.checkpoint_every == 0 or step == c.max_steps:
            log.flush()
            state = {"step": step, "trainable": trainable_state(unet), "optimizer": optimizer.state_dict(),
                     "scaler": scaler.state_dict(), "rng": generator.get_state()}
            partial = state_file.with_name(".partial-state.pt")
            torch.save(state, partial)
            os.replace(partial, state_file)
            export_checkpoint(unet, root, out, lora)
    progress.close()
    log.close()
    return out


def check_config(c: TrainConfig) -> None:
    positive = {"max_steps": c.max_steps, "batch_size": c.batch_size, "checkpoint_every": c.checkpoint_every,
                "gradient_accumulation": c.gradient_accumulation, "seconds": c.seconds}
    for name, value in positive.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if c.lora_rank is not None and c.lora_rank < 1:
        raise ValueError(f"lora_rank must be at least 1, got {c.lora_rank}")
    if not 0 <= c.caption_dropout <= 1:
        raise ValueError(f"caption_dropout must be in [0, 1], got {c.caption_dropout}")
    if c.learning_rate is not None and not c.learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {c.learning_rate}")
    if c.dtype not in (None, "float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {c.dtype!r}")
    if c.dtype == "float16" and (c.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu":
        raise ValueError("float16 autocast needs a GPU; use bfloat16 or float32 on the CPU")


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audioldm2-lite-train",
        description="Fine-tune the AudioLDM 2 UNet (all weights, or LoRA adapters) on a folder of captioned audio.")
    help_text = {
        "data": "folder with metadata.csv or metadata.jsonl (file_name, caption or text) and the audio",
        "output": "output folder: a hub-layout checkpoint, plus training/ (state.pt, loss.csv)",
        "model": f"hub id or local hub-layout folder to fine-tune (default: {DEFAULT_CHECKPOINT})",
        "lora_rank": "train rank-R LoRA adapters on the attention projections instead of every weight",
        "lora_alpha": "LoRA scaling alpha (the update is scaled by alpha / rank; default: alpha = rank)",
        "max_steps": "optimizer steps (default: 1000)",
        "batch_size": "clips per forward pass (default: 4)",
        "gradient_accumulation": "forward passes per optimizer step (default: 1)",
        "learning_rate": "AdamW learning rate (default: 1e-5, or 1e-4 with --lora-rank)",
        "weight_decay": "AdamW weight decay (default: 0.01)",
        "max_grad_norm": "clip the gradient norm to this (default: 1.0)",
        "caption_dropout": "probability of the empty prompt instead of the caption (default: 0.1)",
        "seconds": "clip length: longer clips are cut after it, shorter padded with silence (default: 10.24)",
        "seed": "random seed for order, noise, timesteps and dropout (default: 0)",
        "checkpoint_every": "steps between checkpoints and exports (default: 500)",
        "resume": "continue the run saved in OUTPUT/training/state.pt",
        "device": "cpu, cuda, cuda:1 (default: cuda if available)",
        "dtype": "autocast dtype; weights stay float32 (default: bfloat16 on GPU, float32 on CPU)",
        "gradient_checkpointing": "recompute UNet blocks in the backward pass: less memory, slower steps",
        "skip_bad_rows": "leave out bad rows of the metadata (with a warning) instead of stopping",
        "cache_dir": "where encoded clips and captions are kept (default: ~/.cache/audioldm2-lite/train)",
        "quiet": "no progress bars",
    }
    for field in fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(flag, action="store_true", help=help_text[field.name])
            continue
        kind = {"int": int, "float": float}.get(field.type.split(" ")[0], str)
        kwargs = {"required": True} if field.name in ("data", "output") else {"default": field.default}
        if field.name == "dtype":
            kwargs.update(choices=("float32", "bfloat16", "float16"), metavar="{float32,bfloat16,float16}")
        names = {"data": "DIR", "output": "OUT", "model": "MODEL", "device": "DEVICE", "cache_dir": "DIR"}
        kwargs.setdefault("metavar", names.get(field.name, "N"))
        parser.add_argument(flag, type=kind, help=help_text[field.name], **kwargs)
    return parser


def main(argv=None) -> int:
    from .cli import report_errors

    args = build_parser().parse_args(argv)

    def work() -> int:
        print(train(TrainConfig(**vars(args))))
        return 0

    return report_errors("audioldm2-lite-train", work,
                         interrupted="interrupted (the last checkpoint is kept; --resume continues it)")


if __name__ == "__main__":
    sys.exit(main())
