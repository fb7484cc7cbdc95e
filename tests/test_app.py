"""The web app: its function against the pipeline, the `/generate` API through gradio_client, and the page in a
real headless Chromium (Debian's package, driven by Playwright) typing a prompt and getting a WAV back."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

pytest.importorskip("gradio", reason="the web app is an optional extra: pip install -e '.[app]'")

from audioldm2_lite import AudioLDM2Pipeline  # noqa: E402
from audioldm2_lite.web.app import (  # noqa: E402
    MAX_CANDIDATES, build_app, edit_arguments, generate, make_request, result_name,
)
from audioldm2_lite.console import pcm16  # noqa: E402
from audioldm2_lite.generation.request import MAX_SEED, Request  # noqa: E402

SECONDS = 1.0  # short audio and few steps: the page, not the model, is under test


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return AudioLDM2Pipeline.from_pretrained(tiny_checkpoint, device="cpu")


def test_generate_returns_ranked_candidates_and_the_seed_that_remakes_them(pipe):
    steps = []
    audios, seed = generate(pipe, make_request("rain on a tin roof", "low quality", SECONDS, 3, "ddim", 3.5, None, 2),
                            on_step=lambda i, total: steps.append((i, total)))
    assert len(audios) == 2 and all(rate == 16000 and audio.shape == (16000,) for rate, audio in audios)
    assert steps == [(1, 3), (2, 3), (3, 3)]
    again, same_seed = generate(pipe, make_request("rain on a tin roof", "low quality", SECONDS, 3, "ddim", 3.5, seed, 2))
    assert same_seed == seed
    for (_, first), (_, second) in zip(audios, again):
        np.testing.assert_array_equal(first, second)  # same seed, same device: the same numbers


def test_generate_is_the_pipeline_call(pipe):
    audios, seed = generate(pipe, make_request("techno music", "", SECONDS, 2, "dpmsolver++", 2.0, 7, 1))
    direct = pipe("techno music", audio_length_in_s=SECONDS, num_inference_steps=2, guidance_scale=2.0,
                  scheduler="dpmsolver++", generator=torch.Generator().manual_seed(7)).audios[0]
    # no generation logic of the app's own; the samples as the command line writes them, not peak-normalised
    assert audios[0][1].dtype == np.int16
    np.testing.assert_array_equal(audios[0][1], pcm16(direct))


def test_generate_edits_audio_as_the_pipeline_does(pipe, tmp_path):
    source = tmp_path / "in.wav"
    soundfile.write(source, 0.3 * np.sin(2 * np.pi * 440 * np.arange(22050 * 1.5) / 22050), 22050)  # 1.5 s, 22 kHz
    edit = edit_arguments(str(source), 0.5, 0.5, 1.0, 0)
    assert edit == dict(audio=str(source), strength=0.5, regenerate_seconds=(0.5, 1.0), regenerate_above_hz=None)
    steps = []
    audios, seed = generate(pipe, make_request("rain", "", None, 4, "ddim", 3.5, 3, 1, edit=edit),
                            lambda i, total: steps.append((i, total)))
    direct = pipe("rain", num_inference_steps=4, scheduler="ddim", seed=3, **edit).audios[0]
    np.testing.assert_array_equal(audios[0][1], pcm16(direct))  # the pipeline's edit, nothing of the app's own
    assert audios[0][1].shape == (24000,) and steps == [(1, 2), (2, 2)]  # input's length; strength 0.5: 2 steps
    with pytest.raises(ValueError, match="upload the audio"):
        edit_arguments(None, 0.5, 0, 0, 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt="   "), "the prompt is empty"),
    (dict(seconds=0.0), "seconds must be positive"),
    (dict(candidates=0), "candidates must be"),  # the request's own check: the page does not repeat it
    (dict(candidates=MAX_CANDIDATES + 1), "candidates must be at most 4 .the page's players."),
])
def test_bad_values_are_value_errors(pipe, kwargs, message):
    arguments = dict(prompt="rain", negative_prompt="", seconds=SECONDS, steps=2, scheduler="ddim", guidance=3.5,
                     seed=0, candidates=1) | kwargs
    with pytest.raises(ValueError, match=message):
        generate(pipe, make_request(**arguments))


def test_the_page_shares_the_programs_seed_range_and_file_names(pipe):
    """One seed range (request.MAX_SEED) and one slug rule (console.slug, also the prompt files' and training's)."""
    [seed_field] = [block for block in build_app(pipe).blocks.values() if getattr(block, "label", None) == "Seed"]
    assert seed_field.maximum == MAX_SEED
    assert result_name(Request("Rain on a tin roof!", seed=42)) == "rain_on_a_tin_roof_seed42.wav"
    assert result_name(Request("Rain on a tin roof!", seed=42), 1) == "rain_on_a_tin_roof_seed42_2.wav"
    assert result_name(Request("?!", seed=7)) == "audio_seed7.wav"  # a prompt without letters or digits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_command(*options) -> list[str]:
    return [sys.executable, "-m", "audioldm2_lite.web.app", *options]


def app_environment(extra=None) -> dict:
    """This process's environment with `extra`, importing this checkout's package from any working folder."""
    paths = [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    return os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, paths))} | (extra or {})


@contextlib.contextmanager
def serving(checkpoint, *options, env=None, cwd=None):
    """The real console entry point serving `checkpoint` on a free localhost port: yields the page's URL, and
    stops the server (SIGTERM, as `kill` does) on the way out."""
    port = free_port()
    log = tempfile.TemporaryFile("w+")  # not a pipe: a pipe nobody reads would stall a talkative server
    process = subprocess.Popen(app_command("--model", str(checkpoint), "--port", str(port), *options), cwd=cwd,
                               env=app_environment(env), stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log.seek(0)
                pytest.fail(f"the app did not start:\n{log.read()}")
            time.sleep(0.5)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    with serving(tiny_checkpoint) as url:
        yield url


def test_api_generate_returns_a_wav_and_survives_a_bad_request(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    path = client.predict("rain on a tin roof", "low quality", SECONDS, 3, 3.5, 0, api_name="/generate")
    audio, rate = soundfile.read(path)
    assert rate == 16000 and audio.shape == (int(SECONDS * 16000),)
    with pytest.raises(Exception, match="the prompt is empty"):  # the message, not a stack trace
        client.predict("   ", "", SECONDS, 3, 3.5, 0, api_name="/generate")
    again, _ = soundfile.read(client.predict("rain on a tin roof", "low quality", SECONDS, 3, 3.5, 0,
                                             api_name="/generate"))
    np.testing.assert_array_equal(again, audio)  # still serving, and seeded: the same clip


def chromium() -> str | None:
    return next((path for path in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if path and os.path.exists(path)), None)


@contextlib.contextmanager
def browser_page(url):
    """The page at `url` in headless Chromium (Debian's package) driven by Playwright; skipped without them."""
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright (the test extra) is not installed")
    browser_path = chromium()
    if browser_path is None:
        pytest.skip("no Chromium found (Debian: apt-get install chromium); .ci/run installs it")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync",
        ])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            yield page
        finally:
            browser.close()


