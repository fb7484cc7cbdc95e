"""`audioldm2-lite-app`: a Gradio page and HTTP API over the pipeline (`pip install -e ".[app]"`).

    audioldm2-lite-app [--model cvssp/audioldm2|PATH] [--host 127.0.0.1] [--port 7860] [--share]
                       [--device D] [--dtype T] [--lora FILE [--lora-scale S]] [--compile] [--offload]
                       [--auth USER:PASSWORD] [--auth-file FILE] [--max-upload-mb 20] [--max-input-seconds 30]
                       [--max-prompt-chars 1000] [--cache-hours 24]
                       [--max-batch 8] [--batch-window 0.1] [--max-queue 64] [--time-limit 600]

The app loads the model once, as the command line does (console.load_pipeline, from the same model options), and is
a thin shell over the pipeline: each event makes a `Request` and hands it to the queue (serving.py), which runs
requests arriving together as one `AudioLDM2Pipeline.generate` call, each with its own seed, so what the page makes
is what the Python API and the command line make with the same request: the same 16-bit samples the command line
writes, in a WAV named after the prompt and the seed, shown beside its log-mel spectrogram. A speech checkpoint
shows a "Words to say" field. A person's mistake (an empty prompt, a bad length) comes back as a message on the
page, as does a full queue ("busy") or a request past its time limit; the server logs one line per request, never a
stack trace, and keeps serving. `/healthz` and `/readyz` answer a load balancer.

Serving strangers: Gradio serves the files in its cache folder, so the app gives it a private one for this run
(`tempfile.mkdtemp`: mode 0700, removed at exit) and allows no other path: what the page serves is what it
wrote and what was uploaded to it. Uploads, recordings, prompts and cache age are bounded (the options above);
`--auth` puts a login in front of everything but the health routes, and serving beyond this machine without it
prints a warning.

API: the named endpoint `/generate` takes (prompt, negative_prompt, seconds, steps, guidance, seed) and, for a
speech checkpoint, the transcription, and returns a WAV file:

    from gradio_client import Client
    path = Client("http://127.0.0.1:7860/").predict("rain on a tin roof", "low quality", 5.0, 20, 3.5, 0,
                                                    api_name="/generate")
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import os
import signal
import sys
import tempfile
import uuid
from pathlib import Path

from ..console import (OneLineParser, UsageError, add_model_arguments, check_local_model, check_model_options,
                       describe_reference, file_metadata, load_pipeline, pcm16, report_errors, slug, write_audio)
from ..generation.editing import mel_config, steps_to_run
from ..generation.pipeline import Generated
from ..generation.request import DEFAULT_GUIDANCE, DEFAULT_STEPS, MAX_SEED, Request
from ..generation.samplers import SAMPLERS
from ..generation.samplers.extras import unet_calls
from .serving import BatchingQueue, ServingError
from .spectrogram import spectrogram_image

# Gradio phones home at import (analytics, version check) unless told not to; this machine may be offline.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

PROG = "audioldm2-lite-app"
# the dropdown: every sampler of the one table (samplers.SAMPLERS), two with the labels they always had
SCHEDULERS = {{"dpmsolver++": "DPM-Solver++ (fast)", "ddim": "DDIM"}.get(name, name): name for name in SAMPLERS}
MAX_CANDIDATES = 4  # players on the page; the best one first
EXAMPLES = [
    ["A hammer is hitting a wooden surface", "low quality"],
    ["Techno music with a strong bass line", "low quality"],
    ["Birds chirping in a forest at dawn with a gentle wind", "low quality"],
    ["A crowd cheers and applauds at the end of a concert", "low quality"],
]
# Limits for a page that strangers may reach; each is a command-line option
MAX_UPLOAD_MB = 20.0  # 30 s of 48 kHz stereo float WAV is 11 MB
MAX_INPUT_SECONDS = 30.0  # the longest recording the Edit tab takes, as long as the Length slider goes
MAX_PROMPT_CHARS = 1000  # the encoders read 77 and 512 tokens; a longer prompt only costs tokenizing time
CACHE_HOURS = 24.0  # generated and uploaded files are deleted this long after they were written
# Serving many people (serving.py); each is a command-line option
MAX_BATCH = 8  # waveforms in one pipeline call; raise it where the GPU's memory allows
BATCH_WINDOW = 0.1  # seconds a lone request waits for others to share its batch: small beside any generation
MAX_QUEUE = 64  # requests waiting; one more is refused at once ("busy")
TIME_LIMIT = 600.0  # seconds from joining the queue to the result; later, the request is answered "timed out"


def make_request(prompt, negative_prompt="", seconds=None, steps=None, scheduler=None, guidance=3.5, seed=None,
                 candidates=1, transcription=None, edit=None) -> Request:
    """The page's fields -> the request (`edit`: `edit_arguments`); seed None draws one, recorded in the result.
    The request's own check (`Request.check`, in the queue) covers every field; the page adds its players' count."""
    candidates = int(candidates)
    if candidates > MAX_CANDIDATES:
        raise ValueError(f"candidates must be at most {MAX_CANDIDATES} (the page's players), got {candidates}")
    return Request(prompt=prompt, negative_prompt=negative_prompt or "", transcription=(transcription or "").strip() or None,
                   seconds=None if edit or seconds is None else float(seconds), steps=None if steps is None else int(steps),
                   scheduler=scheduler, guidance=float(guidance), candidates=candidates,
                   seed=None if seed is None else int(seed), **(edit or {}))


def generate(pipe, request: Request, on_step=None) -> tuple[list, int]:
    """Run one request through the pipeline: ([(sampling_rate, 16-bit samples) best first], the seed used).

    The samples are the ones the command line writes to its files (console.pcm16): Gradio would otherwise
    peak-normalise float audio. `on_step(i, total)` reports progress."""
    request = pipe.with_seed(request)  # checked once, by pipe.generate
    resolved = request.resolved(pipe.limits())
    # UNet calls: an edit runs only the last part of the schedule
    total = unet_calls(resolved.scheduler, resolved.steps, steps_to_run(request.strength, resolved.steps))
    [result] = pipe.generate(request, callback=None if on_step is None else (lambda i, t, x: on_step(i + 1, total)))
    return [(pipe.sampling_rate, pcm16(audio)) for audio in result.audios], result.request.seed


def edit_arguments(audio, strength, regenerate_start, regenerate_end, regenerate_above_hz,
                   max_seconds: float | None = None) -> dict:
    """The page's editing fields -> the pipeline's arguments (empty range and 0 Hz mean "not used").

    A recording longer than `max_seconds` is refused from its header, before a sample is decoded: a small
    compressed upload can hold an hour of audio, too much for the memory once decoded.
    """
    if audio is None:
        raise ValueError("upload the audio to edit first")
    if max_seconds is not None and (seconds := recording_seconds(audio)) > max_seconds:
        raise ValueError(f"the recording is {seconds:.1f} s long; this page edits at most {max_seconds:g} s")
    time_range = None
    if regenerate_start or regenerate_end:
        time_range = (float(regenerate_start or 0.0), float(regenerate_end or 0.0))
    return dict(audio=audio, strength=float(strength), regenerate_seconds=time_range,
                regenerate_above_hz=float(regenerate_above_hz) if regenerate_above_hz else None)


def recording_seconds(path: str) -> float:
    """An audio file's length from its header; 0 if soundfile cannot open it (reading it then says why)."""
    import soundfile

    try:
        return soundfile.info(path).duration
    except (soundfile.LibsndfileError, RuntimeError, OSError):
        return 0.0


