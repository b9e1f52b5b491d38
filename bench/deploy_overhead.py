"""What the orchestrator adds to a deploy beyond the Ansible playbook's own run time.

    python bench/deploy_overhead.py [--quick]

Starts its own Temporal dev server (a SQLite file, as the embedded stack keeps it), Redis, a
migrated SQLite database and an sshd on loopback (this machine is the server), runs the API, the
real worker and a real bridge of deploy:queue and ansible:deploy:queue in this process, scaffolds
one project into the local forge, then:

(a) deploys it N+1 times through the whole pipeline (POST /tasks -> deploy:queue -> bridge ->
    DeployWorkflow -> the DevOps graph -> ansible:deploy:queue -> AnsibleDeployWorkflow ->
    ansible-runner -> health check -> record). The first deploy (a new app on the server) is
    shown apart and left out of the medians. Per run:

    wall      the task's created_at -> completed_at in the database;
    playbook  ansible-runner's own run of deploy.yml, timed inside the activity;
    overhead  wall - playbook: the queues, Temporal round trips, the analysis (a clone and the
              EnvAnalyzer), the port, the release archive, the health check from here, the
              records and events; and by activity from both workflows' histories.

(b) runs the same deploy.yml with the same runner directly (no orchestrator: no queue, no
    workflow, no database), M times on the same app, so the ratio wall / bare playbook is
    measured on this machine in this run.

(c) deploys a compose app (the `app` template without its manifest: FastAPI in a container
    built on the server, its own PostgreSQL database there) once, then redeploys it N times:
    each redeploy rebuilds its image from the server's layer cache (the lockfile is unchanged).
    Its base image comes from the tests' registry mirror (testing/registry_mirror.py), built
    here on first use as the tests build it.

Prints a table and the medians, then one JSON line. Exits non-zero only when a deploy does not
complete; no timing is a pass/fail threshold (machines are noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make the project (and tests' helpers) importable

import docker  # noqa: E402
from redis.asyncio import Redis  # noqa: E402
from temporalio.api.enums.v1 import EventType as HistoryEventType  # noqa: E402
from temporalio.client import Client  # noqa: E402

from bench.common import exit_now, temporal_on_file  # noqa: E402
from core.enums import ProjectTemplate  # noqa: E402
from core.logging import configure_logging  # noqa: E402
from db.engine import Database  # noqa: E402
from db.migrate import upgrade_async  # noqa: E402
from infra.ansible import AnsibleRunner, SshTarget  # noqa: E402
from infra.release_archives import archive_vars  # noqa: E402
from testing import servers  # noqa: E402
from testing.apps import edge_of  # noqa: E402
from testing.deploy import DeployStack, deploy_stack_on  # noqa: E402
from testing.images import image_builder  # noqa: E402
from testing.registry_mirror import RegistryMirror, ensure_python_slim, registry_server  # noqa: E402
from testing.ssh_host import SshHost, ssh_host  # noqa: E402


def _seconds(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds()


async def activity_times(client: Client, workflow_id: str) -> dict[str, float]:
    """Seconds per activity type (scheduled -> closed) in a workflow's history."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    scheduled: dict[int, tuple[str, datetime]] = {}
    spent: dict[str, float] = defaultdict(float)
    closing = (
        HistoryEventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
        HistoryEventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
    )
    for event in history.events:
        when = event.event_time.ToDatetime()
        if event.event_type == HistoryEventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            scheduled[event.event_id] = (name, when)
        elif event.event_type in closing:
            attrs = (
                event.activity_task_completed_event_attributes
                if event.event_type == closing[0]
                else event.activity_task_failed_event_attributes
            )
            name, began = scheduled[attrs.scheduled_event_id]
            spent[name] += _seconds(began, when)
    return dict(spent)


async def one_deploy(
    stack: DeployStack, project: dict[str, Any], action: str, within: float = 300
) -> dict[str, Any]:
    created = await stack.deploy(project["id"], action)
    done = await stack.finished(created["id"], within=within)
    if done["status"] != "COMPLETED":
        raise RuntimeError(f"deploy {done['id']} {done['status']}: {done['error']}")
    wall = _seconds(
        datetime.fromisoformat(done["created_at"]), datetime.fromisoformat(done["completed_at"])
    )
    result = done["result"]
    ansible_id = f"ansible-deploy-{done['id']}-{result['release']}"
    by_activity = await activity_times(stack.client, done["workflow_id"])
    for name, seconds in (await activity_times(stack.client, ansible_id)).items():
        by_activity[f"ansible-deploy:{name}"] = seconds
    return {
        "wall_s": wall,
        "playbook_s": result["playbook_s"],
        "overhead_s": wall - result["playbook_s"],
        "by_activity": by_activity,
    }


