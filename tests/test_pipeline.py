"""End to end: our AudioLDM2Pipeline against diffusers' on the same checkpoint and the same initial latents."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from reference import diffusers_pipeline, max_rel_error

from audioldm2_lite import AudioLDM2Pipeline
from audioldm2_lite.generation.loading import UnsupportedConfigError

# Waveform tolerance: every stage matches its twin to ~1e-6 relative in fp32; through T UNet steps,
# the VAE and the vocoder those rounding differences grow (the sampler amplifies them by up to ~1/sqrt(alpha)
# per step), so the end-to-end bound is 1e-4 of the reference's peak amplitude.
WAVEFORM_TOLERANCE = 1e-4


def reference_scheduler(reference, name):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    config = reference.scheduler.config
    reference.scheduler = (DPMSolverMultistepScheduler if name == "dpmsolver++" else DDIMScheduler).from_config(config)


def report(name, ours, reference):
    error = max_rel_error(torch.as_tensor(ours), torch.as_tensor(reference))
    print(f"{name}: max_rel_error {error:.2e}")  # shown with -s; the README's parity table quotes it
    return error


def both(checkpoint, scheduler, seconds, prompt, **kwargs):
    # diffusers computes its own conversion's model (the authors' model: test_authors.py)
    ours = AudioLDM2Pipeline.from_pretrained(checkpoint, device="cpu", dtype=torch.float32, reference="diffusers")
    reference = diffusers_pipeline(checkpoint)
    reference.set_progress_bar_config(disable=True)
    reference_scheduler(reference, scheduler)
    frames, _ = ours.latent_frames(seconds)
    batch = (1 if isinstance(prompt, str) else len(prompt)) * kwargs.get("num_waveforms_per_prompt", 1)
    latents = ours.prepare_latents(batch, frames, torch.Generator().manual_seed(1))
    ours_audio = ours(prompt, audio_length_in_s=seconds, scheduler=scheduler, latents=latents.clone(), **kwargs).audios
    reference_audio = reference(prompt, audio_length_in_s=seconds, latents=latents.clone(), **kwargs).audios
    return ours_audio, reference_audio


@pytest.mark.parametrize("scheduler, steps", [("ddim", 4), ("dpmsolver++", 5)])
def test_tiny_end_to_end(tiny_checkpoint, scheduler, steps):
    ours, reference = both(tiny_checkpoint, scheduler, 0.93, ["a dog barks", "rain on a tin roof at night"],
                           negative_prompt=["", "low quality"], num_inference_steps=steps)
    assert ours.shape == reference.shape == (2, int(0.93 * 16000)) and ours.dtype == np.float32
    assert report(f"tiny {scheduler}", ours, reference) <= WAVEFORM_TOLERANCE


def test_tiny_no_guidance_and_latent_output(tiny_checkpoint):
    ours, reference = both(tiny_checkpoint, "ddim", 0.5, "birds at dawn", guidance_scale=1.0, num_inference_steps=3,
                           output_type="latent")
    assert max_rel_error(ours, reference) <= WAVEFORM_TOLERANCE


def test_tiny_ranking_matches(tiny_checkpoint):
    # one prompt, audio under 10 s: diffusers' random crop never applies, so both rank the same inputs;
    # (with several prompts diffusers ranks each prompt against every prompt's candidates - we rank within
    # each prompt's own candidates, so only the single-prompt case is comparable)
    ours, reference = both(tiny_checkpoint, "dpmsolver++", 1.0, "a cat meows twice", num_inference_steps=3,
                           num_waveforms_per_prompt=3)
    assert report("tiny ranked candidates", ours, reference) <= WAVEFORM_TOLERANCE


def test_fusion_features_checkpoint_generates_and_ranks_as_diffusers(fusion_checkpoint):
    # the CLAP front end of diffusers' own test checkpoints: four stacked log-mels per clip ("fusion"
    # features) read by a four-channel HTSAT; one prompt under 10 s, as above
    ours, reference = both(fusion_checkpoint, "dpmsolver++", 1.0, "a cat meows twice", num_inference_steps=3,
                           num_waveforms_per_prompt=3)
    assert report("tiny fusion-features ranked candidates", ours, reference) <= WAVEFORM_TOLERANCE


def test_ranking_only_configs_refuse_ranking_not_generation(tiny_checkpoint, tmp_path):
    """The feature extractor's config and CLAP's audio config matter only to ranking: generating one waveform
    per prompt never reads them (nor loads the audio tower); asking for ranking refuses them, before the work."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    features_file = ckpt / "feature_extractor" / "preprocessor_config.json"
    clap_file = ckpt / "text_encoder" / "config.json"

    def edit(file, section=None, **changes):
        config = json.loads(file.read_text())
        (config[section] if section else config).update(changes)
        file.write_text(json.dumps(config))

    edit(features_file, truncation="head")
    edit(clap_file, "audio_config", enable_fusion=True)
    pipe = AudioLDM2Pipeline.from_pretrained(ckpt, device="cpu")
    args = dict(audio_length_in_s=0.5, num_inference_steps=2)
    assert pipe("a dog barks", **args).audios.shape == (1, 8000)
    assert pipe.scorer is None  # CLAP's audio tower: never loaded without ranking
    with pytest.raises(UnsupportedConfigError, match=re.escape(f"{features_file}: truncation = 'head' is not")):
        pipe("a dog barks", num_waveforms_per_prompt=2, **args)
    edit(features_file, truncation="rand_trunc")
    with pytest.raises(UnsupportedConfigError, match=re.escape(f"{clap_file}: audio_config.enable_fusion = True")):
        pipe("a dog barks", num_waveforms_per_prompt=2, **args)
    # a "fusion" extractor (four log-mels) for a one-channel HTSAT: diffusers fails at the first convolution
    edit(clap_file, "audio_config", enable_fusion=False)
    edit(features_file, truncation="fusion")
    with pytest.raises(UnsupportedConfigError, match=r"truncation = 'fusion' .*'rand_trunc' with this text_encoder"):
        pipe("a dog barks", num_waveforms_per_prompt=2, **args)
    edit(features_file, truncation="rand_trunc")
    assert pipe("a dog barks", num_waveforms_per_prompt=2, **args).audios.shape == (2, 8000)


