"""The web app served to strangers (issue #28): it serves only the files it wrote, bounds what one request may
ask for and refuses the rest with a message, and asks for a login when told to. Each server is the real console
entry point on a free localhost port, serving the tiny checkpoint."""

from __future__ import annotations

import io
import json
import stat
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile

pytest.importorskip("gradio", reason="the web app is an optional extra: pip install -e '.[app]'")

from audioldm2_lite.web.app import main, open_to_anyone, read_logins  # noqa: E402
from test_app import app_command, app_environment, browser_page, serving  # noqa: E402

SECRET = "not for the web"
LIMITS = ["--max-upload-mb", "0.5", "--max-input-seconds", "2", "--max-prompt-chars", "50"]
GOOD_REQUEST = ["rain on a tin roof", "low quality", 1.0, 2, 3.5, 0, ""]  # /generate: 1 s, 2 steps, no transcription


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
    return call(url, "page_edit", audio, 0.5, 0, 0, 0, "rain", "", 4, "DDIM", 3.5, 0, False, "", headers=headers)


@pytest.fixture(scope="module")
def exposed(tiny_checkpoint, tmp_path_factory):
    """The app with small limits, run as the issue found it: another program's secret in the temp folder (loose,
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
    with serving(tiny_checkpoint, *LIMITS, env={"TMPDIR": str(temp)}, cwd=work) as url:
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
    event, [result, *_] = edit(url, json.loads(body)[0])
    assert event == "complete" and fetch(result["url"])[0] == 200


def test_too_large_upload_is_refused_and_the_server_keeps_serving(exposed):
    url, _, private = exposed
    status, body = upload(url, "big.wav", wav(40.0))  # 640 KB > --max-upload-mb 0.5
    assert status == 413 and b"maximum allowed size" in body
    status, body = upload(url, "small.wav", wav(1.0))
    assert status == 200 and Path(json.loads(body)[0]).is_relative_to(private)


def test_too_long_recording_is_refused_before_it_is_read(exposed):
    url, _, _ = exposed
    status, body = upload(url, "long.wav", wav(3.0))  # 48 KB: small, but longer than --max-input-seconds 2
    assert status == 200
    assert edit(url, json.loads(body)[0]) == ("error", "the recording is 3.0 s long; this page edits at most 2 s")
    status, body = upload(url, "short.wav", wav(1.5))
    event, [result, *_] = edit(url, json.loads(body)[0])
    assert event == "complete"


def test_too_long_prompts_and_too_many_candidates_are_refused(exposed):
    url, _, _ = exposed
    long_text = "rain " * 11  # 55 characters > --max-prompt-chars 50
    assert call(url, "generate", long_text, *GOOD_REQUEST[1:]) == (
        "error", "the prompt has 55 characters; this page takes at most 50")
    assert call(url, "generate", GOOD_REQUEST[0], long_text, *GOOD_REQUEST[2:])[0] == "error"  # negative prompt
    page_request = ["rain", "", 1.0, 2, "DDIM", 3.5, 0, False]
    assert call(url, "page_generate", *page_request, 5, "") == ("error", "Value 5 is greater than maximum value 4.")
    event, outputs = call(url, "page_generate", *page_request, 2, "")
    assert event == "complete" and [player["value"] is not None for player in outputs[:4]] == [True, True, False, False]


def test_refusals_are_messages_on_the_page(exposed, tmp_path):
    url, _, _ = exposed
    (tmp_path / "big.wav").write_bytes(wav(40.0))
    (tmp_path / "long.wav").write_bytes(wav(3.0))
    with browser_page(url) as page:
        page.locator("#prompt textarea").fill("rain")
        page.get_by_role("tab", name="Edit audio").click()
        page.locator("#source input[type=file]").set_input_files(str(tmp_path / "big.wav"))
        page.get_by_text("exceed the maximum allowed size").first.wait_for(timeout=30_000)
        page.reload()
        page.locator("#prompt textarea").fill("rain")
        page.get_by_role("tab", name="Edit audio").click()
        page.locator("#source input[type=file]").set_input_files(str(tmp_path / "long.wav"))
        page.locator("#source audio[src]").first.wait_for(state="attached", timeout=60_000)
        page.locator("#edit").click()
        page.get_by_text("this page edits at most 2 s").first.wait_for(timeout=60_000)


@pytest.fixture(scope="module")
def guarded(tiny_checkpoint, tmp_path_factory):
    """The app behind two logins from --auth-file, keeping its files for a few seconds only (--cache-hours)."""
    logins = tmp_path_factory.mktemp("auth") / "logins"
    logins.write_text("# the team\nada:first:pass\n\ngrace:second\n")  # a password may hold colons
    with serving(tiny_checkpoint, "--auth-file", str(logins), "--cache-hours", "0.001") as url:  # 4 s
        yield url


def login(url: str, user: str, password: str) -> dict:
    """The headers of a logged-in browser: Gradio's session cookie from its login form."""
    form = urllib.parse.urlencode({"username": user, "password": password}).encode()
    with urllib.request.urlopen(urllib.request.Request(url + "login", form), timeout=60) as response:
        cookies = [header.split(";")[0] for header in response.headers.get_all("Set-Cookie")]
    return {"Cookie": "; ".join(cookies)}


