"""A deploy target on this machine: an sshd of its own on loopback, under ``<home>/target``.

``orchestrator server local`` (and the demo) start it and register it as the server ``local``,
so a deploy can run end to end with no other machine: Ansible reaches it over real SSH, with a
key pair made for it, as the current user. It listens on ``ORCHESTRATOR_HOST`` only, lets only
this user in and only with that key; its apps live in ``<home>/target/apps``. ``orchestrator
down`` stops it with the rest of the stack.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from core.settings import Settings

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
HOST_KEY, CLIENT_KEY = "host_ed25519", "client_ed25519"
START_TIMEOUT_S = 15.0

_CONFIG = """\
Port {port}
ListenAddress {host}
HostKey {dir}/{host_key}
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowUsers {user}
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp internal-sftp
LogLevel VERBOSE
"""


class TargetError(RuntimeError):
    """The local target cannot run here; the message says why."""


@dataclass(frozen=True)
class LocalTarget:
    host: str
    port: int
    user: str
    private_key: str  # the client key's text: it goes to the API, which stores it encrypted
    known_hosts: str  # the host key as a known_hosts line
    apps_root: Path
    pid: int


def sshd_config(*, host: str, port: int, directory: Path, user: str) -> str:
    """An sshd configuration of its own: its host key, pid file and authorized keys in
    ``directory``; one user, by key only."""
    return _CONFIG.format(host=host, port=port, dir=directory, user=user, host_key=HOST_KEY)


def find_sshd() -> str | None:
    for candidate in SSHD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("sshd")


def keygen(path: Path, comment: str) -> None:
    """A new ed25519 key pair at ``path`` (and ``path``.pub), unless one is there already."""
    if path.exists():
        return
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


def directory(settings: Settings) -> Path:
    return settings.home_dir / "target"


def ensure_running(settings: Settings) -> LocalTarget:
    """The local target, started (as a daemon) if it does not run yet."""
    sshd = find_sshd()
    if sshd is None:
        raise TargetError("sshd is not installed (scripts/install.sh installs openssh-server)")
    folder = directory(settings)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    user = getpass.getuser()
    keygen(folder / HOST_KEY, "orchestrator-local-target")
    keygen(folder / CLIENT_KEY, "orchestrator")
    (folder / "authorized_keys").write_text((folder / f"{CLIENT_KEY}.pub").read_text())
    apps_root = folder / "apps"
    apps_root.mkdir(exist_ok=True)
    host, port = settings.host, settings.local_target_port
    pid = _running_pid(folder)
    if pid is None:
        config = folder / "sshd_config"
        config.write_text(sshd_config(host=host, port=port, directory=folder, user=user))
        pid = _start(sshd, config, folder, host, port)
    host_key = (folder / f"{HOST_KEY}.pub").read_text().split()
    return LocalTarget(
        host=host,
        port=port,
        user=user,
        private_key=(folder / CLIENT_KEY).read_text(),
        known_hosts=f"[{host}]:{port} {host_key[0]} {host_key[1]}",
        apps_root=apps_root,
        pid=pid,
    )


def stop(settings: Settings) -> bool:
    """Stop the local target's sshd (its apps keep running: `deploy stop` stops those)."""
    folder = directory(settings)
    pid = _running_pid(folder)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    (folder / "sshd.pid").unlink(missing_ok=True)
    return True


def _start(sshd: str, config: Path, folder: Path, host: str, port: int) -> int:
    # sshd needs its privilege separation directory even when it runs as one user.
    with contextlib.suppress(PermissionError):
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = folder / "sshd.log"
    # Without -D sshd detaches itself and writes its pid file once it listens.
    done = subprocess.run(
        [sshd, "-f", str(config), "-E", str(log)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise TargetError(f"sshd did not start: {done.stderr.strip() or _tail(log)}")
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        pid = _running_pid(folder)
        if pid is not None and _listening(host, port):
            return pid
        time.sleep(0.05)
    raise TargetError(f"sshd does not listen on {host}:{port}: {_tail(log)}")


def _running_pid(folder: Path) -> int | None:
    try:
        pid = int((folder / "sshd.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
        return True
    return False


def _tail(path: Path) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-5:])
    return ""
