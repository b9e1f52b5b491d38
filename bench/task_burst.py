"""What queueing for Worker slots costs: a burst of engineering tasks against a few with no queue.

    python bench/task_burst.py [--quick] [--n N] [--rounds R] [--window S]

Starts its own Temporal dev server (SQLite file, WAL), Redis, a migrated SQLite database and the
container service (podman serving the Docker API, or DOCKER_HOST), builds the scripted Worker
image once (cached by content hash, like the tests), makes one project, then runs two phases,
each on a task queue of its own served by its own Temporal worker process (``python -m
stack.temporal_worker``, configured through its environment as the stack does: 4 Worker slots,
``ORCHESTRATOR_MAX_WORKERS=4``, and the default 16 activity and 8 workflow-task slots):

baseline  4 tasks posted at once, no queue (one per slot), R rounds one after the other;
burst     N tasks posted at once on the same 4 slots: N - 4 of them wait for a turn.

Tasks take the real path from the task row on: ``TaskService.create`` writes the row and its
``engineering:queue`` message (the outbox, as ``POST /tasks`` does), the bridge (``python -m
bridges``'s consumer, in this process) starts ``EngineeringWorkflow``, and the worker runs it with
the scripted agent playing one round (a feature and its passing test, committed), then ``make
test``, push and pull request. Before each phase its worker runs one task on its own, unmeasured
(the first one on the project also scaffolds it). Per phase:

tasks/min   tasks / (first task created -> last task COMPLETED, from the database);
temporal    the dev server process's CPU time (user + system, /proc through psutil) from the
            first post to the last completion, per task and as a share of one core;
worker      the worker process's CPU time per task, and its peak resident memory (VmHWM: the
            worker runs apart from this process so that its peak is its own);
waited      from the pool's own history (every run of ``turns-{queue}-workers``): each queued
            holder's time from its ask to its grant, summed in task-minutes.

Then the wait alone, on a third worker process: stand-in holders take the 4 slots (asks in their
names, as the tests make them) and the dev server's CPU is measured over a window (15 s; quick:
5 s); then N more tasks are posted and all queue up, and once their histories stand still the
dev server's and the worker's CPU are measured over the same window; the tasks' histories must
not grow meanwhile. The tasks are then cancelled as ``POST
/tasks/{id}/cancel`` does, which takes them out of the queue, and the slots given back.

Prints the figures and the ratio burst / baseline in tasks per minute (queueing costing nothing
keeps it near 1), then one JSON line. Exits non-zero when a task does not complete, when turns
were not granted in the order asked, when a pool does not end empty, when a waiting task's
history grows, or when the ratio falls below 0.5 (a loose floor: machines are noisy, a real
regression is not).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make the project (and testing) importable

import docker  # noqa: E402
import psutil  # noqa: E402
from redis.asyncio import Redis  # noqa: E402
from temporalio.client import Client, WorkflowHandle  # noqa: E402

from api.schemas import TaskCreate  # noqa: E402
from api.services.task_control import cancel  # noqa: E402
from bench.common import (  # noqa: E402
    feature_script,
    report_and_exit,
    temporal_on_file,
)
from core.contracts.engineering import ENGINEERING_QUEUE, EngineeringOptions  # noqa: E402
from core.contracts.workflows import (  # noqa: E402
    TURNS_GIVE_BACK,
    WORKERS_POOL,
    TurnGiveBack,
)
from core.enums import TaskStatus  # noqa: E402
from core.ids import turns_workflow_id  # noqa: E402
from core.logging import configure_logging  # noqa: E402
from core.settings import Settings  # noqa: E402
from db.engine import Database  # noqa: E402
from db.migrate import upgrade_async  # noqa: E402
from db.tables import Project, Task  # noqa: E402
from db.tasks import TaskService  # noqa: E402
from infra.images import ImageBuilder  # noqa: E402
from testing import servers  # noqa: E402
from testing.turns import PoolHistory, ask_turn, pool_history, pool_state  # noqa: E402
from testing.worker_process import spawn_worker, stop, wait_ready, worker_env  # noqa: E402
from testing.workflows import end_pools, make_project, running_bridge  # noqa: E402

SLOTS = 4
RATIO_FLOOR = 0.5
PHASE_TIMEOUT_S = 1800.0
POLL_S = 0.25


class BenchFailed(Exception):
    pass


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise BenchFailed(f"no VmHWM for process {pid}")


# -- the pool's history, every run of it ----------------------------------------------------------


# -- a phase: one worker process, its own task queue ----------------------------------------------


@dataclass
class Parts:
    client: Client
    db: Database
    redis: Redis
    project: Project
    home: Path
    workdir: Path
    temporal: psutil.Process
    env: dict[str, str]  # the worker's environment, but its task queue


@dataclass
class Round:
    tasks: int
    wall_s: float  # first task created -> last task completed (database times)
    temporal_cpu_s: float  # over post -> last completion seen
    worker_cpu_s: float
    seen_s: float  # post -> last completion seen here

    @property
    def per_minute(self) -> float:
        return self.tasks / self.wall_s * 60


@dataclass
class Phase:
    rounds: list[Round]
    peak_rss_mb: float
    history: PoolHistory
    pool_runs: int

    @property
    def tasks(self) -> int:
        return sum(r.tasks for r in self.rounds)

    @property
    def per_minute(self) -> float:
        return statistics.median(r.per_minute for r in self.rounds)

    def temporal_ms_per_task(self) -> float:
        return sum(r.temporal_cpu_s for r in self.rounds) / self.tasks * 1000

    def temporal_share(self) -> float:
        return sum(r.temporal_cpu_s for r in self.rounds) / sum(r.seen_s for r in self.rounds)

    def worker_ms_per_task(self) -> float:
        return sum(r.worker_cpu_s for r in self.rounds) / self.tasks * 1000

    def waited_task_minutes(self) -> float:
        return sum(self.history.waited_s.values()) / 60


async def post(parts: Parts, k: int, first: int) -> list[Task]:
    """``k`` engineering tasks as ``POST /tasks`` makes them: each row with its queue message."""
    service = TaskService(parts.db, parts.redis)
    tasks = []
    for i in range(first, first + k):
        options = EngineeringOptions(agent="scripted", script=feature_script(i), max_rounds=2)
        tasks.append(
            await service.create(
                TaskCreate(
                    project_id=parts.project.id, spec=f"Add feature {i}", engineering=options
                ).new_task(project_name=parts.project.name, user_id=parts.project.owner_id)
            )
        )
    return tasks


async def all_ended(service: TaskService, ids: set[str]) -> None:
    began = time.perf_counter()
    while True:
        ended = await service.end_times(ids)
        if all(ended.get(i) is not None for i in ids):
            return
        if time.perf_counter() - began > PHASE_TIMEOUT_S:
            missing = sum(ended.get(i) is None for i in ids)
            raise BenchFailed(f"{missing} of {len(ids)} tasks not ended")
        await asyncio.sleep(POLL_S)


async def post_and_wait(parts: Parts, worker: psutil.Process, k: int, first: int) -> Round:
    """Post ``k`` tasks at once and wait until every one has ended."""
    service = TaskService(parts.db, parts.redis)
    temporal0, worker0 = cpu_seconds(parts.temporal), cpu_seconds(worker)
    began = time.perf_counter()
    tasks = await post(parts, k, first)
    ids = {task.id for task in tasks}
    await all_ended(service, ids)
    seen = time.perf_counter() - began
    temporal1, worker1 = cpu_seconds(parts.temporal), cpu_seconds(worker)
    # A task's end is recorded before its Worker goes and its turn is given back: the round is
    # over once every run has closed, so that the next round starts on free slots.
    for task in tasks:
        await asyncio.wait_for(parts.client.get_workflow_handle(task.workflow_id).result(), 60)
    done = [await service.get(i) for i in ids]
    failed = [t for t in done if t.status != TaskStatus.completed or t.completed_at is None]
    if failed:
        raise BenchFailed(
            f"{len(failed)} of {k} tasks did not complete, e.g. {failed[0].id}: "
            f"{failed[0].status} {failed[0].error}"
        )
    first_created = min(t.created_at for t in done)
    last_completed = max(t.completed_at for t in done if t.completed_at is not None)
    return Round(
        tasks=k,
        wall_s=(last_completed - first_created).total_seconds(),
        temporal_cpu_s=temporal1 - temporal0,
        worker_cpu_s=worker1 - worker0,
        seen_s=seen,
    )


@contextlib.asynccontextmanager
async def worker_process(parts: Parts, name: str) -> AsyncIterator[tuple[str, psutil.Process]]:
    """``python -m stack.temporal_worker`` on a task queue of its own, with the bridge starting
    engineering tasks there; yields the queue and the process."""
    queue = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    env = {**parts.env, "ORCHESTRATOR_TEMPORAL_TASK_QUEUE": queue}
    proc = spawn_worker(env, parts.workdir / f"worker-{name}.out")
    try:
        await wait_ready(Settings(home=parts.home), proc)
        async with running_bridge(parts.redis, parts.client, queue, [ENGINEERING_QUEUE]):
            yield queue, psutil.Process(proc.pid)
    finally:
        stop(proc)


async def phase(parts: Parts, name: str, sizes: list[int], first: int) -> Phase:
    async with worker_process(parts, name) as (queue, worker):
        # One task on its own first: the worker's first run pays for its imports and caches.
        await post_and_wait(parts, worker, 1, first)
        first += 1
        rounds = []
        for k in sizes:
            rounds.append(await post_and_wait(parts, worker, k, first))
            first += k
            r = rounds[-1]
            print(
                f"  {name}: {k} tasks in {r.wall_s:.1f} s, {r.per_minute:.1f} tasks/min; "
                f"temporal CPU {r.temporal_cpu_s:.2f} s",
                flush=True,
            )
        history = await pool_history(parts.client, queue, WORKERS_POOL)
        final = await pool_state(parts.client, queue, WORKERS_POOL)
        peak = peak_rss_mb(worker.pid)
        await end_pools(parts.client, [turns_workflow_id(queue, WORKERS_POOL)])
    total = 1 + sum(sizes)
    if history.told != history.queued:
        raise BenchFailed(f"{name}: turns not given in the order asked")
    if (final.holding, final.waiting, final.granted_total) != ([], [], total):
        raise BenchFailed(
            f"{name}: the pool did not end empty: {len(final.holding)} holding, "
            f"{len(final.waiting)} waiting, {final.granted_total} granted of {total}"
        )
    return Phase(rounds=rounds, peak_rss_mb=peak, history=history, pool_runs=history.runs)


@dataclass
class Waiting:
    tasks: int
    window_s: float
    temporal_idle_share: float  # before the tasks were posted
    temporal_share: float
    worker_share: float
    events_added: int  # to the waiting tasks' histories during the window


async def history_lengths(client: Client, workflow_ids: list[str]) -> int:
    described = [await client.get_workflow_handle(i).describe() for i in workflow_ids]
    return sum(d.history_length for d in described)


async def waiting_phase(parts: Parts, k: int, first: int, window_s: float) -> Waiting:
    """``k`` tasks waiting and none running: stand-in holders take every slot (asks in their
    names, as ``testing.turns.ask_turn`` makes them), the tasks are posted and queue up; the
    dev server's and the worker's CPU are measured over ``window_s``; then the tasks are
    cancelled as ``POST /tasks/{id}/cancel`` does and the slots given back."""
    service = TaskService(parts.db, parts.redis)
    async with worker_process(parts, "waiting") as (queue, worker):
        holders = [(f"bench-holder-{i}", f"bench-slot-{i}") for i in range(SLOTS)]
        for holder, key in holders:
            answer = await ask_turn(
                parts.client, queue, WORKERS_POOL, holder, key, max_workers=SLOTS
            )
            if not answer.granted:
                raise BenchFailed(f"the stand-in {holder} was not granted a slot")
        # The same state but for the waiting tasks: the pool and its stand-ins, nothing else.
        await asyncio.sleep(1.0)
        idle0 = cpu_seconds(parts.temporal)
        await asyncio.sleep(window_s)
        idle = (cpu_seconds(parts.temporal) - idle0) / window_s
        tasks = await post(parts, k, first)
        began = time.perf_counter()
        while len((await pool_state(parts.client, queue, WORKERS_POOL)).waiting) < k:
            if time.perf_counter() - began > PHASE_TIMEOUT_S:
                raise BenchFailed(f"the {k} tasks did not all queue up")
            await asyncio.sleep(1.0)
        # The last asks' answers reach their workflows: then their histories stand still.
        workflow_ids = [task.workflow_id for task in tasks]
        length0 = await history_lengths(parts.client, workflow_ids)
        for _ in range(30):
            await asyncio.sleep(1.0)
            settled, length0 = length0, await history_lengths(parts.client, workflow_ids)
            if length0 == settled:
                break
        temporal0, worker0 = cpu_seconds(parts.temporal), cpu_seconds(worker)
        await asyncio.sleep(window_s)
        temporal1, worker1 = cpu_seconds(parts.temporal), cpu_seconds(worker)
        length1 = await history_lengths(parts.client, workflow_ids)
        for task in tasks:
            await cancel(parts.client, service, task)
        await all_ended(service, {task.id for task in tasks})
        ended = [await service.get(task.id) for task in tasks]
        if any(t.status != TaskStatus.cancelled for t in ended):
            raise BenchFailed("a waiting task did not end CANCELLED")
        pool = client_pool(parts.client, queue)
        for holder, key in holders:
            await pool.signal(TURNS_GIVE_BACK, TurnGiveBack(holder=holder, key=key))
        final = await pool_state(parts.client, queue, WORKERS_POOL)
        await end_pools(parts.client, [turns_workflow_id(queue, WORKERS_POOL)])
    if length1 != length0:
        raise BenchFailed(f"{length1 - length0} events added to waiting tasks' histories")
    if (final.holding, final.waiting, final.granted_total) != ([], [], SLOTS):
        raise BenchFailed(
            f"waiting: the pool did not end empty: {len(final.holding)} holding, "
            f"{len(final.waiting)} waiting, {final.granted_total} granted of {SLOTS}"
        )
    return Waiting(
        tasks=k,
        window_s=window_s,
        temporal_idle_share=idle,
        temporal_share=(temporal1 - temporal0) / window_s,
        worker_share=(worker1 - worker0) / window_s,
        events_added=length1 - length0,
    )


def client_pool(client: Client, task_queue: str) -> WorkflowHandle[Any, Any]:
    return client.get_workflow_handle(turns_workflow_id(task_queue, WORKERS_POOL))


# -- main ------------------------------------------------------------------------------------------


def keep_logs(workdir: Path) -> Path:
    """The workers' logs, copied out of the temporary directory before it goes."""
    kept = Path(tempfile.mkdtemp(prefix="bench-task-burst-logs-"))
    for log in [*workdir.glob("worker-*.out"), *(workdir / "home" / "logs").glob("*")]:
        if log.is_file():
            shutil.copy2(log, kept / log.name)
    return kept


