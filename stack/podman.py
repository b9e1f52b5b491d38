"""Podman as the stack's container service: its configuration files, command line and clean-up.

The stack and the test suite both run ``podman system service`` with everything (configuration,
image storage, runtime state, the Docker API socket) under one directory of their own, so it
neither reads nor changes the host's podman setup. The settings below are the ones tried on the
machines here (see "Facts about the machines" in the design).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import psutil

CONTAINERS_CONF = """\
[containers]
# Required here: podman's default ulimits cannot be applied on these hosts.
default_ulimits = []

[engine]
# crun fails on hybrid cgroup hosts; runc with cgroupfs works everywhere we run.
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
# How long an exec's conmon waits before it removes the finished exec session. Podman's 300 s
# keeps one idle conmon per exec around for five minutes; the exit code is read at once here.
exit_command_delay = 10
"""

SOCKET_NAME = "docker.sock"


def storage_conf(root: Path) -> str:
    # overlay: ~0.17 s to create a container here, where vfs takes 2-4 s.
    return (
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{root / "storage"}"\n'
        f'runroot = "{root / "run"}"\n'
    )


def write_config(root: Path) -> dict[str, str]:
    """Write the configuration under ``root``; return the variables that point podman at it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "containers.conf").write_text(CONTAINERS_CONF)
    (root / "storage.conf").write_text(storage_conf(root))
    return {
        "CONTAINERS_CONF": str(root / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
    }


def config_env(root: Path) -> dict[str, str]:
    """The variables of :func:`write_config`, without writing anything."""
    return {
        "CONTAINERS_CONF": str(root / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
    }


def service_argv(socket: Path) -> list[str]:
    """Serve the Docker API on a Unix socket, never timing out for lack of clients."""
    return [podman_bin(), "system", "service", "--time=0", f"unix://{socket}"]


def podman_bin() -> str:
    return shutil.which("podman") or "podman"


def stop_containers(root: Path, timeout: int = 2) -> None:
    """Stop every container in this storage, so no conmon or container process outlives us.

    ``podman system service`` exits on SIGTERM but leaves running containers (and their conmon
    monitors, which daemonize away from its process group) behind. Workers keep nothing worth a
    graceful stop, so a short timeout is enough; their containers stay and start again on demand.
    """
    if shutil.which("podman") is None or not (root / "storage.conf").exists():
        return
    subprocess.run(
        [podman_bin(), "stop", "--all", "--time", str(timeout)],
        env={**os.environ, **config_env(root)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60 + timeout,
        check=False,
    )
    # Exec sessions' conmons outlive their container by exit_command_delay: end them now.
    end_leftovers(root)


def leftovers(root: Path) -> list[psutil.Process]:
    """Processes working on this storage (conmon, cleanups), but not the API service itself."""
    marker = str(root)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            argv = proc.info["cmdline"] or []
        except psutil.Error:
            continue
        if any(marker in arg for arg in argv) and "service" not in argv[1:3]:
            found.append(proc)
    return found


def end_leftovers(root: Path, timeout: float = 5.0) -> None:
    procs = leftovers(root)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.name() == "conmon":  # the rest are short-lived cleanups: let them finish
                proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=timeout)
