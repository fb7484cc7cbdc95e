"""Fine-tuning (audioldm2_lite/training/, lora.py) on the tiny checkpoint and synthetic tones."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from reference import diffusers_pipeline, max_rel_error
from safetensors import safe_open
from safetensors.torch import load_file

from audioldm2_lite.generation.loading import load_component, load_config
from audioldm2_lite.generation.lora import LoRALinear, apply_lora, load_lora, merge_lora
from audioldm2_lite.generation.samplers import SchedulerConfig, alphas_cumprod
from audioldm2_lite.cli import UsageError
from audioldm2_lite.training.train import (
    TrainConfig, batch_indices, checkpoint_unet_blocks, diffusion_loss, draw_batch, main, train,
)
from audioldm2_lite.training.data import DataError, EncodedDataset, checkpoint_key, read_dataset
from audioldm2_lite.training.schedules import SCHEDULES, learning_rate, update_ema

SECONDS = 0.64  # 64 mel frames, 16 latent frames: the tiny UNet's sample_size


def write_tones(folder, tones, rate=22050, seconds=0.5):
    """Sine tones (Hz) at a rate other than 16 kHz (so reading resamples), one row each in metadata.csv."""
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, frequency in enumerate(tones):
        t = np.arange(int(seconds * rate)) / rate
        soundfile.write(folder / "clips" / f"tone{i}.wav", 0.3 * np.sin(2 * np.pi * frequency * t), rate)
        rows.append(f"clips/tone{i}.wav,A steady tone at {frequency} Hz\n")
    (folder / "metadata.csv").write_text("file_name,caption\n" + "".join(rows))
    return folder


@pytest.fixture(scope="session")
def tones(tmp_path_factory):
    return write_tones(tmp_path_factory.mktemp("tones"), [220, 440, 880])


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("train-cache")


def config(tiny_checkpoint, data, output, cache_dir, **options) -> TrainConfig:
    defaults = dict(model=str(tiny_checkpoint), seconds=SECONDS, batch_size=2, learning_rate=1e-3,
                    cache_dir=str(cache_dir), quiet=True, device="cpu")
    return TrainConfig(data=str(data), output=str(output), **{**defaults, **options})


@pytest.fixture(scope="session")
def lora_run(tiny_checkpoint, tones, cache_dir, tmp_path_factory):
    """A few LoRA steps at a high learning rate, so the adapters move well away from zero."""
    out = tmp_path_factory.mktemp("lora") / "out"
    return train(config(tiny_checkpoint, tones, out, cache_dir, lora_rank=4, lora_alpha=8, max_steps=3,
                        learning_rate=3e-2))


def unet_inputs(tiny_checkpoint, batch=2, frames=16):
    torch.manual_seed(1)
    mask = torch.ones(batch, 5, dtype=torch.long)
    mask[-1, 3:] = 0
    return (torch.randn(batch, 4, frames, 4), torch.tensor([999, 20][:batch]), torch.randn(batch, 8, 24),
            torch.randn(batch, 5, 32), mask)


def encoded_batch(tiny_checkpoint, tones, cache_dir):
    """One training batch as the loop draws it: posterior latents, conditioning (one caption dropped), noise."""
    from audioldm2_lite.generation.mel import MelConfig

    mel_config = MelConfig.from_hub(load_config(tiny_checkpoint, "vocoder"), load_config(tiny_checkpoint, "vae"))
    data = EncodedDataset(read_dataset(tones), round(SECONDS * 16000), cache_dir / checkpoint_key(tiny_checkpoint))
    data.encode_missing(tiny_checkpoint, mel_config, "cpu", quiet=True)
    generator = torch.Generator().manual_seed(0)
    return data, draw_batch(data, [0, 2, 1], generator, 0.5, 0.41, 1000, "cpu")


# ----------------------------------------------------------------------------------------------
# The loss and its gradients against diffusers' UNet


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_and_gradients_match_diffusers(tiny_checkpoint, tones, cache_dir, prediction_type):
    from diffusers.pipelines.audioldm2 import AudioLDM2UNet2DConditionModel

    data, (latents, conditioning, noise, timesteps) = encoded_batch(tiny_checkpoint, tones, cache_dir)
    assert (conditioning[2] == 0).any()  # a dropped caption ("") is padded: the T5 mask is exercised
    alpha_bar = alphas_cumprod(SchedulerConfig.from_hub(load_config(tiny_checkpoint, "scheduler")))

    ours = load_component(tiny_checkpoint, "unet").requires_grad_(True)
    theirs = AudioLDM2UNet2DConditionModel.from_pretrained(tiny_checkpoint / "unet").train()

    def diffusers_unet(sample, t, generated, t5_states, t5_mask):
        return theirs(sample, t, encoder_hidden_states=generated, encoder_hidden_states_1=t5_states,
                      encoder_attention_mask_1=t5_mask, return_dict=False)[0]

    loss = diffusion_loss(ours, latents, conditioning, noise, timesteps, alpha_bar, prediction_type)
    reference = diffusion_loss(diffusers_unet, latents, conditioning, noise, timesteps, alpha_bar, prediction_type)
    loss.backward()
    reference.backward()
    # float32, the same operations in the same order: rounding at most (measured: 0 for loss and every gradient)
    assert max_rel_error(loss, reference) <= 1e-5
    gradients = dict(theirs.named_parameters())
    checked = 0
    for name, parameter in ours.named_parameters():
        # per tensor, relative to its largest gradient: float32 rounding through the backward pass
        assert max_rel_error(parameter.grad, gradients[name].grad) <= 1e-5, name
        checked += 1
    assert checked == len(gradients)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_checkpoint, tones, cache_dir):
    _, (latents, conditioning, noise, timesteps) = encoded_batch(tiny_checkpoint, tones, cache_dir)
    alpha_bar = alphas_cumprod(SchedulerConfig())
    grads = []
    for checkpointed in (False, True):
        unet = load_component(tiny_checkpoint, "unet").requires_grad_(True)
        if checkpointed:
            checkpoint_unet_blocks(unet)
        diffusion_loss(unet, latents, conditioning, noise, timesteps, alpha_bar, "epsilon").backward()
        grads.append(torch.cat([p.grad.flatten() for p in unet.parameters()]))
    # the recomputation runs the same CPU kernels on the same inputs: identical
    assert torch.equal(grads[0], grads[1])


def test_epochs_visit_every_clip_once():
    order = batch_indices(0, 10, 5, seed=3)
    assert sorted(order[:5]) == sorted(order[5:]) == list(range(5))
    assert order[:5] != order[5:] or order[:5] != batch_indices(0, 5, 5, seed=4)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_learning_rate_schedules_match_diffusers(schedule):
    from diffusers.optimization import get_scheduler

    peak, warmup, total = 2e-4, 3, 20
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    reference = get_scheduler(schedule, optimizer, num_warmup_steps=warmup, num_training_steps=total, num_cycles=3,
                              power=2.0)
    theirs = []
    for _ in range(total + 3):  # and past the end
        theirs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    ours = [learning_rate(step, peak, schedule, warmup, total, cycles=3, power=2.0) for step in range(total + 3)]
    # the same formulas written in another order: double-precision rounding at most
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-18)
    if schedule != "constant":
        assert ours[0] == 0 and ours[warmup] == peak  # the warmup starts at 0 (as diffusers': step 1 has rate 0)


def test_ema_matches_diffusers_ema_model():
    from diffusers.training_utils import EMAModel

    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
    reference = EMAModel(weights, decay=0.9)
    ours = [w.detach().clone() for w in weights]
    for step in range(1, 31):
        with torch.no_grad():
            for w in weights:
                w.add_(torch.randn_like(w))  # an optimizer step
        update_ema(ours, weights, step, 0.9)
        reference.step(weights)
    for average, theirs in zip(ours, reference.shadow_params):
        # lerp versus their s - (1 - d)(s - w): float32 rounding over 30 updates
        assert max_rel_error(average, theirs) <= 1e-6
    assert not torch.allclose(ours[0], weights[0])  # an average, not the last weights


# ----------------------------------------------------------------------------------------------
# The loop


def interrupted_run(monkeypatch, run_config, after_step: int) -> None:
    """train(run_config), stopped by Ctrl-C when step `after_step` + 1 asks for its learning rate."""
    def interrupted(step, *args):
        if step == after_step:
            raise KeyboardInterrupt
        return learning_rate(step, *args)

    monkeypatch.setattr("audioldm2_lite.training.train.learning_rate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(run_config)
    monkeypatch.setattr("audioldm2_lite.training.train.learning_rate", learning_rate)


@pytest.mark.parametrize("options", [
    dict(gradient_accumulation=2),
    dict(lora_rank=4, ema_decay=0.9, lr_scheduler="cosine", lr_warmup_steps=1, learning_rate=3e-2),
], ids=["full", "lora-ema-cosine"])
def test_resume_continues_exactly(tiny_checkpoint, tones, cache_dir, tmp_path, monkeypatch, options):
    options = dict(max_steps=4, checkpoint_every=2, **options)
    one_run = train(config(tiny_checkpoint, tones, tmp_path / "once", cache_dir, **options))

    # Ctrl-C as step 3 starts, after the checkpoint of step 2
    interrupted_run(monkeypatch, config(tiny_checkpoint, tones, tmp_path / "twice", cache_dir, **options), 2)
    with pytest.raises(UsageError, match="--resume"):  # the same output twice without --resume
        train(config(tiny_checkpoint, tones, tmp_path / "twice", cache_dir, **options))

    def not_needed(*args, **kwargs):
        raise AssertionError("everything is cached: the text stages and the VAE must not be loaded")

    monkeypatch.setattr("audioldm2_lite.training.data.TextConditioner.from_pretrained", not_needed)
    monkeypatch.setattr("audioldm2_lite.training.data.read_audio", not_needed)  # nor the audio decoded, even to check it
    two_runs = train(config(tiny_checkpoint, tones, tmp_path / "twice", cache_dir, **options, resume=True))

    weights = [load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors")) for out in (one_run, two_runs)]
    base = load_file(str(tiny_checkpoint / "unet" / "diffusion_pytorch_model.safetensors"))
    assert weights[0].keys() == weights[1].keys() == base.keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in base), "resumed run differs (bit for bit)"
    assert not all(torch.equal(weights[0][k], base[k]) for k in base), "training changed nothing"
    states = [torch.load(out / "training" / "state.pt", weights_only=True) for out in (one_run, two_runs)]
    for key in ("trainable", "ema"):
        assert states[0].get(key, {}).keys() == states[1].get(key, {}).keys()
        assert all(torch.equal(states[0][key][k], states[1][key][k]) for k in states[0].get(key, {}))
    logs = [list(csv.DictReader((out / "training" / "loss.csv").open())) for out in (one_run, two_runs)]
    assert [r["step"] for r in logs[1]] == ["1", "2", "3", "4"]
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]
    assert [r["learning_rate"] for r in logs[0]] == [r["learning_rate"] for r in logs[1]]
    seconds = [float(r["seconds"]) for r in logs[1]]
    assert seconds[2] > seconds[1], "the clock restarted at the resume"


def test_ema_is_exported_instead_of_the_weights(tiny_checkpoint, tones, cache_dir, tmp_path):
    out = train(config(tiny_checkpoint, tones, tmp_path / "out", cache_dir, lora_rank=4, ema_decay=0.5, max_steps=3,
                       learning_rate=3e-2))
    state = torch.load(out / "training" / "state.pt", weights_only=True)
    assert state["ema"].keys() == state["trainable"].keys()
    assert not any(torch.equal(state["ema"][k], state["trainable"][k]) for k in state["ema"])
    adapter = load_file(str(out / "lora.safetensors"))
    assert adapter.keys() == state["ema"].keys()
    assert all(torch.equal(adapter[k], state["ema"][k]) for k in adapter)  # the average, saved as it is


def test_overfits_two_clips(tiny_checkpoint, cache_dir, tmp_path):
    data = write_tones(tmp_path / "two", [300, 1200])
    out = train(config(tiny_checkpoint, data, tmp_path / "out", cache_dir, max_steps=60, caption_dropout=0.0,
                       learning_rate=1e-2, checkpoint_every=1000))
    losses = [float(r["loss"]) for r in csv.DictReader((out / "training" / "loss.csv").open())]
    # each step's loss is noisy (random timesteps and noise): compare means over windows.
    # Measured on this seed: 0.71 over steps 1-10, 0.28 over steps 41-60 (0.40x).
    first, last = np.mean(losses[:10]), np.mean(losses[-20:])
    assert last <= 0.5 * first, (first, last)


def test_bf16_autocast_on_the_cpu_follows_float32(tiny_checkpoint, tones, cache_dir, tmp_path):
    # Without oneDNN: PyTorch 2.13's oneDNN bf16 convolution returns garbage weight gradients (up to 1e36, or
    # NaN, varying run to run) for an input 1 wide with stride 2, which the tiny UNet's last downsampler sees
    # (latent width 4 -> 2 -> 1). The released checkpoints never do (their latents are 16 wide: 16 -> 8 -> 4 -> 2).
    with torch.backends.mkldnn.flags(enabled=False):
        runs = [train(config(tiny_checkpoint, tones, tmp_path / dtype, cache_dir, max_steps=4, dtype=dtype))
                for dtype in ("float32", "bfloat16")]
    losses = [np.array([float(r["loss"]) for r in csv.DictReader((out / "training" / "loss.csv").open())])
              for out in runs]
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2 % per operation) in the UNet's matmuls and
    # convolutions; the weights and AdamW stay float32, so the runs stay together: measured at most 0.09 %
    # apart over these 4 steps; 1 % allows for the rounding of a few hundred operations per value
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-2)
    assert not np.array_equal(losses[1], losses[0]), "bf16 autocast did not run"


def test_validation_audio_scores_and_tensorboard_during_a_run(tiny_checkpoint, tones, cache_dir, tmp_path,
                                                              monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from audioldm2_lite import AudioLDM2Pipeline
    from audioldm2_lite.evaluate import write_stats

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# validation\na steady tone\nA high whistle!\n")
    rng = np.random.default_rng(0)
    write_stats(tmp_path / "ref.npz", rng.normal(size=16), np.eye(16), 100)  # the tiny CLAP's 16-d embeddings
    options = dict(max_steps=4, checkpoint_every=2, ema_decay=0.5, validation_prompts=str(prompts),
                   validation_every=3, validation_steps=2, validation_reference=str(tmp_path / "ref.npz"))

    # after the validation of step 3, past the checkpoint of step 2
    interrupted_run(monkeypatch, config(tiny_checkpoint, tones, tmp_path / "out", cache_dir, **options), 3)
    out = train(config(tiny_checkpoint, tones, tmp_path / "out", cache_dir, **options, resume=True))

    folder = out / "training" / "validation"
    names = ["00-a_steady_tone.wav", "01-a_high_whistle.wav"]
    assert sorted(p.name for p in folder.iterdir()) == ["step-0", "step-3", "step-4"]  # before, every 3, at the end
    for step in (0, 3, 4):
        assert sorted(p.name for p in (folder / f"step-{step}").glob("*.wav")) == names
    table = list(csv.DictReader((out / "training" / "validation.csv").open()))
    assert [r["step"] for r in table] == ["0", "3", "4"]  # step 3 done twice (before and after the resume), kept once
    assert all(-1 <= float(r["clap_score"]) <= 1 and float(r["fd_clap"]) > 0 for r in table)

    # the audio is the pipeline's, with seed i for prompt i: at step 0 from the base checkpoint, at the end
    # from the exported (EMA) weights
    for step, model in ((0, tiny_checkpoint), (4, out)):
        pipe = AudioLDM2Pipeline.from_pretrained(model, device="cpu", dtype=torch.float32)  # validation runs float32
        for seed, (prompt, name) in enumerate(zip(["a steady tone", "A high whistle!"], names)):
            expected = pipe(prompt, audio_length_in_s=SECONDS, num_inference_steps=2, scheduler="dpmsolver++",
                            seed=seed).audios[0]
            heard, rate = soundfile.read(folder / f"step-{step}" / name, dtype="float32")
            # the same weights through the same code, written as float WAV: measured identical
            assert rate == pipe.sampling_rate
            assert max_rel_error(torch.from_numpy(heard), torch.from_numpy(expected)) <= 1e-6
    step_0 = soundfile.read(folder / "step-0" / names[0])[0]
    assert not np.allclose(step_0, soundfile.read(folder / "step-4" / names[0])[0]), "the weights did not move"

    events = EventAccumulator(str(out / "training" / "tensorboard"), size_guidance={"scalars": 0, "audio": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "validation/clap_score",
            "validation/fd_clap"} <= set(tags["scalars"])
    assert {f"validation/{n[:-4]}" for n in names} <= set(tags["audio"])
    logged = [float(r["loss"]) for r in csv.DictReader((out / "training" / "loss.csv").open())]
    curve = events.Scalars("train/loss")
    assert [e.step for e in curve] == [1, 2, 3, 4]  # the step logged before the interruption, once
    np.testing.assert_allclose([e.value for e in curve], logged, rtol=1e-5)  # loss.csv keeps 6 significant digits
    assert [e.step for e in events.Scalars("validation/clap_score")] == [0, 3, 4]


def test_resume_with_fewer_steps_is_a_usage_error(lora_run, tiny_checkpoint, tones, capsys):
    before = (lora_run / "training" / "config.json").read_bytes()
    status = main(["--data", str(tones), "--model", str(tiny_checkpoint), "--output", str(lora_run), "--resume",
                   "--max-steps", "2", "--device", "cpu", "--quiet"])
    error = capsys.readouterr().err
    assert status == 2 and error.startswith("audioldm2-lite-train: error: the run in") and "at step 3" in error
    assert (lora_run / "training" / "config.json").read_bytes() == before


def test_skipped_rows_are_one_warning_line(tiny_checkpoint, cache_dir, tmp_path, capsys):
    data = write_tones(tmp_path / "data", [440])
    (data / "metadata.csv").write_text("file_name,caption\nclips/tone0.wav,fine\nclips/gone.wav,lost\n")
    status = main(["--data", str(data), "--model", str(tiny_checkpoint), "--output", str(tmp_path / "out"),
                   "--max-steps", "1", "--batch-size", "1", "--seconds", str(SECONDS), "--device", "cpu", "--quiet",
                   "--skip-bad-rows", "--cache-dir", str(cache_dir)])
    error = capsys.readouterr().err
    assert status == 0, error
    assert error.splitlines() == ["audioldm2-lite-train: warning: skipping 1 bad row(s) of "
                                  f"{data / 'metadata.csv'}: line 3: clips/gone.wav: file not found"]


# ----------------------------------------------------------------------------------------------
# LoRA


def test_lora_at_step_zero_is_the_base_model(tiny_checkpoint):
    inputs = unet_inputs(tiny_checkpoint)
    unet = load_component(tiny_checkpoint, "unet")
    with torch.no_grad():
        base = unet(*inputs)
        trainable = apply_lora(unet, rank=4)
        adapted = unet(*inputs)
    # q, k, v, out of both attentions of every transformer block; A (rank, in) and B (out, rank) each
    layers = [m for m in unet.modules() if isinstance(m, LoRALinear)]
    assert len(trainable) == 2 * len(layers) and len(layers) == 4 * 2 * sum(
        1 for name, _ in unet.named_modules() if name.endswith("transformer_blocks.0"))
    assert all(p.requires_grad == (".lora_" in n) for n, p in unet.named_parameters())
    assert torch.equal(base, adapted)  # B = 0: the update is exactly zero


def test_lora_file_holds_only_adapters(lora_run):
    with safe_open(str(lora_run / "lora.safetensors"), framework="pt") as file:
        keys, metadata = list(file.keys()), file.metadata()
    assert keys and all(k.endswith((".lora_A", ".lora_B")) for k in keys)
    assert {k.rsplit(".", 2)[-2] for k in keys} == {"to_q", "to_k", "to_v", "0"}
    assert metadata["rank"] == "4" and metadata["alpha"] == "8.0"


def test_lora_merged_equals_unmerged(tiny_checkpoint, lora_run):
    inputs = unet_inputs(tiny_checkpoint)
    with torch.no_grad():
        base = load_component(tiny_checkpoint, "unet")(*inputs)
        unmerged_unet = load_lora(load_component(tiny_checkpoint, "unet"), lora_run / "lora.safetensors")
        unmerged = unmerged_unet(*inputs)
        exported = load_component(lora_run, "unet")(*inputs)  # OUT/unet: merged at export
        merged = merge_lora(unmerged_unet)(*inputs)
    assert max_rel_error(unmerged, base) > 1e-3, "the adapters did not train"
    # W + s B A versus W x + s B (A x): the same products in another order, float32 rounding
    assert max_rel_error(exported, unmerged) <= 1e-5
    assert max_rel_error(merged, unmerged) <= 1e-5
    assert not any(isinstance(m, LoRALinear) for m in unmerged_unet.modules())


def test_pipeline_and_cli_take_a_lora(tiny_checkpoint, lora_run, tmp_path):
    from audioldm2_lite import AudioLDM2Pipeline

    inputs = unet_inputs(tiny_checkpoint)
    with torch.no_grad():
        merged = load_component(lora_run, "unet")(*inputs)
        # float32: the 1e-5 comparison with the merged float32 UNet (the CPU default may be bfloat16)
        pipe = AudioLDM2Pipeline.from_pretrained(tiny_checkpoint, device="cpu", dtype=torch.float32,
                                                 lora=lora_run / "lora.safetensors")
        adapted = pipe.unet(*inputs)
        half = AudioLDM2Pipeline.from_pretrained(tiny_checkpoint, device="cpu", dtype=torch.float32,
                                                 lora=lora_run / "lora.safetensors", lora_scale=0.5).unet(*inputs)
        base = load_component(tiny_checkpoint, "unet")(*inputs)
    assert max_rel_error(adapted, merged) <= 1e-5  # as test_lora_merged_equals_unmerged
    # the update is linear in the scale only through the UNet's nonlinearities: between base and full
    assert 0 < max_rel_error(half, base) < max_rel_error(adapted, base)

    out = tmp_path / "out.wav"
    result = subprocess.run([sys.executable, "-m", "audioldm2_lite.cli", "a tone", "-o", str(out), "--model",
                             str(tiny_checkpoint), "--lora", str(lora_run / "lora.safetensors"), "--steps", "2",
                             "--seconds", "0.64", "--seed", "0"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert soundfile.info(str(out)).frames > 0


# ----------------------------------------------------------------------------------------------
# The exported checkpoint


def test_export_loads_in_diffusers(tiny_checkpoint, lora_run):
    pipe = diffusers_pipeline(lora_run)  # the helper's GPT2LMHeadModel is what the export holds: see below
    inputs = unet_inputs(tiny_checkpoint)
    with torch.no_grad():
        ours = load_component(lora_run, "unet")(*inputs)
        theirs = pipe.unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2], encoder_hidden_states_1=inputs[3],
                           encoder_attention_mask_1=inputs[4], return_dict=False)[0]
        base = load_component(tiny_checkpoint, "unet")(*inputs)
    assert max_rel_error(ours, base) > 1e-3  # the fine-tuned UNet, not the base one
    assert max_rel_error(ours, theirs) <= 1e-5  # float32, as test_unet.py (measured 0)
    # every other component is the base's, shared by hard link or copied
    for name in ("vae", "text_encoder", "vocoder"):
        files = [f for f in (tiny_checkpoint / name).iterdir() if f.suffix == ".safetensors"]
        assert files and all((lora_run / name / f.name).read_bytes() == f.read_bytes() for f in files)


def test_export_runs_in_diffusers_as_it_is(tiny_checkpoint, lora_run):
    """The export's language model is in the layout current diffusers generates with: diffusers loads and runs
    the folder with no component passed in, and generates what ours generates from it."""
    import json

    from diffusers import AudioLDM2Pipeline as DiffusersPipeline

    from audioldm2_lite import AudioLDM2Pipeline

    assert json.loads((lora_run / "model_index.json").read_text())["language_model"] == ["transformers",
                                                                                          "GPT2LMHeadModel"]
    assert json.loads((tiny_checkpoint / "model_index.json").read_text())["language_model"][1] == "GPT2Model"
    reference = DiffusersPipeline.from_pretrained(str(lora_run))
    reference.set_progress_bar_config(disable=True)
    ours = AudioLDM2Pipeline.from_pretrained(lora_run, device="cpu", dtype=torch.float32)  # the reference is float32
    kwargs = dict(audio_length_in_s=SECONDS, num_inference_steps=3, negative_prompt="low quality")
    expected = reference("a steady tone", generator=torch.Generator().manual_seed(0), **kwargs).audios
    audio = ours("a steady tone", generator=torch.Generator().manual_seed(0), **kwargs).audios
    # the README's end-to-end tolerance (float32 rounding grown through the steps, the VAE and the vocoder)
    assert max_rel_error(torch.from_numpy(audio), torch.from_numpy(expected)) <= 1e-4
    # the export's GPT-2 is the base's, renamed: our loader reads both layouts to the same tensors
    base, exported = (load_component(c, "language_model").state_dict() for c in (tiny_checkpoint, lora_run))
    assert base.keys() == exported.keys() and all(torch.equal(base[k], exported[k]) for k in base)


# ----------------------------------------------------------------------------------------------
# Bad data folders


def test_every_bad_row_is_named_in_one_error(tmp_path):
    data = write_tones(tmp_path, [440])
    (data / "clips" / "broken.wav").write_bytes(b"not audio at all")
    (data / "metadata.csv").write_text(
        "file_name,caption\n"
        "clips/tone0.wav,A good row\n"
        "clips/missing.wav,A missing file\n"
        "clips/broken.wav,An unreadable file\n"
        "clips/tone0.wav,\n"
    )
    with pytest.raises(DataError) as error:
        read_dataset(data)
    message = str(error.value)
    assert "3 bad row(s)" in message
    assert "line 3: clips/missing.wav: file not found" in message
    assert "line 4: clips/broken.wav: unreadable audio" in message
    assert "line 5: clips/tone0.wav: empty caption" in message
    with pytest.warns(UserWarning, match="skipping 3 bad row"):
        clips = read_dataset(data, skip_bad_rows=True)
    assert [c.caption for c in clips] == ["A good row"]


def test_jsonl_with_text_column(tmp_path):
    data = write_tones(tmp_path, [440, 660])
    (data / "metadata.csv").unlink()
    (data / "metadata.jsonl").write_text('{"file_name": "clips/tone0.wav", "text": "low"}\n\n'
                                         '{"file_name": "clips/tone1.wav", "text": " "}\n')
    with pytest.raises(DataError, match="line 3: clips/tone1.wav: empty text"):
        read_dataset(data)


@pytest.mark.parametrize("metadata, message", [
    (None, "needs exactly one metadata.csv or metadata.jsonl"),
    ("name,caption\nclips/tone0.wav,x\n", "must have a 'file_name' column and a 'caption' or 'text' column"),
    ("file_name,label\nclips/tone0.wav,x\n", "must have a 'file_name' column and a 'caption' or 'text' column"),
    ("file_name,caption\n", "no rows"),
])
def test_bad_metadata(tmp_path, metadata, message):
    data = write_tones(tmp_path, [440])
    (data / "metadata.csv").unlink()
    if metadata is not None:
        (data / "metadata.csv").write_text(metadata)
    with pytest.raises(DataError, match=message):
        read_dataset(data)


def test_cli_reports_bad_data_in_one_error(tiny_checkpoint, tmp_path):
    data = write_tones(tmp_path / "data", [440])
    (data / "metadata.csv").write_text("file_name,caption\nclips/tone0.wav,fine\nclips/gone.wav,lost\n")
    result = subprocess.run(
        [sys.executable, "-m", "audioldm2_lite.training.train", "--data", str(data), "--model", str(tiny_checkpoint),
         "--output", str(tmp_path / "out"), "--device", "cpu", "--quiet"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert result.returncode == 1
    assert result.stderr.startswith("audioldm2-lite-train: error: 1 bad row(s)")
    assert "line 3: clips/gone.wav: file not found" in result.stderr and "--skip-bad-rows" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_bad_lora_files_are_one_clear_error(tiny_checkpoint, tmp_path):
    not_an_adapter = tiny_checkpoint / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(ValueError, match="is not an audioldm2_lite LoRA adapter"):
        load_lora(load_component(tiny_checkpoint, "unet"), not_an_adapter)
    result = subprocess.run([sys.executable, "-m", "audioldm2_lite.cli", "rain", "--lora", str(tmp_path / "none")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "no LoRA adapter file" in result.stderr and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------------
# The authors' model (generation/authors.py): trained with the unconditional input inference uses


def test_authors_training_drops_captions_to_the_authors_unconditional_input(tiny_authors_checkpoint, tones,
                                                                          cache_dir, tmp_path):
    from transformers import T5EncoderModel

    from audioldm2_lite.generation.conditioning import TextConditioner

    out = train(config(tiny_authors_checkpoint, tones, tmp_path / "out", cache_dir, max_steps=1, reference="authors"))
    # the dropped caption's conditioning, as cached: GPT-2's slot zeros, T5's the states of "" (one token, attended)
    cache = cache_dir / checkpoint_key(tiny_authors_checkpoint)
    dropped = load_file(str(EncodedDataset([], 0, cache, "authors").text_files[""]))
    conditioner = TextConditioner.from_pretrained(tiny_authors_checkpoint, reference="authors")
    caption = conditioner.encode_prompt("a tone", do_classifier_free_guidance=False)
    assert dropped["generated"].shape == caption.generated.shape[1:] and not dropped["generated"].any()
    tokens = conditioner.tokenizer_2([""], padding=True, return_tensors="pt")  # as the authors tokenise it
    with torch.no_grad():
        empty = T5EncoderModel.from_pretrained(tiny_authors_checkpoint / "text_encoder_2")(**tokens).last_hidden_state
    assert dropped["t5_mask"].tolist() == [1]
    assert max_rel_error(dropped["t5_states"], empty[0]) <= 1e-6  # float32, the same T5: rounding only
    # the export says its heads per level, so diffusers reads it as the model that was trained (heads of 32)
    import json

    assert json.loads((out / "unet" / "config.json").read_text())["attention_head_dim"] == [1, 1, 2, 3]
    inputs = unet_inputs(tiny_authors_checkpoint)
    with torch.no_grad():
        ours = load_component(out, "unet")(*inputs)
        trained = load_component(out, "unet", reference="authors")(*inputs)
        theirs = diffusers_pipeline(out).unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2],
                                              encoder_hidden_states_1=inputs[3], encoder_attention_mask_1=inputs[4],
                                              return_dict=False)[0]
    assert torch.equal(ours, trained)  # the heads written out are the authors': the same model either way
    assert max_rel_error(ours, theirs) <= 1e-5  # float32, as test_unet.py
