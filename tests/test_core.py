"""The core (generation/core.py, `AudioLDM2`) and the engine beside it (`AudioLDM2Pipeline`).

The core is what a reader reads: its import closure stays small and holds none of the machinery. Each engine
piece that replaces a core step is held against that step here: bit-exact where it does the same arithmetic,
within float rounding where it does the same math in another order or batch.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import torch
from reference import max_rel_error

from audioldm2_lite import AudioLDM2, AudioLDM2Pipeline
from audioldm2_lite.generation.guided_unet import GuidedUNet
from audioldm2_lite.models import unet as unet_module

PACKAGE = Path(importlib.util.find_spec("audioldm2_lite").origin).parent
CLOSURE_BUDGET = 3000  # lines: the core and every package module it imports, read in one sitting
# the engine's modules: speed, memory, precision recipes, requests, serving, adapters, edits, downloads
MACHINERY = ("cuda_graphs", "memory", "precision", "long_audio", "request", "requests", "batching", "serving",
             "lora", "editing", "guided_unet", "hub", "ranking", "speech", "devices", "pipeline")


def module_file(name: str) -> Path | None:
    """The source file of package module `name` (audioldm2_lite.x.y), or None when it is no module of ours."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def package_imports(name: str, file: Path) -> set[str]:
    """Every package module `file` imports, anywhere in it (a function-level import counts too)."""
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("audioldm2_lite")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up level - 1 packages from this one
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            if not base.startswith("audioldm2_lite"):
                continue
            for alias in node.names:  # `from . import x` imports the module x; `from .x import y`, the module x
                found.add(f"{base}.{alias.name}" if module_file(f"{base}.{alias.name}") else base)
    return {module for module in found if module_file(module) is not None}


def import_closure(name: str) -> dict[str, int]:
    """{module: its lines} for `name` and every package module it imports, transitively."""
    closure, todo = {}, [name]
    while todo:
        module = todo.pop()
        if module in closure:
            continue
        file = module_file(module)
        closure[module] = len(file.read_text().splitlines())
        todo += package_imports(module, file)
    return closure


def test_the_core_is_read_in_one_sitting():
    closure = import_closure("audioldm2_lite.generation.core")
    lines = sum(closure.values())
    assert "audioldm2_lite.models.unet" in closure and "audioldm2_lite.generation.conditioning" in closure
    assert lines <= CLOSURE_BUDGET, f"the core's import closure is {lines} lines: {sorted(closure.items())}"
    machinery = [m for m in closure if m.rpartition(".")[2] in MACHINERY]
    assert not machinery, f"the core imports machinery: {machinery}"


def test_the_closure_counts_what_an_import_brings():
    """The measure itself: the engine's closure holds the core's and the machinery."""
    engine = import_closure("audioldm2_lite.generation.pipeline")
    assert set(import_closure("audioldm2_lite.generation.core")) < set(engine)
    assert {"audioldm2_lite.generation.cuda_graphs", "audioldm2_lite.models.long_audio"} <= set(engine)


# ----------------------------------------------------------------------------------------------
# The engine's pieces, each against the core step it replaces


@pytest.fixture(scope="module")
def both(tiny_checkpoint):
    """The engine (float32) and the core built on the very same modules."""
    pipe = AudioLDM2Pipeline.from_pretrained(tiny_checkpoint, device="cpu", dtype=torch.float32)
    core = AudioLDM2(pipe.conditioner, pipe.unet, pipe.vae, pipe.vocoder, pipe.scheduler_config)
    return pipe, core


def unet_inputs(unet, batch: int = 2, frames: int = 16, t5_length: int = 7):
    c = unet.config
    gpt2_dim, t5_dim = [d for d in c.cross_attention_dim[1] if d is not None][:2]
    mask = torch.ones(batch, t5_length, dtype=torch.long)
    mask[-1, t5_length // 2:] = 0  # padding, masked in the T5 cross-attention
    latents = torch.randn(batch // 2, c.in_channels, frames, 16)
    return latents, (torch.randn(batch, 8, gpt2_dim), torch.randn(batch, t5_length, t5_dim), mask)


def test_keys_values_computed_once_are_the_core_unets(both):
    """GuidedUNet.context projects every cross-attention's keys and values once: the same arithmetic."""
    pipe, _ = both
    guided = GuidedUNet(pipe.unet)
    latents, conditioning = unet_inputs(pipe.unet)
    x, t = torch.cat([latents, latents]), torch.tensor(500)
    with torch.no_grad():
        context = guided.context(*conditioning)
        assert len(guided.cross_attentions) == sum(len(keys_values) for keys_values, _ in context.values()) > 0
        for _ in range(2):  # reused across steps
            assert torch.equal(guided(x, t, context), pipe.unet(x, t, *conditioning))
        assert torch.equal(pipe.unet(x, t, *conditioning), unet_module.UNet.forward(pipe.unet, x, t, *conditioning))


@pytest.mark.parametrize("frames", [16, 13])
def test_layers_shared_by_both_halves_of_guidance(both, frames):
    """repeats=2 on x equals the plain UNet on [x, x], the classifier-free-guidance batch."""
    pipe, _ = both
    guided = GuidedUNet(pipe.unet)
    latents, conditioning = unet_inputs(pipe.unet, frames=frames)
    with torch.no_grad():
        shared = guided(latents, torch.tensor(500), guided.context(*conditioning), repeats=2)
        plain = pipe.unet(torch.cat([latents, latents]), torch.tensor(500), *conditioning)
    # the same operations on a batch of 1 instead of 2: oneDNN may pick another blocking, so rounding only
    assert max_rel_error(shared, plain) <= 1e-6


def test_guided_unet_compiles_without_graph_breaks():
    """fullgraph=True refuses graph breaks: the engine's UNet call can be compiled and CUDA-graphed."""
    config = unet_module.UNetConfig(
        in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1, num_heads=2, norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=((None, 6, 10),) * 2,
    )
    model = unet_module.UNet(config).eval()
    guided = GuidedUNet(model)
    latents = torch.randn(1, 4, 7, 16)
    conditioning = (torch.randn(2, 8, 6), torch.randn(2, 5, 10), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]))
    with torch.no_grad():
        context = guided.context(*conditioning)
        compiled = torch.compile(guided, backend="eager", fullgraph=True)
        t = torch.tensor(10)
        assert torch.equal(compiled(latents, t, context, 2), guided(latents, t, context, 2))


