"""The reference twins: diffusers / transformers models loaded from the same checkpoint folder."""

from __future__ import annotations

import torch
from make_tiny_checkpoint import CORPUS

# Different lengths, the empty prompt, and one longer than both tokenizers' maximum (512 and 128 tokens).
PROMPTS = [
    "A dog barks in the distance while rain falls on a tin roof.",
    "",
    " ".join(CORPUS.split() * 2),
    "Techno music",
]


def max_rel_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference|: the project's parity measure."""
    ours, reference = ours.detach().double().cpu(), reference.detach().double().cpu()
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    assert torch.isfinite(ours).all() and torch.isfinite(reference).all()
    scale = reference.abs().max()
    assert scale > 0, "reference is all zeros: the comparison would prove nothing"
    return ((ours - reference).abs().max() / scale).item()


def diffusers_pipeline(checkpoint, dtype=torch.float32, **components):
    """diffusers' AudioLDM2Pipeline on a hub-layout folder (`components` replace the folder's).

    The hub layout names the language model GPT2Model, which current diffusers cannot generate with;
    load it as GPT2LMHeadModel (same weights plus an unused tied head) and pass it in.
    """
    from diffusers import AudioLDM2Pipeline
    from transformers import GPT2LMHeadModel

    language_model = GPT2LMHeadModel.from_pretrained(f"{checkpoint}/language_model", torch_dtype=dtype)
    return AudioLDM2Pipeline.from_pretrained(str(checkpoint), language_model=language_model, torch_dtype=dtype,
                                             **components)


# ----------------------------------------------------------------------------------------------
# diffusers driven as the authors' model (generation/authors.py), the recipe written out:
# heads of 32 channels per level, CLAP's text LayerNorm at RoBERTa's 1e-5, and as the unconditional half the
# zero GPT-2 sequence and the T5 states of "" (its token attended to, the rest of the row masked padding).


