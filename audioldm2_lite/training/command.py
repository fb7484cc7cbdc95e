"""The settings of a fine-tuning run (`TrainConfig`, read by train.py) and the `audioldm2-lite-train` options,
one per field with its help (`build_parser`); train.py's `main` runs them.

    audioldm2-lite-train --data DIR --output OUT [--model cvssp/audioldm2] [--lora-rank 8] [--max-steps 1000]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from ..generation.authors import REFERENCES
from ..generation.loading import DEFAULT_CHECKPOINT
from .schedules import SCHEDULES

PROG = "audioldm2-lite-train"


@dataclass
class TrainConfig:
    data: str  # folder with metadata.csv / metadata.jsonl and the audio
    output: str  # the fine-tuned checkpoint (hub layout), its training state and loss log
    model: str = DEFAULT_CHECKPOINT  # hub id or local hub-layout folder, or an authors' .pth / haoheliu/<name>
    text_models: str | None = None  # for an authors' file: the folder of roberta-base/, google/flan-t5-large/, gpt2/
    lora_rank: int | None = None  # None: fine-tune every UNet weight; R: train rank-R LoRA adapters only
    lora_alpha: float | None = None  # LoRA scaling alpha / rank; default alpha = rank
    max_steps: int = 1000  # optimizer steps (each of batch_size * processes * gradient_accumulation clips)
    batch_size: int = 4  # clips per forward pass of each process
    gradient_accumulation: int = 1
    learning_rate: float | None = None  # the schedule's peak; default 1e-5 for full fine-tuning, 1e-4 for LoRA
    lr_scheduler: str = "constant"  # one of SCHEDULES
    lr_warmup_steps: int = 0  # linear warmup from 0 (every schedule but "constant")
    lr_num_cycles: int = 1  # cosine_with_restarts: cosine cycles over the run
    lr_power: float = 1.0  # polynomial: the decay's power
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    ema_decay: float | None = None  # e.g. 0.9999: keep (and export) an EMA of the trained weights
    caption_dropout: float = 0.1  # probability of training on the unconditional input instead of the caption
    reference: str | None = None  # "authors" or "diffusers" (generation/authors.py); None: the checkpoint's
    seconds: float = 10.24  # every clip cut (from the start) or padded (with silence) to this length
    seed: int = 0
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end)
    validation_prompts: str | None = None  # .txt / .csv / .jsonl of prompts generated every validation_every
    validation_every: int = 500  # steps between validations (and one before the first step, one at the end)
    validation_steps: int = 20  # sampler steps of each validation clip
    validation_scheduler: str = "dpmsolver++"  # the sampler of each validation clip (samplers.SAMPLERS)
    validation_reference: str | None = None  # reference stats (.npz, audioldm2-lite-eval --save-stats): fd_clap
    resume: bool = False  # continue from OUT/training/state.pt
    device: str | None = None  # default: CUDA (cuda:LOCAL_RANK under torchrun), then MPS, then the CPU
    dtype: str | None = None  # autocast dtype: float32, bfloat16, float16 (default bfloat16 on CUDA)
    gradient_checkpointing: bool = False
    skip_bad_rows: bool = False
    cache_dir: str | None = None  # default $XDG_CACHE_HOME/audioldm2-lite/train
    quiet: bool = False



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fine-tune the AudioLDM 2 UNet (all weights, or LoRA adapters) on a folder of captioned audio. "
                    "Several GPUs or machines: launch with torchrun.")
    help_text = {
        "data": "folder with metadata.csv or metadata.jsonl (file_name, caption or text) and the audio",
        "output": "output folder: a hub-layout checkpoint, plus training/ (state.pt, loss.csv, tensorboard/)",
        "model": f"hub id or local hub-layout folder to fine-tune, or an authors' .pth / haoheliu/<name> such as "
                 f"haoheliu/audioldm_48k (default: {DEFAULT_CHECKPOINT})",
        "text_models": "for an authors' .pth: folder holding roberta-base/, google/flan-t5-large/, gpt2/ (default: "
                       "those folders here, else the hub cache)",
        "lora_rank": "train rank-R LoRA adapters on the attention projections instead of every weight",
        "lora_alpha": "LoRA scaling alpha (the update is scaled by alpha / rank; default: alpha = rank)",
        "max_steps": "optimizer steps (default: 1000)",
        "batch_size": "clips per forward pass of each process (default: 4)",
        "gradient_accumulation": "forward passes per optimizer step (default: 1)",
        "learning_rate": "peak AdamW learning rate (default: 1e-5, or 1e-4 with --lora-rank)",
        "lr_scheduler": "learning-rate schedule, as in diffusers' training scripts (default: constant)",
        "lr_warmup_steps": "steps of linear warmup from 0 (not for constant; default: 0)",
        "lr_num_cycles": "cosine_with_restarts: the number of cycles (default: 1)",
        "lr_power": "polynomial: the power of the decay (default: 1.0)",
        "weight_decay": "AdamW weight decay (default: 0.01)",
        "max_grad_norm": "clip the gradient norm to this (default: 1.0)",
        "ema_decay": "keep an EMA of the trained weights with this decay (e.g. 0.9999), validated and exported "
                     "instead of the raw weights (default: off)",
        "caption_dropout": "probability of the unconditional input instead of the caption: the authors' (zero GPT-2 "
                           "states, T5 of '') or diffusers' (the empty prompt encoded), as --reference says "
                           "(default: 0.1)",
        "reference": "authors: train the model the weights were trained as (heads of 32 channels, the authors' "
                     "unconditional input); diffusers: as diffusers computes it (default: authors for the "
                     "official checkpoints, diffusers for other folders)",
        "seconds": "clip length: longer clips are cut after it, shorter padded with silence (default: 10.24)",
        "seed": "random seed for order, noise, timesteps, dropout and LoRA initialisation (default: 0)",
        "checkpoint_every": "steps between checkpoints and exports (default: 500)",
        "validation_prompts": "prompts (.txt, one a line; or .csv / .jsonl with a prompt column) generated with "
                              "fixed seeds and scored into OUTPUT/training/validation/ while training",
        "validation_every": "steps between validations (default: 500; also before the first step and at the end)",
        "validation_steps": "sampler steps per validation clip (default: 20)",
        "validation_scheduler": "the sampler of the validation clips, a --scheduler name (default: dpmsolver++)",
        "validation_reference": "reference stats from audioldm2-lite-eval --save-stats: fd_clap of each validation",
        "resume": "continue the run saved in OUTPUT/training/state.pt (with any number of processes)",
        "device": "cpu, cuda, cuda:1 (default: CUDA, cuda:LOCAL_RANK under torchrun, then MPS, then the CPU)",
        "dtype": "autocast dtype; weights stay float32 (default: bfloat16 on GPU, float32 elsewhere; "
                 "float16 on GPU only)",
        "gradient_checkpointing": "recompute UNet blocks in the backward pass: less memory, slower steps",
        "skip_bad_rows": "leave out bad rows of the metadata (with a warning) instead of stopping",
        "cache_dir": "where encoded clips and captions are kept (default: ~/.cache/audioldm2-lite/train)",
        "quiet": "no progress bars",
    }
    names = {"data": "DIR", "output": "OUT", "model": "MODEL", "device": "DEVICE", "cache_dir": "DIR",
             "text_models": "DIR", "validation_prompts": "FILE", "validation_reference": "STATS", "learning_rate": "RATE",
             "lr_warmup_steps": "N", "ema_decay": "DECAY"}
    for field in fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(flag, action="store_true", help=help_text[field.name])
            continue
        kind = {"int": int, "float": float}.get(field.type.split(" ")[0], str)
        kwargs = {"required": True} if field.name in ("data", "output") else {"default": field.default}
        if field.name == "dtype":
            kwargs.update(choices=("float32", "bfloat16", "float16"), metavar="{float32,bfloat16,float16}")
        if field.name == "reference":
            kwargs.update(choices=REFERENCES, metavar="{" + ",".join(REFERENCES) + "}")
        if field.name == "lr_scheduler":
            kwargs.update(choices=SCHEDULES, metavar="{" + ",".join(SCHEDULES) + "}")
        kwargs.setdefault("metavar", names.get(field.name, "N"))
        parser.add_argument(flag, type=kind, help=help_text[field.name], **kwargs)
    return parser