def test_a_login_guards_the_page_the_api_and_the_files(guarded):
    from gradio_client import Client

    for route in ("config", "gradio_api/info"):
        assert fetch(guarded + route)[0] == 401
    assert fetch(urllib.request.Request(f"{guarded}gradio_api/call/generate", json.dumps(
        {"data": GOOD_REQUEST}).encode(), {"Content-Type": "application/json"}))[0] == 401
    assert upload(guarded, "in.wav", wav(1.0))[0] == 401
    assert fetch(urllib.request.Request(guarded + "login", b"username=ada&password=wrong"))[0] == 400
    cookie = login(guarded, "ada", "first:pass")
    event, [result] = call(guarded, "generate", *GOOD_REQUEST, headers=cookie)
    assert event == "complete" and fetch(result["url"])[0] == 401 and fetch(result["url"], cookie)[0] == 200
    path = Client(guarded, auth=("grace", "second"), verbose=False).predict(*GOOD_REQUEST, api_name="/generate")
    assert soundfile.read(path)[0].shape == (16000,)


def test_old_files_are_deleted_from_the_cache(guarded):
    cookie = login(guarded, "grace", "second")
    event, [result] = call(guarded, "generate", *GOOD_REQUEST[:5], 1, "", headers=cookie)  # seed 1: a new file
    assert fetch(result["url"], cookie)[0] == 200
    for _ in range(60):  # --cache-hours 0.001: 4 s old, swept every 4 s
        if fetch(result["url"], cookie)[0] != 200:
            break
        time.sleep(0.5)
    assert not Path(result["path"]).exists()


def test_the_private_folder_is_removed_at_exit(tiny_checkpoint, tmp_path):
    with serving(tiny_checkpoint, env={"TMPDIR": str(tmp_path)}) as url:
        [private] = tmp_path.glob("audioldm2-lite-app-*")
        event, [result] = call(url, "generate", *GOOD_REQUEST)
        assert Path(result["path"]).is_relative_to(private)
    assert not private.exists()  # stopped with SIGTERM, as `kill` does


def test_serving_beyond_this_machine_without_a_login_is_warned(tmp_path):
    # the warning comes before the model loads: a missing model folder ends the run right after, never serving
    # (exit status 2: a usage mistake, as the command line's)
    result = subprocess.run(app_command("--model", str(tmp_path / "missing"), "--host", "0.0.0.0"),
                            env=app_environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert result.stderr.startswith("audioldm2-lite-app: warning: without --auth the page is open to anyone who can "
                                    "reach port 7860 of this machine\n")


def test_who_can_reach_the_page():
    assert open_to_anyone("0.0.0.0", False, []) and open_to_anyone("192.168.1.5", False, [])
    assert open_to_anyone("::", False, []) and open_to_anyone("myhost.example", False, [])
    assert open_to_anyone("127.0.0.1", True, [])  # --share: a public link
    assert not open_to_anyone("127.0.0.1", False, []) and not open_to_anyone("localhost", False, [])
    assert not open_to_anyone("::1", False, [])
    assert not open_to_anyone("0.0.0.0", False, [("ada", "pass")]) and not open_to_anyone("::", True, [("a", "b")])


@pytest.mark.parametrize("options, message", [
    (["--auth", "ada"], "argument --auth: expected USER:PASSWORD"),
    (["--auth", ":pass"], "argument --auth: expected USER:PASSWORD"),
    (["--auth-file", "/no/such/file"], "cannot read --auth-file '/no/such/file'"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be a positive number"),
    (["--max-input-seconds", "-1"], "--max-input-seconds must be a positive number"),
    (["--max-prompt-chars", "many"], "argument --max-prompt-chars: invalid int value"),
    (["--cache-hours", "nan"], "--cache-hours must be a positive number"),
])
def test_bad_options_are_one_line_usage_errors(options, message, capsys):
    assert main(options) == 2  # before anything is loaded or served
    err = capsys.readouterr().err
    assert err.startswith(f"audioldm2-lite-app: error: {message}") and err.count("\n") == 1


def test_auth_file_lines(tmp_path):
    logins = tmp_path / "logins"
    logins.write_text("# comment\n\n  ada:first:pass \ngrace:second\n")
    args = type("Args", (), dict(auth=("root", "pw"), auth_file=str(logins)))
    assert read_logins(args) == [("root", "pw"), ("ada", "first:pass"), ("grace", "second")]
    logins.write_text("ada:first\nno password\n")
    with pytest.raises(Exception, match="line 2: expected USER:PASSWORD"):
        read_logins(args)
    logins.write_text("# nobody\n")
    with pytest.raises(Exception, match="holds no USER:PASSWORD line"):
        read_logins(args)