def bare_playbook(stack: DeployStack, sshd: SshHost, project: str, m: int) -> list[float]:
    """deploy.yml run by the runner itself on the same app, as a person would run it by hand."""
    repo = stack.settings.forge_dir / "local" / f"{project}.git"
    archive = Path(tempfile.mkdtemp(prefix="bench-archive-")) / "release.tar.gz"
    subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar.gz", "-o", str(archive), "main"],
        check=True,
    )
    runner = AnsibleRunner(work_root=stack.home / "bench-ansible")
    target = SshTarget(
        host=sshd.host,
        port=sshd.port,
        user=sshd.user,
        private_key=sshd.private_key,
        known_hosts=sshd.known_hosts,
    )
    port = stack.settings.deploy_port_range.stop - 1  # not one the pipeline hands out first
    times = []
    steps: list[dict[str, float]] = []
    for i in range(m):
        extravars = {
            "app_name": f"{project}-bare",
            "release": f"bare-{i}",
            **archive_vars(archive),
            "app_port": port,
            "start_command": "python3 -m app",
            "port_env": "PORT",
            "health_path": "/health",
            "env": {"HOST": "127.0.0.1"},
            "apps_root": str(stack.apps_root),
            "edge": edge_of(stack.apps_root).playbook_vars(),
        }
        run = runner.run("deploy.yml", target, extravars, timeout_s=300)
        if not run.ok:
            raise RuntimeError(f"the bare playbook failed: {run.failed_msg}")
        times.append(run.duration_s)
        steps.append(run.data.get("release_steps") or {})
    runner.run(
        "stop.yml", target, {"app_name": f"{project}-bare", "apps_root": str(stack.apps_root)}
    )
    names = {name for taken in steps for name in taken}
    medians = {name: statistics.median(t.get(name, 0.0) for t in steps) for name in names}
    on_server = ", ".join(f"{name} {seconds:.2f}" for name, seconds in medians.items())
    print(f"the bare playbook's steps on the server (median s): {on_server}", flush=True)
    return times


def print_run(label: str, run: dict[str, Any]) -> None:
    print(
        f"{label:>8}  wall {run['wall_s']:6.2f} s  playbook {run['playbook_s']:6.2f} s  "
        f"overhead {run['overhead_s']:5.2f} s",
        flush=True,
    )


