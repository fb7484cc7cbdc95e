"""Serving many people from one model (issue #27): the batching queue (serving.py) with a stand-in model and with
the tiny checkpoint, the health routes, the spectrogram picture, and the load test (scripts/load_test.py) against
the real app."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from audioldm2_lite.generation.mel import MelConfig
from audioldm2_lite.generation.pipeline import Generated
from audioldm2_lite.generation.request import Request
from audioldm2_lite.web.serving import BatchingQueue, Busy, ClientLeft, TimedOut
from audioldm2_lite.web.spectrogram import PLOT, SIZE, frequency_row, spectrogram_image, time_column


class Model:
    """A stand-in for AudioLDM2Pipeline.generate: records each call's prompts, waits while `held`, takes
    `step_seconds` per denoising step (calling back after each, as the pipeline does), and fails any call that
    holds the prompt "poison". Each result's audio is its request's seed, so a mix-up shows."""

    def __init__(self, step_seconds: float = 0.0):
        self.calls, self.steps_run, self.step_seconds = [], 0, step_seconds
        self.free = threading.Event()
        self.free.set()

    def __call__(self, requests, callback):
        self.calls.append([r.prompt for r in requests])
        assert self.free.wait(30)
        if any(r.prompt == "poison" for r in requests):
            raise RuntimeError("poisoned")
        for i in range(requests[0].steps):
            time.sleep(self.step_seconds)
            self.steps_run += 1
            callback(i, None, None)
        return [Generated(r, np.full((1, 4), r.seed, np.float32)) for r in requests]


def request(prompt="rain", seconds=1.0, seed=0, steps=2, **kwargs) -> Request:
    return Request(prompt, seconds=seconds, steps=steps, scheduler="ddim", seed=seed, **kwargs)


def queue_for(model, lines=None, **options) -> BatchingQueue:
    return BatchingQueue(model, lambda r: r.check(), log=(lines.append if lines is not None else lambda line: None),
                         **options)


async def ask(queue, r: Request, **kwargs):
    return await queue.run("test", lambda: r, **kwargs)


def test_requests_arriving_together_share_a_call_and_keep_their_own_results():
    model, lines = Model(), []
    queue = queue_for(model, lines, max_batch=4, window=0.3)

    async def scenario():
        short = [request(f"short {i}", seed=i) for i in range(6)]
        long = [request(f"long {i}", seconds=2.0, seed=10 + i) for i in range(2)]
        early = [asyncio.create_task(ask(queue, r)) for r in short + long]
        await asyncio.sleep(0.1)  # one more, within the window of the last two short ones
        late = await ask(queue, request("short late", seed=20))
        return await asyncio.gather(*early), late

    results, late = asyncio.run(scenario())
    # four (the batch is full) at once; then the other two short ones with the late one; then the two long ones
    assert model.calls == [["short 0", "short 1", "short 2", "short 3"], ["short 4", "short 5", "short late"],
                           ["long 0", "long 1"]]
    assert [int(r.audios[0, 0]) for r in results] == [0, 1, 2, 3, 4, 5, 10, 11] and late.audios[0, 0] == 20
    assert sorted(int(line.split(" batch=")[1].split()[0]) for line in lines) == [2, 2, 3, 3, 3, 4, 4, 4, 4]
    queue.stop()


def test_candidates_count_toward_the_batch():
    model = Model()
    queue = queue_for(model, max_batch=4, window=0.2)

    async def scenario():
        return await asyncio.gather(*(ask(queue, request(f"p{i}", seed=i, candidates=3)) for i in range(3)))

    asyncio.run(scenario())
    assert model.calls == [["p0"], ["p1"], ["p2"]]  # 3 + 3 waveforms would pass max_batch 4
    queue.stop()


def test_past_the_bound_a_request_is_refused_at_once_and_the_others_are_answered():
    model, lines = Model(), []
    model.free.clear()  # the model is busy
    queue = queue_for(model, lines, max_batch=1, window=0.0, max_queue=3)

    async def scenario():
        running = asyncio.create_task(ask(queue, request(seed=0)))
        await asyncio.sleep(0.2)
        waiting = [asyncio.create_task(ask(queue, request(seed=i))) for i in (1, 2, 3)]
        await asyncio.sleep(0.2)
        assert queue.health() == dict(model_loaded=True, queue_length=3, running=1, max_queue=3, accepting=False)
        began = time.monotonic()
        with pytest.raises(Busy, match=r"the server is busy, its queue is full \(3 waiting\); try again"):
            await ask(queue, request(seed=4))
        assert time.monotonic() - began < 0.5  # at once, not after the queue drains
        model.free.set()
        return await asyncio.gather(running, *waiting)

    results = asyncio.run(scenario())
    assert [int(r.audios[0, 0]) for r in results] == [0, 1, 2, 3]
    assert sum("outcome=busy: the server is busy" in line for line in lines) == 1
    assert queue.health()["queue_length"] == 0
    queue.stop()


def test_a_request_past_its_time_limit_is_answered_and_frees_its_place():
    model = Model()
    model.free.clear()
    queue = queue_for(model, max_batch=1, window=0.0, time_limit=0.4)

    async def scenario():
        first = asyncio.create_task(ask(queue, request(seed=0)))
        await asyncio.sleep(0.1)
        with pytest.raises(TimedOut, match="time limit of 0.4 s"):
            await ask(queue, request(seed=1))  # waits behind the first, past its limit
        assert queue.health()["queue_length"] == 0  # its place is free at once
        model.free.set()
        with pytest.raises(TimedOut):
            await first  # the running one timed out too: it is answered, its result dropped

    asyncio.run(scenario())
    queue.stop()


def test_a_client_that_leaves_frees_its_place_and_stops_a_batch_nobody_waits_for():
    model = Model(step_seconds=0.02)
    queue = queue_for(model, max_batch=1, window=0.0)
    long_left, later_left = threading.Event(), threading.Event()

    async def scenario():
        running = asyncio.create_task(ask(queue, request("long", steps=500),
                                          still_wanted=lambda: not long_left.is_set()))
        await asyncio.sleep(0.05)
        with pytest.raises(ClientLeft):
            await ask(queue, request("later"), still_wanted=lambda: not later_left.is_set())
        assert queue.health()["queue_length"] == 0  # its place is free at once
        with pytest.raises(ClientLeft):
            await running

    threading.Timer(0.2, later_left.set).start()
    threading.Timer(0.4, long_left.set).start()
    asyncio.run(scenario())
    assert model.calls == [["long"]]  # "later" left the queue without running
    assert model.steps_run < 100  # of 500: the batch stopped once its one client had left
    deadline = time.monotonic() + 5
    while queue.health()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert queue.health()["running"] == 0
    queue.stop()


def test_a_failing_request_fails_alone_in_one_log_line():
    model, lines = Model(), []
    queue = queue_for(model, lines, max_batch=4, window=0.3)

    async def scenario():
        return await asyncio.gather(*(ask(queue, request(p, seed=i)) for i, p in enumerate(["a", "poison", "b"])),
                                    return_exceptions=True)

    a, poisoned, b = asyncio.run(scenario())
    assert int(a.audios[0, 0]) == 0 and int(b.audios[0, 0]) == 2
    assert isinstance(poisoned, RuntimeError)
    assert model.calls == [["a", "poison", "b"], ["a"], ["poison"], ["b"]]  # the batch, then each alone
    [failed] = [line for line in lines if "failed" in line]
    assert failed.endswith("outcome=failed: RuntimeError: poisoned")
    queue.stop()


def test_one_log_line_per_request():
    model, lines = Model(), []
    queue = queue_for(model, lines, window=0.0)

    async def scenario():
        await ask(queue, request(seed=7, negative_prompt="noise"))
        with pytest.raises(ValueError, match="the prompt is empty"):
            await ask(queue, request(" "))
        with pytest.raises(ValueError, match="strength"):
            await queue.run("edit", lambda: request(strength=2.0))

    asyncio.run(scenario())
    assert len(lines) == 3 and all("\n" not in line for line in lines)
    ok, empty, edit = lines
    when, kind, *pairs = ok.split(" ")
    fields = dict(pair.split("=", 1) for pair in pairs)
    assert time.strptime(when, "%Y-%m-%dT%H:%M:%S") and kind == "test"
    assert {k: v for k, v in fields.items() if k not in ("queued", "ran")} == dict(
        seconds="1", steps="2", scheduler="ddim", guidance="3.5", candidates="1", seed="7", batch="1", outcome="ok")
    assert float(fields["queued"].rstrip("s")) >= 0 and float(fields["ran"].rstrip("s")) >= 0
    assert "rain" not in ok and "noise" not in ok  # people's words are not logged
    assert empty.endswith(" test outcome=refused: the prompt is empty")
    assert " edit outcome=refused: strength edits audio" in edit
    queue.stop()


def test_health_routes(tmp_path):
    pytest.importorskip("fastapi", reason="the health routes are the app's: pip install -e '.[app]'")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from audioldm2_lite.web.app import health_routes

    model = Model()
    model.free.clear()
    queue = queue_for(model, max_batch=1, window=0.0, max_queue=1)
    client = TestClient(FastAPI(routes=health_routes(queue)))
    assert client.get("/healthz").json() == dict(model_loaded=True, queue_length=0, running=0, max_queue=1,
                                                  accepting=True)
    assert client.get("/readyz").status_code == 200
    queue.submit(request(seed=0))
    deadline = time.monotonic() + 5
    while queue.health()["running"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    queue.submit(request(seed=1))  # one running, one waiting: the queue is full
    live, ready = client.get("/healthz"), client.get("/readyz")
    assert live.status_code == 200 and ready.status_code == 503  # alive, but send new users elsewhere
    assert ready.json() == dict(model_loaded=True, queue_length=1, running=1, max_queue=1, accepting=False)
    model.free.set()
    queue.stop()


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    import torch

    from audioldm2_lite import AudioLDM2Pipeline

    # one thread: the tiny model's small tensors gain nothing from more, and on a busy machine they cost a lot
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield AudioLDM2Pipeline.from_pretrained(tiny_checkpoint, device="cpu", dtype=torch.float32)  # float32 rounding below
    torch.set_num_threads(threads)


def test_batched_requests_equal_their_single_results(pipe):
    from audioldm2_lite.web.app import batching_queue

    requests = [Request("rain on a tin roof", seconds=1.0, steps=2, scheduler="dpmsolver++", seed=1),
                Request("techno music with a strong bass line", "low quality", seconds=1.0, steps=2,
                        scheduler="dpmsolver++", seed=2),
                Request("a dog barks", seconds=1.0, steps=2, scheduler="dpmsolver++", seed=3, candidates=2),
                Request("birds", "noise", seconds=1.5, steps=2, scheduler="dpmsolver++", seed=4)]
    queue = batching_queue(pipe, max_batch=8, window=1.0, log=lambda line: None)
    calls = []
    run_batch = queue.run_batch
    queue.run_batch = lambda batch, callback: calls.append(len(batch)) or run_batch(batch, callback)

    async def scenario():
        return await asyncio.gather(*(ask(queue, r) for r in requests))

    batched = asyncio.run(scenario())
    assert sorted(calls) == [1, 1, 2]  # the two 1 s single-candidate requests shared a call
    for r, result in zip(requests, batched):
        [alone] = pipe.generate(r)
        # each row its own noise and text encoding: the batch moves the samples by float32 rounding only
        # (measured ~1e-8 on peaks of ~0.05)
        np.testing.assert_allclose(result.audios, alone.audios, rtol=0, atol=1e-6)
        assert result.request.seed == r.seed
    queue.stop()


def test_spectrogram_shows_each_tone_at_its_frequency_and_time():
    config = MelConfig()
    t = np.arange(32000) / 16000  # 2 s: 500 Hz, then 4 kHz
    audio = 0.5 * np.where(t < 1.0, np.sin(2 * np.pi * 500 * t), np.sin(2 * np.pi * 4000 * t))
    picture = spectrogram_image(audio, config)
    assert picture.shape == (SIZE[1], SIZE[0], 3) and picture.dtype == np.uint8
    left, top, width, height = PLOT
    plot = picture[top:top + height, left:left + width].astype(int).sum(axis=2)  # brightness rises with level
    for second, hz in ((0.5, 500), (1.5, 4000)):
        column = plot[:, int(time_column(second, 2.0))]
        # one mel band is 3 rows high here; the tone's brightest row is within a band of its centre
        assert abs(int(np.argmax(column)) - frequency_row(hz, config)) <= 3, (second, hz)
    low, high = round(frequency_row(500, config)), round(frequency_row(4000, config))
    first, second = int(time_column(0.5, 2.0)), int(time_column(1.5, 2.0))
    assert plot[low, first] > plot[low, second] and plot[high, second] > plot[high, first]  # each tone in its half
    silent = spectrogram_image(np.zeros(16000), config)  # silence: a flat picture, no error
    assert silent.shape == picture.shape


def test_load_test_on_the_tiny_checkpoint(tiny_checkpoint):
    pytest.importorskip("gradio_client", reason="the web app is an optional extra: pip install -e '.[app]'")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from load_test import run_load_test

    # 16 clients, 104 requests of 1 s and 2 steps: the RSS check needs 100; one torch thread for the server,
    # so that it does not fight the 16 clients for a small machine's cores
    report = run_load_test(str(tiny_checkpoint), clients=16, requests=104, seconds=1.0, steps=2, max_batch=8,
                           max_queue=16, device="cpu", env={"OMP_NUM_THREADS": "1"})
    assert not report.failures, report.failures
    assert report.batched_rps > 0 and report.one_at_a_time_rps > 0 and 0 < report.p50 <= report.p95
