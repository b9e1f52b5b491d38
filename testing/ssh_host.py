"""A real SSH target on loopback: an sshd of its own on 127.0.0.1, a throwaway key pair.

`ssh_host()` starts `sshd -D -e -f <config>` with its own host key, pid file and authorized keys in
a short temporary directory, lets the current user log in with a fresh ed25519 key, and yields an
:class:`SshHost`. Tests of any package can use it (tests/infra/ansible/conftest.py wraps it in
fixtures). Given an ``environment``, sshd sets it in every session (``SetEnv``): the tests point
the target's podman at their registry mirror that way (testing/registry_mirror.py).
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from stack.local_target import CLIENT_KEY, HOST_KEY, find_sshd, keygen, sshd_config
from testing.servers import free_port, stop_process, wait_for_port


@dataclass(frozen=True)
class SshHost:
    host: str
    port: int
    user: str
    private_key: str  # the client key's text (OpenSSH format)
    known_hosts: str  # one known_hosts line for [host]:port
    key_file: Path  # the same private key on disk (0600), for ssh/scp from tests
    dir: Path
    log_file: Path

    def ssh_command(self, *command: str) -> list[str]:
        """An `ssh` argv that runs `command` on the target, host key checked."""
        known = self.dir / "client_known_hosts"
        if not known.exists():
            known.write_text(self.known_hosts + "\n")
        return [
            "ssh", "-F", "/dev/null", "-p", str(self.port), "-i", str(self.key_file),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            f"{self.user}@{self.host}", "--", *command,
        ]  # fmt: skip

    def run(self, *command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.ssh_command(*command), capture_output=True, text=True, timeout=timeout
        )

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


class Sshd:
    """An sshd a test stops and starts again (the same port, keys and config)."""

    def __init__(self, sshd: str, config: Path, port: int, log_file: Path) -> None:
        self.argv = [sshd, "-D", "-e", "-f", str(config)]  # absolute: sshd re-executes itself
        self.port = port
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.host: SshHost

    def start(self) -> None:
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            wait_for_port(self.port, timeout=15, proc=self.proc)
        except (RuntimeError, TimeoutError) as exc:
            log_text = self.log_file.read_text(errors="replace")
            raise RuntimeError(f"{exc}; sshd log:\n{log_text}") from exc

    def stop(self) -> None:
        """SIGTERM ends the listener; sessions still open end with their connections."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@contextlib.contextmanager
def ssh_host(environment: Mapping[str, str] | None = None) -> Iterator[SshHost]:
    """Start an sshd on 127.0.0.1:<free port>; stop it and remove its directory afterwards.
    Every session it starts has ``environment`` set, whatever the client sends."""
    with ssh_daemon(environment) as daemon:
        yield daemon.host


@contextlib.contextmanager
def ssh_daemon(environment: Mapping[str, str] | None = None) -> Iterator[Sshd]:
    """:func:`ssh_host`, as an :class:`Sshd` the test may stop and start again."""
    sshd = find_sshd()
    if sshd is None:
        raise RuntimeError("sshd is not installed (scripts/install.sh installs openssh-server)")
    # sshd needs its privilege separation directory even when it runs as one user.
    with contextlib.suppress(PermissionError):  # only root needs (and can create) it
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    # Short: the client's ControlPath sockets may live under such directories too.
    directory = Path(tempfile.mkdtemp(prefix="o-"))
    user = getpass.getuser()
    port = free_port()
    daemon: Sshd | None = None
    try:
        keygen(directory / HOST_KEY, "test-host")
        keygen(directory / CLIENT_KEY, "test-client")
        (directory / "authorized_keys").write_text((directory / "client_ed25519.pub").read_text())
        config = directory / "sshd_config"
        config.write_text(
            sshd_config(host="127.0.0.1", port=port, directory=directory, user=user)
            + _set_env(environment or {})
        )
        daemon = Sshd(sshd, config, port, directory / "sshd.log")
        daemon.start()
        host_key = (directory / "host_ed25519.pub").read_text().split()
        daemon.host = SshHost(
            host="127.0.0.1",
            port=port,
            user=user,
            private_key=(directory / "client_ed25519").read_text(),
            known_hosts=f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}",
            key_file=directory / "client_ed25519",
            dir=directory,
            log_file=daemon.log_file,
        )
        yield daemon
    finally:
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _set_env(environment: Mapping[str, str]) -> str:
    """The ``SetEnv`` line of ``environment`` (one line: sshd keeps the first of a repeated
    option), quoted; nothing for an empty one."""
    for name, value in environment.items():
        if not name.isidentifier() or any(c in value for c in '"\n'):
            raise ValueError(f"cannot pass {name}={value!r} through sshd_config's SetEnv")
    pairs = " ".join(f'"{name}={value}"' for name, value in environment.items())
    return f"SetEnv {pairs}\n" if pairs else ""
