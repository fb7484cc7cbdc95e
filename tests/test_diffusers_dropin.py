"""Drop-in both ways: the folders diffusers saves load in ours unmodified, and ours answers diffusers' call API.

The components are diffusers' own fast-test pipeline: `get_dummy_components` of diffusers'
tests/pipelines/audioldm2/test_audioldm2.py (read at its 2026 revision, the one that builds a GPT2LMHeadModel),
rebuilt here with the same configs and `torch.manual_seed(0)` before each model, saved with diffusers 0.42.1's
`AudioLDM2Pipeline.save_pretrained`. Its notable configs: the UNet's `cross_attention_dim` is the flat list
(8, 16) (one cross-attention per level, to the GPT-2 states), T5 is `T5Config`'s default v1.0 "relu"
feed-forward, GPT-2 a GPT2LMHeadModel, the scheduler DDIM (PNDM in two of its tests). Then diffusers' fast
checks run on ours (prompt and embedding equivalence, negative prompt, waveforms per prompt, audio length,
vocoder input width, save/load, batch = single runs, dict and tuple outputs), each with end-to-end parity
against diffusers on the same folder.

What could not be reproduced offline, so is built here instead:
- the tokenizers `hf-internal-testing/tiny-random-roberta` and `tiny-random-T5Model` (downloads): a byte-level
  BPE (400 tokens) and a unigram sentencepiece (120 tokens) trained on a small corpus
  (scripts/make_tiny_checkpoint.py), with diffusers' `model_max_length=77`; their ids fit the models'
  vocabularies (1000 and 32100) as the hub tokenizers' do;
- the feature extractor `hf-internal-testing/tiny-random-ClapModel` with `hop_length=7900`: ClapFeatureExtractor's
  defaults with that hop length (the hub file's other values are unverified). It only feeds candidate ranking,
  which this tiny CLAP audio tower cannot run in diffusers either (a BatchNorm of 8 against 64 mel bins): the
  waveforms-per-prompt check uses one waveform per prompt, as diffusers' test now does.
diffusers' hard-coded expected slices are not checked (they follow from its tokenizers); every comparison is
against diffusers run on the same folder.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from make_tiny_checkpoint import build_roberta_tokenizer, build_t5_tokenizer
from reference import max_rel_error

from audioldm2_lite import AudioLDM2Pipeline
from audioldm2_lite.generation.loading import CheckpointError, load_component
from audioldm2_lite.generation.lora import apply_lora, save_lora

PROMPT = "A hammer hitting a wooden surface"  # get_dummy_inputs: 2 steps, guidance 6.0, generator seed 0
# The README's end-to-end tolerance: every stage agrees with diffusers to ~1e-6 in float32; the steps, the VAE
# and the vocoder grow those rounding differences, so the waveforms are compared to 1e-4 of their peak.
WAVEFORM_TOLERANCE = 1e-4
# Ours against ours where only the batch differs (padding of other prompts, masked): float32 rounding.
BATCH_TOLERANCE = 1e-5


def dummy_components(tmp_path, feed_forward_proj: str = "relu"):
    """diffusers' `get_dummy_components`, the tokenizers built offline (see the module docstring)."""
    from diffusers import AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel, AutoencoderKL, DDIMScheduler
    from transformers import (
        ClapConfig, ClapFeatureExtractor, ClapModel, GPT2Config, GPT2LMHeadModel, SpeechT5HifiGan,
        SpeechT5HifiGanConfig, T5Config, T5EncoderModel,
    )

    torch.manual_seed(0)
    unet = AudioLDM2UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=(8, 16),
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[8, 16], in_channels=1, out_channels=1, norm_num_groups=8,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4,
    )
    torch.manual_seed(0)
    text_config = dict(bos_token_id=0, eos_token_id=2, hidden_size=8, intermediate_size=37, layer_norm_eps=1e-05,
                       num_attention_heads=1, num_hidden_layers=1, pad_token_id=1, vocab_size=1000, projection_dim=8)
    audio_config = dict(spec_size=8, window_size=4, num_mel_bins=8, intermediate_size=37, layer_norm_eps=1e-05,
                        depths=[1, 1], num_attention_heads=[1, 1], num_hidden_layers=1, hidden_size=192,
                        projection_dim=8, patch_size=2, patch_stride=2, patch_embed_input_channels=4)
    text_encoder = ClapModel(ClapConfig(text_config=text_config, audio_config=audio_config, projection_dim=16))
    tokenizer = build_roberta_tokenizer(tmp_path / "tokenizer", model_max_length=77)
    feature_extractor = ClapFeatureExtractor(hop_length=7900)
    torch.manual_seed(0)
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=32100, d_model=32, d_ff=37, d_kv=8, num_heads=1, num_layers=1,
                                             feed_forward_proj=feed_forward_proj))
    tokenizer_2 = build_t5_tokenizer(tmp_path / "tokenizer_2", model_max_length=77)
    torch.manual_seed(0)
    language_model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_head=1, n_layer=1, vocab_size=1000, n_ctx=99,
                                                n_positions=99))
    language_model.config.max_new_tokens = 8
    torch.manual_seed(0)
    projection_model = AudioLDM2ProjectionModel(text_encoder_dim=16, text_encoder_1_dim=32, langauge_model_dim=16)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=8, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[2, 2],
        upsample_kernel_sizes=[4, 4], resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
        normalize_before=False,
    ))
    return dict(unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                tokenizer=tokenizer, tokenizer_2=tokenizer_2, feature_extractor=feature_extractor,
                language_model=language_model, projection_model=projection_model, vocoder=vocoder)


