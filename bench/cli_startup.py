"""How long the ``orchestrator`` CLI takes to start, beyond the Python interpreter's own start.

    python bench/cli_startup.py [--quick] [-n N]

Runs, N times each and interleaved (so that a busy moment of the machine hits all of them alike):

    bare      ``python -c pass``: the interpreter, its site and the project's editable finder;
    help      ``orchestrator --help``;
    start     ``orchestrator engineering start --project P --spec S`` against a small HTTP server
              in this process that answers the two requests it makes (GET /projects/P and
              POST /tasks) with valid-looking JSON at once, so the whole command runs, printing
              included, and what is timed is the CLI, not an API.

The CLI is the installed ``orchestrator`` script run by this interpreter (else ``cli.main`` through
``-c``), with this tree first on PYTHONPATH, so the code measured is this checkout's. The CLI's own
time is a command's wall time minus ``bare``'s: shown in ms (from the medians), and gated as a
ratio to ``bare`` taken round by round (the median of the rounds' ratios), where the machine's
speed and load cancel out best. One unmeasured run of each comes first: it writes the bytecode
every later run reads, as an installed CLI has it (into a temporary PYTHONPYCACHEPREFIX, whatever
PYTHONDONTWRITEBYTECODE says, so that the checkout stays as it is).

The target is 250 ms of own time on a machine where ``python -c pass`` takes 20 ms. These machines
are shared and their speed varies by more than two times from one hour to the next, so the gate is
the ratio the target stands for: own time at most 12.5 times ``bare``, both measured in this run.

Prints one line per figure, then one JSON line with all of them. Exits 1 when ``help`` or
``start`` takes more own time than that (it says which), or when a command fails.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# 250 ms of own start-up where bare Python starts in 20 ms: in units of this run's bare start.
TARGET_MS, REFERENCE_BARE_MS = 250.0, 20.0
LIMIT_RATIO = TARGET_MS / REFERENCE_BARE_MS
PROJECT, SPEC = "P", "S"
# Variables that would send the CLI elsewhere, or refuse the command before it runs.
FOREIGN = [
    f"{prefix}{name}"
    for prefix in ("", "ORCHESTRATOR_")
    for name in ("API_URL", "API_KEY", "ALLOWED_COMMANDS")
]


class FakeApi(BaseHTTPRequestHandler):
    """The two routes ``engineering start`` calls, answered as the API would, at once."""

    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: with Nagle's algorithm the body would wait for the
    # client's delayed ACK (40 ms), which is no part of the CLI.
    disable_nagle_algorithm = True
    project_id = uuid.uuid4().hex
    requests: list[str] = []

    def do_GET(self) -> None:
        self.requests.append(f"GET {self.path}")
        if self.path == f"/projects/{PROJECT}":
            self.answer(200, {"id": self.project_id, "name": PROJECT, "status": "READY"})
        else:
            self.answer(404, {"title": "Not Found", "status": 404, "detail": self.path})

    def do_POST(self) -> None:
        self.requests.append(f"POST {self.path}")
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if self.path != "/tasks" or body.get("project_id") != self.project_id:
            self.answer(422, {"title": "Unprocessable Content", "status": 422, "detail": body})
            return
        task_id = uuid.uuid4().hex
        task = {
            "id": task_id,
            "workflow_id": f"engineering-{task_id}",
            "project_id": self.project_id,
            "type": "engineering",
            "action": body.get("action"),
            "spec": body.get("spec"),
            "status": "QUEUED",
        }
        self.answer(201, task)

    def answer(self, status: int, data: dict[str, Any]) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the benchmark's output is its figures


@contextmanager
def fake_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def orchestrator() -> list[str]:
    """How to run this tree's CLI as people do: the installed script, by this interpreter."""
    script = Path(sys.executable).parent / "orchestrator"
    if script.is_file():
        return [sys.executable, str(script)]
    return [sys.executable, "-c", "import sys; from cli.main import main; sys.exit(main())"]


