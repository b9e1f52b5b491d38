"""The bridge benchmark runs end to end and prints its figures."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from core.paths import REPO_ROOT

REPO = REPO_ROOT


def test_bridge_benchmark_quick_prints_ratio_and_latency() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bridge_throughput.py"), "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"ratio bridge/raw: \d+\.\d+", done.stdout), done.stdout
    assert re.search(r"p50 \d+\.\d+ ms, p99 \d+\.\d+ ms", done.stdout), done.stdout
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("raw_starts_per_s", "bridge_starts_per_s", "ratio_bridge_raw"):
        assert figures[name] > 0, figures
    assert 0 < figures["latency_p50_ms"] <= figures["latency_p99_ms"], figures
