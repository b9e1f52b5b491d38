"""Named crash points, for proving that a kill -9 at the worst moment loses nothing.

Setting ``ORCHESTRATOR_CRASH_AT=<name>`` makes the process kill itself with SIGKILL when it reaches
that point, exactly as an OOM kill or a power cut would. Unset, a crash point costs one lookup.
"""

from __future__ import annotations

import os
import signal

CRASH_AT_ENV = "ORCHESTRATOR_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
