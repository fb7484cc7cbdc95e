"""LoRA: low-rank adapters on the UNet's attention projections, for cheap fine-tuning.

A frozen projection y = W x + b gains a trainable low-rank update (Hu et al., "LoRA: Low-Rank
Adaptation of Large Language Models", arXiv:2106.09685, eq. 3):

    y = W x + b + scale * (alpha / rank) * B A x        A: (rank, in), B: (out, rank)

A starts random (Kaiming-uniform, as nn.Linear), B at zero, so before the first step the adapted
model is the base model exactly. `scale` (the `lora_scale` at inference) weakens or strengthens the
update; `call_scale` multiplies it for one pipeline call (diffusers' `cross_attention_kwargs={"scale": s}`).
Merging adds the update to W once; the merged model computes the same function with no extra cost.
The adapter is applied by walking the module tree and replacing every nn.Linear whose name ends in
one of `TARGETS`: in our UNet, q, k, v and out of both attentions of every transformer block (`...transformer_blocks.N.attn1.to_q`, `...attn2.to_out.0`, ...).

A saved adapter is one safetensors file holding only the A and B tensors (named after the module
they adapt, e.g. `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A`) with
{rank, alpha, targets} in its metadata, so `load_lora` needs nothing else.
References: microsoft/LoRA `loralib`, cccntu/minLoRA.
"""

from __future__ import annotations

import json
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class LoRALinear(nn.Linear):
    """An nn.Linear (same `weight` and `bias`, so the same parameter names) plus a low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # shared with the base layer, not copied
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own initialisation
        self.rank, self.alpha, self.scale, self.call_scale = rank, alpha, 1.0, 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))  # (..., out) via rank
        return F.linear(x, self.weight, self.bias) + (self.call_scale * self.scale * self.alpha / self.rank) * update

    def merged(self) -> nn.Linear:
        """A plain nn.Linear with W + scale * (alpha / rank) B A: the same function, no extra work."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        delta = (self.scale * self.alpha / self.rank) * (self.lora_B.float() @ self.lora_A.float())  # (out, in)
        linear.weight = nn.Parameter((self.weight.float() + delta).to(self.weight.dtype), self.weight.requires_grad)
        linear.bias = self.bias
        return linear


def _replace(model: nn.Module, make) -> None:
    """Swap each submodule m for make(name, m) where that returns a module (not None)."""
    for name, module in list(model.named_modules()):
        new = make(name, module)
        if new is not None:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, new)


def apply_lora(model: nn.Module, rank: int, alpha: float | None = None, targets=TARGETS) -> list[nn.Parameter]:
    """Freeze `model` and adapt every nn.Linear named `*.<target>`; returns the new trainable parameters.

    alpha defaults to rank (a scaling of 1).
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    alpha = float(rank if alpha is None else alpha)
    model.requires_grad_(False)

    def adapt(name, module):
        if type(module) is nn.Linear and any(name == t or name.endswith("." + t) for t in targets):
            return LoRALinear(module, rank, alpha)

    _replace(model, adapt)
    parameters = [p for n, p in model.named_parameters() if ".lora_" in n]
    if not parameters:
        raise ValueError(f"no nn.Linear in the model is named like {list(targets)}: nothing to adapt")
    return parameters


def set_lora_scale(model: nn.Module, scale: float) -> None:
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.scale = float(scale)


def set_lora_call_scale(model: nn.Module, scale: float) -> bool:
    """Multiply every adapter's update by `scale` until the next call (1 undoes it); whether there is any."""
    layers = [module for module in model.modules() if isinstance(module, LoRALinear)]
    for layer in layers:
        layer.call_scale = float(scale)
    return bool(layers)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (W += scale * alpha / rank * B A); the model has hub names again."""
    _replace(model, lambda name, module: module.merged() if isinstance(module, LoRALinear) else None)
    return model


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict `merge_lora` would give (hub names, adapters folded in), leaving `model` as it is."""
    state = {name: tensor for name, tensor in model.state_dict().items() if ".lora_" not in name}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            state[f"{name}.weight"] = module.merged().weight.detach()
    return state


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in model.state_dict().items() if ".lora_" in name}


def save_lora(model: nn.Module, path: str | os.PathLike) -> None:
    """Write only the adapter tensors (float32) with {rank, alpha, targets} in the file's metadata."""
    from safetensors.torch import save_file

    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    if not layers:
        raise ValueError("the model has no LoRA adapters to save")
    tensors = {name: tensor.detach().float().contiguous().cpu() for name, tensor in lora_state_dict(model).items()}
    targets = sorted({name.rsplit(".lora_", 1)[0] for name in tensors})
    suffixes = sorted({t for t in TARGETS if any(n == t or n.endswith("." + t) for n in targets)})
    metadata = {"format": "audioldm2_lite.lora", "rank": str(layers[0].rank), "alpha": str(layers[0].alpha),
                "targets": json.dumps(suffixes)}
    save_file(tensors, str(path), metadata=metadata)


def load_lora(model: nn.Module, path: str | os.PathLike, scale: float = 1.0) -> nn.Module:
    """Adapt `model` as the file says and fill the adapters strictly (every tensor used, none missing)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except Exception as error:
        raise ValueError(f"cannot read LoRA adapter {path}: {type(error).__name__}: {error}") from None
    if metadata.get("format") != "audioldm2_lite.lora":
        raise ValueError(f"{path} is not an audioldm2_lite LoRA adapter (no 'format' in its metadata)")
    apply_lora(model, int(metadata["rank"]), float(metadata["alpha"]), tuple(json.loads(metadata["targets"])))
    expected = lora_state_dict(model)
    missing, unexpected = expected.keys() - tensors.keys(), tensors.keys() - expected.keys()
    if missing or unexpected:
        raise ValueError(f"LoRA adapter {path} does not fit this UNet: missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]} (was it trained on another checkpoint?)")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(f"LoRA tensor {name} in {path} has shape {tuple(tensor.shape)}, "
                             f"expected {tuple(expected[name].shape)}")
    model.load_state_dict(tensors, strict=False)
    set_lora_scale(model, scale)
    return model
