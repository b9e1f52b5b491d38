"""Ansible over SSH: runs a playbook from deploy/ansible against one server with ansible-runner.

:class:`AnsibleRunner` has no database access: callers hand it an :class:`SshTarget` (the private
key's text included) and plain variables, and get a :class:`PlaybookRun` back. Each run gets a
private data directory (0700) holding the inventory, the key (0600), the known_hosts file and the
secret variables; it is removed when the run ends, so neither the key nor a secret outlives it.

Secrets are passed in a vars file (`-e @file`), never on a command line; the playbooks mark the
tasks that use them `no_log`. As a second line of defence every secret value is masked in what
the run returns (stdout tail, failure message, set_stats data) and events carry no task results.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import ansible_runner
from pydantic import BaseModel, Field, SecretStr

from core.logging import get_logger
from core.paths import DEPLOY_DIR
from core.settings import Settings

log = get_logger("infra.ansible")

PLAYBOOKS_DIR = DEPLOY_DIR / "ansible"
VENV_BIN = Path(sys.executable).parent
MASK = "********"
STDOUT_TAIL_LINES = 60
INVENTORY_HOST = "target"
DEFAULT_PYTHON = "/usr/bin/python3"
# Failure events: the task that failed and Ansible's message for it.
FAILED_EVENTS = ("runner_on_failed", "runner_on_unreachable", "runner_item_on_failed")


class SshTarget(BaseModel):
    host: str
    port: int = 22
    user: str
    private_key: SecretStr  # the key's text; on disk only inside a run's private directory
    known_hosts: str | None = None  # known_hosts line(s) for the host; None: accept on first use


class RunnerEvent(BaseModel):
    """What on_event gets for each runner event: names and counters, never task results."""

    event: str
    counter: int = 0
    task: str | None = None
    host: str | None = None
    play: str | None = None


class PlaybookRun(BaseModel):
    playbook: str
    status: Literal["successful", "failed"]
    rc: int
    timed_out: bool = False
    failed_task: str | None = None
    failed_msg: str | None = None
    stdout_tail: str = ""
    data: dict[str, Any] = Field(default_factory=dict)  # the playbook's set_stats data
    # known_hosts lines learned on first use, when the target came without any: keep them and
    # pass them next time, so later runs check the host key.
    learned_known_hosts: str | None = None
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.status == "successful"


OnEvent = Callable[[RunnerEvent], Any]


class AnsibleRunner:
    """Runs the playbooks of `playbooks_dir` over SSH; run directories live under `work_root`."""

    def __init__(self, work_root: Path, playbooks_dir: Path = PLAYBOOKS_DIR) -> None:
        self.playbooks_dir = Path(playbooks_dir)
        self.work_root = Path(work_root)

    @classmethod
    def from_settings(cls, settings: Settings) -> AnsibleRunner:
        return cls(work_root=settings.home_dir / "ansible")

    def run(
        self,
        playbook: str,
        target: SshTarget,
        extravars: Mapping[str, Any] | None = None,
        secret_vars: Mapping[str, Any] | None = None,
        on_event: OnEvent | None = None,
        timeout_s: int = 600,
        cancel: threading.Event | None = None,
        run_name: str | None = None,
    ) -> PlaybookRun:
        """Run `playbook` (a file name in playbooks_dir) against `target`; block until it ends.

        `secret_vars` are extra variables like `extravars` (values may be nested), but written
        only to a 0600 vars file and masked in the result. Setting `cancel` stops the run.
        `run_name` names the run's directory: a run of the same name that an earlier process
        left behind (it was killed mid-playbook) is ended first, so two never race.
        """
        if not (self.playbooks_dir / playbook).is_file():
            raise FileNotFoundError(f"no playbook {playbook} in {self.playbooks_dir}")
        secrets = _secret_values(secret_vars or {})
        started = time.monotonic()
        events: list[dict[str, Any]] = []
        with self._private_dir(run_name) as (data_dir, control_dir):
            inventory = self._write_target(data_dir, target)
            # Authoritative and empty: an ansible.cfg near the worker must not change deploys.
            (data_dir / "ansible.cfg").write_text("[defaults]\n")
            cmdline = ""
            if secret_vars:
                secret_file = data_dir / "secret_vars.json"
                _write_private(secret_file, json.dumps(dict(secret_vars)))
                cmdline = f"-e @{shlex.quote(str(secret_file))}"

            def handle(event: dict[str, Any]) -> bool:
                events.append(_summary_of(event))
                if on_event is not None:
                    public = _public(event)
                    for key in ("task", "play"):  # names may be templated from variables
                        public[key] = public[key] and _mask(str(public[key]), secrets)
                    on_event(RunnerEvent(**public))
                return False  # the event stays in memory only: nothing written to artifacts

            log.info("playbook starting", playbook=playbook, host=target.host, port=target.port)
            try:
                runner = ansible_runner.run(
                    private_data_dir=str(data_dir),
                    project_dir=str(self.playbooks_dir),
                    playbook=playbook,
                    inventory=inventory,
                    extravars=dict(extravars or {}),
                    cmdline=cmdline or None,
                    envvars=self._envvars(data_dir, control_dir),
                    event_handler=handle,
                    cancel_callback=(cancel.is_set if cancel else lambda: False),
                    timeout=timeout_s,
                    quiet=True,
                    json_mode=False,
                    ident="run",
                    rotate_artifacts=1,
                )
                stdout = runner.stdout.read() if runner.stdout else ""
                rc = runner.rc if isinstance(runner.rc, int) else -1
                status = str(runner.status)
                learned = None
                if not target.known_hosts:
                    learned = (data_dir / "known_hosts").read_text().strip() or None
            finally:
                _close_ssh_masters(control_dir)
                # A cancelled or timed-out run's forks live in sessions of their own, which
                # ansible-runner does not signal: nothing of the run may outlive it.
                end_processes_using(data_dir)
        result = _result(playbook, status, rc, events, stdout, secrets, time.monotonic() - started)
        result.learned_known_hosts = learned
        log.info(
            "playbook finished",
            playbook=playbook,
            status=result.status,
            rc=result.rc,
            failed_task=result.failed_task,
            duration_s=round(result.duration_s, 2),
        )
        return result

    async def run_async(
        self,
        playbook: str,
        target: SshTarget,
        extravars: Mapping[str, Any] | None = None,
        secret_vars: Mapping[str, Any] | None = None,
        on_event: OnEvent | None = None,
        timeout_s: int = 600,
        run_name: str | None = None,
    ) -> PlaybookRun:
        """`run` in a thread, for activities. on_event is called on the event loop (so it may
        call `activity.heartbeat`); cancelling the awaiting task cancels the playbook."""
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        # The caller's context (an activity's, which activity.heartbeat needs), not the thread's.
        context = contextvars.copy_context()

        def relay(event: RunnerEvent) -> None:
            if on_event is not None:
                loop.call_soon_threadsafe(on_event, event, context=context)

        future = loop.run_in_executor(
            None,
            lambda: self.run(
                playbook, target, extravars, secret_vars, relay, timeout_s, cancel, run_name
            ),
        )
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # Let ansible-runner stop the playbook, then let the thread clean its directory up.
            cancel.set()
            with contextlib.suppress(Exception):
                await future
            raise

    # --- private ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _private_dir(self, run_name: str | None) -> Iterator[tuple[Path, Path]]:
        runs = self.work_root / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        if run_name is None:
            data_dir = Path(tempfile.mkdtemp(prefix="run-", dir=runs))  # 0700
        else:
            data_dir = runs / f"run-{_safe_name(run_name)}"
            if data_dir.exists():
                end_processes_using(data_dir)
                shutil.rmtree(data_dir, ignore_errors=True)
            data_dir.mkdir(mode=0o700)
        # ssh's ControlPath is a Unix socket: its path must stay short, whatever work_root is.
        control_dir = Path(tempfile.mkdtemp(prefix="o-cp-"))
        try:
            yield data_dir, control_dir
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
            shutil.rmtree(control_dir, ignore_errors=True)

    def _write_target(self, data_dir: Path, target: SshTarget) -> dict[str, Any]:
        key_file = data_dir / "ssh_key"
        key = target.private_key.get_secret_value()
        _write_private(key_file, key if key.endswith("\n") else key + "\n")
        known_hosts = data_dir / "known_hosts"
        _write_private(known_hosts, (target.known_hosts or "").strip() + "\n")
        checking = "yes" if target.known_hosts else "accept-new"
        ssh_args = (
            f"-o IdentitiesOnly=yes -o UserKnownHostsFile={shlex.quote(str(known_hosts))} "
            f"-o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking={checking}"
        )
        host = {
            "ansible_host": target.host,
            "ansible_port": target.port,
            "ansible_user": target.user,
            "ansible_ssh_private_key_file": str(key_file),
            "ansible_ssh_common_args": ssh_args,
            # Discovery may pick a shim (pyenv) on PATH; extravars can override this default.
            "ansible_python_interpreter": DEFAULT_PYTHON,
        }
        return {"all": {"hosts": {INVENTORY_HOST: host}}}

    def _envvars(self, data_dir: Path, control_dir: Path) -> dict[str, str]:
        return {
            # ansible-playbook and the runner's callback come from this virtualenv.
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
            # ansible-runner turns host key checking off unless told otherwise; the ssh options
            # of the inventory (known_hosts given: yes, else accept-new) then decide.
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_SSH_TRANSFER_METHOD": "piped",  # no sftp session per copied file
            "ANSIBLE_LOCAL_TEMP": str(data_dir / "tmp"),
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_NO_TARGET_SYSLOG": "True",  # module arguments stay out of the target's syslog
            "ANSIBLE_SHOW_CUSTOM_STATS": "True",
            "ANSIBLE_DEPRECATION_WARNINGS": "False",
            "ANSIBLE_NOCOLOR": "True",
            "ANSIBLE_CONFIG": str(data_dir / "ansible.cfg"),
        }


def _safe_name(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    if not safe or safe.startswith("."):
        raise ValueError(f"not a usable run name: {name!r}")
    return safe


def end_processes_using(directory: Path) -> list[int]:
    """SIGKILL the process groups of this machine's processes whose command line names
    ``directory`` (an ansible-playbook of a killed worker, and its ssh children)."""
    needle = str(directory).encode()
    own_group = os.getpgid(0)
    ended = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "cmdline").read_bytes():
                continue
            pid = int(entry.name)
            group = os.getpgid(pid)
            # ansible-runner starts the playbook in a session of its own; never end ours.
            if group == own_group:
                os.kill(pid, signal.SIGKILL)
            else:
                os.killpg(group, signal.SIGKILL)
            ended.append(pid)
        except (OSError, ProcessLookupError):
            continue  # gone meanwhile, or not ours to end
    if ended:
        log.warning("ended a playbook an earlier process left running", pids=ended)
    return ended


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)


def _close_ssh_masters(control_dir: Path) -> None:
    """End the ControlPersist ssh masters of a run: no ssh process outlives it."""
    if not control_dir.is_dir():
        return
    for socket_path in control_dir.iterdir():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                ["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", "placeholder"],
                capture_output=True,
                timeout=10,
            )


def _secret_values(secret_vars: Mapping[str, Any]) -> list[str]:
    values: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)
        elif value is not None and str(value):
            values.append(str(value))

    walk(secret_vars)
    # Longest first, so a secret containing another is masked whole.
    return sorted(set(values), key=len, reverse=True)


def mask_secrets(text: str, values: Iterable[str]) -> str:
    """``text`` with each of ``values`` (secrets) replaced by the mask, the longest first."""
    return _mask(text, sorted({v for v in values if v}, key=len, reverse=True))


def _mask(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def _mask_data(value: Any, secrets: list[str]) -> Any:
    if not secrets:
        return value
    return json.loads(_mask(json.dumps(value), [json.dumps(s)[1:-1] for s in secrets]))


def _public(event: dict[str, Any]) -> dict[str, Any]:
    data = event.get("event_data") or {}
    return {
        "event": str(event.get("event", "")),
        "counter": int(event.get("counter") or 0),
        "task": data.get("task"),
        "host": data.get("host"),
        "play": data.get("play"),
    }


def _summary_of(event: dict[str, Any]) -> dict[str, Any]:
    """What the result needs from an event: failures' task and message, the set_stats data."""
    summary = _public(event)
    data = event.get("event_data") or {}
    if summary["event"] in FAILED_EVENTS and not data.get("ignore_errors"):
        res = data.get("res") or {}
        summary["msg"] = _failure_message(res)
    if summary["event"] == "playbook_on_stats":
        summary["artifact_data"] = data.get("artifact_data") or {}
    return summary