def build_app(pipe, model_name: str = "", max_prompt_chars: int = MAX_PROMPT_CHARS,
              max_input_seconds: float = MAX_INPUT_SECONDS, cache_hours: float = CACHE_HOURS,
              queue: BatchingQueue | None = None):
    """The page (gr.Blocks) for a loaded pipeline, its requests run by `queue` (default: a BatchingQueue with its
    defaults over `pipe`); `launch()` it or test its functions."""
    import gradio as gr

    queue = queue or batching_queue(pipe)
    mel = mel_config(pipe)

    async def answer(kind: str, make, prompts, progress=None) -> Generated:
        """One request through the queue: its result, or a message on the page (gr.Error) that leaves no stack
        trace in the server's log either: the queue logs one line per request."""
        def checked_request():
            for text in prompts:
                if text and len(text) > max_prompt_chars:
                    raise ValueError(f"the prompt has {len(text)} characters; this page takes at most "
                                     f"{max_prompt_chars}")
            return make()

        def on_wait(ahead):
            if progress is not None:
                progress(None, desc=f"waiting for the model: {ahead} ahead" if ahead else "starting")

        def on_step(i, total):
            if progress is not None:
                progress((i, total), desc="denoising", unit="steps")

        try:
            return await queue.run(kind, checked_request, on_wait, on_step, client_still_waiting())
        except (ValueError, ServingError) as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Exception:  # noqa: BLE001  (the queue's log line says what failed)
            raise gr.Error("the server failed on this request (its log says why); try again",
                           print_exception=False) from None

    def saved(result: Generated, index: int = 0) -> str:
        """The result's `index`-th waveform as a WAV in Gradio's cache, named after its prompt and seed (what a
        download is called), carrying the request as the command line's files do."""
        folder = Path(gr.utils.get_upload_folder()) / uuid.uuid4().hex
        folder.mkdir(parents=True)
        path = folder / result_name(result.request, index)
        request = result.request
        if request.is_edit:  # the upload's name, not its path in the server's private folder
            request = dataclasses.replace(request, audio=Path(str(request.audio)).name)
        write_audio(path, result.audios[index], pipe.sampling_rate,
                    file_metadata(request, model_name, pipe.precision.describe(), pipe.reference))
        return str(path)

    async def picture(result: Generated):
        return await asyncio.to_thread(spectrogram_image, result.audios[0], mel)

    async def page_generate(prompt, negative_prompt, seconds, steps, scheduler, guidance, seed, random_seed,
                            candidates, transcription="", progress=gr.Progress()):
        result = await answer("page", lambda: make_request(
            prompt, negative_prompt, seconds, steps, SCHEDULERS[scheduler], guidance, None if random_seed else seed,
            candidates, transcription), (prompt, negative_prompt), progress)
        players = [gr.update(value=saved(result, i), visible=True) for i in range(len(result.audios))]
        players += [gr.update(value=None, visible=i == 0) for i in range(len(result.audios), MAX_CANDIDATES)]
        return (*players, result.request.seed, await picture(result))

    async def page_edit(audio, strength, start, end, above, prompt, negative_prompt, steps, scheduler, guidance, seed,
                        random_seed, transcription="", progress=gr.Progress()):
        result = await answer("edit", lambda: make_request(
            prompt, negative_prompt, None, steps, SCHEDULERS[scheduler], guidance, None if random_seed else seed, 1,
            transcription, edit_arguments(audio, strength, start, end, above, max_input_seconds)),
            (prompt, negative_prompt), progress)
        return saved(result), result.request.seed, await picture(result)

    async def api_generate(prompt, negative_prompt, seconds, steps, guidance, seed, transcription=None):
        result = await answer("api", lambda: make_request(
            prompt, negative_prompt, seconds, steps, "dpmsolver++", guidance, seed, 1, transcription),
            (prompt, negative_prompt))
        return saved(result)

    def steps_for(scheduler):  # the table's default for the sampler chosen
        return gr.update(value=DEFAULT_STEPS[SCHEDULERS[scheduler]])

    speaks = pipe.conditioner.speaks  # a text-to-speech checkpoint: the words to say are needed
    default_scheduler = next(label for label, name in SCHEDULERS.items() if name == pipe.scheduler_config.sampler)

    # every file Gradio wrote for this page (results, uploads) is deleted `cache_hours` after it was written
    age = max(1, round(cache_hours * 3600))
    with gr.Blocks(title="AudioLDM 2 (audioldm2_lite)", delete_cache=(min(age, 3600), age)) as app:
        gr.Markdown(f"## AudioLDM 2\nModel: `{model_name}` ({pipe.sampling_rate // 1000} kHz) as "
                    f"{describe_reference(pipe.reference, pipe.checkpoint)}, on {pipe.device}, "
                    f"{pipe.precision.describe()}")
        # what both tabs use
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Voice (how it should sound)" if speaks else "Prompt",
                                    placeholder="What should it sound like?", elem_id="prompt",
                                    max_length=max_prompt_chars)
                transcription = gr.Textbox(label="Words to say", visible=speaks, elem_id="transcription",
                                           placeholder="The text the voice reads", max_length=max_prompt_chars)
                negative = gr.Textbox(label="Negative prompt", value="low quality", elem_id="negative-prompt",
                                      max_length=max_prompt_chars)
            with gr.Column():
                with gr.Row():
                    steps = gr.Slider(1, 1000, value=DEFAULT_STEPS[pipe.scheduler_config.sampler], step=1, label="Steps",
                                      elem_id="steps")
                    guidance = gr.Slider(1.0, 10.0, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance scale")
                with gr.Row():
                    scheduler = gr.Dropdown(list(SCHEDULERS), value=default_scheduler, label="Scheduler",
                                            elem_id="scheduler")
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
                    players = [gr.Audio(label="Result" if i == 0 else f"Candidate {i + 1}", type="filepath",
                                        format="wav", interactive=False, visible=i == 0, elem_id=f"result-{i}")
                               for i in range(MAX_CANDIDATES)]
                    spectrogram = spectrogram_view("spectrogram")
                    used_seed = gr.Number(label="Seed used (untick 'Random seed' and enter it to make this again)",
                                          precision=0, interactive=False, elem_id="seed-used")

        with gr.Tab("Edit audio"):
            gr.Markdown("Upload a recording and describe what it should become. **Strength** below 1 keeps its "
                        "structure (style transfer); a **time range** regenerates only those seconds and keeps the "
                        "rest (inpainting); **above Hz** regenerates only the high frequencies (bandwidth "
                        "extension). The result keeps the recording's length.")
            with gr.Row():
                with gr.Column():
                    source = gr.Audio(label=f"Audio to edit (at most {max_input_seconds:g} s)", type="filepath",
                                      sources=["upload"], elem_id="source")
                    strength = gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="Strength", elem_id="strength")
                    with gr.Row():
                        start = gr.Number(value=0.0, minimum=0.0, label="Regenerate from (s)", elem_id="start")
                        end = gr.Number(value=0.0, minimum=0.0, label="to (s); 0 to 0: no range", elem_id="end")
                    above = gr.Number(value=0.0, minimum=0.0, maximum=8000.0, label="Regenerate above (Hz; 0: off)",
                                      elem_id="above")
                    edit_button = gr.Button("Edit", variant="primary", elem_id="edit")
                with gr.Column():
                    edited = gr.Audio(label="Edited", type="filepath", format="wav", interactive=False,
                                      elem_id="edited")
                    edited_spectrogram = spectrogram_view("edited-spectrogram")
                    edited_seed = gr.Number(label="Seed used", precision=0, interactive=False, elem_id="edited-seed")

        # the generating events have no concurrency limit of Gradio's: each waits in `queue`, which bounds them,
        # batches them, and is the only one to run the model
        scheduler.change(steps_for, scheduler, steps, api_visibility="private")
        button.click(page_generate, [prompt, negative, seconds, steps, scheduler, guidance, seed, random_seed,
                                     candidates, transcription], [*players, used_seed, spectrogram],
                     api_visibility="private", concurrency_limit=None)
        edit_button.click(page_edit, [source, strength, start, end, above, prompt, negative, steps, scheduler,
                                      guidance, seed, random_seed, transcription], [edited, edited_seed,
                                                                                    edited_spectrogram],
                          api_visibility="private", concurrency_limit=None)
        # the programmatic endpoint: six plain arguments (a seventh, the transcription, for speech), one WAV back
        api_output = gr.Audio(type="filepath", format="wav", visible=False)
        api_button = gr.Button(visible=False)
        api_button.click(api_generate, [prompt, negative, seconds, steps, guidance, seed, transcription], api_output,
                         api_name="generate", concurrency_limit=None)
    app.queue(default_concurrency_limit=1)
    return app


