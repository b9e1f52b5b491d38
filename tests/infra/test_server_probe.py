"""Reading a server's and an app's state from what the health playbooks print, and judging it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from infra.ansible import MASK, mask_secrets
from infra.health import Certificate
from infra.server_probe import Thresholds, parse_app, parse_probe

PROBE = """load1 0.42
cpus 2
memory_kb 4027844
memory_available_kb 2013922
disk_kb 104857600
disk_free_kb 5242880
container_engine 5.4.2
"""


def test_a_server_short_of_disk_is_degraded_saying_why() -> None:
    reading = parse_probe(PROBE)
    assert (reading.cpus, reading.load1, reading.container_engine) == (2, 0.42, "5.4.2")
    assert reading.disk_free_percent == 5.0 and reading.memory_available_percent == 50.0
    [problem] = reading.problems(Thresholds(disk_low_percent=10))
    assert "5.0% of its disk free" in problem
    assert reading.problems(Thresholds(disk_low_percent=4)) == []


def test_a_server_without_podman_is_degraded_and_missing_values_stay_unknown() -> None:
    reading = parse_probe("load1 1.0\ncpus 2\ncontainer_engine \n")
    assert reading.container_engine is None and reading.disk_free_percent is None
    assert reading.problems(Thresholds()) == [
        "no container engine (podman): container apps cannot be built or run"
    ]


def test_an_app_read_on_its_server() -> None:
    app = parse_app(
        "found yes\nrelease 20261208-abc\nrestarted yes\nsupervisor alive\nprocess dead\n"
        "exits 4\n--- log\nTraceback (most recent call last):\nboom\n"
    )
    assert (app.found, app.release, app.restarted, app.supervised, app.running) == (
        True, "20261208-abc", True, True, False,
    )  # fmt: skip
    assert app.exits == 4 and not app.alive
    assert app.log_tail == "Traceback (most recent call last):\nboom"
    assert parse_app("found no\n").found is False
    assert parse_app("found yes\nrelease r\nsupervisor alive\nprocess alive\n").restarted is None


def test_a_certificate_is_expiring_within_the_threshold_or_the_last_third_of_its_life() -> None:
    now = datetime(2026, 12, 8, tzinfo=UTC)
    # Let's Encrypt's 90 days, renewed at 30 left: 20 days left is fine, 10 is not (14 days).
    letsencrypt = Certificate(now - timedelta(days=70), now + timedelta(days=20))
    assert not letsencrypt.expiring(now, timedelta(days=14))
    late = Certificate(now - timedelta(days=80), now + timedelta(days=10))
    assert late.expiring(now, timedelta(days=14)) and late.days_left(now) == 10
    # An edge's internal 12-hour certificate: renewed at 4 hours left, so 6 left is fine.
    internal = Certificate(now - timedelta(hours=6), now + timedelta(hours=6))
    assert not internal.expiring(now, timedelta(days=14))
    assert Certificate(now - timedelta(hours=9), now + timedelta(hours=3)).expiring(
        now, timedelta(days=14)
    )


def test_an_apps_secrets_are_masked_in_its_log_tail() -> None:
    tail = "connecting to postgresql://app:s3cret-pw@db/app\nSECRET_KEY=s3cret-pw-long\n"
    masked = mask_secrets(tail, ["s3cret-pw", "s3cret-pw-long", ""])
    assert "s3cret" not in masked
    assert masked.count(MASK) == 2  # the longer one masked whole, not in part