def environment(home: Path, api_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    # Without bytecode every run would compile this tree's modules again: no installed CLI does.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    path = env.get("PYTHONPATH")
    env.update(
        PYTHONPATH=f"{REPO}{os.pathsep}{path}" if path else str(REPO),
        PYTHONPYCACHEPREFIX=str(home / "pycache"),
        ORCHESTRATOR_HOME=str(home),
        ORCHESTRATOR_API_URL=api_url,
        ORCHESTRATOR_API_KEY="bench",
    )
    return env


def run(argv: list[str], env: dict[str, str]) -> float:
    """The command's wall time in ms; it must succeed."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True)
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[1:])} exited with {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return elapsed


def measure(n: int) -> dict[str, list[float]]:
    """Each command's wall times in ms, one per round (the rounds' samples side by side)."""
    cli = orchestrator()
    commands = {
        "bare": [sys.executable, "-c", "pass"],
        "help": [*cli, "--help"],
        "start": [*cli, "engineering", "start", "--project", PROJECT, "--spec", SPEC],
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as home, fake_api() as url:
        env = environment(Path(home), url)
        for argv in commands.values():
            run(argv, env)  # unmeasured: bytecode, the page cache
        if FakeApi.requests[-2:] != [f"GET /projects/{PROJECT}", "POST /tasks"]:
            raise RuntimeError(f"engineering start made other requests: {FakeApi.requests}")
        for round_ in range(n):
            names = list(commands)
            shift = round_ % len(names)  # each command's turn moves, so none is always first
            for name in names[shift:] + names[:shift]:
                samples[name].append(run(commands[name], env))
    return samples


def own_ratio(command: list[float], bare: list[float]) -> float:
    """The median over rounds of a command's own time in units of bare Python's in that round:
    a round's commands run within a second of each other, so a slow moment of the machine
    slows them alike and cancels out of the ratio."""
    return statistics.median((c - b) / b for c, b in zip(command, bare, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="N=11")
    parser.add_argument("-n", type=int, help="runs of each command (15)")
    args = parser.parse_args()
    n = args.n or (11 if args.quick else 21)
    try:
        samples = measure(n)
    except RuntimeError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
    bare = statistics.median(samples["bare"])
    limit_ms = LIMIT_RATIO * bare
    figures: dict[str, Any] = {
        "n": n,
        "bare_ms": round(bare, 1),
        "limit_own_ratio": LIMIT_RATIO,
        "limit_ms": round(limit_ms, 1),
    }
    print(
        f"python -c pass: {bare:.1f} ms (median of {n}); limit of own time {LIMIT_RATIO:g}x that, "
        f"{limit_ms:.0f} ms ({TARGET_MS:g} ms where it takes {REFERENCE_BARE_MS:g} ms)"
    )
    over = []
    labels = {
        "help": "orchestrator --help",
        "start": f"orchestrator engineering start --project {PROJECT} --spec {SPEC}",
    }
    for name, label in labels.items():
        wall = statistics.median(samples[name])
        ratio = own_ratio(samples[name], samples["bare"])
        verdict = "ok" if ratio <= LIMIT_RATIO else "OVER"
        print(
            f"{label}: {wall:.1f} ms, own time {wall - bare:.1f} ms (medians); own time "
            f"{ratio:.1f}x python -c pass (median of the rounds; limit {LIMIT_RATIO:g}x: {verdict})"
        )
        figures.update(
            {
                f"{name}_ms": round(wall, 1),
                f"{name}_own_ms": round(wall - bare, 1),
                f"{name}_own_ratio": round(ratio, 2),
            }
        )
        if ratio > LIMIT_RATIO:
            over.append(label)
    print(json.dumps(figures), flush=True)
    if over:
        print(f"FAILED: own start-up over {LIMIT_RATIO:g}x bare Python: {'; '.join(over)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