def temporal_process() -> psutil.Process:
    """The dev server WorkflowEnvironment.start_local started: a child of this process."""
    found = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.name() == servers.TEMPORAL_BIN.name and "start-dev" in p.cmdline()
    ]
    if len(found) != 1:
        raise BenchFailed(
            f"expected one Temporal dev server among this process's children: {found}"
        )
    return found[0]


def report(baseline: Phase, burst: Phase, waiting: Waiting, n: int) -> dict[str, Any]:
    ratio = burst.per_minute / baseline.per_minute
    base_ms, burst_ms = baseline.temporal_ms_per_task(), burst.temporal_ms_per_task()
    waited = burst.waited_task_minutes()
    print(
        f"throughput: baseline {baseline.per_minute:.1f} tasks/min ({SLOTS} tasks, no queue, "
        f"median of {len(baseline.rounds)} rounds); burst {burst.per_minute:.1f} tasks/min "
        f"(N={n}, {len(burst.history.queued)} queued, {waited:.1f} task-minutes waited); "
        f"ratio burst/baseline {ratio:.2f}",
        flush=True,
    )
    print(
        f"temporal dev server CPU: {waiting.temporal_idle_share:.1%} of a core with the slots held "
        f"and nothing waiting, {waiting.temporal_share:.1%} with {waiting.tasks} tasks waiting "
        f"(over {waiting.window_s:g} s each; their histories grew by {waiting.events_added} "
        f"events); per task: baseline "
        f"{base_ms:.0f} ms ({baseline.temporal_share():.0%} of a core), burst {burst_ms:.0f} ms "
        f"({burst.temporal_share():.0%} of a core), ratio {burst_ms / base_ms:.2f}",
        flush=True,
    )
    print(
        f"worker process: peak RSS baseline {baseline.peak_rss_mb:.0f} MB, burst "
        f"{burst.peak_rss_mb:.0f} MB; CPU per task baseline {baseline.worker_ms_per_task():.0f} "
        f"ms, burst {burst.worker_ms_per_task():.0f} ms; {waiting.worker_share:.1%} of a core "
        f"while {waiting.tasks} tasks wait",
        flush=True,
    )
    print(
        f"all {n} completed; turns granted in the order asked ({len(burst.history.told)} queued "
        f"asks, the pool in {burst.pool_runs} run(s)); the pool ended empty",
        flush=True,
    )
    return {
        "baseline_tasks_per_min": round(baseline.per_minute, 2),
        "burst_tasks_per_min": round(burst.per_minute, 2),
        "ratio_burst_baseline": round(ratio, 3),
        "burst_wall_s": round(burst.rounds[0].wall_s, 1),
        "queued": len(burst.history.queued),
        "waited_task_minutes": round(waited, 1),
        "temporal_idle_share": round(waiting.temporal_idle_share, 4),
        "temporal_waiting_share": round(waiting.temporal_share, 4),
        "waiting_history_events_added": waiting.events_added,
        "temporal_ms_per_task_baseline": round(base_ms, 1),
        "temporal_ms_per_task_burst": round(burst_ms, 1),
        "temporal_share_baseline": round(baseline.temporal_share(), 3),
        "temporal_share_burst": round(burst.temporal_share(), 3),
        "worker_peak_rss_mb_baseline": round(baseline.peak_rss_mb, 1),
        "worker_peak_rss_mb_burst": round(burst.peak_rss_mb, 1),
        "worker_ms_per_task_baseline": round(baseline.worker_ms_per_task(), 1),
        "worker_ms_per_task_burst": round(burst.worker_ms_per_task(), 1),
        "worker_waiting_share": round(waiting.worker_share, 4),
        "pool_runs": burst.pool_runs,
    }


