"""`audioldm2-lite-app`: a Gradio page and HTTP API over the pipeline (`pip install -e ".[app]"`).

    audioldm2-lite-app [--model cvssp/audioldm2|PATH] [--host 127.0.0.1] [--port 7860] [--device D] [--dtype T] [--share]

The app loads the model once and is a thin shell over `AudioLDM2Pipeline.__call__`: it has no generation
logic of its own, so what the page makes is what the Python API makes with the same arguments. Requests wait
in Gradio's queue and run one at a time on the one model (`concurrency_id="model"` joins the page and the
API). A person's mistake (an empty prompt, a bad length) comes back as a message on the page, never a stack
trace, and a failed request leaves the app serving.

API: the named endpoint `/generate` takes (prompt, negative_prompt, seconds, steps, guidance, seed) and
returns a WAV file:

    from gradio_client import Client
    path = Client("http://127.0.0.1:7860/").predict("rain on a tin roof", "low quality", 5.0, 20, 3.5, 0,
                                                    api_name="/generate")
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile

# Gradio phones home at import (analytics, version check) unless told not to; this machine may be offline.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SCHEDULERS = {"DPM-Solver++ (fast)": "dpmsolver++", "DDIM": "ddim"}
MAX_CANDIDATES = 4  # players on the page; the best one first
MAX_SEED = 2**31 - 1
EXAMPLES = [
    ["A hammer is hitting a wooden surface", "low quality"],
    ["Techno music with a strong bass line", "low quality"],
    ["Birds chirping in a forest at dawn with a gentle wind", "low quality"],
    ["A crowd cheers and applauds at the end of a concert", "low quality"],
]


def generate(pipe, prompt: str, negative_prompt: str = "", seconds: float = 10.0, steps: int = 20,
             scheduler: str = "dpmsolver++", guidance: float = 3.5, seed: int | None = None, candidates: int = 1,
             on_step=None, **edit) -> tuple[list, int]:
    """Run the pipeline once: ([(sampling_rate, waveform) best first], the seed used).

    `seed=None` draws one, so that every result can be made again. `on_step(i, total)` reports progress.
    `edit`: the pipeline's audio-editing arguments (`audio`, `strength`, `regenerate_seconds`,
    `regenerate_above_hz`); the output then has the input's length and `seconds` is not used.
    """
    from .generation.editing import steps_to_run

    seed = random.randint(0, MAX_SEED) if seed is None else int(seed)
    steps, candidates = int(steps), int(candidates)
    if not 1 <= candidates <= MAX_CANDIDATES:
        raise ValueError(f"candidates must be between 1 and {MAX_CANDIDATES}, got {candidates}")
    total = steps_to_run(edit.get("strength", 1.0), steps)  # SDEdit runs only the last part of the schedule
    result = pipe(
        prompt, negative_prompt=negative_prompt or None, audio_length_in_s=None if edit else float(seconds),
        num_inference_steps=steps, guidance_scale=float(guidance), num_waveforms_per_prompt=candidates,
        scheduler=scheduler, seed=seed, callback=None if on_step is None else (lambda i, t, x: on_step(i + 1, total)),
        **edit,
    )
    return [(pipe.sampling_rate, audio) for audio in result.audios], seed


def edit_arguments(audio, strength, regenerate_start, regenerate_end, regenerate_above_hz) -> dict:
    """The page's editing fields -> the pipeline's arguments (empty range and 0 Hz mean "not used")."""
    if audio is None:
        raise ValueError("upload the audio to edit first")
    time_range = None
    if regenerate_start or regenerate_end:
        time_range = (float(regenerate_start or 0.0), float(regenerate_end or 0.0))
    return dict(audio=audio, strength=float(strength), regenerate_seconds=time_range,
                regenerate_above_hz=float(regenerate_above_hz) if regenerate_above_hz else None)


def build_app(pipe, model_name: str = ""):
    """The page (gr.Blocks) for a loaded pipeline; `launch()` it or test its functions."""
    import gradio as gr

    def checked(call):
        """Run a generation; a ValueError (bad input) becomes a message on the page, not a stack trace."""
        try:
            return call()
        except ValueError as error:
            raise gr.Error(str(error)) from None

    def page_generate(prompt, negative_prompt, seconds, steps, scheduler, guidance, seed, random_seed, candidates,
                      progress=gr.Progress()):
        def on_step(i, total):
            progress((i, total), desc="denoising", unit="steps")

        audios, used_seed = checked(lambda: generate(
            pipe, prompt, negative_prompt, seconds, steps, SCHEDULERS[scheduler], guidance,
            None if random_seed else seed, candidates, on_step,
        ))
        players = [gr.update(value=audio, visible=True) for audio in audios]
        players += [gr.update(value=None, visible=i == 0) for i in range(len(audios), MAX_CANDIDATES)]
        return (*players, used_seed)

    def page_edit(audio, strength, start, end, above, prompt, negative_prompt, steps, scheduler, guidance, seed,
                  random_seed, progress=gr.Progress()):
        def on_step(i, total):
            progress((i, total), desc="denoising", unit="steps")

        audios, used_seed = checked(lambda: generate(
            pipe, prompt, negative_prompt, 0.0, steps, SCHEDULERS[scheduler], guidance, None if random_seed else seed,
            1, on_step, **edit_arguments(audio, strength, start, end, above),
        ))
        return audios[0], used_seed

    def api_generate(prompt, negative_prompt, seconds, steps, guidance, seed):
        audios, _ = checked(lambda: generate(pipe, prompt, negative_prompt, seconds, steps, "dpmsolver++", guidance,
                                             seed))
        return audios[0]

    with gr.Blocks(title="AudioLDM 2 (audioldm2_lite)") as app:
        gr.Markdown(f"## AudioLDM 2\nModel: `{model_name}` on {pipe.device}, {pipe.precision.describe()}")
        # what both tabs use
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Prompt", placeholder="What should it sound like?", elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", value="low quality", elem_id="negative-prompt")
            with gr.Column():
                with gr.Row():
                    steps = gr.Slider(1, 200, value=20, step=1, label="Steps", elem_id="steps")
                    guidance = gr.Slider(1.0, 10.0, value=3.5, step=0.5, label="Guidance scale")
                with gr.Row():
                    scheduler = gr.Dropdown(list(SCHEDULERS), value=next(iter(SCHEDULERS)), label="Scheduler")
                    seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
                    random_seed = gr.Checkbox(value=True, label="Random seed")

        with gr.Tab("Text to audio"):
            with gr.Row():
                with gr.Column():
                    seconds = gr.Slider(1.0, 30.0, value=10.0, step=0.5, label="Length (seconds)", elem_id="seconds")
                    candidates = gr.Slider(1, MAX_CANDIDATES, value=1, step=1,
                                           label="Candidates (ranked by CLAP, best first)")
                    button = gr.Button("Generate", variant="primary", elem_id="generate")
                    gr.Examples(EXAMPLES, inputs=[prompt, negative])
                with gr.Column():
                    players = [gr.Audio(label="Result" if i == 0 else f"Candidate {i + 1}", type="numpy",
                                        format="wav", interactive=False, visible=i == 0, elem_id=f"result-{i}")
                               for i in range(MAX_CANDIDATES)]
                    used_seed = gr.Number(label="Seed used (untick 'Random seed' and enter it to make this again)",
                                          precision=0, interactive=False, elem_id="seed-used")

        with gr.Tab("Edit audio"):
            gr.Markdown("Upload a recording and describe what it should become. **Strength** below 1 keeps its "
                        "structure (style transfer); a **time range** regenerates only those seconds and keeps the "
                        "rest (inpainting); **above Hz** regenerates only the high frequencies (bandwidth "
                        "extension). The result keeps the recording's length.")
            with gr.Row():
                with gr.Column():
                    source = gr.Audio(label="Audio to edit", type="filepath", sources=["upload"], elem_id="source")
                    strength = gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="Strength", elem_id="strength")
                    with gr.Row():
                        start = gr.Number(value=0.0, minimum=0.0, label="Regenerate from (s)", elem_id="start")
                        end = gr.Number(value=0.0, minimum=0.0, label="to (s); 0 to 0: no range", elem_id="end")
                    above = gr.Number(value=0.0, minimum=0.0, maximum=8000.0, label="Regenerate above (Hz; 0: off)",
                                      elem_id="above")
                    edit_button = gr.Button("Edit", variant="primary", elem_id="edit")
                with gr.Column():
                    edited = gr.Audio(label="Edited", type="numpy", format="wav", interactive=False, elem_id="edited")
                    edited_seed = gr.Number(label="Seed used", precision=0, interactive=False, elem_id="edited-seed")

        button.click(page_generate, [prompt, negative, seconds, steps, scheduler, guidance, seed, random_seed,
                                     candidates], [*players, used_seed], api_visibility="private",
                     concurrency_id="model")
        edit_button.click(page_edit, [source, strength, start, end, above, prompt, negative, steps, scheduler,
                                      guidance, seed, random_seed], [edited, edited_seed],
                          api_visibility="private", concurrency_id="model")
        # the programmatic endpoint: six plain arguments, one WAV back
        api_output = gr.Audio(type="numpy", format="wav", visible=False)
        api_button = gr.Button(visible=False)
        api_button.click(api_generate, [prompt, negative, seconds, steps, guidance, seed], api_output,
                         api_name="generate", concurrency_id="model")
    app.queue(default_concurrency_limit=1)
    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audioldm2-lite-app", description="A web page for AudioLDM 2 (Gradio).")
    parser.add_argument("--model", default="cvssp/audioldm2", help="hub id or local folder (default: cvssp/audioldm2)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    parser.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"),
                        help="every stage in it (default, measured: float16 on CUDA; on a CPU with native bf16 the "
                             "UNet, text stages and vocoder in bfloat16, the VAE in float32; float32 elsewhere)")
    parser.add_argument("--share", action="store_true", help="also serve through a public Gradio link")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print('audioldm2-lite-app: error: the web app needs Gradio: pip install "audioldm2-lite[app]"', file=sys.stderr)
        return 1
    import torch

    from . import AudioLDM2Pipeline, CheckpointError

    try:
        pipe = AudioLDM2Pipeline.from_pretrained(args.model, device=args.device,
                                                 dtype=getattr(torch, args.dtype) if args.dtype else None)
        app = build_app(pipe, args.model)
        print(f"audioldm2-lite-app: serving {args.model} on http://{args.host}:{args.port}/", flush=True)
        app.launch(server_name=args.host, server_port=args.port, share=args.share, ssr_mode=False,
                   show_error=False, allowed_paths=[tempfile.gettempdir()])
    except (CheckpointError, ValueError, OSError, RuntimeError) as error:
        print(f"audioldm2-lite-app: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