def test_generate_latents_yields_every_step(tiny_checkpoint):
    pipe = AudioLDM2Pipeline.from_pretrained(tiny_checkpoint, device="cpu")
    conditioning = pipe.encode_prompt("rain", "")
    latents = pipe.prepare_latents(1, 64, torch.Generator().manual_seed(0))
    steps = list(pipe.generate_latents(latents, conditioning, num_inference_steps=4, scheduler="ddim"))
    assert len(steps) == 4 and all(x.shape == latents.shape for _, x in steps)
    assert not torch.equal(steps[0][1], steps[-1][1])


def test_offload_gives_the_same_audio(tiny_checkpoint):
    # on the CPU the stages move to "cpu" and back: this checks the bookkeeping, not the memory saving
    # (measured on an H100: identical audio, peak 1.38 GiB instead of 2.55 GiB at full size, see README)
    resident = AudioLDM2Pipeline.from_pretrained(tiny_checkpoint, device="cpu")
    offloaded = AudioLDM2Pipeline.from_pretrained(tiny_checkpoint, device="cpu", offload=True)
    latents = resident.prepare_latents(1, 64, torch.Generator().manual_seed(0))
    kwargs = dict(num_inference_steps=2, audio_length_in_s=0.64, output_type="pt")
    assert torch.equal(resident("rain", latents=latents, **kwargs).audios,
                       offloaded("rain", latents=latents, **kwargs).audios)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=""), "non-empty"),
    (dict(prompt="rain", audio_length_in_s=0), "positive"),
    (dict(prompt="rain", num_inference_steps=0), "at least 1"),
    (dict(prompt="rain", scheduler="kdpm2"), "unknown scheduler"),
    (dict(prompt="rain", output_type="mp3"), "output_type"),
])
def test_bad_input(tiny_checkpoint, kwargs, message):
    pipe = AudioLDM2Pipeline.from_pretrained(tiny_checkpoint, device="cpu")
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("scheduler, steps", [("ddim", 2), ("dpmsolver++", 3)])
def test_full_size_end_to_end(full_checkpoint, scheduler, steps):
    # short audio (1.28 s -> a 32-frame latent) keeps each full-size UNet call around a second on 2 cores
    ours, reference = both(full_checkpoint(), scheduler, 1.28, ["techno music", "a man speaks"],
                           negative_prompt=["low quality", "noise"], num_inference_steps=steps)
    assert report(f"full-size {scheduler}", ours, reference) <= WAVEFORM_TOLERANCE


@pytest.mark.slow
def test_full_size_ranking_matches(full_checkpoint):
    # one prompt, 3 candidates of 1.28 s: both pipelines must return the same waveforms in the same order
    ours, reference = both(full_checkpoint(), "dpmsolver++", 1.28, "a cat meows twice", num_inference_steps=2,
                           num_waveforms_per_prompt=3)
    assert report("full-size ranked candidates", ours, reference) <= WAVEFORM_TOLERANCE