def save_with_diffusers(components, out, **kwargs):
    from diffusers import AudioLDM2Pipeline as DiffusersPipeline

    DiffusersPipeline(**components).save_pretrained(out, **kwargs)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{name: folder saved by diffusers}: the fast test's pipeline, and the same with DPM-Solver++ (the HF blog's
    swap), with PNDM (two of diffusers' checks) and with a T5 "gated-gelu" (Flan-T5's) feed-forward."""
    from diffusers import DPMSolverMultistepScheduler, PNDMScheduler

    root = tmp_path_factory.mktemp("diffusers-dummy")
    components = dummy_components(root)
    out = {"ddim": save_with_diffusers(components, root / "ddim")}
    dpm = DPMSolverMultistepScheduler.from_config(components["scheduler"].config)
    out["dpmsolver++"] = save_with_diffusers({**components, "scheduler": dpm}, root / "dpmsolver")
    out["pndm"] = save_with_diffusers({**components, "scheduler": PNDMScheduler(skip_prk_steps=True)}, root / "pndm")
    out["gated-gelu"] = save_with_diffusers(dummy_components(root, "gated-gelu"), root / "gated-gelu")
    return out


def load_ours(folder, **kwargs):
    return AudioLDM2Pipeline.from_pretrained(folder, device="cpu", dtype=torch.float32, **kwargs)


def load_diffusers(folder, scheduler_class=None, **scheduler_settings):
    from diffusers import AudioLDM2Pipeline as DiffusersPipeline

    pipe = DiffusersPipeline.from_pretrained(str(folder))  # as it is: no component passed in
    if scheduler_class is not None:
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, **scheduler_settings)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed=0):
    return torch.Generator("cpu").manual_seed(seed)


def inputs(**overrides):
    """diffusers' get_dummy_inputs: a fresh generator per call."""
    return {"prompt": PROMPT, "generator": seeded(0), "num_inference_steps": 2, "guidance_scale": 6.0, **overrides}


# ----------------------------------------------------------------------------------------------
# Every folder loads unmodified and generates what diffusers generates


@pytest.mark.parametrize("name", ["ddim", "dpmsolver++", "pndm", "gated-gelu"])
def test_folder_matches_diffusers_end_to_end(folders, name):
    """The folder's scheduler runs by default: diffusers' fast-test fixture (PNDM) runs PNDM, as diffusers."""
    ours, reference = load_ours(folders[name]), load_diffusers(folders[name])
    assert ours.scheduler_config.sampler == {"dpmsolver++": "dpmsolver++", "pndm": "pndm"}.get(name, "ddim")
    audio, expected = ours(**inputs()).audios, reference(**inputs()).audios
    assert audio.shape == expected.shape == (1, 256) and audio.dtype == np.float32
    assert max_rel_error(torch.from_numpy(audio), torch.from_numpy(expected)) <= WAVEFORM_TOLERANCE