def spectrogram_view(elem_id: str):
    import gradio as gr

    return gr.Image(label="Log-mel spectrogram (what the model works in)", type="numpy", format="png",
                    interactive=False, show_label=True, elem_id=elem_id)


def batching_queue(pipe, max_batch: int = MAX_BATCH, window: float = BATCH_WINDOW, max_queue: int = MAX_QUEUE,
                   time_limit: float = TIME_LIMIT, log=None) -> BatchingQueue:
    """The queue that runs the page's and the API's requests on `pipe` (serving.py)."""
    limits = pipe.limits()
    return BatchingQueue(lambda requests, callback: pipe.generate(requests, callback=callback),
                         lambda request: pipe.with_seed(request.check(limits)), max_batch, window, max_queue,
                         time_limit, log)


def result_name(request: Request, index: int = 0) -> str:
    """A result's file name: its prompt's first words, its seed, and its rank among candidates after the first
    ("rain_on_a_tin_roof_seed42.wav", "..._seed42_2.wav"; console.slug), so a download says how to make it again."""
    return f"{slug(request.prompt) or 'audio'}_seed{request.seed}" + (f"_{index + 1}" if index else "") + ".wav"


def client_still_waiting():
    """A check that the event now running still has its client. Gradio marks an event not `alive` once its
    client's stream closes (queueing.Queue.clean_events) but offers no public call for it; this reads that flag,
    and where Gradio's internals differ, says yes (the request then runs to its end)."""
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    event = getattr(getattr(blocks, "_queue", None), "event_ids_to_events", {}).get(event_id)
    return (lambda: bool(getattr(event, "alive", True))) if event is not None else (lambda: True)