async def run(n: int, rounds: int, window_s: float) -> tuple[dict[str, Any], int]:
    figures: dict[str, Any] = {
        "n": n,
        "slots": SLOTS,
        "baseline_rounds": rounds,
        "window_s": window_s,
    }
    with (
        tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp,
        servers.redis_server() as redis_url,
        servers.docker_host() as host,
    ):
        workdir = Path(tmp)
        configure_logging("bench", "INFO", workdir / "logs")
        client_docker = docker.DockerClient(base_url=host, timeout=120)
        builder = ImageBuilder(client_docker, servers.test_images_root() / "image-builds")
        began = time.perf_counter()
        image = (await asyncio.to_thread(builder.ensure, "scripted")).reference
        print(f"image {image} ready in {time.perf_counter() - began:.1f} s", flush=True)
        client_docker.close()

        db_url = f"sqlite+aiosqlite:///{workdir / 'orchestrator.db'}"
        await upgrade_async(db_url)
        db = Database(db_url)
        redis = Redis.from_url(redis_url)
        env = await temporal_on_file(workdir / "temporal.sqlite")
        home = workdir / "home"
        try:
            temporal = temporal_process()
            parts = Parts(
                client=env.client,
                db=db,
                redis=redis,
                project=await make_project(db, name=f"burst-{uuid.uuid4().hex[:6]}"),
                home=home,
                workdir=workdir,
                temporal=temporal,
                env=worker_env(
                    home,
                    database_url=db_url,
                    redis_url=redis_url,
                    temporal_address=env.client.service_client.config.target_host,
                    task_queue="",
                    DOCKER_HOST=host,
                    ORCHESTRATOR_MAX_WORKERS=str(SLOTS),
                    # The limits the engineering tests give their Workers.
                    ORCHESTRATOR_WORKER_MEMORY="256m",
                    ORCHESTRATOR_WORKER_PIDS="128",
                ),
            )
            print(f"baseline: {rounds} round(s) of {SLOTS} tasks, after one unmeasured", flush=True)
            baseline = await phase(parts, "baseline", [SLOTS] * rounds, 0)
            print(f"burst: {n} tasks, after one unmeasured", flush=True)
            burst = await phase(parts, "burst", [n], 1 + SLOTS * rounds)
            print(f"waiting: {n} tasks queued behind stand-ins holding the slots", flush=True)
            waiting = await waiting_phase(parts, n, 2 + SLOTS * rounds + n, window_s)
            figures.update(report(baseline, burst, waiting, n))
        except BenchFailed as failed:
            print(f"FAILED: {failed}", flush=True)
            print(f"the logs are kept in {keep_logs(workdir)}", flush=True)
            return figures, 1
        finally:
            await env.shutdown()
            await redis.aclose()
            await db.dispose()
    if figures["ratio_burst_baseline"] < RATIO_FLOOR:
        print(
            f"FAILED: the burst ran at {figures['ratio_burst_baseline']:.2f} of the baseline's "
            f"tasks per minute (floor {RATIO_FLOOR})",
            flush=True,
        )
        return figures, 1
    return figures, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="N=24")
    parser.add_argument("--n", type=int, help="tasks in the burst (200)")
    parser.add_argument("--rounds", type=int, help="baseline rounds of 4 tasks (3)")
    parser.add_argument(
        "--window", type=float, help="seconds of CPU measured idle and while waiting (15; quick: 5)"
    )
    args = parser.parse_args()
    n = args.n or (24 if args.quick else 200)
    rounds = args.rounds or 3
    window_s = args.window or (5.0 if args.quick else 15.0)
    report_and_exit(run(n, rounds, window_s))


if __name__ == "__main__":
    main()