@pytest.mark.parametrize("settings", [
    {"use_karras_sigmas": True}, {"solver_order": 1}, {"timestep_spacing": "leading"},
    {"timestep_spacing": "leading", "steps_offset": 1}, {"prediction_type": "v_prediction"},
])
def test_dpmsolver_folder_settings_are_honoured(folders, tmp_path, settings):
    folder = shutil.copytree(folders["dpmsolver++"], tmp_path / "dpm")
    config_file = folder / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **settings}))
    ours, reference = load_ours(folder), load_diffusers(folder)
    audio, expected = ours(**inputs(num_inference_steps=5)).audios, reference(**inputs(num_inference_steps=5)).audios
    assert max_rel_error(torch.from_numpy(audio), torch.from_numpy(expected)) <= WAVEFORM_TOLERANCE
    # the settings change the result, so they were not ignored: seen in the latents (this untrained vocoder's
    # output hardly depends on them)
    latents = ours(**inputs(num_inference_steps=5, output_type="latent")).audios
    plain = load_ours(folders["dpmsolver++"])(**inputs(num_inference_steps=5, output_type="latent")).audios
    assert max_rel_error(latents, plain) > 1e-3


def test_fast_test_fixture_runs_pndm_with_a_negative_prompt(folders):
    """diffusers' fast test saves PNDMScheduler(skip_prk_steps=True): its PLMS runs here too (N + 1 calls)."""
    ours, reference = load_ours(folders["pndm"]), load_diffusers(folders["pndm"])
    assert ours.scheduler.config["_class_name"] == "PNDMScheduler"
    audio = ours(**inputs(negative_prompt="egg cracking", num_inference_steps=4)).audios
    expected = reference(**inputs(negative_prompt="egg cracking", num_inference_steps=4)).audios
    assert max_rel_error(torch.from_numpy(audio), torch.from_numpy(expected)) <= WAVEFORM_TOLERANCE


def test_a_scheduler_class_not_written_here_is_refused(folders, tmp_path):
    folder = shutil.copytree(folders["ddim"], tmp_path / "kdpm2")
    config_file = folder / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "_class_name": "KDPM2DiscreteScheduler"}))
    with pytest.raises(NotImplementedError, match="does not implement KDPM2DiscreteScheduler; it implements "
                                                   "DDIMScheduler, DEISMultistepScheduler"):
        load_ours(folder)