def health_routes(queue: BatchingQueue) -> list:
    """Routes for a load balancer, open without a login (they tell only the queue's length): /healthz answers
    200 while the app serves (liveness); /readyz 200 while it takes requests, 503 while its queue is full
    (readiness: send new users elsewhere). Both return the queue's state as JSON."""
    from fastapi.responses import JSONResponse
    from fastapi.routing import APIRoute

    def healthz():
        return JSONResponse(queue.health())

    def readyz():
        state = queue.health()
        return JSONResponse(state, status_code=200 if state["accepting"] else 503)

    return [APIRoute("/healthz", healthz, methods=["GET"]), APIRoute("/readyz", readyz, methods=["GET"])]


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="A web page for AudioLDM 2 (Gradio).")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    add_model_arguments(parser)
    parser.add_argument("--share", action="store_true", help="also serve through a public Gradio link")
    parser.add_argument("--auth", type=user_password, default=None, metavar="USER:PASSWORD",
                        help="ask for this login (visible to other users of this machine in `ps`: prefer --auth-file)")
    parser.add_argument("--auth-file", default=None, metavar="FILE", help="logins, one USER:PASSWORD a line")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB,
                        help=f"largest file the Edit tab takes (default: {MAX_UPLOAD_MB:g})")
    parser.add_argument("--max-input-seconds", type=float, default=MAX_INPUT_SECONDS,
                        help=f"longest recording the Edit tab takes (default: {MAX_INPUT_SECONDS:g})")
    parser.add_argument("--max-prompt-chars", type=int, default=MAX_PROMPT_CHARS,
                        help=f"longest prompt or negative prompt (default: {MAX_PROMPT_CHARS})")
    parser.add_argument("--cache-hours", type=float, default=CACHE_HOURS,
                        help=f"delete results and uploads this long after they were written (default: {CACHE_HOURS:g})")
    parser.add_argument("--max-batch", type=int, default=MAX_BATCH,
                        help=f"most waveforms generated in one batch (default: {MAX_BATCH}; 1: one request at a time)")
    parser.add_argument("--batch-window", type=float, default=BATCH_WINDOW, metavar="SECONDS",
                        help=f"how long a request waits for others to share its batch (default: {BATCH_WINDOW:g})")
    parser.add_argument("--max-queue", type=int, default=MAX_QUEUE,
                        help=f"most requests waiting; more are refused at once as busy (default: {MAX_QUEUE})")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT, metavar="SECONDS",
                        help=f"answer a request 'timed out' this long after it arrived (default: {TIME_LIMIT:g})")
    return parser


