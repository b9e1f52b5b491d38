"""The state file and the process bookkeeping `down` and `status` rely on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import Settings
from stack import services, state


def sleeper(*, group: bool = False) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "import signal; signal.pause()"],
        process_group=0 if group else None,
    )


def test_state_file_round_trip_and_removal(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert state.read_state(settings) is None
    state.write_state(settings, {"supervisor_pid": 1, "services": []})
    assert state.read_state(settings) == {"supervisor_pid": 1, "services": []}
    assert [p.name for p in tmp_path.iterdir()] == ["stack.json"]  # no temporary file left
    state.remove_state(settings)
    assert state.read_state(settings) is None


def test_a_reused_pid_is_not_ours() -> None:
    proc = sleeper()
    try:
        started = state.create_time(proc.pid)
        assert state.alive(proc.pid, started)
        assert not state.alive(proc.pid, (started or 0) - 100)  # another process, same PID
        assert not state.alive(None)
    finally:
        proc.kill()
        proc.wait()
    assert not state.alive(proc.pid, started)


def test_kill_leftovers_takes_the_whole_group() -> None:
    leader = sleeper(group=True)
    try:
        started = state.create_time(leader.pid)
        procs = [(leader.pid, started, True)]
        assert state.kill_leftovers(procs, timeout=10) == []  # SIGTERM was enough
        assert leader.wait(10) is not None
        assert state.wait_gone(procs, 1) == []
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait()


def test_child_env_makes_every_service_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "TEMPORAL_ADDRESS", "API_URL", "DOCKER_HOST"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"ORCHESTRATOR_{name}", raising=False)
    settings = Settings(home=tmp_path, api_port=1234, redis_port=4321, temporal_port=5555)
    env = services.child_env(settings)
    assert env["ORCHESTRATOR_HOME"] == str(tmp_path.resolve())
    assert env["ORCHESTRATOR_REDIS_URL"] == env["REDIS_URL"] == "redis://127.0.0.1:4321/0"
    assert env["ORCHESTRATOR_TEMPORAL_ADDRESS"] == env["TEMPORAL_ADDRESS"] == "127.0.0.1:5555"
    assert env["DATABASE_URL"].endswith(str(tmp_path.resolve() / "orchestrator.db"))
    assert env["ORCHESTRATOR_API_URL"] == "http://127.0.0.1:1234"
    socket = f"unix://{tmp_path.resolve() / 'podman' / 'docker.sock'}"
    assert env["ORCHESTRATOR_DOCKER_HOST"] == env["DOCKER_HOST"] == socket
    assert [s.name for s in services.infrastructure(settings)] == [
        "temporal",
        "redis",
        "containers",
    ]


def test_docker_host_is_read_from_its_conventional_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORCHESTRATOR_DOCKER_HOST", raising=False)
    monkeypatch.setenv("DOCKER_HOST", "ssh://builder@docker.example")
    settings = Settings(home=tmp_path)
    assert settings.docker_host == "ssh://builder@docker.example"
    assert "containers" in [s.name for s in services.externals(settings)]


def test_given_servers_are_not_started(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        temporal_address="temporal.example:7233",
        redis_url="redis://:secret@redis.example:6379/0",
        docker_host="tcp://docker.example:2375",
    )
    assert services.infrastructure(settings) == []
    externals = {e.name: e.address for e in services.externals(settings)}
    assert externals["temporal"] == "temporal.example:7233"
    assert externals["containers"] == "tcp://docker.example:2375"
    assert services.child_env(settings)["DOCKER_HOST"] == "tcp://docker.example:2375"
    assert "secret" not in externals["redis"]
    assert [s.name for s in services.applications(settings)] == [
        "api",
        "temporal-worker",
        "bridges",
    ]


def test_the_bot_runs_only_with_a_token(tmp_path: Path) -> None:
    assert services.BOT not in [s.name for s in services.applications(Settings(home=tmp_path))]
    settings = Settings(home=tmp_path, telegram_token="1:abc")
    bot = services.applications(settings)[-1]
    assert bot.name == services.BOT and bot.argv[-2:] == ["-m", "bot"]
    # Healthy once its ready file names it: `python -m bot` writes it when updates can arrive.
    assert bot.probe == services.Probe("ready", str(tmp_path / "run" / "bot.ready"))


def test_probes(tmp_path: Path) -> None:
    ready = tmp_path / "worker.ready"
    probe = services.Probe("ready", str(ready))
    assert not probe.check(os.getpid())
    ready.write_text(str(os.getpid()))
    assert probe.check(os.getpid())
    assert not probe.check(os.getpid() + 1)
    assert not services.Probe("tcp", "127.0.0.1:1").check()
    assert not services.Probe("docker", f"unix://{tmp_path / 'none.sock'}").check()


def test_the_docker_probe_pings_a_docker_api(docker_host: str) -> None:
    assert services.Probe("docker", docker_host).check()
