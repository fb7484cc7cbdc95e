"""Serving many people from one loaded model: a bounded queue that runs requests arriving together as one batch.

    web request --check (a mistake: refused at once)--> Job in the queue (full: refused at once, "busy")
      --one worker thread: the oldest job and those that can share its batch (requests.batchable: same length,
        steps, sampler, guidance, candidates), collected for `window` seconds, at most `max_batch` waveforms-->
      AudioLDM2Pipeline.generate(requests) --> each job its own result --> one log line per request

Why a queue of our own and not Gradio's (`batch=True` on an event, `max_size` on its queue): Gradio fails a whole
batch when one of its requests raises, has no collection window, cannot show progress to a batched request, and
answers a full queue with its own words. Here every request is checked alone before it joins (a mistake is that
person's message only), a batch that fails is retried one request at a time (one request that cannot run, or a
batch too large for the GPU, costs the others nothing), and the refusals say what happened. Gradio's queue only
hands the events over (the page's events have no concurrency limit); only the worker thread touches the model.

A request's audio does not depend on its batch: the pipeline gives each request its own noise (its seed) and
text encoding, so batched, it equals what it gets alone to float rounding, and throughput grows with the batch.

Time limit and leaving: a request not answered `time_limit` seconds after it joined is answered "timed out";
a client that leaves (its browser tab closed, its connection dropped) gives up its place. Either way a waiting
request leaves the queue at once, and a running batch stops at its next step once none of its requests is
still wanted; otherwise the others' batch runs on and the result is dropped.
"""

from __future__ import annotations

import asyncio
import ctypes
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..generation.editing import steps_to_run
from ..generation.batching import Generated, batchable
from ..generation.request import Request

POLL_SECONDS = 0.05  # how often a waiting request looks at its job: progress, time limit, client still there


class ServingError(Exception):
    """A request the server did not answer with audio, for a reason of the server's: the message says which."""


class Busy(ServingError):
    outcome = "busy"


class TimedOut(ServingError):
    outcome = "timed out"


class ClientLeft(ServingError):
    outcome = "client left"


class Abandoned(Exception):
    """Raised inside a running batch (from the step callback) once none of its requests is still wanted."""


@dataclass(eq=False)
class Job:
    request: Request  # checked, with its seed
    arrived: float  # time.monotonic()
    started: float | None = None
    finished: float | None = None
    batch_size: int = 0  # requests in the pipeline call that ran it
    step: int = 0  # denoising steps done
    result: Generated | None = None
    error: BaseException | None = None
    gone: str | None = None  # why nobody waits for it any more: "timed out", "client left"
    done: threading.Event = field(default_factory=threading.Event)


