"""Load test of the web app: many gradio_client clients at once against one server, its answers checked.

    python scripts/load_test.py --model DIR [--clients 16] [--requests 112] [--seconds 1] [--steps 2]
        [--max-batch 8] [--max-queue 16] [--device cpu] [--port 0]

Starts `audioldm2-lite-app` on a free localhost port (the real entry point), then:
1. one at a time: each distinct good request alone, from one client (the server's batch of one); its audio is
   the reference, and its pace is the "one at a time" figure;
2. under load: `--clients` gradio_client clients send `--requests` requests between them, one after the other
   each, about one in eight a bad one (an empty prompt, too many steps, a prompt past --max-prompt-chars). Every
   good one must come back with the reference's audio (16-bit samples within 1: the batch moves the float
   samples by rounding only, which can flip a rounding to 16 bits), every bad one refused with its message;
   requests/s and p50/p95 latency are this phase's; the server's RSS after 10 and after 100 answers is read
   from /proc (Linux);
3. the queue bound: while one long request holds the model, --max-queue + 8 requests at once: exactly 8 must be
   refused at once as busy, the others answered;
4. it keeps serving: /healthz answers with an empty queue, and one more request is answered;
5. its log holds one line per request and no traceback.
Prints the figures and a line per check; exits 1 if a check failed. `run_load_test(...)` is the same as a function.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUSY_EXTRA = 8  # requests past the queue's bound in phase 3: each must be refused
MAX_PROMPT_CHARS = 200  # the server's --max-prompt-chars here: a longer prompt is a bad request
PROMPTS = ["rain on a tin roof", "techno music with a strong bass line", "a dog barks twice", "birds at dawn",
           "a crowd applauds", "an old clock ticks in a quiet room", "ocean waves and seagulls", "a hammer on wood"]
BAD = [  # (arguments changed from a good request, the message the refusal must hold)
    (dict(prompt="   "), "the prompt is empty"),
    (dict(steps=1000), "at most 999 steps"),
    (dict(prompt="rain " * 50), f"this page takes at most {MAX_PROMPT_CHARS}"),
]


@dataclass
class Report:
    one_at_a_time_rps: float = 0.0  # requests/s, each alone
    batched_rps: float = 0.0  # good requests/s under load
    p50: float = 0.0  # latency of good requests under load, seconds
    p95: float = 0.0
    rss_after_10: int = 0  # bytes
    rss_after_100: int = 0
    rss_every_10: list[int] = field(default_factory=list)  # bytes after 10, 20, ... answers under load
    failures: list[str] = field(default_factory=list)  # one line per failed check

    def check(self, ok: bool, what: str) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
        if not ok:
            self.failures.append(what)


def good_request(i: int, seconds: float, steps: int) -> dict:
    """The i-th distinct good request: two lengths, so that the server runs two kinds of batch."""
    return dict(prompt=PROMPTS[i % len(PROMPTS)], negative_prompt="low quality" if i % 2 else "",
                seconds=seconds if i % 4 else seconds + 0.5, steps=steps, guidance=3.5, seed=i)


def arguments(request: dict) -> list:  # /generate's positional arguments
    return [request[k] for k in ("prompt", "negative_prompt", "seconds", "steps", "guidance", "seed")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(pid: int) -> int:
    """Resident memory of a process in bytes (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "healthz", timeout=10) as response:
        return json.load(response)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * q // 100) - 1)]


def start_server(model: str, port: int, options: list[str], log, env=None) -> subprocess.Popen:
    command = [sys.executable, "-m", "audioldm2_lite.web.app", "--model", model, "--port", str(port),
               "--max-prompt-chars", str(MAX_PROMPT_CHARS), *options]
    paths = [str(HERE.parent), os.environ.get("PYTHONPATH", "")]
    environment = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, paths))} | (env or {})
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env=environment)
    deadline = time.monotonic() + 300
    while True:
        try:
            health(f"http://127.0.0.1:{port}/")
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log.seek(0)
                raise RuntimeError(f"the app did not start:\n{log.read()}") from None
            time.sleep(0.5)


