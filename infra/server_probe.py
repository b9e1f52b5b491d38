"""How a server is: one SSH round trip (deploy/ansible/server_health.yml) read into a verdict.

Reachable or not; if reachable, its load, memory, disk under the apps root and its container
engine's version. :meth:`ServerReading.problems` names what makes it DEGRADED.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from infra.ansible import AnsibleRunner, SshTarget

HEALTH_PLAYBOOK = "server_health.yml"
# A server that does not answer within this is unreachable for this tick.
PROBE_TIMEOUT_S = 60


class Thresholds(BaseModel):
    disk_low_percent: float = 10.0
    memory_low_percent: float = 5.0


class ServerReading(BaseModel):
    """One probe of one server; ``error`` set when SSH did not get through."""

    reachable: bool
    error: str | None = None
    load1: float | None = None
    cpus: int | None = None
    memory_mb: int | None = None
    memory_available_mb: int | None = None
    disk_gb: float | None = None
    disk_free_gb: float | None = None
    container_engine: str | None = Field(default=None, description="podman's version; None: none")
    seconds: float = 0.0

    @property
    def disk_free_percent(self) -> float | None:
        if not self.disk_gb or self.disk_free_gb is None:
            return None
        return round(100 * self.disk_free_gb / self.disk_gb, 1)

    @property
    def memory_available_percent(self) -> float | None:
        if not self.memory_mb or self.memory_available_mb is None:
            return None
        return round(100 * self.memory_available_mb / self.memory_mb, 1)

    def disk_low(self, thresholds: Thresholds) -> bool:
        free = self.disk_free_percent
        return free is not None and free < thresholds.disk_low_percent

    def problems(self, thresholds: Thresholds) -> list[str]:
        """What makes a reachable server DEGRADED, in words; empty: it is READY."""
        found = []
        if self.disk_low(thresholds):
            found.append(
                f"{self.disk_free_percent}% of its disk free ({self.disk_free_gb} GB), under "
                f"{thresholds.disk_low_percent}%"
            )
        memory = self.memory_available_percent
        if memory is not None and memory < thresholds.memory_low_percent:
            found.append(
                f"{memory}% of its memory available, under {thresholds.memory_low_percent}%"
            )
        if self.reachable and not self.container_engine:
            found.append("no container engine (podman): container apps cannot be built or run")
        return found


async def probe_server(
    runner: AnsibleRunner, target: SshTarget, apps_root: str | None, *, run_name: str
) -> ServerReading:
    """Read the server once; an unreachable one is a reading with its error, not an exception."""
    run = await runner.run_async(
        HEALTH_PLAYBOOK,
        target,
        {"apps_root": apps_root or ""},
        timeout_s=PROBE_TIMEOUT_S,
        run_name=run_name,
    )
    if run.status != "successful":
        error = (run.failed_msg or "the health probe failed").strip()
        return ServerReading(reachable=False, error=error[:2000], seconds=run.duration_s)
    return parse_probe(str(run.data.get("probe", "")), seconds=run.duration_s)


def parse_probe(output: str, *, seconds: float = 0.0) -> ServerReading:
    """The playbook's "key value" lines; a value missing or unreadable stays None."""
    values: dict[str, str] = {}
    for line in output.splitlines():
        key, _, value = line.strip().partition(" ")
        if key and value.strip():
            values[key] = value.strip()

    def number(key: str) -> float | None:
        try:
            return float(values[key])
        except (KeyError, ValueError):
            return None

    def mb(key: str) -> int | None:
        kb = number(key)
        return None if kb is None else int(kb // 1024)

    def gb(key: str) -> float | None:
        kb = number(key)
        return None if kb is None else round(kb / 1048576, 2)

    cpus = number("cpus")
    return ServerReading(
        reachable=True,
        load1=number("load1"),
        cpus=None if cpus is None else int(cpus),
        memory_mb=mb("memory_kb"),
        memory_available_mb=mb("memory_available_kb"),
        disk_gb=gb("disk_kb"),
        disk_free_gb=gb("disk_free_kb"),
        container_engine=values.get("container_engine"),
        seconds=seconds,
    )


APP_PLAYBOOK = "app_health.yml"
LOG_MARK = "--- log"


class AppReading(BaseModel):
    """One look at one app on its server; ``error`` set when SSH did not get through."""

    reachable: bool
    error: str | None = None
    found: bool = False  # the app has a directory on the server
    release: str | None = None  # the serving release (current.json)
    supervised: bool = False  # its supervisor is alive (it starts the app again when it exits)
    running: bool = False  # the app's own process is alive
    restarted: bool | None = None  # None: not asked to; else whether the start went through
    exits: int = 0  # how often the app exited since its last start
    log_tail: str = ""

    @property
    def alive(self) -> bool:
        """Up, for an app without a port: supervised, and its process running."""
        return self.found and self.supervised and self.running


async def inspect_app(
    runner: AnsibleRunner,
    target: SshTarget,
    apps_root: str | None,
    app_name: str,
    *,
    restart: bool = False,
    log_lines: int = 40,
) -> AppReading:
    """Read the app's serving release, its supervisor and its last log lines (``restart``:
    start the serving release again first)."""
    extravars: dict[str, object] = {
        "app_name": app_name,
        "restart": restart,
        "log_lines": log_lines,
    }
    if apps_root:
        extravars["apps_root"] = apps_root
    run = await runner.run_async(
        APP_PLAYBOOK, target, extravars, timeout_s=PROBE_TIMEOUT_S, run_name=f"app-{app_name}"
    )
    if run.status != "successful":
        error = (run.failed_msg or "looking at the app failed").strip()
        return AppReading(reachable=False, error=error[:2000])
    return parse_app(str(run.data.get("app", "")))


def parse_app(output: str) -> AppReading:
    head, _, log = output.partition(LOG_MARK)
    values = dict(
        (key, value.strip())
        for key, _, value in (line.strip().partition(" ") for line in head.splitlines())
        if key
    )
    restarted = values.get("restarted")
    exits = values.get("exits", "0")
    return AppReading(
        reachable=True,
        found=values.get("found") == "yes",
        release=values.get("release") or None,
        supervised=values.get("supervisor") == "alive",
        running=values.get("process") == "alive",
        restarted=None if restarted is None else restarted == "yes",
        exits=int(exits) if exits.isdigit() else 0,
        log_tail=log.strip("\n"),
    )
