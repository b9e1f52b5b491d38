"""AnsibleRunner itself: secrets stay secret, host keys are checked, runs time out and cancel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.testing import ActivityEnvironment

from infra.ansible import MASK, AnsibleRunner, RunnerEvent, SshTarget
from testing.apps import answers, deploy, stop
from testing.servers import free_port
from testing.ssh_host import SshHost

LEAKY = """
- name: A playbook that leaks its secret
  hosts: all
  gather_facts: false
  tasks:
    - name: Print it
      ansible.builtin.debug:
        msg: "the token is {{ token }}"
    - name: Report it
      ansible.builtin.set_stats:
        data: {token: "{{ token }}"}
    - name: Fail with it
      ansible.builtin.fail:
        msg: "failing with {{ token }}"
"""

SLOW = """
- name: A slow playbook
  hosts: all
  gather_facts: false
  tasks:
    - name: Wait
      ansible.builtin.pause:
        seconds: 60
"""

QUICK = """
- name: A quick playbook
  hosts: all
  gather_facts: false
  tasks:
    - name: Answer
      ansible.builtin.command: "true"
"""


def runner_of(tmp_path: Path, playbook: str, name: str) -> AnsibleRunner:
    """A runner whose playbooks directory holds ``playbook`` as ``name``."""
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir()
    (playbooks / name).write_text(playbook)
    return AnsibleRunner(work_root=tmp_path / "work", playbooks_dir=playbooks)


def files_containing(root: Path, text: str) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and text.encode() in path.read_bytes():
            hits.append(path)
    return hits


def test_a_secret_reaches_the_app_and_nothing_else(
    runner: AnsibleRunner,
    target: SshTarget,
    sshd: SshHost,
    app_repo: Path,
    apps_root: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = f"s3cret-{uuid.uuid4().hex}"
    port = free_port()
    events: list[RunnerEvent] = []
    run = deploy(
        runner, target, app_repo, apps_root, "r1", port, secret_env={"API_TOKEN": secret},
        on_event=events.append,
    )  # fmt: skip
    assert run.ok, run.stdout_tail
    assert answers(port)

    # In the app's environment and its 0600 .env on the target...
    app_dir = apps_root / "hello"
    pid = int((app_dir / "run" / "r1.child").read_text())  # the app, not its supervisor
    assert f"API_TOKEN={secret}".encode() in Path(f"/proc/{pid}/environ").read_bytes()
    env_file = app_dir / "releases" / "r1" / ".env"
    assert (env_file.stat().st_mode & 0o777) == 0o600
    assert files_containing(apps_root, secret) == [env_file]
    # ...and nowhere else: not in the result, the events, the runner's files, logs or sshd's log.
    assert secret not in run.model_dump_json()
    assert all(secret not in event.model_dump_json() for event in events)
    assert files_containing(runner.work_root, secret) == []
    assert list((runner.work_root / "runs").iterdir()) == []
    assert secret not in caplog.text
    out, err = capfd.readouterr()
    assert secret not in out and secret not in err
    assert secret not in sshd.log()
    assert stop(runner, target, apps_root).ok


def test_secret_values_are_masked_even_when_a_playbook_leaks_them(
    tmp_path: Path, target: SshTarget
) -> None:
    runner = runner_of(tmp_path, LEAKY, "leaky.yml")
    secret = f"tok-{uuid.uuid4().hex}"

    run = runner.run("leaky.yml", target, {}, {"token": secret})

    assert not run.ok and run.failed_task == "Fail with it"
    assert run.failed_msg == f"failing with {MASK}"
    assert run.data == {"token": MASK}
    assert f"the token is {MASK}" in run.stdout_tail
    assert secret not in run.model_dump_json()
    assert files_containing(tmp_path / "work", secret) == []


def test_a_wrong_host_key_is_refused(
    tmp_path: Path, runner: AnsibleRunner, target: SshTarget, sshd: SshHost
) -> None:
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    key_type, key_text = key.with_suffix(".pub").read_text().split()[:2]
    wrong = target.model_copy(
        update={"known_hosts": f"[{sshd.host}]:{sshd.port} {key_type} {key_text}"}
    )
    run = runner.run("stop.yml", wrong, {"app_name": "x"})
    assert not run.ok
    assert "Host key verification failed" in (run.failed_msg or "")
    assert run.learned_known_hosts is None


def test_an_unknown_host_key_is_accepted_and_learned(
    runner: AnsibleRunner, target: SshTarget, sshd: SshHost
) -> None:
    run = runner.run("stop.yml", target.model_copy(update={"known_hosts": None}), {"app_name": "x"})
    assert run.ok, run.stdout_tail
    assert run.learned_known_hosts
    host_key = sshd.known_hosts.split(maxsplit=1)[1]
    assert host_key in run.learned_known_hosts or "|1|" in run.learned_known_hosts  # hashed names
    again = runner.run(
        "stop.yml",
        target.model_copy(update={"known_hosts": run.learned_known_hosts}),
        {"app_name": "x"},
    )
    assert again.ok, again.stdout_tail


def test_a_run_times_out(tmp_path: Path, target: SshTarget) -> None:
    runner = runner_of(tmp_path, SLOW, "slow.yml")
    started = time.monotonic()
    run = runner.run("slow.yml", target, timeout_s=2)
    assert not run.ok and run.timed_out
    assert time.monotonic() - started < 20
    assert list((tmp_path / "work" / "runs").iterdir()) == []
    # Its forks (in sessions of their own, which ansible-runner does not signal) are gone too.
    assert processes_naming(tmp_path / "work" / "runs") == []


def test_a_named_run_ends_the_one_a_killed_process_left_behind(
    tmp_path: Path, target: SshTarget
) -> None:
    runner = runner_of(tmp_path, QUICK, "quick.yml")
    left = tmp_path / "work" / "runs" / "run-release-1"
    left.mkdir(parents=True)
    # What a killed worker leaves: a process of its run, in a session of its own.
    orphan = subprocess.Popen(
        ["sh", "-c", "sleep 120", str(left / "inventory")], start_new_session=True
    )
    try:
        run = runner.run("quick.yml", target, run_name="release-1")
        assert run.ok, run.stdout_tail
        assert orphan.wait(10) == -signal.SIGKILL
        assert list((tmp_path / "work" / "runs").iterdir()) == []
    finally:
        if orphan.poll() is None:
            orphan.kill()


async def test_events_reach_an_activity_which_may_heartbeat_with_them(
    tmp_path: Path, target: SshTarget
) -> None:
    runner = runner_of(tmp_path, QUICK, "quick.yml")
    env = ActivityEnvironment()
    beats: list[Any] = []
    env.on_heartbeat = lambda *details: beats.append(details)

    def on_event(event: RunnerEvent) -> None:
        if event.task:
            activity.heartbeat(event.task)

    @activity.defn
    async def deploy() -> bool:
        return (await runner.run_async("quick.yml", target, on_event=on_event)).ok

    assert await env.run(deploy)
    assert ("Answer",) in beats


def processes_naming(directory: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and str(directory).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


async def test_run_async_relays_events_on_the_loop_and_cancels(
    tmp_path: Path, target: SshTarget
) -> None:
    runner = runner_of(tmp_path, SLOW, "slow.yml")
    loop_thread = threading.get_ident()
    waiting = asyncio.Event()
    threads: set[int] = set()

    def on_event(event: RunnerEvent) -> None:
        threads.add(threading.get_ident())
        if event.event == "runner_on_start" and event.task == "Wait":
            waiting.set()

    task = asyncio.create_task(runner.run_async("slow.yml", target, on_event=on_event))
    await asyncio.wait_for(waiting.wait(), 30)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 15
    assert threads == {loop_thread}
    assert list((tmp_path / "work" / "runs").iterdir()) == []
