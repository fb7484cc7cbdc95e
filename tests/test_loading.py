"""Checkpoint loading: every component round-trips its tensors, and every user error is one clear CheckpointError."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from audioldm2_lite import (
    CheckpointError,
    load_component,
    load_config,
    resolve_checkpoint,
)
from audioldm2_lite.generation.hub import _choose_hub_files
from audioldm2_lite.generation.loading import (
    STAGES,
    UnsupportedConfigError,
    build_config,
    read_json,
    read_weights,
)


@pytest.fixture()
def copy_of(tiny_checkpoint, tmp_path):
    """A private copy of the tiny checkpoint that a test may damage."""

    def make(*components):
        out = tmp_path / "ckpt"
        out.mkdir()
        shutil.copy(tiny_checkpoint / "model_index.json", out)
        for name in components:
            shutil.copytree(tiny_checkpoint / name, out / name)
        return out

    return make


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_tensor_round_trips(tiny_checkpoint, name):
    module = STAGES[name].module
    model = load_component(tiny_checkpoint, name)
    hub, _ = read_weights(tiny_checkpoint / name)
    convert = getattr(module, "convert_hub_state_dict", None)
    config = build_config(name, read_json(tiny_checkpoint / name / "config.json"))
    expected = convert(dict(hub), config) if convert else hub
    ours = model.state_dict()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    for key, tensor in ours.items():
        # exact: loading only copies (and casts float64 -> float32, exact for values stored from float32)
        assert torch.equal(tensor, expected[key].to(tensor.dtype)), key
    # every hub tensor was either loaded or is named as deliberately unused
    unused = set(expected) - set(ours)
    patterns = [re.compile(p) for p in getattr(module, "UNUSED_KEYS", ())]
    assert all(any(p.fullmatch(k) for p in patterns) for k in unused)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_cast(tiny_checkpoint, dtype):
    model = load_component(tiny_checkpoint, "projection_model", dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}


def test_bin_and_sharded_weights_load_the_same(copy_of):
    ckpt = copy_of("projection_model")
    folder = ckpt / "projection_model"
    tensors = load_file(folder / "diffusion_pytorch_model.safetensors")
    reference = load_component(ckpt, "projection_model").state_dict()

    # .bin through torch.load(weights_only=True)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(tensors, folder / "diffusion_pytorch_model.bin")
    bin_model = load_component(ckpt, "projection_model").state_dict()
    assert all(torch.equal(bin_model[k], reference[k]) for k in reference)

    # sharded safetensors with an index, preferred over the .bin
    keys = sorted(tensors)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[::2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[1::2]}
    for shard, shard_keys in shards.items():
        save_file({k: tensors[k] for k in shard_keys}, folder / shard)
    weight_map = {k: shard for shard, shard_keys in shards.items() for k in shard_keys}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"not a pickle")  # must not be read
    sharded = load_component(ckpt, "projection_model").state_dict()
    assert all(torch.equal(sharded[k], reference[k]) for k in reference)


def test_hub_download_picks_configs_and_one_weight_format():
    files = [
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.bin",
        "text_encoder_2/config.json", "text_encoder_2/model.safetensors.index.json",
        "text_encoder_2/model-00001-of-00002.safetensors", "text_encoder_2/model-00002-of-00002.safetensors",
        "text_encoder_2/pytorch_model.bin", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
        "vocoder/config.json", "vocoder/model.safetensors",
    ]
    chosen = _choose_hub_files(files, ["unet", "vae", "text_encoder_2", "tokenizer"])
    assert sorted(chosen) == sorted([
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.bin",
        "text_encoder_2/config.json", "text_encoder_2/model.safetensors.index.json",
        "text_encoder_2/model-00001-of-00002.safetensors", "text_encoder_2/model-00002-of-00002.safetensors",
        "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
    ])


def test_hub_download_of_a_variant_falls_back_per_component():
    files = [
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors",  # no fp16 file: its plain one, as diffusers
        "text_encoder_2/config.json", "text_encoder_2/model.safetensors.index.fp16.json",
        "text_encoder_2/model.fp16-00001-of-00002.safetensors", "text_encoder_2/model.fp16-00002-of-00002.safetensors",
        "text_encoder_2/model-00001-of-00002.safetensors", "text_encoder_2/model-00002-of-00002.safetensors",
        "text_encoder_2/model.safetensors.index.json",
        "vocoder/config.json", "vocoder/model.safetensors.fp16.index.json",  # the legacy variant index naming
        "vocoder/model-00001-of-00001.fp16.safetensors", "vocoder/model.safetensors",
    ]
    chosen = _choose_hub_files(files, ["unet", "vae", "text_encoder_2", "vocoder"], variant="fp16")
    assert sorted(chosen) == sorted([
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
        "text_encoder_2/config.json", "text_encoder_2/model.safetensors.index.fp16.json",
        "text_encoder_2/model.fp16-00001-of-00002.safetensors", "text_encoder_2/model.fp16-00002-of-00002.safetensors",
        "vocoder/config.json", "vocoder/model.safetensors.fp16.index.json",
        "vocoder/model-00001-of-00001.fp16.safetensors",
    ])


def test_variant_files_load_the_same(copy_of):
    ckpt = copy_of("projection_model")
    folder = ckpt / "projection_model"
    reference = load_component(ckpt, "projection_model").state_dict()
    (folder / "diffusion_pytorch_model.safetensors").rename(folder / "diffusion_pytorch_model.fp16.safetensors")
    variant = load_component(ckpt, "projection_model", variant="fp16").state_dict()
    assert all(torch.equal(variant[k], reference[k]) for k in reference)
    with pytest.raises(CheckpointError, match=r"variant\(s\) \['fp16'\]: pass variant='fp16'"):
        load_component(ckpt, "projection_model")


# ------------------------------------------------------------------------------------------------
# Each error a user can cause is one CheckpointError that says what is wrong and what to do.


def test_offline_hub_id_with_empty_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(CheckpointError, match=r"(?s)not fully in the local cache.*local checkpoint folder"):
        load_component("cvssp/audioldm2", "projection_model")


def test_missing_folder():
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint("./no/such/checkpoint")


def test_folder_without_model_index(tmp_path):
    with pytest.raises(CheckpointError, match="no model_index.json"):
        resolve_checkpoint(tmp_path)


def test_missing_component(copy_of):
    ckpt = copy_of("unet")
    with pytest.raises(CheckpointError, match=r"no component 'projection_model'"):
        load_component(ckpt, "projection_model")


def test_missing_weights(copy_of):
    ckpt = copy_of("projection_model")
    (ckpt / "projection_model" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights in"):
        load_component(ckpt, "projection_model")


def test_truncated_weight_file(copy_of):
    ckpt = copy_of("projection_model")
    file = ckpt / "projection_model" / "diffusion_pytorch_model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model.safetensors.*truncated or corrupt"):
        load_component(ckpt, "projection_model")


def test_corrupt_config(copy_of):
    ckpt = copy_of("projection_model")
    (ckpt / "projection_model" / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_component(ckpt, "projection_model")


def test_config_of_the_wrong_class(copy_of):
    ckpt = copy_of("projection_model")
    config_file = ckpt / "projection_model" / "config.json"
    config = json.loads(config_file.read_text())
    config["_class_name"] = "AutoencoderKL"
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"describes a 'AutoencoderKL'.*projection_model"):
        load_component(ckpt, "projection_model")


@pytest.mark.parametrize("component, path, value, supported", [
    ("unet", ["upcast_attention"], True, "False"),
    ("text_encoder", ["text_config", "hidden_act"], "relu", "'gelu'"),  # a field of a sub-config
    ("vocoder", ["model_in_dim"], None, None),  # a required field missing
])
def test_unsupported_config_values_are_refused_in_one_shape(copy_of, component, path, value, supported):
    ckpt = copy_of(component)
    config_file = ckpt / component / "config.json"
    config = json.loads(config_file.read_text())
    *parents, field = path
    fields = config
    for parent in parents:
        fields = fields[parent]
    if value is None:
        del fields[field]
    else:
        fields[field] = value
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as error:
        load_component(ckpt, component)
    message, name = str(error.value), ".".join(path)
    assert "\n" not in message and str(config_file) in message  # one line that names the file
    if value is None:
        assert f"has no field '{name}'" in message
    else:  # the one shape: file, field, value, what is supported
        assert isinstance(error.value, UnsupportedConfigError) and isinstance(error.value, NotImplementedError)
        expected = f"{config_file}: {name} = {value!r} is not supported by audioldm2_lite (supported: {supported})."
        assert message == expected


def test_misshapen_missing_and_unexpected_tensors_are_all_named(copy_of):
    ckpt = copy_of("projection_model")
    file = ckpt / "projection_model" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(file)
    first, second = sorted(tensors)[:2]
    tensors[first] = torch.zeros(3, 5)
    del tensors[second]
    tensors["surprise.weight"] = torch.zeros(2)
    save_file(tensors, file)
    with pytest.raises(CheckpointError) as error:
        load_component(ckpt, "projection_model")
    message = str(error.value)
    assert f"'{first}'" in message and "(3, 5)" in message and "diffusion_pytorch_model.safetensors" in message
    assert f"missing tensor '{second}'" in message
    assert "unexpected tensor 'surprise.weight'" in message


def test_load_config_reads_scheduler_and_feature_extractor(tiny_checkpoint):
    assert load_config(tiny_checkpoint, "scheduler")["_class_name"] == "DDIMScheduler"
    assert load_config(tiny_checkpoint, "feature_extractor")["sampling_rate"] == 48000