def fetched(page, src: str) -> bytes:
    """The bytes behind `src` (a served file or a blob), fetched from inside the page as the browser sees them."""
    return base64.b64decode(page.evaluate("""async (src) => {
        const bytes = new Uint8Array(await (await fetch(src)).arrayBuffer());
        let text = ''; for (const b of bytes) text += String.fromCharCode(b); return btoa(text); }""", src))


def played_audio(page, player_id: str):
    """(waveform, rate) of the WAV the audio element in `player_id` holds, once it holds one."""
    player = page.locator(f"{player_id} audio[src]").first
    player.wait_for(state="attached", timeout=120_000)
    # the audio element plays a blob of the served file: read it back from inside the page
    return soundfile.read(io.BytesIO(fetched(page, player.get_attribute("src"))))


def test_page_in_a_real_browser(server, tmp_path):
    with browser_page(server) as page:
        page.locator("#prompt textarea").fill("rain on a tin roof")
        page.locator("#seconds input[type=number]").fill(str(SECONDS))
        page.locator("#seconds input[type=number]").blur()
        page.locator("#steps input[type=number]").fill("3")
        page.locator("#steps input[type=number]").blur()
        page.locator("#generate").click()
        audio, rate = played_audio(page, "#result-0")
        assert rate == 16000 and audio.shape == (int(SECONDS * 16000),)
        seed = int(page.locator("#seed-used input").input_value())  # the seed is shown
        download = page.locator("#result-0 a[download]").first.get_attribute("download")
        assert download == f"rain_on_a_tin_roof_seed{seed}.wav"  # and names the download (console.slug)
        assert_spectrogram_shown(page, "#spectrogram")
        screenshot = Path(os.environ.get("AUDIOLDM2_LITE_SCREENSHOT", tmp_path / "app.png"))
        page.screenshot(path=str(screenshot), full_page=True)
        assert screenshot.stat().st_size > 0


def test_edit_tab_in_a_real_browser(server, tmp_path):
    source = tmp_path / "in.wav"
    soundfile.write(source, 0.3 * np.sin(2 * np.pi * 440 * np.arange(44100) / 44100), 44100)  # 1 s at 44.1 kHz
    with browser_page(server) as page:
        page.locator("#prompt textarea").fill("rain on a tin roof")
        page.locator("#steps input[type=number]").fill("4")
        page.locator("#steps input[type=number]").blur()
        page.get_by_role("tab", name="Edit audio").click()
        page.locator("#source input[type=file]").set_input_files(str(source))
        page.locator("#source audio[src]").first.wait_for(state="attached", timeout=60_000)  # uploaded
        page.locator("#edit").click()
        audio, rate = played_audio(page, "#edited")
        assert rate == 16000 and audio.shape == (16000,)  # the upload's 1 s, at the model's rate
        assert_spectrogram_shown(page, "#edited-spectrogram")


def assert_spectrogram_shown(page, image_id: str):
    """The picture beside the player is the result's spectrogram (spectrogram.py's size), served as a PNG."""
    from PIL import Image

    from audioldm2_lite.web.spectrogram import SIZE

    image = page.locator(f"{image_id} img[src]").first
    image.wait_for(state="attached", timeout=60_000)
    assert Image.open(io.BytesIO(fetched(page, image.get_attribute("src")))).size == SIZE