@pytest.mark.parametrize("class_name, settings", [
    ("UniPCMultistepScheduler", {}), ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("HeunDiscreteScheduler", {}), ("LMSDiscreteScheduler", {}), ("EulerAncestralDiscreteScheduler", {}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    ("DEISMultistepScheduler", {})])
def test_swapped_scheduler_matches_diffusers(folders, class_name, settings):
    """diffusers' idiom on our pipeline, `pipe.scheduler = <Class>.from_config(pipe.scheduler.config)`: the
    next call runs our sampler of that class and config and matches diffusers with that scheduler (the
    stochastic ones draw from the call's generator as diffusers does)."""
    import diffusers

    scheduler_class = getattr(diffusers, class_name)
    ours = load_ours(folders["ddim"])
    ours.scheduler = scheduler_class.from_config(ours.scheduler.config, **settings)
    assert ours.scheduler.config["_class_name"] == class_name
    reference = load_diffusers(folders["ddim"], scheduler_class, **settings)
    audio = ours(**inputs(num_inference_steps=5, output_type="latent")).audios
    expected = reference(**inputs(num_inference_steps=5, output_type="latent")).audios
    # the same float32 UNet calls on both sides and samplers that agree to rounding: rounding only
    error = max_rel_error(audio, expected)
    print(f"{class_name} {settings}: latents {error:.1e}")
    assert error <= WAVEFORM_TOLERANCE
    waveform = ours(**inputs(num_inference_steps=5)).audios
    expected_waveform = reference(**inputs(num_inference_steps=5)).audios
    assert max_rel_error(torch.from_numpy(waveform), torch.from_numpy(expected_waveform)) <= WAVEFORM_TOLERANCE


def test_explicit_scheduler_wins_over_the_folders(folders):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    for name, asked, scheduler_class in (("ddim", "dpmsolver++", DPMSolverMultistepScheduler),
                                         ("dpmsolver++", "ddim", DDIMScheduler)):
        audio = load_ours(folders[name])(**inputs(num_inference_steps=4), scheduler=asked).audios
        expected = load_diffusers(folders[name], scheduler_class)(**inputs(num_inference_steps=4)).audios
        assert max_rel_error(torch.from_numpy(audio), torch.from_numpy(expected)) <= WAVEFORM_TOLERANCE


def test_every_component_loads_alone(folders):
    from audioldm2_lite.generation.loading import STAGES

    for name in STAGES:  # strict: every tensor used or named as deliberately unused
        assert not load_component(folders["ddim"], name).training


# ----------------------------------------------------------------------------------------------
# diffusers' fast checks, on ours


def test_prompt_embeds_give_the_prompts_audio(folders):
    ours, reference = load_ours(folders["ddim"]), load_diffusers(folders["ddim"])
    from_prompt = ours(**inputs(prompt=3 * [PROMPT])).audios
    generated, t5_states, t5_mask = ours.encode_prompt(3 * [PROMPT], do_classifier_free_guidance=False)
    embeds = dict(prompt_embeds=t5_states, attention_mask=t5_mask, generated_prompt_embeds=generated)
    from_embeds = ours(**inputs(prompt=None), **embeds).audios
    # the same computation (the negative branch is the empty prompt either way): float32 rounding
    assert max_rel_error(torch.from_numpy(from_embeds), torch.from_numpy(from_prompt)) <= BATCH_TOLERANCE
    expected = reference(**inputs(prompt=None), **embeds).audios
    assert max_rel_error(torch.from_numpy(from_embeds), torch.from_numpy(expected)) <= WAVEFORM_TOLERANCE


def test_negative_prompt_and_negative_embeds(folders):
    ours, reference = load_ours(folders["ddim"]), load_diffusers(folders["ddim"])
    prompts, negatives = 3 * [PROMPT], 3 * ["this is a negative prompt"]
    audio = ours(**inputs(prompt=prompts, negative_prompt=negatives)).audios
    expected = reference(**inputs(prompt=prompts, negative_prompt=negatives)).audios
    assert max_rel_error(torch.from_numpy(audio), torch.from_numpy(expected)) <= WAVEFORM_TOLERANCE
    unguided_negative = ours(**inputs(prompt=prompts)).audios
    assert max_rel_error(torch.from_numpy(audio), torch.from_numpy(unguided_negative)) > 1e-3  # it was used

    generated, t5_states, t5_mask = ours.encode_prompt(prompts, negatives)  # [negative, prompt] halves
    (neg_generated, generated), (neg_t5, t5_states), (neg_mask, t5_mask) = (
        x.chunk(2) for x in (generated, t5_states, t5_mask))
    from_embeds = ours(**inputs(prompt=None), prompt_embeds=t5_states, attention_mask=t5_mask,
                       generated_prompt_embeds=generated, negative_prompt_embeds=neg_t5,
                       negative_attention_mask=neg_mask, negative_generated_prompt_embeds=neg_generated).audios
    assert max_rel_error(torch.from_numpy(from_embeds), torch.from_numpy(audio)) <= BATCH_TOLERANCE


def test_waveforms_per_prompt_and_audio_length(folders):
    ours = load_ours(folders["pndm"])
    assert ours(PROMPT, num_inference_steps=2).audios.shape == (1, 256)
    assert ours([PROMPT] * 2, num_inference_steps=2).audios.shape == (2, 256)
    assert ours([PROMPT] * 2, num_inference_steps=2, num_waveforms_per_prompt=1).audios.shape == (2, 256)
    # more than one needs ranking, which this CLAP audio tower cannot do (diffusers fails too): one clear error
    with pytest.raises(ValueError, match="CLAP audio"):
        ours(PROMPT, num_inference_steps=2, num_waveforms_per_prompt=2)
    for seconds in (0.016, 0.032):
        audio = ours(**inputs(audio_length_in_s=seconds)).audios[0]
        assert audio.ndim == 1 and len(audio) / ours.sampling_rate == seconds


def test_the_shortest_length_is_one_mel_frame_of_the_model(folders):
    """The shortest audio comes from the checkpoint (one mel frame: 4 samples with this vocoder, 0.25 ms), not
    from a constant. 0.008 s and one latent frame (8 samples, diffusers' own minimum) run as diffusers runs them;
    one mel frame runs (diffusers refuses it); below one mel frame is one clear error."""
    ours, reference = load_ours(folders["ddim"]), load_diffusers(folders["ddim"])
    for seconds in (0.008, 8 / 16000):
        audio = ours(**inputs(audio_length_in_s=seconds)).audios
        expected = reference(**inputs(audio_length_in_s=seconds)).audios
        assert audio.shape == expected.shape == (1, round(seconds * 16000))
        assert max_rel_error(torch.from_numpy(audio), torch.from_numpy(expected)) <= WAVEFORM_TOLERANCE
    assert ours(**inputs(audio_length_in_s=4 / 16000)).audios.shape == (1, 4)
    with pytest.raises(ValueError, match=r"at least 0.00025 \(one mel frame of this model\)"):
        ours(**inputs(audio_length_in_s=3 / 16000))


def test_vocoder_input_width(folders):
    import dataclasses

    from audioldm2_lite.models.vocoder import HifiGan

    ours = load_ours(folders["ddim"])
    assert ours(["hey"], num_inference_steps=1).audios.shape == (1, 256)
    # twice the mel bins: the latents get twice the width, the waveform keeps its length
    ours.vocoder = HifiGan(dataclasses.replace(ours.vocoder.config, model_in_dim=2 * ours.vocoder.config.model_in_dim))
    assert ours(["hey"], num_inference_steps=1).audios.shape == (1, 256)


def test_save_load_local_bin_and_fp16_variant(folders, tmp_path):
    from diffusers import AudioLDM2Pipeline as DiffusersPipeline

    expected = load_ours(folders["ddim"])(**inputs()).audios
    # .bin files (diffusers writes them for its own models; transformers 5 only writes safetensors)
    bin_folder = shutil.copytree(folders["ddim"], tmp_path / "bin")
    DiffusersPipeline.from_pretrained(str(folders["ddim"])).save_pretrained(bin_folder, safe_serialization=False)
    assert (bin_folder / "unet" / "diffusion_pytorch_model.bin").is_file()
    for name in ("unet", "vae", "projection_model"):
        (bin_folder / name / "diffusion_pytorch_model.safetensors").unlink()
    # the bytes are the same tensors, so the audio is identical
    assert np.array_equal(load_ours(bin_folder)(**inputs()).audios, expected)

    variant_folder = tmp_path / "fp16"
    DiffusersPipeline.from_pretrained(str(folders["ddim"])).save_pretrained(variant_folder, variant="fp16")
    assert np.array_equal(load_ours(variant_folder, variant="fp16")(**inputs()).audios, expected)
    with pytest.raises(CheckpointError, match="variant='fp16'"):
        load_ours(variant_folder)
    with pytest.raises(CheckpointError, match="variant 'bf16'"):
        load_ours(variant_folder, variant="bf16")


def test_batch_with_a_list_of_generators_equals_single_runs(folders):
    """Row i of a batch drawn with generators[i] is the single run with that generator. The prompts have one
    length: padding a shorter prompt moves its GPT-2 positions (diffusers passes no position ids), which
    changes its conditioning in a batch, in diffusers as here; that case is checked against diffusers."""
    ours, reference = load_ours(folders["ddim"]), load_diffusers(folders["ddim"])
    prompts = 3 * [PROMPT]
    kwargs = dict(num_inference_steps=2, guidance_scale=6.0, eta=0.5)  # eta: DDIM's step noise row by row too
    batch = ours(prompts, generator=[seeded(i) for i in range(3)], **kwargs).audios
    for i, prompt in enumerate(prompts):
        single = ours(prompt, generator=seeded(i), **kwargs).audios
        assert max_rel_error(torch.from_numpy(batch[i:i + 1]), torch.from_numpy(single)) <= BATCH_TOLERANCE
    assert max_rel_error(torch.from_numpy(batch[:1]), torch.from_numpy(batch[1:2])) > 1e-3  # other noise
    mixed = [PROMPT, "a dog", 10 * "very long "]
    audio = ours(mixed, generator=[seeded(i) for i in range(3)], **kwargs).audios
    expected = reference(mixed, generator=[seeded(i) for i in range(3)], **kwargs).audios
    assert max_rel_error(torch.from_numpy(audio), torch.from_numpy(expected)) <= WAVEFORM_TOLERANCE
    with pytest.raises(ValueError, match="generators"):
        ours(prompts, generator=[seeded(0), seeded(1)], **kwargs)


def test_dict_and_tuple_outputs_and_output_types(folders):
    ours, reference = load_ours(folders["ddim"]), load_diffusers(folders["ddim"])
    output = ours(**inputs())
    as_tuple = ours(**inputs(), return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    assert np.array_equal(as_tuple[0], output.audios) and output[0] is output.audios
    assert output["audios"] is output.audios and output.to_tuple() == (output.audios,)
    for output_type, kind in (("np", np.ndarray), ("pt", torch.Tensor), ("latent", torch.Tensor)):
        audio, expected = ours(**inputs(output_type=output_type))[0], reference(**inputs(output_type=output_type))[0]
        assert type(audio) is type(expected) and isinstance(audio, kind)
        assert audio.shape == expected.shape and audio.dtype == expected.dtype
        assert max_rel_error(torch.as_tensor(audio), torch.as_tensor(expected)) <= WAVEFORM_TOLERANCE
    assert ours(**inputs(output_type="latent"), return_dict=False)[0].shape == (1, 4, 32, 4)


def test_guidance_on_and_off(folders):
    ours, reference = load_ours(folders["ddim"]), load_diffusers(folders["ddim"])
    unguided = ours(**inputs(guidance_scale=1.0)).audios
    expected = reference(**inputs(guidance_scale=1.0)).audios
    assert max_rel_error(torch.from_numpy(unguided), torch.from_numpy(expected)) <= WAVEFORM_TOLERANCE
    assert max_rel_error(torch.from_numpy(unguided), torch.from_numpy(ours(**inputs()).audios)) > 1e-3


def test_callback_steps(folders):
    ours = load_ours(folders["ddim"])
    seen = []
    ours(**inputs(num_inference_steps=5), callback=lambda i, t, latents: seen.append(i), callback_steps=2)
    assert seen == [0, 2, 4]
    with pytest.raises(ValueError, match="callback_steps"):
        ours(**inputs(), callback_steps=0)


def test_cross_attention_kwargs_scale_a_loaded_lora(folders, tmp_path):
    unet = load_component(folders["ddim"], "unet")
    apply_lora(unet, rank=2)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if name.endswith("lora_B"):
                parameter.normal_(0, 0.5)  # a trained adapter: B away from its zero start
    save_lora(unet, tmp_path / "lora.safetensors")
    lora = tmp_path / "lora.safetensors"

    full = load_ours(folders["ddim"], lora=lora)
    half = full(**inputs(), cross_attention_kwargs={"scale": 0.5}).audios
    expected_half = load_ours(folders["ddim"], lora=lora, lora_scale=0.5)(**inputs()).audios
    assert np.array_equal(half, expected_half)  # scale x 1.0 and 1.0 x scale: the same float products
    off = full(**inputs(), cross_attention_kwargs={"scale": 0.0}).audios
    assert np.array_equal(off, load_ours(folders["ddim"])(**inputs()).audios)  # the update times exactly 0
    # the scale holds for its call only
    assert np.array_equal(full(**inputs()).audios, load_ours(folders["ddim"], lora=lora)(**inputs()).audios)
    assert max_rel_error(torch.from_numpy(half), torch.from_numpy(off)) > 1e-3
    with pytest.raises(ValueError, match="only 'scale'"):
        full(**inputs(), cross_attention_kwargs={"scale": 0.5, "attention_mask": None})
