"""The dual cross-attention UNet (audioldm2_lite/models/unet.py) against diffusers' AudioLDM2UNet2DConditionModel."""

from __future__ import annotations

import gc
import json

import pytest
import torch
from make_tiny_checkpoint import perturb_vectors
from reference import max_rel_error

import audioldm2_lite.models.attention as attention_module
from audioldm2_lite.models import unet
from audioldm2_lite.generation.loading import load_component


def diffusers_twin(checkpoint):
    from diffusers.pipelines.audioldm2 import AudioLDM2UNet2DConditionModel

    return AudioLDM2UNet2DConditionModel.from_pretrained(checkpoint / "unet", torch_dtype=torch.float32).eval()


def unet_inputs(config: dict, time_frames: int, batch: int = 2, t5_length: int = 7):
    """Random latents and conditioning as the pipeline passes them; the second T5 sequence is padded."""
    gpt2_dim, t5_dim = [d for d in config["cross_attention_dim"][1] if d is not None][:2]
    t5_mask = torch.ones(batch, t5_length, dtype=torch.long)
    t5_mask[-1, t5_length // 2:] = 0  # padding, as T5 states of prompts of different lengths have
    return dict(
        sample=torch.randn(batch, config["in_channels"], time_frames, 16),
        timestep=torch.tensor([981, 21][:batch]),  # (B,): a different step per sample
        encoder_hidden_states=torch.randn(batch, 8, gpt2_dim),  # GPT-2's 8 generated states
        encoder_hidden_states_1=torch.randn(batch, t5_length, t5_dim),
        encoder_attention_mask_1=t5_mask,
    )


def run_both(checkpoint, inputs):
    with torch.no_grad():
        ours = load_component(checkpoint, "unet", reference="diffusers")(**inputs)  # diffusers' heads
        gc.collect()
        reference = diffusers_twin(checkpoint)(**inputs, return_dict=False)[0]
    gc.collect()
    return ours, reference


def config_of(checkpoint) -> dict:
    return json.loads((checkpoint / "unet" / "config.json").read_text())


# 16: the tiny default; 250: 10.0 s, odd sizes below the second downsampling (125 -> 63 -> 32); 13: short and odd
@pytest.mark.parametrize("time_frames", [16, 250, 13])
def test_tiny_matches_diffusers(tiny_checkpoint, time_frames):
    ours, reference = run_both(tiny_checkpoint, unet_inputs(config_of(tiny_checkpoint), time_frames))
    assert ours.shape == reference.shape == (2, 4, time_frames, 16)
    # float32, the same operations: rounding only
    assert max_rel_error(ours, reference) <= 1e-5


def test_scalar_timestep_matches_diffusers(tiny_checkpoint):
    inputs = unet_inputs(config_of(tiny_checkpoint), 16)
    inputs["timestep"] = torch.tensor(500)  # what a scheduler's loop hands over: one step for the whole batch
    ours, reference = run_both(tiny_checkpoint, inputs)
    assert max_rel_error(ours, reference) <= 1e-5  # float32 rounding only


def test_t5_padding_is_masked_and_both_sequences_are_read(tiny_checkpoint):
    model = load_component(tiny_checkpoint, "unet")
    inputs = unet_inputs(config_of(tiny_checkpoint), 16)
    padded = inputs["encoder_attention_mask_1"] == 0
    t5_states = inputs["encoder_hidden_states_1"]
    with torch.no_grad():
        output = model(**inputs)
        new_padding = torch.where(padded[..., None], torch.randn_like(t5_states), t5_states)
        other_padding = dict(inputs, encoder_hidden_states_1=new_padding)
        unmasked = model(**dict(inputs, encoder_attention_mask_1=None))
        other_gpt2 = model(**dict(inputs, encoder_hidden_states=torch.randn_like(inputs["encoder_hidden_states"])))
        other_t5 = model(**dict(inputs, encoder_hidden_states_1=torch.randn_like(t5_states)))
        # the padded states get weight exp(-1e4) = 0 in float32: they cannot move the output beyond rounding
        assert max_rel_error(model(**other_padding), output) <= 1e-6
    # the mask acts on the padded sample only (a zero bias and no bias: rounding only)
    assert max_rel_error(unmasked[0], output[0]) <= 1e-6 and max_rel_error(unmasked[1], output[1]) > 1e-3
    # both sequences are read
    assert max_rel_error(other_gpt2, output) > 1e-3 and max_rel_error(other_t5, output) > 1e-3


def test_large_layout_matches_diffusers(tmp_path):
    """audioldm2-large's layout at tiny size: 2 transformer layers per block, a 4th (self-)attention per layer."""
    from diffusers.pipelines.audioldm2 import AudioLDM2UNet2DConditionModel

    reference = AudioLDM2UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=8,
        block_out_channels=(16, 16, 24, 32), attention_head_dim=2, transformer_layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=[[None, 24, 32, None]] * 4,
    )
    perturb_vectors(reference).save_pretrained(tmp_path / "unet")
    (tmp_path / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "AudioLDM2UNet2DConditionModel"]}))
    ours, reference = run_both(tmp_path, unet_inputs(config_of(tmp_path), 13))
    assert max_rel_error(ours, reference) <= 1e-5  # float32 rounding only


