"""The end of a training run: the trained UNet as a hub-layout checkpoint that our loader and diffusers both load.

The base's other components are linked (or copied) beside it; the language model is rewritten in the layout
current diffusers generates with. `audioldm2-lite-train` calls `export_checkpoint` at each checkpoint it
saves, so OUT always holds the latest one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..generation.loading import read_json, read_weights
from ..generation.lora import merged_state_dict, save_lora
from ..models import gpt2
from ..models.unet import level_values
from .data import save_atomic


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
    # the heads of each level as the model was trained (the authors' 32-channel heads, or diffusers' reading),
    # written as diffusers reads a list: per level, the mid block taking the last
    heads = list(level_values(unet.config.num_heads, len(unet.config.block_out_channels)))
    unet_config = dict(read_json(root / "unet" / "config.json"), attention_head_dim=heads)
    (out / "unet" / "config.json").write_text(json.dumps(unet_config, indent=2) + "\n")
    save_atomic(save_file, merged_state_dict(unet), out / "unet" / "diffusion_pytorch_model.safetensors",
                metadata={"format": "pt"})
    if lora:
        save_lora(unet, out / "lora.safetensors")
    if (root / "language_model").is_dir():  # not in the authors' 48 kHz and T5-only models
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
    save_atomic(save_file, gpt2.lm_head_state_dict(state_dict), folder / "model.safetensors",
                 metadata={"format": "pt"})
    config = dict(read_json(root / "language_model" / "config.json"), architectures=["GPT2LMHeadModel"])
    index = dict(read_json(root / "model_index.json"), language_model=["transformers", "GPT2LMHeadModel"])
    for file, content in ((folder / "config.json", config), (out / "model_index.json", index)):
        partial = file.with_name(f".partial-{file.name}")  # a new file in place of the link to the base's
        partial.write_text(json.dumps(content, indent=2) + "\n")
        os.replace(partial, file)
