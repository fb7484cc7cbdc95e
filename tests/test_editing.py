"""Editing audio (editing.py): VAE encoding vs diffusers, the masked loop vs diffusers' schedulers, and the
exactness properties of the three modes (style transfer, inpainting, bandwidth extension)."""

from __future__ import annotations

import dataclasses

import librosa
import numpy as np
import pytest
import soundfile
import torch
from reference import max_rel_error
from test_cli import run_main

from audioldm2_lite import AudioLDM2Pipeline, load_config
from audioldm2_lite.generation.editing import AudioEdit, denoise, encode_audio, frequency_mask, mel_config, time_mask
from audioldm2_lite.generation.mel import waveform_to_mel
from audioldm2_lite.generation.samplers import SAMPLERS, make_sampler
from audioldm2_lite.models.long_audio import receptive_field_frames

RATE = 16000


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return AudioLDM2Pipeline.from_pretrained(tiny_checkpoint, device="cpu", dtype=torch.float32)


def recording(samples: int, rate: int = RATE, channels: int = 1) -> np.ndarray:
    """(channels, samples): a gliding tone over a pulsing noise floor, something with structure everywhere."""
    t = np.arange(samples) / rate
    rng = np.random.default_rng(1)
    tone = np.sin(2 * np.pi * (300 * t + 900 * t**2)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return np.stack([tone + 0.1 * (c + 1) * rng.standard_normal(samples) for c in range(channels)])


# ----------------------------------------------------------------------------------------------
# Parity: the encoder, and the masked loop


def test_encoder_matches_diffusers(pipe, tiny_checkpoint):
    from diffusers import AutoencoderKL

    reference = AutoencoderKL.from_pretrained(f"{tiny_checkpoint}/vae").eval()
    audio = recording(20000)[0]
    mel = waveform_to_mel(torch.from_numpy(audio).float(), mel_config(pipe))[:, None]  # (1, 1, T, F)
    factor = reference.config.scaling_factor
    with torch.no_grad():
        posterior = reference.encode(mel).latent_dist
        mean = posterior.mean * factor
        sample = posterior.sample(torch.Generator().manual_seed(3)) * factor
        ours_mean, samples = encode_audio(pipe, audio, RATE)
        ours_sample, _ = encode_audio(pipe, audio, RATE, torch.Generator().manual_seed(3), sample_posterior=True)
    assert samples == 20000 and ours_mean.shape == mean.shape == (1, 4, 32, 4)
    # same float32 convolutions in the same order: rounding only
    errors = max_rel_error(ours_mean, mean), max_rel_error(ours_sample, sample)
    print(f"encoder vs AutoencoderKL.encode: mean {errors[0]:.1e}, sample {errors[1]:.1e}")
    assert max(errors) < 1e-5


def test_a_bf16_unet_leaves_the_float32_encoder_exact(tiny_checkpoint, pipe):
    """The CPU recipe: a bfloat16 UNet beside a float32 VAE. The input's mel reaches the encoder in float32,
    not rounded to the UNet's bfloat16 on the way (which moved the latent by ~1e-2 relative)."""
    from audioldm2_lite.generation.precision import CPU_BF16_RECIPE

    mixed = AudioLDM2Pipeline.from_pretrained(tiny_checkpoint, device="cpu", dtype=CPU_BF16_RECIPE)
    audio = recording(20000)[0]
    with torch.no_grad():
        expected, _ = encode_audio(pipe, audio, RATE)
        latent, _ = encode_audio(mixed, audio, RATE)
    assert latent.dtype == torch.float32
    torch.testing.assert_close(latent, expected, rtol=0, atol=0)  # the same float32 encoder on the same mel


def reference_edit(scheduler_name, config, steps, predict, noise, source, strength, regenerate):
    """diffusers' img2img / inpainting loop (StableDiffusionImg2ImgPipeline.get_timesteps, add_noise with
    set_begin_index; StableDiffusionInpaintPipeline's re-noising of the known region after each step)."""
    import diffusers

    spec = SAMPLERS[scheduler_name.split()[0]]
    karras = {"use_karras_sigmas": True} if scheduler_name.endswith("karras") else {}
    scheduler = getattr(diffusers, spec.scheduler_class).from_config(config, **dict(spec.options), **karras)
    scheduler.set_timesteps(steps)
    t_start = max(steps - min(int(steps * strength), steps), 0) * scheduler.order  # Heun: 2 calls a step
    timesteps = scheduler.timesteps[t_start:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start)
    if strength == 1.0:  # the inpainting pipeline's is_strength_max: pure noise
        latents = noise * scheduler.init_noise_sigma
    else:
        latents = scheduler.add_noise(source, noise, timesteps[:1])
    for i, t in enumerate(timesteps):
        latents = scheduler.step(predict(scheduler.scale_model_input(latents, t), t), t, latents).prev_sample
        if regenerate is not None:
            known = source if i == len(timesteps) - 1 else scheduler.add_noise(source, noise, timesteps[i + 1:i + 2])
            latents = torch.where(regenerate, latents, known)
    return latents


# LMS and PNDM are left out: started mid-schedule they warm up here where diffusers' img2img would not (see
# their docstrings); test_samplers.py checks that every sampler's edit starts at its own noise level
@pytest.mark.parametrize("scheduler", ["ddim", "dpmsolver++", "dpmsolver++ karras", "dpmsolver++3m", "euler",
                                       "euler karras", "heun", "unipc", "deis"])
@pytest.mark.parametrize("strength, masked", [(0.55, False), (1.0, True), (0.7, True)])
def test_edit_loop_matches_diffusers_schedulers(pipe, tiny_checkpoint, scheduler, strength, masked):
    generator = torch.Generator().manual_seed(0)
    source, noise = torch.randn(2, 2, 4, 8, 4, generator=generator)  # (B, C, T, F) each
    regenerate = None
    if masked:  # a time range and the upper bins: the combined mask
        regenerate = (torch.arange(8)[:, None] >= 3) & (torch.arange(8)[:, None] < 6) | (torch.arange(4) >= 3)

    def predict(x, t):  # a smooth stand-in for the UNet that depends on the sample and the timestep
        return 0.5 * torch.tanh(x) + 0.3 * torch.cos(x * float(t) / 500)

    name = scheduler.split()[0]
    config = pipe.scheduler_config.for_sampler(name)
    config = dataclasses.replace(config, use_karras_sigmas=scheduler.endswith("karras"))
    sampler = make_sampler(name, config, 10)
    start = sampler.start_index(10 - min(int(10 * strength), 10))
    ours = list(denoise(sampler, predict, noise, source, start, regenerate, start_from_noise=strength == 1.0))[-1][1]
    reference = reference_edit(scheduler, load_config(tiny_checkpoint, "scheduler"), 10, predict, noise, source,
                               strength, regenerate)
    # the same float32 formulas (measured: bit-identical); 1e-6 as for the samplers alone
    error = max_rel_error(ours, reference)
    print(f"edit loop vs diffusers, {scheduler}, strength {strength}, masked {masked}: {error:.1e}")
    assert error < 1e-6, scheduler
    if regenerate is not None:
        assert torch.equal(ours[..., ~regenerate], source[..., ~regenerate])  # kept: the source exactly


# ----------------------------------------------------------------------------------------------
# The modes end to end on the tiny checkpoint


@pytest.mark.parametrize("scheduler", ["ddim", "dpmsolver++", "heun"])
def test_full_strength_equals_text_to_audio(pipe, scheduler):
    audio = recording(20480)[0]  # 1.28 s: 128 mel frames either way
    latents = pipe.prepare_latents(2, 128, torch.Generator().manual_seed(5))
    common = dict(negative_prompt="low quality", num_inference_steps=3, scheduler=scheduler,
                  num_waveforms_per_prompt=2, latents=latents)
    edited = pipe("a dog barks", audio=audio, audio_sampling_rate=RATE, strength=1.0, **common).audios
    generated = pipe("a dog barks", audio_length_in_s=1.28, **common).audios
    assert edited.shape == generated.shape == (2, 20480)
    assert np.array_equal(edited, generated)  # the same computation: bit-equal


def test_small_strength_stays_close_to_the_reconstruction(pipe):
    audio = recording(20480)[0]
    source, _ = encode_audio(pipe, audio, RATE)
    distances = []
    for strength in (0.1, 0.3, 1.0):  # 1, 3 and all 10 DDIM steps
        latent = pipe("rain on a roof", audio=audio, audio_sampling_rate=RATE, strength=strength,
                      num_inference_steps=10, generator=torch.Generator().manual_seed(0), output_type="latent").audios
        distances.append(max_rel_error(latent, source))
    print("latent distance from the input's latent at strength 0.1, 0.3, 1.0:", distances)
    # the tiny random VAE's latents have std 0.14, not 1, so even the last step's noise (std 0.055 at t = 1)
    # is large beside them: the bound is loose, the growth with strength is the point
    assert distances[0] < 1.0 and distances[0] < distances[1] < distances[2]


@pytest.fixture(scope="module")
def odd_input(tmp_path_factory):
    """A 22.05 kHz stereo file of 28665 samples (1.3 s): 20800 samples at 16 kHz, 130 hops -> 132 mel frames."""
    path = tmp_path_factory.mktemp("edit") / "odd.wav"
    soundfile.write(path, recording(28665, 22050, channels=2).T, 22050, subtype="FLOAT")
    return path


def check_inpainting_keeps_the_reconstruction(pipe, path, seconds, latent_frames, candidates, steps):
    """Inpaint `seconds` (start, end) of the file at `path`, whose regenerated latent frames are `latent_frames`
    (first, stop): outside them and the vocoder's receptive field, the output is the plain reconstruction."""
    out = pipe("a cat meows", audio=path, regenerate_seconds=seconds, num_inference_steps=steps,
               scheduler="dpmsolver++", num_waveforms_per_prompt=candidates,
               generator=torch.Generator().manual_seed(0)).audios
    source, samples = encode_audio(pipe, path)
    assert out.shape == (candidates, samples)  # the input's length at 16 kHz
    with torch.no_grad():
        mel = pipe.vae.decode(source / pipe.vae.config.scaling_factor)[:, 0]  # (1, T, F)
        reconstruction = pipe.vocoder(mel)[:, :samples].float().numpy()  # encode, decode, vocode
    hop, first, stop = pipe.hop_length, latent_frames[0] * 4, latent_frames[1] * 4  # in mel frames
    margin = receptive_field_frames(pipe.vocoder.config)  # mel frames the vocoder reaches on either side
    outside = np.ones(samples, dtype=bool)
    outside[max(first - margin, 0) * hop:(stop + margin) * hop] = False
    assert outside.sum() >= 2 * hop  # something is left to compare
    difference = np.abs(out - reconstruction) / np.abs(reconstruction).max()  # relative to the peak
    print(f"vocoder margin {margin} frames; relative difference outside: {difference[:, outside].max():.1e}, "
          f"inside: {difference[:, first * hop:stop * hop].max():.1e}")
    assert difference[:, outside].max() < 1e-5  # the same mel through the same vocoder: batch-size rounding
    assert difference[:, first * hop:stop * hop].max() > 1e-3  # and the range was regenerated


def test_inpainting_keeps_the_reconstruction_outside_the_range(pipe, odd_input):
    # regenerated latent frames: those overlapping 0.3-0.75 s = samples 4800-12000, 640 per frame: 7 .. 18
    check_inpainting_keeps_the_reconstruction(pipe, odd_input, (0.3, 0.75), (7, 19), candidates=2, steps=3)


def test_bandwidth_extension_keeps_the_low_bins(pipe, odd_input):
    edit = AudioEdit.prepare(pipe, odd_input, regenerate_above_hz=4000)
    latents = pipe("a cat meows", audio=odd_input, regenerate_above_hz=4000, num_inference_steps=3,
                   generator=torch.Generator().manual_seed(0), output_type="latent").audios  # (1, C, 33, 4)
    tops = librosa.mel_frequencies(pipe.vocoder.config.model_in_dim + 2, fmin=0, fmax=8000)[2:]  # upper edges
    kept_mel_bins = int((tops <= 4000).sum()) // 4 * 4  # whole latent bins below the first band reaching 4 kHz
    kept = kept_mel_bins // 4
    assert torch.equal(edit.regenerate[0, 0, 0], torch.arange(latents.shape[3]) >= kept)
    assert torch.equal(latents[..., :kept], edit.source[..., :kept])  # the final latent: the input's, exactly
    assert not torch.equal(latents[..., kept:], edit.source[..., kept:])
    with torch.no_grad():
        mel = edit.mel(latents)  # (1, 132, F): what the vocoder reads
        reconstruction = pipe.vae.decode(edit.source / pipe.vae.config.scaling_factor)[:, 0]
    # decoded in a batch of 2 here, alone there: convolution rounding, measured 2e-6
    assert max_rel_error(mel[..., :kept_mel_bins], reconstruction[..., :kept_mel_bins]) < 1e-5
    assert max_rel_error(mel[..., kept_mel_bins:], reconstruction[..., kept_mel_bins:]) > 1e-3


def test_mask_arithmetic_on_odd_lengths(pipe):
    per_frame = 640  # samples per latent frame at 16 kHz: 4 mel frames of 160
    def frames(start, end, count):
        return torch.nonzero(time_mask(start, end, count, RATE, per_frame)).flatten().tolist()
    assert frames(0.3, 0.75, 33) == list(range(7, 19))  # samples 4800 // 640 = 7 .. ceil(12000 / 640) = 19
    assert frames(0.04, 0.08, 33) == [1]  # exactly one frame, edges on frame boundaries
    assert frames(0.0401, 0.0799, 33) == [1]  # inside one frame
    assert frames(0.0399, 0.0801, 33) == [0, 1, 2]  # touching its neighbours
    assert frames(1.2, 1.3, 33) == [30, 31, 32]  # up to the odd end (20800 samples: 32.5 frames -> 33)
    config = mel_config(pipe)
    for hz in (100.0, 1000.0, 3999.0, 4000.0, 7000.0, 7999.0):
        for bins in (16, 64):
            config = dataclasses.replace(config, n_mels=bins)
            tops = librosa.mel_frequencies(bins + 2, fmin=0, fmax=8000)[2:]
            first = int((tops <= hz).sum()) // 4
            assert torch.equal(frequency_mask(hz, config), torch.arange(bins // 4) >= first), (hz, bins)
    edit = AudioEdit.prepare(pipe, recording(20801)[0], RATE, regenerate_seconds=(0.5, 1.3000625),
                             regenerate_above_hz=7000)
    assert edit.num_samples == 20801 and edit.num_frames == 132 and edit.regenerate.shape == (1, 1, 33, 4)
    expected = (torch.arange(33)[:, None] >= 12) | frequency_mask(7000, mel_config(pipe))[None, :]  # combined
    assert torch.equal(edit.regenerate[0, 0], expected)


# ----------------------------------------------------------------------------------------------
# Bad input: one clear error each, from Python and from the command line (no output file)


def test_each_bad_edit_is_one_clear_error(pipe, tmp_path):
    audio = recording(16000)[0]  # 1 s
    nan = audio.copy()
    nan[100] = np.nan
    cases = [
        (dict(audio=tmp_path / "missing.wav"), "does not exist"),
        (dict(audio=tmp_path), "is a directory"),
        (dict(audio=nan, audio_sampling_rate=RATE), "NaN or infinite"),
        (dict(audio=audio), "needs its sampling_rate"),
        (dict(audio=audio[:600], audio_sampling_rate=RATE), "shorter than one latent frame"),
        (dict(audio=audio, audio_sampling_rate=RATE, strength=0.0), r"strength must be in \(0, 1\]"),
        (dict(audio=audio, audio_sampling_rate=RATE, strength=1.5), r"strength must be in \(0, 1\]"),
        (dict(audio=audio, audio_sampling_rate=RATE, strength=float("nan")), r"strength must be in \(0, 1\]"),
        (dict(audio=audio, audio_sampling_rate=RATE, strength=0.05), "runs no denoising step"),  # 0.05 x 10 steps
        (dict(audio=audio, audio_sampling_rate=RATE, regenerate_seconds=(0.6, 0.2)), "reversed or empty"),
        (dict(audio=audio, audio_sampling_rate=RATE, regenerate_seconds=(0.4, 0.4)), "reversed or empty"),
        (dict(audio=audio, audio_sampling_rate=RATE, regenerate_seconds=(-0.1, 0.4)), "outside the audio"),
        (dict(audio=audio, audio_sampling_rate=RATE, regenerate_seconds=(0.5, 1.5)), "outside the audio"),
        (dict(audio=audio, audio_sampling_rate=RATE, regenerate_seconds=0.5), r"must be \(start, end\)"),
        (dict(audio=audio, audio_sampling_rate=RATE, regenerate_above_hz=0), r"must be in \(0, 8000\) Hz"),
        (dict(audio=audio, audio_sampling_rate=RATE, regenerate_above_hz=8000), r"must be in \(0, 8000\) Hz"),
        (dict(audio=audio, audio_sampling_rate=RATE, regenerate_above_hz=-5), r"must be in \(0, 8000\) Hz"),
        (dict(regenerate_seconds=(0.1, 0.2)), "regenerate_seconds edits audio: give the recording"),
        (dict(regenerate_above_hz=4000), "regenerate_above_hz edits audio: give the recording"),
        (dict(strength=0.5), "strength edits audio: give the recording"),
        (dict(audio=audio, audio_sampling_rate=RATE, audio_length_in_s=2.0), "disagrees with the audio's 1 s"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message) as raised:
            pipe("rain", num_inference_steps=10, **kwargs)
        assert "\n" not in str(raised.value), kwargs


def test_cli_bad_edits_end_with_one_line_and_no_file(tiny_checkpoint, tmp_path, capsys):
    good = tmp_path / "in.wav"
    soundfile.write(good, recording(16000)[0], RATE)  # 1 s
    short = tmp_path / "short.wav"
    soundfile.write(short, recording(300)[0], RATE)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0), RATE)
    not_audio = tmp_path / "notes.ogg"
    not_audio.write_text("not audio")
    nan = tmp_path / "nan.wav"
    soundfile.write(nan, np.array([0.0, np.nan, 0.5] * 1000), RATE, subtype="FLOAT")
    cases = [
        (["--regenerate-seconds", "0.1:0.2"], "--regenerate-seconds edits audio: give the recording to edit (audio)"),
        (["--regenerate-above-hz", "4000"], "--regenerate-above-hz edits audio"),
        (["--strength", "0.5"], "--strength edits audio"),
        (["--audio", tmp_path / "missing.wav"], "does not exist"),
        (["--audio", tmp_path], "is a directory"),
        (["--audio", empty], "is empty"),
        (["--audio", not_audio], "cannot read"),
        (["--audio", nan], "NaN or infinite"),
        (["--audio", good, "--strength", "0"], r"--strength must be in (0, 1]"),
        (["--audio", good, "--strength", "1.2"], r"--strength must be in (0, 1]"),
        (["--audio", good, "--regenerate-seconds", "0.8:0.2"], "reversed or empty"),
        (["--audio", good, "--regenerate-seconds", "0.3:0.3"], "reversed or empty"),
        (["--audio", good, "--regenerate-seconds", "0.5:3"], "outside the audio (0 to 1 s)"),
        (["--audio", good, "--regenerate-seconds", "half"], "expects START:END"),
        (["--audio", good, "--regenerate-above-hz", "0"], "--regenerate-above-hz must be in (0, 8000) Hz"),
        (["--audio", good, "--seconds", "5"], "--seconds=5 disagrees with the audio's 1 s"),
        # the model's limits, read from the checkpoint's configs: checked before it loads, usage mistakes too
        (["--audio", good, "--regenerate-above-hz", "9000"], "must be in (0, 8000) Hz"),
        (["--audio", good, "--regenerate-above-hz", "8000"], "must be in (0, 8000) Hz"),
        (["--audio", good, "--regenerate-above-hz", "inf"], "must be in (0, 8000) Hz"),
        (["--audio", good, "--regenerate-seconds", "-1:2"], "--regenerate-seconds -1:2 is outside the audio"),
        (["--audio", good, "--steps", "1001"], "--steps: DDIM takes at least 1 and at most 1000 steps"),
        (["--audio", good, "--steps", "1000", "--scheduler", "dpmsolver++"], "DPM-Solver++ takes at least 1 and at most 999"),
        (["--audio", short], "shorter than one latent frame"),
    ]
    outputs = [tmp_path / f"out{i}.wav" for i in range(len(cases))]
    # in this process (test_cli.run_main: test_cli.py shows a process prints what main prints)
    results = [run_main(["rain", "-o", out, "--model", tiny_checkpoint, "--device", "cpu", "--steps", "2", *extra],
                        capsys) for out, (extra, _) in zip(outputs, cases)]
    late = {"NaN or infinite"}  # found only when the samples are decoded: after loading, exit status 1
    for (extra, message), out, result in zip(cases, outputs, results):
        assert result.returncode == (1 if message in late else 2), (extra, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("audioldm2-lite: error:")]
        assert len(errors) == 1 and message in errors[0], (extra, result.stderr)
        assert "Traceback" not in result.stderr
        assert not out.exists() and not list(tmp_path.glob(".partial-*")), extra


def test_cli_runs_the_three_modes(tiny_checkpoint, tmp_path, capsys):
    from audioldm2_lite.cli import main

    source = tmp_path / "in.flac"
    soundfile.write(source, recording(26460, 44100, channels=2).T, 44100)  # 0.6 s, stereo, 44.1 kHz
    common = ["--model", tiny_checkpoint, "--device", "cpu", "--seed", "0", "--negative-prompt", "noise",
              "--audio", source]
    modes = {
        "style.wav": ["--strength", "0.6", "--steps", "5"],
        "inpaint.wav": ["--regenerate-seconds", "0.2:0.45", "--steps", "2", "--scheduler", "dpmsolver++"],
        "wider.flac": ["--regenerate-above-hz", "4000", "--regenerate-seconds", "0:0.1", "--steps", "2",
                       "--candidates", "2", "--all"],
    }
    for name, extra in modes.items():
        assert main(["a violin", "-o", str(tmp_path / name), *map(str, common), *extra]) == 0
    for name in ("style.wav", "inpaint.wav", "wider_1.flac", "wider_2.flac"):
        audio, rate = soundfile.read(tmp_path / name)
        assert rate == 16000 and audio.shape == (9600,), name  # 0.6 s at 16 kHz, mono
