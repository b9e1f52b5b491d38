"""First and cached install of the app template's dependencies in sealed Workers (the ratio).

    python bench/package_install.py [--quick]

Starts its own package caches (proxpi and verdaccio as the stack runs them, with an empty home of
their own: nothing cached), Redis, a Temporal dev server, a migrated SQLite database, the gateway
and the container service (podman serving the Docker API, or DOCKER_HOST); builds the scripted
Worker image once (cached by content hash, like the tests); renders the ``app`` template with
its modules (``backend``, or ``--modules``: each combination has its own uv.lock), then:

1. Worker 1 (made by ``WorkerActivities.create_container``, like every Worker: no network, the
   registry path through the task's gateway socket) installs the project's lockfile (the
   packages, versions and hashes of its uv.lock; see SYNC for why not ``uv sync --locked``)
   with an empty uv cache: every package comes from upstream through proxpi.
2. Worker 2, new, again with an empty uv cache, does the same: only the registry cache can help.

Per install: the seconds the install took inside the Worker, the packages it installed, and the
requests proxpi sent upstream, counted from proxpi's own log. Prints a table, the ratio
first / cached, then one JSON line. Exits non-zero when an install fails or when the second one
sent anything upstream; no timing is a pass/fail threshold (machines are noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make the project importable

import docker  # noqa: E402
from redis.asyncio import Redis  # noqa: E402
from temporalio.client import Client  # noqa: E402
from temporalio.testing import ActivityEnvironment  # noqa: E402

from activities.workers import CreateContainerInput, WorkerActivities  # noqa: E402
from bench.common import report_and_exit, temporal_on_file  # noqa: E402
from core.paths import APP_TEMPLATE_DIR  # noqa: E402
from core.settings import Settings  # noqa: E402
from db.engine import Database  # noqa: E402
from db.migrate import upgrade_async  # noqa: E402
from gateway import Gateway, GatewaySettings  # noqa: E402
from infra.containers import ContainerRuntime  # noqa: E402
from infra.forges.scaffold import render  # noqa: E402
from infra.images import ImageBuilder  # noqa: E402
from testing import servers  # noqa: E402

INSTALL_TIMEOUT_S = 900
# In the Worker: the lockfile's packages, at its versions and hashes, into the project's .venv,
# with the Worker's own (empty) uv cache; "took <start> <end>" around the install alone, as the
# Tester installs (infra/workers.py). Not `uv sync`: it downloads from the files' PyPI URLs the
# lockfile names, past the cache. `uv export --frozen` reads only the lockfile; `uv pip sync`
# installs exactly that set through the Worker's uv pip index (the cache), checking every file
# against the lockfile's hash.
SYNC = """set -eu
uv export --quiet --frozen --no-emit-project --output-file /tmp/requirements.txt
uv venv --quiet .venv
start=$EPOCHREALTIME
VIRTUAL_ENV=$PWD/.venv uv pip sync /tmp/requirements.txt
echo "took $start $EPOCHREALTIME"
.venv/bin/python -c 'import pydantic_settings'
"""


class InstallFailed(Exception):
    pass


@dataclass
class Install:
    seconds: float  # the install inside the Worker
    packages: int  # what uv installed
    upstream: list[str]  # proxpi's log lines for requests upstream during it


@dataclass
class Bench:
    activities: WorkerActivities
    runtime: ContainerRuntime
    image: str
    caches: servers.PackageCaches
    workdir: Path
    project: Path

    async def install(self, label: str) -> Install:
        """A new Worker with its own copy of the project, then the lockfile's install in it."""
        worker_id = f"bench-pkg-{label}-{uuid.uuid4().hex[:6]}"
        workspace = self.workdir / worker_id
        shutil.copytree(self.project, workspace)
        request = CreateContainerInput(
            worker_id=worker_id,
            task_id=f"task-{worker_id}",
            workflow_id=f"wf-{worker_id}",
            agent="scripted",  # no model: the registry path is every Worker's
            image=self.image,
            workspace=str(workspace),
        )
        try:
            await ActivityEnvironment().run(self.activities.create_container, request)
            since = self.caches.log_sizes()
            done = await self.runtime.exec(
                worker_id, ["bash", "-c", SYNC], timeout=INSTALL_TIMEOUT_S
            )
            upstream = self.caches.upstream_requests(since)["pypi"]
        finally:
            await self.runtime.remove(worker_id)
        took = re.search(r"^took (\S+) (\S+)$", done.stdout, re.M)
        installed = re.search(r"Installed (\d+) packages?", done.stderr)
        if done.exit_code != 0 or took is None or installed is None:
            raise InstallFailed(
                f"the install in Worker {label} exited {done.exit_code}:\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        seconds = float(took.group(2)) - float(took.group(1))
        return Install(seconds, int(installed.group(1)), upstream)


async def run(modules: list[str]) -> tuple[dict[str, Any], int]:
    figures: dict[str, Any] = {"modules": "+".join(modules)}
    with (
        tempfile.TemporaryDirectory(prefix="bench-pkg-") as tmp,
        servers.redis_server() as redis_url,
        servers.docker_host() as host,
    ):
        workdir = Path(tmp)
        client_docker = docker.DockerClient(base_url=host, timeout=120)
        builder = ImageBuilder(client_docker, servers.test_images_root() / "image-builds")
        began = time.perf_counter()
        image = (await asyncio.to_thread(builder.ensure, "scripted")).reference
        print(f"image {image} ready in {time.perf_counter() - began:.1f} s", flush=True)
        project = workdir / "project"
        render(APP_TEMPLATE_DIR, project, "bench", "", modules)
        locked = (project / "uv.lock").read_text().count("[[package]]")

        # The caches' own home: empty, so the first install is a first install for them too.
        caches_settings = Settings(
            home=workdir / "caches",
            pypi_cache_port=servers.free_port(),
            npm_cache_port=servers.free_port(),
        )
        db_url = f"sqlite+aiosqlite:///{workdir / 'orchestrator.db'}"
        await upgrade_async(db_url)
        db = Database(db_url)
        redis = Redis.from_url(redis_url)
        env = await temporal_on_file(workdir / "temporal.sqlite")
        try:
            with servers.package_caches(caches_settings) as caches:
                installs = await bench_installs(
                    caches, db, redis, env.client, client_docker, image, workdir, project
                )
        except InstallFailed as failed:
            print(f"FAILED: {failed}", flush=True)
            return figures, 1
        finally:
            await env.shutdown()
            await redis.aclose()
            await db.dispose()
            client_docker.close()
    first, cached = installs
    print(f"{'install':>8} {'seconds':>10} {'packages':>9} {'upstream requests':>18}")
    for label, install in (("first", first), ("cached", cached)):
        print(
            f"{label:>8} {install.seconds:10.2f} {install.packages:9d} {len(install.upstream):18d}"
        )
    ratio = first.seconds / cached.seconds
    print(
        f"the {figures['modules']} template's locked dependencies ({locked} in uv.lock) in a "
        f"sealed Worker: first {first.seconds:.2f} s, from the cache {cached.seconds:.2f} s "
        f"(first / cached {ratio:.1f}x)",
        flush=True,
    )
    figures.update(
        locked_packages=locked,
        packages=first.packages,
        first_s=round(first.seconds, 3),
        cached_s=round(cached.seconds, 3),
        ratio=round(ratio, 2),
        first_upstream_requests=len(first.upstream),
        cached_upstream_requests=len(cached.upstream),
    )
    if cached.upstream:
        print("FAILED: the second install went upstream:", *cached.upstream, sep="\n  ")
        return figures, 1
    if cached.packages != first.packages:
        print(f"FAILED: the installs differ: {first.packages} then {cached.packages} packages")
        return figures, 1
    return figures, 0


async def bench_installs(
    caches: servers.PackageCaches,
    db: Database,
    redis: Redis,
    client: Client,
    client_docker: docker.DockerClient,
    image: str,
    workdir: Path,
    project: Path,
) -> tuple[Install, Install]:
    gateway_settings = GatewaySettings(
        pypi_cache_url=caches.settings.pypi_cache_url,
        npm_cache_url=caches.settings.npm_cache_url,
    )
    # A short home: the task's gateway socket path must fit in 107 bytes.
    home = Path(tempfile.mkdtemp(prefix="o-"))
    settings = Settings(home=home, worker_memory="1g", worker_pids=256)
    runtime = ContainerRuntime(client_docker, settings)
    try:
        async with Gateway(db, gateway_settings) as gateway:
            activities = WorkerActivities(
                settings, redis=redis, client=client, gateway=gateway, runtime=runtime
            )
            bench = Bench(activities, runtime, image, caches, workdir, project)
            first = await bench.install("1")
            print(f"first install: {first.seconds:.2f} s", flush=True)
            cached = await bench.install("2")
            return first, cached
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    # The whole backend set takes about 15 s here (two installs of 36 packages): --quick keeps it.
    parser.add_argument("--quick", action="store_true", help="the same (it is quick already)")
    parser.add_argument(
        "--modules", default="backend", help="the template's modules, comma-separated (backend)"
    )
    args = parser.parse_args()
    report_and_exit(run(args.modules.split(",")))


if __name__ == "__main__":
    main()