def test_engine_predict_noise_is_the_cores(both):
    pipe, core = both
    latents, conditioning = unet_inputs(pipe.unet)
    t = torch.tensor(500)
    with torch.no_grad():
        for guidance in (3.5, 1.0):  # guided: [uncond, cond]; unguided: the conditional half alone
            cond = conditioning if guidance > 1 else tuple(c[1:] for c in conditioning)
            engine = pipe.predict_noise(latents, t, pipe.runners.unet_context(*cond), guidance)
            # the shared layers ran on a batch of 1 instead of 2 (guided): the UNet's rounding (1e-6 above), which
            # guidance's extrapolation uncond + g (cond - uncond) scales by up to 1 + 2g = 8
            assert max_rel_error(engine, core.predict_noise(latents, t, cond, guidance)) <= 1e-5


def test_engine_generate_latents_is_the_cores(both):
    pipe, core = both
    with torch.no_grad():
        conditioning = core.encode_prompt("rain on a tin roof")
        assert all(torch.equal(a, b) for a, b in zip(conditioning, pipe.encode_prompt("rain on a tin roof")))
        latents = core.prepare_latents(1, 64, torch.Generator().manual_seed(0))
        for scheduler in ("ddim", "dpmsolver++"):
            steps = [list(model.generate_latents(latents, conditioning, 4, 3.5, scheduler)) for model in (pipe, core)]
            assert [t for t, _ in steps[0]] == [t for t, _ in steps[1]]
            # each step's guided UNet call rounds as `test_engine_predict_noise_is_the_cores`, over 4 steps
            assert max_rel_error(steps[0][-1][1], steps[1][-1][1]) <= 1e-5


def test_engine_decoding_in_tiles_is_the_cores_one_pass(both):
    """Decoding in time tiles and vocoder windows (long_audio.py) against the core's one pass."""
    pipe, core = both
    latents = torch.randn(1, pipe.unet.config.in_channels, 40, pipe.vocoder.config.model_in_dim // 4)
    with torch.no_grad():
        one_pass = core.decode(latents, 9000)
        assert torch.equal(pipe.decode(latents, 9000), one_pass)  # the plan fits: the same one pass
        assert not pipe.decode_plan(latents.shape, max_memory=1).one_pass
        tiled = pipe.decode(latents, 9000, max_memory=1)  # the smallest tiles
    # GroupNorm statistics summed tile by tile and the vocoder in windows: float32 rounding only
    assert max_rel_error(tiled, one_pass) <= 1e-5


def test_engine_call_is_the_cores(both):
    """The whole call: diffusers' arguments through a Request, against the core's short __call__."""
    pipe, core = both
    kwargs = dict(audio_length_in_s=0.64, num_inference_steps=3, negative_prompt="noise", num_waveforms_per_prompt=2)
    engine = pipe(["a dog barks", "techno"], generator=torch.Generator().manual_seed(3), output_type="pt",
                  **kwargs).audios
    core_audio = core(["a dog barks", "techno"], generator=torch.Generator().manual_seed(3), **kwargs)
    assert core_audio.shape == engine.shape == (4, int(0.64 * 16000))
    # the engine ranks each prompt's candidates: the same set of waveforms, maybe in another order
    for prompt in range(2):
        rows = slice(2 * prompt, 2 * prompt + 2)
        errors = [max_rel_error(engine[rows][order], core_audio[rows]) for order in ([0, 1], [1, 0])]
        assert min(errors) <= 1e-4  # float rounding through 3 guided steps, the VAE and the vocoder


def test_core_from_pretrained(tiny_checkpoint, both):
    pipe, _ = both
    core = AudioLDM2.from_pretrained(tiny_checkpoint, "cpu", torch.float32)
    assert core.device == torch.device("cpu") and core.dtype == torch.float32
    assert core.scheduler_config == pipe.scheduler_config
    audio = core("a dog barks", 0.32, 2, generator=torch.Generator().manual_seed(0))
    assert audio.shape == (1, int(0.32 * 16000)) and torch.isfinite(audio).all()