def diffusers_as_authors(checkpoint, dtype=torch.float32):
    import json

    from diffusers import AudioLDM2UNet2DConditionModel
    from transformers import ClapConfig, ClapModel

    channels = json.loads((checkpoint / "unet" / "config.json").read_text())["block_out_channels"]
    # diffusers reads attention_head_dim as heads, per level when it is a list (its mid block takes the last)
    unet = AudioLDM2UNet2DConditionModel.from_pretrained(checkpoint / "unet", torch_dtype=dtype,
                                                         attention_head_dim=[c // 32 for c in channels])
    clap_config = ClapConfig.from_pretrained(checkpoint / "text_encoder")
    clap_config.text_config.layer_norm_eps = 1e-5
    clap = ClapModel.from_pretrained(checkpoint / "text_encoder", config=clap_config, torch_dtype=dtype)
    return diffusers_pipeline(checkpoint, dtype, unet=unet, text_encoder=clap)


@torch.no_grad()
def authors_call(pipe, prompt, **kwargs):
    """`pipe(prompt, **kwargs)` with the authors' unconditional half given as the negative embeddings."""
    device = pipe.device
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    t5, mask, generated = pipe.encode_prompt(prompts, device, 1, False)  # the conditional half alone
    tokens = pipe.tokenizer_2([""] * len(prompts), padding="max_length", max_length=t5.shape[1], return_tensors="pt")
    empty = pipe.text_encoder_2(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
    return pipe(prompt_embeds=t5, attention_mask=mask, generated_prompt_embeds=generated,
                negative_prompt_embeds=empty.last_hidden_state, negative_attention_mask=tokens.attention_mask.to(device),
                negative_generated_prompt_embeds=torch.zeros_like(generated), **kwargs)


# ----------------------------------------------------------------------------------------------
# Every stage against its twin, on one checkpoint: scripts/check_against_diffusers.py prints this, and
# tests/test_scripts.py runs that on the tiny checkpoint. The tolerances are the README's ("Parity with
# diffusers"), with the same reasons as the per-stage tests: float32, the same math in another order.

TOLERANCES = {
    "CLAP text features": 1e-5,
    "Flan-T5 states": 1e-5,
    "encode_prompt: GPT-2 states": 1e-5,
    "encode_prompt: T5 states": 1e-5,
    "UNet": 1e-5,
    "VAE decode": 1e-5,
    "HiFi-GAN vocoder": 1e-5,
    "CLAP audio features": 1e-5,
    "waveform, end to end (DPM-Solver++)": 1e-4,  # rounding grows through the steps, the VAE and the vocoder
}


@torch.no_grad()
def stage_errors(ours, reference, seconds: float = 1.0, steps: int = 5):
    """Yield (stage, max_rel_error) for every stage of `ours` (our AudioLDM2Pipeline) against `reference`
    (`diffusers_pipeline` of the same checkpoint), both float32 on the same device, on seeded inputs."""
    from diffusers import DPMSolverMultistepScheduler

    from audioldm2_lite.generation.audio_features import clap_input_features

    device, generator = ours.device, torch.Generator().manual_seed(0)
    c = ours.conditioner

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    def pooled(output):  # transformers 5 returns the features as pooler_output of a model output
        return getattr(output, "pooler_output", output)

    # CLAP text: the prompts padded and cut to 512 tokens, as diffusers does
    tokens = reference.tokenizer(PROMPTS, padding="max_length", max_length=reference.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").to(device)
    yield "CLAP text features", max_rel_error(
        c.clap.get_text_features(tokens.input_ids, tokens.attention_mask),
        pooled(reference.text_encoder.get_text_features(tokens.input_ids, attention_mask=tokens.attention_mask)))

    # Flan-T5: padded to the longest prompt, cut at 128 tokens
    tokens = reference.tokenizer_2(PROMPTS, padding=True, max_length=reference.tokenizer_2.model_max_length,
                                   truncation=True, return_tensors="pt").to(device)
    yield "Flan-T5 states", max_rel_error(
        c.t5(tokens.input_ids, tokens.attention_mask),
        reference.text_encoder_2(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state)

    # the whole text path with guidance: CLAP, T5, projection, GPT-2 for [negative, prompt]
    prompts, negatives = [PROMPTS[0], PROMPTS[3]], ["", "low quality"]
    generated, t5_states, t5_mask = ours.encode_prompt(prompts, negatives)
    reference_t5, _, reference_generated = reference.encode_prompt(
        prompts, device, 1, True, negative_prompt=negatives)
    yield "encode_prompt: GPT-2 states", max_rel_error(generated, reference_generated)
    yield "encode_prompt: T5 states", max_rel_error(t5_states, reference_t5)

    # UNet: random latents at 10.24 s, one step each, both on our conditioning
    latents = randn(4, ours.unet.config.in_channels, ours.unet.config.sample_size, 16)
    timesteps = torch.tensor([981, 501, 261, 21], device=device)
    yield "UNet", max_rel_error(
        ours.unet(latents, timesteps, generated, t5_states, t5_mask),
        reference.unet(latents, timesteps, encoder_hidden_states=generated, encoder_hidden_states_1=t5_states,
                       encoder_attention_mask_1=t5_mask).sample)

    # VAE decoder and vocoder on random inputs of `seconds`
    frames, num_samples = ours.latent_frames(seconds)
    z = randn(1, ours.vae.config.latent_channels, frames // ours.vae_scale_factor, 16)
    yield "VAE decode", max_rel_error(ours.vae.decode(z), reference.vae.decode(z).sample)
    mel = randn(1, frames, ours.vocoder.config.model_in_dim)
    yield "HiFi-GAN vocoder", max_rel_error(ours.vocoder(mel), reference.vocoder(mel))

    # CLAP audio tower on the log-mel of random audio, as ranking computes it
    tower, feature_config = ours.clap_audio_tower()
    features, _ = clap_input_features(0.1 * randn(2, num_samples), ours.sampling_rate, feature_config)
    yield "CLAP audio features", max_rel_error(
        tower(features), pooled(reference.text_encoder.get_audio_features(input_features=features)))

    # end to end from the same initial latents, a short DPM-Solver++ run
    reference.scheduler = DPMSolverMultistepScheduler.from_config(reference.scheduler.config)
    latents = ours.prepare_latents(len(prompts), frames, torch.Generator(device).manual_seed(1))
    kwargs = dict(negative_prompt=negatives, audio_length_in_s=seconds, num_inference_steps=steps)
    yield "waveform, end to end (DPM-Solver++)", max_rel_error(
        torch.as_tensor(ours(prompts, latents=latents.clone(), scheduler="dpmsolver++", **kwargs).audios),
        torch.as_tensor(reference(prompts, latents=latents.clone(), **kwargs).audios))


def randomize_untrained_audio_tensors(clap_model, seed: int = 1) -> None:
    """Give the CLAP audio tower's tensors that a fresh init leaves trivial (relative position bias tables:
    zeros; BatchNorm statistics: 0 and 1) random values, in place, so that a wrong bias lookup or a skipped
    normalisation cannot pass a parity test unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    encoder = clap_model.audio_model.audio_encoder
    with torch.no_grad():
        for name, tensor in encoder.named_parameters():
            if name.endswith("relative_position_bias_table"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
        bn = encoder.batch_norm
        bn.running_mean.copy_(-40 + 10 * torch.randn(bn.running_mean.shape, generator=generator))
        bn.running_var.copy_(400 * (0.5 + torch.rand(bn.running_var.shape, generator=generator)))