def run_load_test(model: str, clients: int = 16, requests: int = 112, seconds: float = 1.0, steps: int = 2,
                  max_batch: int = 8, max_queue: int = 16, device: str | None = None, port: int = 0,
                  env: dict | None = None, dtype: str = "float32") -> Report:
    import soundfile
    from gradio_client import Client

    report = Report()
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/"
    # float32 by default: the check that a batched answer equals the single one (to one int16 step) is float32's;
    # in bfloat16 a batch changes the rounding of every matrix product
    options = ["--max-batch", str(max_batch), "--max-queue", str(max_queue), "--dtype", dtype] + \
        (["--device", device] if device else [])
    distinct = max(8, clients)  # distinct good requests; the load repeats them
    with tempfile.TemporaryFile("w+") as log:
        server = start_server(model, port, options, log, env)
        try:
            connected = list(concurrent.futures.ThreadPoolExecutor(clients).map(
                lambda _: Client(url, verbose=False), range(clients)))

            def ask(client, request: dict):
                return soundfile.read(client.predict(*arguments(request), api_name="/generate"), dtype="int16")[0]

            # 1. one at a time: the references
            goods = [good_request(i, seconds, steps) for i in range(distinct)]
            ask(connected[0], goods[0])  # warm-up
            start = time.perf_counter()
            references = [ask(connected[0], request) for request in goods]
            report.one_at_a_time_rps = len(goods) / (time.perf_counter() - start)

            # 2. under load
            plan = []  # (request, index of its reference or the message of its refusal); client n % clients sends n
            for n in range(requests):
                if n % 8 == 7:
                    change, message = BAD[(n // 8) % len(BAD)]
                    plan.append((goods[n % distinct] | change, message))
                else:
                    plan.append((goods[n % distinct], n % distinct))
            answered, lock = [0], threading.Lock()
            latencies, wrong = [], []

            def send(client_index: int):
                for index in range(client_index, len(plan), clients):
                    request, expected = plan[index]
                    began = time.perf_counter()
                    try:
                        audio = ask(connected[client_index], request)
                        outcome = None
                    except Exception as error:  # noqa: BLE001  (the refusal is the answer under test)
                        audio, outcome = None, str(error)
                    elapsed = time.perf_counter() - began
                    if isinstance(expected, int):
                        reference = references[expected]
                        if audio is None or audio.shape != reference.shape or \
                                abs(audio.astype(int) - reference).max() > 1:
                            wrong.append(f"good request {index} ({request['prompt'][:20]!r}): {outcome or 'other audio'}")
                        latencies.append(elapsed)
                    elif outcome is None or expected not in outcome:
                        wrong.append(f"bad request {index}: expected a refusal saying {expected!r}, got {outcome!r}")
                    with lock:
                        answered[0] += 1
                        if answered[0] % 10 == 0:
                            report.rss_every_10.append(rss(server.pid))

            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                list(pool.map(send, range(clients)))
            wall = time.perf_counter() - start
            report.batched_rps = len(latencies) / wall
            report.rss_after_10 = report.rss_every_10[0]
            report.rss_after_100 = report.rss_every_10[min(9, len(report.rss_every_10) - 1)]
            report.p50, report.p95 = percentile(latencies, 50), percentile(latencies, 95)
            report.check(not wrong, f"{len(latencies)} good requests answered with their single-request audio, "
                                    f"{requests - len(latencies)} bad ones refused with their message"
                                    + "".join(f"\n     {line}" for line in wrong[:5]))
            if requests >= 100:
                report.check(report.rss_after_100 <= 1.1 * report.rss_after_10,
                             f"server RSS after 100 requests {report.rss_after_100 / 2**20:.0f} MiB is within 10 % "
                             f"of after 10 ({report.rss_after_10 / 2**20:.0f} MiB)")

            # 3. the queue bound, while a long request holds the model
            long_request = good_request(0, 5 * seconds, 20 * steps)
            holder = connected[0].submit(*arguments(long_request), api_name="/generate")
            while health(url)["running"] == 0:
                time.sleep(0.05)
            flood = [connected[i % clients].submit(*arguments(goods[i % distinct]), api_name="/generate")
                     for i in range(max_queue + BUSY_EXTRA)]
            outcomes = []
            for job in flood:
                try:
                    job.result()
                    outcomes.append("ok")
                except Exception as error:  # noqa: BLE001
                    outcomes.append(str(error))
            busy = [o for o in outcomes if "busy" in o]
            holder.result()
            report.check(len(busy) == BUSY_EXTRA and outcomes.count("ok") == max_queue,
                         f"queue bound: of {len(flood)} requests at once behind a long one, {outcomes.count('ok')} "
                         f"answered and {len(busy)} refused as busy (expected {max_queue} and {BUSY_EXTRA})"
                         + (f": {busy[0]!r}" if busy else ""))

            # 4. still serving
            state = health(url)
            again = ask(connected[-1], goods[1])
            report.check(state["queue_length"] == 0 and state["running"] == 0 and abs(
                again.astype(int) - references[1]).max() <= 1, f"still serving afterwards: /healthz {state}")
        finally:
            server.terminate()
            server.wait(timeout=60)
        # 5. the server's log: one line per request, no traceback
        log.seek(0)
        lines = log.read().splitlines()
        sent = (distinct + 1) + requests + (1 + max_queue + BUSY_EXTRA) + 1
        logged = sum(" outcome=" in line for line in lines)
        report.check(logged == sent and not any("Traceback" in line for line in lines),
                     f"the server logged one line per request ({logged} for {sent}) and no traceback")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint folder (e.g. one from make_tiny_checkpoint.py)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=112, help="requests under load, all clients together")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-queue", type=int, default=16)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32", help="the server's --dtype (default float32: see run_load_test)")
    parser.add_argument("--port", type=int, default=0, help="0: a free one")
    args = parser.parse_args(argv)
    report = run_load_test(args.model, args.clients, args.requests, args.seconds, args.steps, args.max_batch,
                           args.max_queue, args.device, args.port, dtype=args.dtype)
    print(f"one at a time: {report.one_at_a_time_rps:.2f} requests/s")
    print(f"under load ({args.clients} clients, batches of up to {args.max_batch}): {report.batched_rps:.2f} "
          f"requests/s, latency p50 {report.p50:.2f} s, p95 {report.p95:.2f} s")
    print(f"server RSS: {report.rss_after_10 / 2**20:.0f} MiB after 10 requests, "
          f"{report.rss_after_100 / 2**20:.0f} MiB after 100 (every 10: "
          f"{', '.join(f'{r / 2**20:.0f}' for r in report.rss_every_10)} MiB)")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