def user_password(text: str) -> tuple[str, str]:
    """'USER:PASSWORD' -> (user, password); the password may hold colons, and is never echoed in an error."""
    user, colon, password = text.strip().partition(":")
    if not (user and colon and password):
        raise argparse.ArgumentTypeError("expected USER:PASSWORD, both non-empty")
    return user, password


def read_logins(args) -> list[tuple[str, str]]:
    """--auth and the lines of --auth-file (blank lines and # comments skipped) as Gradio's `auth` list."""
    logins = [args.auth] if args.auth else []
    if args.auth_file is None:
        return logins
    try:
        lines = Path(args.auth_file).read_text().splitlines()
    except OSError as error:
        raise UsageError(f"cannot read --auth-file '{args.auth_file}' ({error.strerror})") from None
    numbered = [(number, line) for number, line in enumerate(lines, 1)
                if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        raise UsageError(f"--auth-file '{args.auth_file}' holds no USER:PASSWORD line")
    for number, line in numbered:
        try:
            logins.append(user_password(line))
        except argparse.ArgumentTypeError:
            raise UsageError(f"--auth-file '{args.auth_file}' line {number}: expected USER:PASSWORD") from None
    return logins


def open_to_anyone(host: str, share: bool, logins) -> bool:
    """Whether other machines can reach the page without a login."""
    if logins:
        return False
    if share:
        return True
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: only localhost is known to stay on this machine
        return host != "localhost"


def main(argv=None) -> int:
    return report_errors(PROG, lambda: serve(build_parser().parse_args(argv)))


def serve(args) -> int:
    for option in ("max_upload_mb", "max_input_seconds", "max_prompt_chars", "cache_hours", "max_batch", "max_queue",
                   "time_limit"):
        if not 0 < getattr(args, option) < float("inf"):
            raise UsageError(f"--{option.replace('_', '-')} must be a positive number, got {getattr(args, option)}")
    if not 0 <= args.batch_window < float("inf"):
        raise UsageError(f"--batch-window must be 0 or more seconds, got {args.batch_window}")
    check_model_options(args)
    logins = read_logins(args)
    if open_to_anyone(args.host, args.share, logins):  # said before the model loads, so it can be stopped at once
        where = "its public --share link" if args.share else f"port {args.port} of this machine"
        print(f"{PROG}: warning: without --auth the page is open to anyone who can reach {where}",
              file=sys.stderr, flush=True)
    check_local_model(args.model)  # as the command line: a folder that is not a checkpoint is a usage mistake
    # Gradio serves its cache folder (uploads, results) to anyone who asks: give it a private one for this run,
    # so that nothing else on the disk (the temp folder's other files, ./.gradio) is ever served
    with tempfile.TemporaryDirectory(prefix="audioldm2-lite-app-", dir=os.environ.get("GRADIO_TEMP_DIR"),
                                     ignore_cleanup_errors=True) as cache:
        os.environ["GRADIO_TEMP_DIR"] = cache  # read when Gradio is imported and when it serves a file
        os.environ["GRADIO_EXAMPLES_CACHE"] = os.path.join(cache, "examples")  # default: ./.gradio/cached_examples
        os.environ.pop("GRADIO_ALLOWED_PATHS", None)  # Gradio would serve these folders too
        try:
            import gradio  # noqa: F401
        except ImportError:
            print(f'{PROG}: error: the web app needs Gradio: pip install "audioldm2-lite[app]"', file=sys.stderr)
            return 1
        # `kill` stops the server as Ctrl-C does, so the folder is removed on the way out
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        pipe = load_pipeline(args)
        queue = batching_queue(pipe, args.max_batch, args.batch_window, args.max_queue, args.time_limit)
        app = build_app(pipe, args.model, args.max_prompt_chars, args.max_input_seconds, args.cache_hours, queue)
        print(f"{PROG}: serving {args.model} on http://{args.host}:{args.port}/ (batches of up to {args.max_batch}, "
              f"at most {args.max_queue} waiting)", flush=True)
        app.launch(server_name=args.host, server_port=args.port, share=args.share, ssr_mode=False, show_error=False,
                   auth=logins or None, max_file_size=round(args.max_upload_mb * 2**20),
                   app_kwargs=dict(routes=health_routes(queue)),
                   # Gradio runs at most max_threads events at once, the rest wait in its own unbounded queue:
                   # room for every request ours holds, so that ours is the one that bounds and refuses
                   max_threads=max(40, args.max_queue + args.max_batch + 8))
    return 0


if __name__ == "__main__":
    sys.exit(main())