def print_breakdown(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median seconds per activity across runs, largest first."""
    names = {name for run in runs for name in run["by_activity"]}
    medians = {
        name: statistics.median(run["by_activity"].get(name, 0.0) for run in runs) for name in names
    }
    print("where the time goes (median s per activity, scheduled -> closed):", flush=True)
    for name, seconds in sorted(medians.items(), key=lambda item: -item[1]):
        print(f"  {seconds:6.2f}  {name}", flush=True)
    return {name: round(seconds, 3) for name, seconds in medians.items()}


@contextlib.contextmanager
def mirrored_target() -> Iterator[RegistryMirror]:
    """The registry mirror with python:3.12-slim in it, for the target's podman (pushed from
    the tests' image storage, built there first when it is not)."""
    with registry_server() as mirror:
        with servers.docker_host() as docker_url:
            client = docker.DockerClient(base_url=docker_url, timeout=300)
            try:
                ensure_python_slim(mirror, image_builder(client))
            finally:
                client.close()
        yield mirror


async def compose_runs(stack: DeployStack, n: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The compose app's first deploy (its image built cold or from earlier runs' layers), then
    N redeploys."""
    project = await stack.project("benchc", ProjectTemplate.app, remove=(".orchestrator.yml",))
    first = await one_deploy(stack, project, "create", within=900)
    print_run("compose", first)
    runs = []
    for i in range(n):
        runs.append(await one_deploy(stack, project, "redeploy"))
        print_run(f"c#{i + 1}", runs[-1])
    return first, runs


async def run(n: int, m: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp,
        servers.redis_server() as redis_url,
        mirrored_target() as mirror,
        ssh_host(mirror.target_environment()) as sshd,
    ):
        workdir = Path(tmp)
        configure_logging("bench", "INFO", workdir / "logs")  # the worker logs to a file
        db_url = f"sqlite+aiosqlite:///{workdir / 'orchestrator.db'}"
        await upgrade_async(db_url)
        db = Database(db_url)
        redis = Redis.from_url(redis_url)
        env = await temporal_on_file(workdir / "temporal.sqlite")
        try:
            async with deploy_stack_on(db, redis, env.client, sshd, workdir / "home") as stack:
                project = await stack.project("bench")
                first = await one_deploy(stack, project, "create")
                print_run("first", first)
                runs = []
                for i in range(n):
                    runs.append(await one_deploy(stack, project, "redeploy"))
                    print_run(f"#{i + 1}", runs[-1])
                bare = await asyncio.to_thread(bare_playbook, stack, sshd, "bench", m)
                compose_first, compose = await compose_runs(stack, n)
        finally:
            await env.shutdown()
            await redis.aclose()
            await db.dispose()
    result = figures(first, runs, bare, n, m)
    result.update(compose_figures(compose_first, compose, result["wall_s"]))
    return result


def compose_figures(
    first: dict[str, Any], runs: list[dict[str, Any]], process_wall: float
) -> dict[str, Any]:
    wall = statistics.median(run["wall_s"] for run in runs)
    playbook = statistics.median(run["playbook_s"] for run in runs)
    print(
        f"compose app (a container built on the server, its own PostgreSQL): first deploy "
        f"{first['wall_s']:.2f} s; redeploy (median of N={len(runs)}) wall {wall:.2f} s = "
        f"playbook {playbook:.2f} s + overhead {wall - playbook:.2f} s; "
        f"{wall / process_wall:.2f}x the process app's",
        flush=True,
    )
    return {
        "compose_first_wall_s": round(first["wall_s"], 3),
        "compose_wall_s": round(wall, 3),
        "compose_playbook_s": round(playbook, 3),
        "compose_to_process_ratio": round(wall / process_wall, 3),
    }


def figures(
    first: dict[str, Any], runs: list[dict[str, Any]], bare: list[float], n: int, m: int
) -> dict[str, Any]:
    wall = statistics.median(run["wall_s"] for run in runs)
    playbook = statistics.median(run["playbook_s"] for run in runs)
    overhead = statistics.median(run["overhead_s"] for run in runs)
    bare_p50 = statistics.median(bare)
    breakdown = print_breakdown(runs)
    print(
        f"bare deploy.yml by the runner (M={m}): median {bare_p50:.2f} s "
        f"({', '.join(f'{t:.2f}' for t in bare)})",
        flush=True,
    )
    print(
        f"deploy through the orchestrator (median of N={n}, the first deploy excluded): wall "
        f"{wall:.2f} s = playbook {playbook:.2f} s + overhead {overhead:.2f} s "
        f"({overhead / wall:.0%} of the wall time); wall / bare playbook = "
        f"{wall / bare_p50:.2f}x",
        flush=True,
    )
    return {
        "n": n,
        "m": m,
        "first_wall_s": round(first["wall_s"], 3),
        "wall_s": round(wall, 3),
        "playbook_s": round(playbook, 3),
        "overhead_s": round(overhead, 3),
        "overhead_share": round(overhead / wall, 3),
        "bare_playbook_s": round(bare_p50, 3),
        "wall_to_bare_ratio": round(wall / bare_p50, 3),
        "by_activity_s": breakdown,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="N=2, M=2")
    parser.add_argument("-n", type=int, help="deploys after the first (5)")
    parser.add_argument("-m", type=int, help="bare playbook runs (3)")
    args = parser.parse_args()
    n = args.n or (2 if args.quick else 5)
    m = args.m or (2 if args.quick else 3)
    started = time.monotonic()
    try:
        result = asyncio.run(run(n, m))
        result["bench_s"] = round(time.monotonic() - started, 1)
        print(json.dumps(result), flush=True)
        status = 0
    except BaseException:
        traceback.print_exc()
        status = 1
    exit_now(status)


if __name__ == "__main__":
    main()
