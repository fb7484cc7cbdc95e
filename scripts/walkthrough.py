"""The reader's map: run AudioLDM 2's stages one by one and print what each produces.

    python scripts/walkthrough.py [--model DIR_OR_HUB_ID] [--prompt TEXT] [--seconds 2] [--steps 10]

Without --model it builds the tiny random checkpoint (seconds, offline), so the shapes are tiny too; with
a real checkpoint (`--model cvssp/audioldm2` or `weights/audioldm2`) they are the ones in the README.
Each line: stage, the file that implements it, output shape and dtype, wall time. The last lines take the
generated audio back in (front end, VAE encoder) and inpaint a quarter of it (editing.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from audioldm2_lite import AudioLDM2Pipeline  # noqa: E402
from audioldm2_lite.generation.audio_features import clap_input_features  # noqa: E402
from audioldm2_lite.generation.audio_io import read_audio  # noqa: E402
from audioldm2_lite.generation.editing import mel_config  # noqa: E402
from audioldm2_lite.generation.mel import waveform_to_mel  # noqa: E402


class Clock:
    def __init__(self, device):
        self.device = device

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start


def show(stage: str, file: str, tensor: torch.Tensor, clock: Clock, note: str = ""):
    print(f"{stage:28s} {file:22s} {str(tuple(tensor.shape)):22s} {str(tensor.dtype):15s} "
          f"{clock.seconds * 1e3:9.1f} ms  {note}")


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint (default: a freshly built tiny random one)")
    parser.add_argument("--prompt", default="a dog barks while rain falls on a tin roof")
    parser.add_argument("--negative-prompt", default="low quality")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.model is None:
        sys.path.insert(0, str(HERE))
        from make_tiny_checkpoint import make_tiny_checkpoint

        args.model = make_tiny_checkpoint(Path(tempfile.mkdtemp()) / "tiny")
        print(f"built a tiny random checkpoint in {args.model}\n")

    device = torch.device(args.device)
    pipe = AudioLDM2Pipeline.from_pretrained(args.model, device=device, dtype=torch.float32)
    c = pipe.conditioner
    prompts = [args.negative_prompt, args.prompt]  # [uncond, cond], as classifier-free guidance stacks them
    print(f"{'stage':28s} {'file':22s} {'output shape':22s} {'dtype':15s} {'time':>12s}")

    with Clock(device) as clock:
        clap = c.clap_text_features(prompts)  # the tokenizer's ids, then clap.py's text tower
    show("CLAP text embedding", "clap.py", clap, clock, "one unit vector per prompt")
    with Clock(device) as clock:  # CLAP again, T5, the projection, then GPT-2's generation
        generated, t5, t5_mask = c.encode_texts(prompts, c.t5_length(prompts[1:]))
    show("GPT-2 generated states", "conditioning.py", generated, clock,
         "CLAP + T5 (t5.py) -> projection.py -> gpt2.py; the UNet's first cross-attention reads these")
    print(f"{'  of which Flan-T5 states':28s} {'t5.py':22s} {str(tuple(t5.shape)):22s} {str(t5.dtype):15s} "
          f"{'':12s}  the UNet's second cross-attention reads these")

    frames, samples = pipe.latent_frames(args.seconds)
    latents = pipe.prepare_latents(1, frames, torch.Generator(device).manual_seed(0))
    print(f"{'initial noise':28s} {'pipeline.py':22s} {str(tuple(latents.shape)):22s} {str(latents.dtype):15s}")
    with Clock(device) as clock:
        for step, (t, latents) in enumerate(pipe.generate_latents(
                latents, (generated, t5, t5_mask), args.steps, scheduler="dpmsolver++")):
            pass
    show(f"denoised latent ({args.steps} steps)", "unet.py, samplers/", latents, clock,
         f"{clock.seconds / args.steps * 1e3:.1f} ms per guided step")
    with Clock(device) as clock:
        mel = pipe.vae.decode(latents / pipe.vae.config.scaling_factor)
    show("log-mel spectrogram", "vae.py", mel, clock)
    with Clock(device) as clock:
        audio = pipe.vocoder(mel.squeeze(1))[:, :samples]
    show(f"waveform ({pipe.sampling_rate} Hz)", "vocoder.py", audio, clock, f"{samples / pipe.sampling_rate:.2f} s")
    tower, feature_config = pipe.clap_audio_tower()  # loaded on first use: only ranking needs it
    with Clock(device) as clock:
        features, _ = clap_input_features(audio, pipe.sampling_rate, feature_config)
    show("CLAP log-mel (48 kHz)", "audio_features.py", features, clock)
    with Clock(device) as clock:
        score = tower(features) @ clap[1]
    show("CLAP audio-text similarity", "clap_audio.py", score, clock, f"{score.item():+.4f} (ranks candidates)")

    # audio in: the waveform back to a latent (what the editing modes start from), then one edit of it
    with Clock(device) as clock:
        waveform = read_audio(audio[0], sampling_rate=pipe.sampling_rate)  # a file path works the same
    show("audio in (mono, 16 kHz)", "audio_io.py", waveform, clock, "any file, rate or channels; soxr")
    with Clock(device) as clock:
        log_mel = waveform_to_mel(waveform.to(device), mel_config(pipe))
    show("log-mel front end", "mel.py", log_mel, clock, "normalised, |STFT|, Slaney mel, log")
    with Clock(device) as clock:
        source = pipe.vae.encode(log_mel[:, None]) * pipe.vae.config.scaling_factor
    show("input latent (VAE mean)", "vae.py", source, clock)
    quarter = samples / pipe.sampling_rate / 4
    with Clock(device) as clock:
        edited = pipe(args.prompt, audio=waveform, audio_sampling_rate=pipe.sampling_rate, strength=0.8,
                      regenerate_seconds=(quarter, 2 * quarter), num_inference_steps=args.steps,
                      scheduler="dpmsolver++", output_type="pt").audios
    show("edited waveform", "editing.py", edited, clock, f"{quarter:.2f}-{2 * quarter:.2f} s regenerated, rest kept")


if __name__ == "__main__":
    main()
