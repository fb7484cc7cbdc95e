"""Parity of audioldm2_lite.models.vae with diffusers' AutoencoderKL, and its tiled decoding and encoding
(models/long_audio.py walks its blocks)."""

from __future__ import annotations

import gc
import json
import shutil

import pytest
import torch
from reference import max_rel_error

import audioldm2_lite.models.attention as attention_module
from audioldm2_lite import load_component
from audioldm2_lite.models.long_audio import TimeTiles, blocks_in_tiles, decode_in_tiles, encode_in_tiles
from audioldm2_lite.models.vae import VAEConfig


def reference_vae(checkpoint):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(f"{checkpoint}/vae").eval()


@pytest.fixture(scope="module")
def tiny_vaes(tiny_checkpoint):
    return load_component(tiny_checkpoint, "vae"), reference_vae(tiny_checkpoint)


def uneven_latent(batch, channels, frames, bins, dtype=torch.float32):
    """A latent whose loudness changes along time: quiet, then shifted, then plain noise.

    Per-tile GroupNorm statistics would differ strongly between its parts, so tiled decoding only
    matches one pass if it uses the whole input's statistics.
    """
    latent = torch.randn(batch, channels, frames, bins, dtype=dtype)
    latent[:, :, : frames * 2 // 5] *= 0.1
    latent[:, :, frames * 2 // 5: frames * 2 // 3] += 1.0
    return latent


@pytest.mark.parametrize("use_sdpa", [True, False])
@torch.no_grad()
def test_decode_matches_diffusers(tiny_vaes, use_sdpa, monkeypatch):
    ours, reference = tiny_vaes
    monkeypatch.setattr(attention_module, "USE_SDPA", use_sdpa)
    latents = torch.randn(2, 4, 24, 16)  # (B, latent channels, T/4, 16); the tiny VAE has 4 latent channels
    mel = ours.decode(latents)
    assert mel.shape == (2, 1, 96, 64)
    # same layers in the same order (explicit attention: another softmax summation order): float32 rounding
    assert max_rel_error(mel, reference.decode(latents).sample) <= 1e-5


@torch.no_grad()
def test_encode_matches_diffusers(tiny_vaes):
    ours, reference = tiny_vaes
    mel = torch.randn(2, 1, 96, 64)
    mean, logvar = ours.encode_distribution(mel)
    posterior = reference.encode(mel).latent_dist
    assert mean.shape == (2, 4, 24, 16)
    assert max_rel_error(mean, posterior.mean) <= 1e-5  # float32 rounding only
    assert max_rel_error(logvar, posterior.logvar) <= 1e-5
    assert torch.equal(ours.encode(mel), mean)


def test_config_reads_every_official_checkpoint():
    from conftest import CONFIGS

    for folder in sorted(CONFIGS.glob("*/vae")):
        hub = json.loads((folder / "config.json").read_text())
        config = VAEConfig.from_hub(hub)
        assert config.scaling_factor == hub["scaling_factor"]  # per checkpoint; the pipeline divides by it
        assert config.latent_channels == 8 and config.block_out_channels == (128, 256, 512)


@torch.no_grad()
def test_legacy_attention_names_load(tiny_checkpoint, tiny_vaes, tmp_path):
    """Checkpoints from diffusers < 0.15 name the attention query/key/value/proj_attn."""
    from safetensors.torch import load_file, save_file

    _, reference = tiny_vaes
    (tmp_path / "vae").mkdir()
    shutil.copy(tiny_checkpoint / "model_index.json", tmp_path)
    shutil.copy(tiny_checkpoint / "vae" / "config.json", tmp_path / "vae")
    state = load_file(str(tiny_checkpoint / "vae" / "diffusion_pytorch_model.safetensors"))
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for key, tensor in state.items():
        for new, old in legacy.items():
            key = key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        renamed[key] = tensor
    assert any(".query." in key for key in renamed)
    save_file(renamed, str(tmp_path / "vae" / "diffusion_pytorch_model.safetensors"))
    ours = load_component(tmp_path, "vae")
    latents = torch.randn(1, 4, 8, 16)
    assert max_rel_error(ours.decode(latents), reference.decode(latents).sample) <= 1e-5  # float32 rounding


@torch.no_grad()
def test_tiled_decode_30_seconds_matches_one_pass(tiny_checkpoint):
    """30 s (750 latent frames, 3000 mel frames) in tiles of 256, on a latent whose loudness changes.

    Tiny VAE: the full-size decoder needs minutes of 2-core CPU for 30 s, far over the slow-test budget;
    the full-size test below uses 2 s.
    """
    ours = load_component(tiny_checkpoint, "vae")
    latents = uneven_latent(1, 4, 750, 16)
    one_pass, tiled = ours.decode(latents), decode_in_tiles(ours, latents, tile_frames=256)
    # The attention runs on the whole latent, each tile overlaps its layer's reach, and the GroupNorms
    # use whole-input statistics: what remains is float32 rounding in the tiles' other summation orders.
    assert max_rel_error(tiled, one_pass) <= 1e-5


@torch.no_grad()
def test_tiled_decode_and_encode_are_exact_in_float64(tiny_checkpoint):
    ours = load_component(tiny_checkpoint, "vae", dtype=torch.float64)
    latents = uneven_latent(2, 4, 50, 16, dtype=torch.float64)
    one_pass = ours.decode(latents)
    for tile_frames in (3, 20, 64):  # tiles shorter than a layer's reach in rows, a last short tile, one tile
        assert max_rel_error(decode_in_tiles(ours, latents, tile_frames), one_pass) <= 1e-12  # float64 rounding
    # the test can fail: without the overlap the tiles' edges see zero padding
    x = ours.decoder.mid_block(ours.decoder.conv_in(ours.post_quant_conv(latents)))
    up_path = blocks_in_tiles(ours.decoder.up_blocks, x, TimeTiles(50, 20, overlap=0))
    one_pass_up_path = x
    for block in ours.decoder.up_blocks:
        one_pass_up_path = block(one_pass_up_path)
    assert max_rel_error(up_path, one_pass_up_path) > 1e-3

    mel = one_pass  # (2, 1, 200, 64): a mel spectrogram with the same loud and quiet parts
    mean, logvar = ours.encode_distribution(mel)
    tiled_mean, tiled_logvar = encode_in_tiles(ours, mel, tile_frames=7)
    assert max_rel_error(tiled_mean, mean) <= 1e-12 and max_rel_error(tiled_logvar, logvar) <= 1e-12
    with pytest.raises(ValueError, match="multiple of 4"):
        encode_in_tiles(ours, mel[:, :, :-1], tile_frames=7)


@pytest.mark.slow
@torch.no_grad()
def test_full_size_matches_diffusers_and_tiles(full_checkpoint):
    """Official sizes, random weights, 2 s of audio (50 latent frames): decode, encode, tiled decode and encode."""
    checkpoint = full_checkpoint("audioldm2", ["vae"])
    ours, reference = load_component(checkpoint, "vae"), reference_vae(checkpoint)
    latents = uneven_latent(1, 8, 50, 16)
    mel = ours.decode(latents)
    assert mel.shape == (1, 1, 200, 64)
    assert max_rel_error(mel, reference.decode(latents).sample) <= 1e-5  # float32 rounding only
    mean = ours.encode(mel)
    assert max_rel_error(mean, reference.encode(mel).latent_dist.mean) <= 1e-5
    del reference
    gc.collect()
    # tiles of 16 latent frames (4 tiles): float32 rounding only
    assert max_rel_error(decode_in_tiles(ours, latents, 16), mel) <= 1e-5
    assert max_rel_error(encode_in_tiles(ours, mel, 16)[0], mean) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_half_precision_runs(tiny_checkpoint, dtype):
    """Weights and activations stay in the requested dtype, tiled paths included, and stay finite."""
    ours = load_component(tiny_checkpoint, "vae", dtype=dtype)
    latents = torch.randn(1, 4, 40, 16, dtype=dtype)
    mel = torch.randn(1, 1, 32, 64, dtype=dtype)
    for output in (ours.decode(latents), decode_in_tiles(ours, latents, 16), ours.encode(mel),
                   encode_in_tiles(ours, mel, 4)[0]):
        assert output.dtype == dtype and torch.isfinite(output).all()