def _failure_message(res: dict[str, Any]) -> str:
    parts = [str(res.get("msg") or "").strip()]
    for key in ("stderr", "stdout"):
        if res.get(key) and str(res[key]).strip() not in parts[0]:
            parts.append(str(res[key]).strip())
    return "\n".join(part for part in parts if part)


def _result(
    playbook: str,
    status: str,
    rc: int,
    events: list[dict[str, Any]],
    stdout: str,
    secrets: list[str],
    duration: float,
) -> PlaybookRun:
    failures = [event for event in events if "msg" in event]
    last_failure = failures[-1] if failures else None
    stats = next((e for e in reversed(events) if e["event"] == "playbook_on_stats"), None)
    timed_out = status == "timeout"
    failed_msg = last_failure["msg"] if last_failure else None
    if timed_out:
        failed_msg = "the playbook timed out" + (
            f"; last failure: {failed_msg}" if failed_msg else ""
        )
    elif status == "canceled":
        failed_msg = "the playbook was cancelled"
    elif failed_msg is None:
        # Ansible stopped before any task (a syntax error, a bad variable): its own words.
        failed_msg = "\n".join(stdout.strip().splitlines()[-10:])
    ok = status == "successful" and rc == 0
    return PlaybookRun(
        playbook=playbook,
        status="successful" if ok else "failed",
        rc=rc,
        timed_out=timed_out,
        failed_task=None if ok or last_failure is None else last_failure["task"],
        failed_msg=None if ok or failed_msg is None else _mask(failed_msg, secrets),
        stdout_tail=_mask("\n".join(stdout.splitlines()[-STDOUT_TAIL_LINES:]), secrets),
        data=_mask_data(stats.get("artifact_data", {}) if stats else {}, secrets),
        duration_s=duration,
    )


def new_release_id() -> str:
    """A sortable release id: UTC time, then a short random suffix."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
