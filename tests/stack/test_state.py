"""The state file and the process bookkeeping `down` and `status` rely on."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from redis import AuthenticationError, Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.settings import Settings
from stack import services, state
from stack.supervisor import Child, service_states
from testing.servers import free_port


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
    password = settings.redis_password_file.read_text().strip()
    redis_url = f"redis://orchestrator:{password}@127.0.0.1:4321/0"
    assert env["ORCHESTRATOR_REDIS_URL"] == env["REDIS_URL"] == redis_url
    assert env["ORCHESTRATOR_TEMPORAL_ADDRESS"] == env["TEMPORAL_ADDRESS"] == "127.0.0.1:5555"
    assert env["DATABASE_URL"].endswith(str(tmp_path.resolve() / "orchestrator.db"))
    assert env["ORCHESTRATOR_API_URL"] == "http://127.0.0.1:1234"
    socket = f"unix://{tmp_path.resolve() / 'podman' / 'docker.sock'}"
    assert env["ORCHESTRATOR_DOCKER_HOST"] == env["DOCKER_HOST"] == socket
    assert [s.name for s in services.infrastructure(settings)] == [
        "temporal",
        "redis",
        "containers",
        "pypi-cache",
        "npm-cache",
    ]
    # The gateway (in the Temporal worker) finds the package caches where the stack runs them.
    assert env["ORCHESTRATOR_PYPI_CACHE_URL"] == f"http://127.0.0.1:{settings.pypi_cache_port}"
    assert env["ORCHESTRATOR_NPM_CACHE_URL"] == f"http://127.0.0.1:{settings.npm_cache_port}"


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
    # Only the package caches, which are always the stack's own.
    assert [s.name for s in services.infrastructure(settings)] == ["pypi-cache", "npm-cache"]
    externals = {e.name: e.address for e in services.externals(settings)}
    assert externals["temporal"] == "temporal.example:7233"
    assert externals["containers"] == "tcp://docker.example:2375"
    assert services.child_env(settings)["DOCKER_HOST"] == "tcp://docker.example:2375"
    assert "secret" not in externals["redis"]
    # Nor in its probe, which the state file keeps: the port is probed, not the password.
    [redis] = [e for e in services.externals(settings) if e.name == "redis"]
    assert redis.probe == services.Probe("tcp", "redis.example:6379")
    assert "secret" not in json.dumps(redis.to_dict())
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


def embedded_settings(home: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in ("REDIS_URL", "ORCHESTRATOR_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    return Settings(home=home, redis_port=free_port())


def test_the_redis_password_is_in_no_command_line_address_probe_or_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = embedded_settings(tmp_path / "home", monkeypatch)
    password = settings.effective_redis_url.split(":")[2].split("@")[0]
    redis = services.redis_server(settings)
    config = services.write_redis_config(settings)
    assert redis.argv[1:] == [str(config)]  # everything else is in the file, out of ps
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.redis_dir.stat().st_mode) == 0o700
    written = config.read_text()
    assert "user default off" in written
    assert hashlib.sha256(password.encode()).hexdigest() in written  # the hash, not the password
    # What `status` shows and the state file keeps: the probe names the password's file.
    bridges = next(s for s in services.applications(settings) if s.name == services.BRIDGES)
    assert bridges.address == f"redis://orchestrator:***@127.0.0.1:{settings.redis_port}/0"
    shown = json.dumps(
        [
            Child(redis).to_dict(settings),
            Child(bridges).to_dict(settings),
            service_states(None, settings),
        ]
    )
    assert password not in written + shown + " ".join(redis.argv)
    state.write_state(settings, {"services": [Child(redis).to_dict(settings)]})
    assert stat.S_IMODE(settings.state_file.stat().st_mode) == 0o600


def assert_strangers_refused(port: int) -> None:
    """A client without the ACL user's password gets nothing: no command, not even PING."""

    def stranger(**credentials: Any) -> Redis:
        # No retries: redis-py retries a refused login (a ConnectionError) with a backoff.
        return Redis(port=port, retry=Retry(NoBackoff(), 0), **credentials)

    with pytest.raises(AuthenticationError):  # redis-py's HELLO is refused
        stranger().ping()
    with pytest.raises(AuthenticationError, match="Authentication required"):  # NOAUTH
        stranger(protocol=2).xadd("engineering:queue", {"data": "{}"})
    # WRONGPASS: our user with a guess, and the default user, which is off.
    for credentials in ({"username": "orchestrator", "password": "guess"}, {"password": "x"}):
        with pytest.raises(AuthenticationError, match="invalid username-password pair"):
            stranger(**credentials).ping()


def test_the_embedded_redis_lets_in_only_its_acl_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = embedded_settings(tmp_path / "home", monkeypatch)
    redis = services.redis_server(settings)
    services.write_redis_config(settings)
    settings.logs_dir.mkdir(parents=True)
    proc = subprocess.Popen(redis.argv, umask=redis.umask or -1)
    try:
        deadline = time.monotonic() + 30
        while not redis.probe.check():  # the probe authenticates with the password's file
            assert proc.poll() is None and time.monotonic() < deadline, "redis did not start"
            time.sleep(0.05)
        client = Redis.from_url(settings.effective_redis_url)
        assert client.xadd("engineering:queue", {"data": "{}"})
        assert_strangers_refused(settings.redis_port)
        assert client.xlen("engineering:queue") == 1
        # The append-only file and its folder are its owner's only (the umask 0o077).
        written = [p for p in settings.redis_dir.rglob("*") if p.name != "redis.conf"]
        assert written
        assert {stat.S_IMODE(p.stat().st_mode) for p in written} <= {0o600, 0o700}
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)