# The forms of the per-level fields diffusers reads: cross_attention_dim as one int, a flat list (one
# cross-attention per level: diffusers' own test UNet), mixed ints and lists; layers, transformer layers and
# heads as one int or a list per level.
@pytest.mark.parametrize("fields", [
    dict(cross_attention_dim=24),
    dict(cross_attention_dim=[24, 24, 24]),
    dict(cross_attention_dim=[24, [None, 24, 32], 24]),
    dict(cross_attention_dim=[[None, 24, 32]] * 3, layers_per_block=[1, 2, 1], transformer_layers_per_block=[1, 2, 1],
         attention_head_dim=[2, 4, 8]),
])
def test_per_level_config_forms_match_diffusers(tmp_path, fields):
    from diffusers.pipelines.audioldm2 import AudioLDM2UNet2DConditionModel

    torch.manual_seed(0)
    reference = AudioLDM2UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, norm_num_groups=8, block_out_channels=(16, 24, 32),
        **{"layers_per_block": 1, "attention_head_dim": 2, **fields},
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    )
    perturb_vectors(reference).save_pretrained(tmp_path / "unet")
    (tmp_path / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "AudioLDM2UNet2DConditionModel"]}))
    inputs = unet_inputs({"in_channels": 4, "cross_attention_dim": [None, [24, 32]]}, 13)
    ours, reference = run_both(tmp_path, inputs)
    assert max_rel_error(ours, reference) <= 1e-5  # float32 rounding only


def test_cross_attention_dim_it_cannot_read_is_one_line():
    from audioldm2_lite.generation.loading import UnsupportedConfigError

    hub = {"block_out_channels": [8, 16], "cross_attention_dim": [[None, 8, 16, 16, 8], 8]}
    with pytest.raises(UnsupportedConfigError, match="cross_attention_dim") as error:
        unet.cross_attention_dims(hub, 2)
    assert "\n" not in str(error.value)


def test_sdpa_matches_explicit_math(tiny_checkpoint, monkeypatch):
    model = load_component(tiny_checkpoint, "unet")
    inputs = unet_inputs(config_of(tiny_checkpoint), 24)
    with torch.no_grad():
        fused = model(**inputs)
        monkeypatch.setattr(attention_module, "USE_SDPA", False)
        explicit = model(**inputs)
    # the same attention computed by two kernels in float32: rounding only
    assert max_rel_error(explicit, fused) <= 1e-5


# bfloat16 keeps 8 significant bits (step 2^-8 = 4e-3), float16 11 (5e-4); through ~40 layers of rounding the
# measured errors are 9e-3 and 1.3e-3: three times that allows for other CPUs' kernels
@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 3e-2), (torch.float16, 4e-3)])
def test_half_precision_stays_finite_and_close(tiny_checkpoint, dtype, tolerance):
    inputs = unet_inputs(config_of(tiny_checkpoint), 16)
    half_inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    with torch.no_grad():
        reference = load_component(tiny_checkpoint, "unet")(**inputs)
        half = load_component(tiny_checkpoint, "unet", dtype=dtype)(**half_inputs)
    assert half.dtype == dtype and torch.isfinite(half).all()
    assert max_rel_error(half, reference) <= tolerance


def test_forward_compiles_without_graph_breaks():
    """fullgraph=True refuses graph breaks: no Python work on tensor values (CUDA-graph and compile friendly)."""
    # a two-level UNet keeps tracing fast and still takes every path: self / GPT-2 / T5 attention, odd sizes
    config = unet.UNetConfig(
        in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1, num_heads=2, norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=((None, 6, 10),) * 2,
    )
    model = unet.UNet(config).eval()
    inputs = dict(
        sample=torch.randn(2, 4, 7, 16), timestep=torch.tensor(10), encoder_hidden_states=torch.randn(2, 8, 6),
        encoder_hidden_states_1=torch.randn(2, 5, 10),
        encoder_attention_mask_1=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]),
    )
    with torch.no_grad():
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        assert torch.equal(compiled(**inputs), model(**inputs))


@pytest.mark.slow
@pytest.mark.parametrize("variant, time_frames", [("audioldm2", 50), ("audioldm2-large", 32)])
def test_full_size_matches_diffusers(full_checkpoint, variant, time_frames):
    """Full size, random weights; short latents (50: odd sizes 25 -> 13 -> 7 on the way down) keep CI time down."""
    checkpoint = full_checkpoint(variant, ["unet"])
    inputs = unet_inputs(config_of(checkpoint), time_frames, t5_length=12)
    ours, reference = run_both(checkpoint, inputs)
    assert ours.shape == (2, 8, time_frames, 16)
    # float32, the same operations through ~40 (base) / ~100 (large) layers: rounding only
    assert max_rel_error(ours, reference) <= 1e-5