class BatchingQueue:
    """The queue in front of one model. `run_batch(requests, callback)` is `AudioLDM2Pipeline.generate`'s call
    (results in order; `callback(i, t, latents)` after every step); `check(request)` the request checked, with
    its seed (a ValueError for a mistake). `log(line)` gets one line per request (default: stderr)."""

    def __init__(self, run_batch: Callable, check: Callable[[Request], Request], max_batch: int = 8,
                 window: float = 0.1, max_queue: int = 64, time_limit: float = 600.0,
                 log: Callable[[str], None] | None = None):
        self.run_batch, self.check = run_batch, check
        self.max_batch, self.window, self.max_queue, self.time_limit = max_batch, window, max_queue, time_limit
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.pending: list[Job] = []  # waiting, oldest first
        self.running: list[Job] = []
        self.lock = threading.Condition()
        self.stopped = False
        self.worker = threading.Thread(target=self.work, name="batching-queue", daemon=True)
        self.worker.start()

    # ------------------------------------------------------------------------------------------
    # What a web request calls

    async def run(self, kind: str, make: Callable[[], Request], on_wait: Callable[[int], None] | None = None,
                  on_step: Callable[[int, int], None] | None = None,
                  still_wanted: Callable[[], bool] | None = None) -> Generated:
        """The result of the request `make()` builds, once the worker has run it; every outcome is logged.

        `on_wait(n)`: n requests are ahead of this one; `on_step(i, total)`: i of total denoising steps done;
        `still_wanted()` False: the client has left. A ValueError is a mistake in the request; a ServingError
        says why the server did not run it; anything else is a fault, logged in one line (no traceback)."""
        request = job = None
        outcome = "ok"
        try:
            request = self.check(make())
            job = self.submit(request)
            return await self.wait(job, on_wait, on_step, still_wanted)
        except ValueError as error:
            outcome = f"refused: {error}"
            raise
        except ServingError as error:
            outcome = f"{error.outcome}: {error}"
            raise
        except asyncio.CancelledError:  # Gradio's /cancel (a client's "stop")
            outcome = "cancelled by the client"
            raise
        except BaseException as error:  # noqa: BLE001  (the log line stands in for the traceback)
            outcome = f"failed: {type(error).__name__}: {error}"
            raise
        finally:
            self.log(log_line(kind, request, job, outcome))

    def submit(self, request: Request) -> Job:
        with self.lock:
            if len(self.pending) >= self.max_queue:
                raise Busy(f"the server is busy, its queue is full ({len(self.pending)} waiting); try again in a "
                           f"minute")
            job = Job(request, arrived=time.monotonic())
            self.pending.append(job)
            self.lock.notify()
        return job

    async def wait(self, job: Job, on_wait=None, on_step=None, still_wanted=None) -> Generated:
        deadline = job.arrived + self.time_limit
        reported = None
        while not job.done.is_set():
            try:
                await asyncio.sleep(POLL_SECONDS)
            except asyncio.CancelledError:
                self.give_up(job, "cancelled")
                raise
            if still_wanted is not None and not still_wanted():
                self.give_up(job, "client left")
                raise ClientLeft("the client left before its result was ready")
            if time.monotonic() > deadline:
                self.give_up(job, "timed out")
                raise TimedOut(f"no result within the server's time limit of {self.time_limit:g} s; try again "
                               f"later, or ask for fewer steps or seconds")
            state = ("step", job.step) if job.started is not None else ("wait", self.ahead(job))
            if state != reported:
                reported = state
                if state[0] == "wait" and on_wait is not None:
                    on_wait(state[1])
                elif state[0] == "step" and on_step is not None and job.step:
                    on_step(job.step, steps_to_run(job.request.strength, job.request.steps))
        if job.error is not None:
            raise job.error
        return job.result

    def give_up(self, job: Job, why: str) -> None:
        with self.lock:
            job.gone = why
            if job in self.pending:  # its place is free at once
                self.pending.remove(job)

    def ahead(self, job: Job) -> int:
        with self.lock:
            return self.pending.index(job) + len(self.running) if job in self.pending else 0

    def health(self) -> dict:
        """What a load balancer polls: waiting and running requests, and whether one more would be taken."""
        with self.lock:
            waiting, running = len(self.pending), len(self.running)
        return dict(model_loaded=True, queue_length=waiting, running=running, max_queue=self.max_queue,
                    accepting=waiting < self.max_queue)

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            self.lock.notify()

    # ------------------------------------------------------------------------------------------
    # The worker thread: the only one that touches the model

    def work(self) -> None:
        while (batch := self.next_batch()) is not None:
            self.run_jobs(batch)
            release_freed_memory()

    def next_batch(self) -> list[Job] | None:
        """The oldest job with those that can share its pipeline call, once that batch is full or the oldest
        has waited `window` seconds (a model that was busy makes that at once); None once stopped."""
        with self.lock:
            while not self.stopped:
                if not self.pending:
                    self.lock.wait()
                    continue
                batch, full = self.batch_of_oldest()
                wait = self.pending[0].arrived + self.window - time.monotonic()
                if full or wait <= 0:
                    for job in batch:
                        self.pending.remove(job)
                    self.running = batch
                    return batch
                self.lock.wait(wait)
        return None

    def batch_of_oldest(self) -> tuple[list[Job], bool]:
        """(the oldest job and the jobs that can share its call, at most max_batch waveforms; whether full)."""
        [first_group, *_] = batchable([job.request for job in self.pending])  # the group holding the oldest
        batch, rows, full = [], 0, self.pending[0].request.is_edit  # an edit runs alone: nothing to wait for
        for index in first_group:
            job = self.pending[index]
            if batch and rows + job.request.candidates > self.max_batch:
                full = True
                break
            batch.append(job)
            rows += job.request.candidates
        return batch, full or rows >= self.max_batch

    def run_jobs(self, batch: list[Job]) -> None:
        """One pipeline call for the batch; if it fails, each job again alone, so that one request's failure
        (or a batch too large for the device) is that request's only."""
        started = time.monotonic()
        for job in batch:
            job.started, job.batch_size = started, len(batch)

        def on_step(i, t, latents):
            for job in batch:
                job.step = i + 1
            if all(job.gone for job in batch):
                raise Abandoned

        try:
            results = self.run_batch([job.request for job in batch], on_step)
            for job, result in zip(batch, results):
                job.result = result
        except Abandoned:
            for job in batch:
                job.error = ClientLeft(job.gone)
        except Exception as error:  # noqa: BLE001  (reported to each job's request, and logged there)
            if len(batch) > 1:
                for job in batch:
                    self.run_jobs([job])
                return
            batch[0].error = error
        finally:
            with self.lock:
                if self.running is batch:
                    self.running = []
        for job in batch:
            job.finished = time.monotonic()
            job.done.set()


def release_freed_memory() -> None:
    """Hand the memory a batch freed back to the system (glibc's `malloc_trim`; elsewhere nothing). glibc keeps
    freed heap for reuse, so the server's RSS would otherwise stay at the largest batches it ran (scripts/load_test.py
    measures it; the figures are in scripts/BENCHMARKS.md)."""
    if GLIBC is not None:
        GLIBC.malloc_trim(0)


def load_glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not Linux with glibc
        return None
    return libc if hasattr(libc, "malloc_trim") else None


GLIBC = load_glibc()


def log_line(kind: str, request: Request | None, job: Job | None, outcome: str) -> str:
    """One line per request: when, which surface, the settings (not the prompt: people's words stay theirs),
    seconds waited and run, the batch it shared, and the outcome, in key=value form for grep and log tools."""
    fields = [time.strftime("%Y-%m-%dT%H:%M:%S"), kind]
    if request is not None:
        seconds = "input" if request.is_edit else f"{request.seconds:g}"
        fields += [f"seconds={seconds}", f"steps={request.steps}", f"scheduler={request.scheduler}",
                   f"guidance={request.guidance:g}", f"candidates={request.candidates}", f"seed={request.seed}"]
        if request.is_edit:
            fields.append(f"strength={request.strength:g}")
    if job is not None:
        ran = (job.finished or time.monotonic()) - job.started if job.started is not None else 0.0
        queued = (job.started if job.started is not None else time.monotonic()) - job.arrived
        fields += [f"batch={job.batch_size}", f"queued={queued:.2f}s", f"ran={ran:.2f}s"]
    message = " ".join(outcome.split())  # one line, whatever the error said
    return " ".join(fields) + f" outcome={message}"

