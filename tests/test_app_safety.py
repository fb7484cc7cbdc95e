"""The web app served to strangers (issue #28): it serves only the files it wrote. Each server is the real console
entry point on a free localhost port, serving the tiny checkpoint."""

from __future__ import annotations

import io
import json
import stat
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile

pytest.importorskip("gradio", reason="the web app is an optional extra: pip install -e '.[app]'")

from test_app import serving  # noqa: E402

SECRET = "not for the web"
GOOD_REQUEST = ["rain on a tin roof", "low quality", 1.0, 2, 3.5, 0]  # /generate: 1 s, 2 steps


def fetch(request, headers=None) -> tuple[int, bytes]:
    """(HTTP status, body) of a URL or urllib Request; an error status is an answer here, not an exception."""
    if isinstance(request, str):
        request = urllib.request.Request(request, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def call(url: str, endpoint: str, *data, headers=None) -> tuple[str, object]:
    """Run one of the page's events through Gradio's HTTP API, as the page does: ("complete", outputs) or
    ("error", the message shown on the page)."""
    request = urllib.request.Request(f"{url}gradio_api/call/{endpoint}", json.dumps({"data": data}).encode(),
                                     {"Content-Type": "application/json"} | (headers or {}))
    status, body = fetch(request)
    assert status == 200, body
    status, body = fetch(f"{url}gradio_api/call/{endpoint}/{json.loads(body)['event_id']}", headers)
    event, payload = None, None
    for line in body.decode().splitlines():  # server-sent events; the last one is the result
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            payload = json.loads(line[len("data: "):])
    return event, payload["error"] if event == "error" else payload


def upload(url: str, name: str, content: bytes, headers=None) -> tuple[int, bytes]:
    """POST one file to Gradio's upload route (multipart, as the page's file input does)."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: audio/wav\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return fetch(urllib.request.Request(f"{url}gradio_api/upload", body, {
        "Content-Type": f"multipart/form-data; boundary={boundary}"} | (headers or {})))


def wav(seconds: float, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate), rate, format="WAV")
    return buffer.getvalue()


def edit(url: str, uploaded_path: str, headers=None):
    """The Edit tab's event on a file: strength 0.5, 2 steps."""
    audio = {"path": uploaded_path, "meta": {"_type": "gradio.FileData"}}
    return call(url, "page_edit", audio, 0.5, 0, 0, 0, "rain", "", 4, "DDIM", 3.5, 0, False, headers=headers)


@pytest.fixture(scope="module")
def exposed(tiny_checkpoint, tmp_path_factory):
    """The app run as the issue found it: another program's secret in the temp folder (loose,
    and in Gradio's default cache folder <tmp>/gradio), one in the working folder's ./.gradio (which Gradio
    serves by default), and one outside them all. Yields (url, secrets, the app's private folder)."""
    root = tmp_path_factory.mktemp("exposed")
    temp, work = root / "tmp", root / "work"
    secrets = [temp / "not-for-the-web.txt", temp / "gradio" / "someone-elses-upload.txt",
               work / ".gradio" / "cached_examples" / "cached.txt", root / "home" / "token.txt"]
    for path in secrets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(SECRET)
    (work / "recording.wav").write_bytes(wav(1.0))  # audio the app never saw, as an Edit input
    with serving(tiny_checkpoint, env={"TMPDIR": str(temp)}, cwd=work) as url:
        [private] = temp.glob("audioldm2-lite-app-*")
        yield url, secrets, private


def routes_to(path: Path, private: Path) -> list[str]:
    """Every way of naming `path` to Gradio's file routes: its own name, out of the allowed folder with `..`
    (plain and URL-encoded), relative to the server's working folder, and the package's static routes."""
    up = "../" * len(private.parts)
    quoted = urllib.parse.quote(str(path), safe="")
    return [
        f"gradio_api/file={path}", f"gradio_api/file/{path}", f"file={path}", f"gradio_api/file={quoted}",
        f"gradio_api/file={private}/{up}{path}", f"gradio_api/file={private}/{up.replace('..', '%2e%2e')}{path}",
        f"gradio_api/file={urllib.parse.quote(f'{private}/{up}{path}', safe='')}",
        f"gradio_api/file=.gradio/cached_examples/{path.name}",
        f"static/{'..%2f' * 12}{quoted}", f"assets/{'..%2f' * 12}{quoted}",
    ]


def test_only_the_files_the_app_wrote_can_be_fetched(exposed):
    url, secrets, private = exposed
    assert stat.S_IMODE(private.stat().st_mode) == 0o700  # the app's own folder: nobody else's to read
    for secret in secrets:
        for route in routes_to(secret, private):
            for method in ("GET", "HEAD"):
                status, body = fetch(urllib.request.Request(url + route, method=method))
                assert status != 200 and SECRET.encode() not in body, (method, route, status)
    event, [result] = call(url, "generate", *GOOD_REQUEST)
    assert event == "complete" and Path(result["path"]).is_relative_to(private)  # the one folder it serves
    status, body = fetch(result["url"])
    assert status == 200 and soundfile.read(io.BytesIO(body))[0].shape == (16000,)


def test_the_edit_tab_takes_only_uploaded_files(exposed):
    url, secrets, private = exposed
    outside = private.parents[1] / "work" / "recording.wav"  # a readable WAV, but not uploaded
    event, message = edit(url, str(outside))
    assert event == "error" and message is None  # refused by Gradio before our function runs; no detail leaked
    status, body = upload(url, "in.wav", wav(1.0))
    assert status == 200
    event, [result, _] = edit(url, json.loads(body)[0])
    assert event == "complete" and fetch(result["url"])[0] == 200


def test_the_private_folder_is_removed_at_exit(tiny_checkpoint, tmp_path):
    with serving(tiny_checkpoint, env={"TMPDIR": str(tmp_path)}) as url:
        [private] = tmp_path.glob("audioldm2-lite-app-*")
        event, [result] = call(url, "generate", *GOOD_REQUEST)
        assert Path(result["path"]).is_relative_to(private)
    assert not private.exists()  # stopped with SIGTERM, as `kill` does
