"""The edge in front of a server's apps (Caddy, from the target's packages): HTTPS names with its
internal CA, and releases switched behind it with no request lost."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from infra.ansible import AnsibleRunner, SshTarget
from testing.apps import (
    APP,
    answers,
    child_of,
    deploy,
    edge_ca,
    edge_of,
    pid_alive,
    pid_of,
    undeploy,
)
from testing.servers import free_port
from testing.waiting import eventually


class Load:
    """Requests in a loop from two clients, one opening a connection per request and one keeping
    its connection alive, as browsers and API clients do; every answer and failure counted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()

    def _loop(self, client: httpx.Client) -> None:
        with client:
            while not self._stop.is_set():
                try:
                    response = client.get(self.url)
                    response.raise_for_status()
                    self.answers[response.json()["message"]] += 1
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    self.failures.append(repr(exc))

    @contextmanager
    def running(self) -> Iterator[Load]:
        clients = [
            httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)),
            httpx.Client(timeout=10),
        ]
        threads = [threading.Thread(target=self._loop, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in threads:
                thread.join()

    def total(self) -> int:
        return sum(self.answers.values()) + len(self.failures)


def test_no_request_fails_during_a_redeploy_a_failed_release_and_a_rollback(
    runner: AnsibleRunner, target: SshTarget, app_repo: Path, apps_root: Path
) -> None:
    port = free_port()
    app_dir = apps_root / APP
    assert deploy(runner, target, app_repo, apps_root, "r1", port).ok
    load = Load(f"http://127.0.0.1:{port}/")
    with load.running():
        before = load.total()
        newer = deploy(runner, target, app_repo, apps_root, "r2", port, ref="v2")
        assert newer.ok, newer.failed_msg
        during_redeploy = load.total() - before

        # The failed release says why, with its log's tail; r2 never stopped serving.
        serving = pid_of(app_dir, "r2")
        broken = deploy(runner, target, app_repo, apps_root, "r3", port, ref="broken")
        assert not broken.ok
        assert "boom: the broken release cannot start" in (broken.failed_msg or "")
        assert pid_of(app_dir, "r2") == serving and pid_alive(serving)

        back = deploy(runner, target, app_repo, apps_root, "r1", port)
        assert back.ok, back.failed_msg
        assert back.data["previous_release"] == "r2"
    assert load.failures == []
    # The loop ran through every switch: both releases answered, and many requests each time.
    assert load.answers["hello from v2"] > 0 and load.answers["hello"] > 0
    assert during_redeploy > 20, load.answers
    # Each release took the slot the serving one did not; the rolled-back r1 serves now.
    assert newer.data["slot"] != back.data["slot"]
    assert httpx.get(f"http://127.0.0.1:{port}/").json()["message"] == "hello"
    assert not pid_alive(serving)


def test_the_apps_name_is_served_on_https_with_the_edges_internal_ca(
    runner: AnsibleRunner, target: SshTarget, app_repo: Path, apps_root: Path
) -> None:
    port = free_port()
    name = "hello.example.test"
    run = deploy(runner, target, app_repo, apps_root, "r1", port, extravars={"names": [name]})
    assert run.ok, run.failed_msg
    https = edge_of(apps_root).https_port

    def curl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--resolve", f"{name}:{https}:127.0.0.1", *args],
            capture_output=True,
            text=True,
        )

    verified = curl("--cacert", str(edge_ca(apps_root)), f"https://{name}:{https}/health")
    assert verified.returncode == 0, verified.stderr
    assert '"status": "ok"' in verified.stdout
    # A client that does not trust the server's CA is refused: the certificate is the edge's own.
    untrusted = curl(f"https://{name}:{https}/health")
    assert untrusted.returncode == 60, untrusted.stderr  # curl: peer certificate not verified
    # The app itself listens on loopback only, on a port of its own, not the app's port.
    internal = run.data["internal_port"]
    assert internal != port
    assert httpx.get(f"http://127.0.0.1:{internal}/health").status_code == 200

    # Undeployed, its name and port are the edge's no more.
    assert undeploy(runner, target, apps_root).ok
    gone = curl("--cacert", str(edge_ca(apps_root)), f"https://{name}:{https}/health")
    assert gone.returncode != 0
    assert not (apps_root / ".edge" / "sites" / f"{APP}.caddy").exists()


async def test_an_edge_killed_is_started_again_by_its_supervisor(
    runner: AnsibleRunner, target: SshTarget, app_repo: Path, apps_root: Path
) -> None:
    port = free_port()
    assert deploy(runner, target, app_repo, apps_root, "r1", port).ok
    edge = apps_root / ".edge"
    killed = child_of(edge, "caddy")
    os.kill(killed, signal.SIGKILL)

    async def serves_again() -> bool:
        return child_of(edge, "caddy") != killed and answers(port)

    await eventually(serves_again, "the edge to be started again and serve the app", within=30)
    assert "appctl: release caddy exited (status 137)" in (edge / "logs" / "caddy.log").read_text()


def test_a_retried_deploy_of_the_serving_release_touches_nothing(
    runner: AnsibleRunner, target: SshTarget, app_repo: Path, apps_root: Path
) -> None:
    """What a retry after a crash past the switch finds: its release serves already."""
    port = free_port()
    app_dir = apps_root / APP
    assert deploy(runner, target, app_repo, apps_root, "r1", port).ok
    first = deploy(runner, target, app_repo, apps_root, "r2", port, ref="v2")
    assert first.ok, first.failed_msg
    serving = pid_of(app_dir, "r2")
    load = Load(f"http://127.0.0.1:{port}/")
    with load.running():
        again = deploy(runner, target, app_repo, apps_root, "r2", port, ref="v2")
    assert again.ok, again.failed_msg
    assert again.data["previous_release"] == "r1" and again.data["slot"] == first.data["slot"]
    assert pid_of(app_dir, "r2") == serving and pid_alive(serving)
    assert load.failures == [] and set(load.answers) == {"hello from v2"}
    assert not list(apps_root.glob(f".{APP}-*.tar.gz"))  # the archive sent is not left behind
