"""The Tester's run in a Worker (``infra.workers.run_tests``): the manifest's command, its JUnit
report, the fallbacks. The Worker here is a directory and ``sh`` on this host (the commands are
the ones a real Worker runs); tests/workflows/test_engineering_e2e.py runs them in a real one."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any, cast

from infra.containers import ContainerRuntime, ExecResult
from infra.workers import run_tests

FAILING_REPORT = """<testsuites><testsuite>
<testcase classname="tests.test_greeting" name="test_greets"><failure message="'Hi' != 'Hello'"/>
</testcase></testsuite></testsuites>"""


class DirectoryWorker:
    """A Worker whose /workspace is ``root``: each exec is a process on this host."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.argvs: list[list[str]] = []

    async def exec(
        self,
        worker_id: str,
        argv: list[str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (ContainerRuntime.exec's signature)
        **options: Any,
    ) -> ExecResult:
        self.argvs.append(argv)
        env = {**os.environ, **(options.get("env") or {})}
        return await asyncio.to_thread(self._run, argv, env, timeout)

    def _run(self, argv: list[str], env: dict[str, str], timeout: float | None) -> ExecResult:
        try:
            done = subprocess.run(
                argv, cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return ExecResult(exit_code=124, stdout="", stderr="", timed_out=True)
        return ExecResult(exit_code=done.returncode, stdout=done.stdout, stderr=done.stderr)


def worker(tmp_path: Path, files: dict[str, str]) -> DirectoryWorker:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return DirectoryWorker(tmp_path)


async def outcome_of(place: DirectoryWorker, timeout_s: float = 30) -> Any:
    return await run_tests(cast(ContainerRuntime, place), "w", timeout_s=timeout_s)


MANIFEST = "test:\n  command: sh write_report.sh\n  junit: reports/junit.xml\n"


async def test_the_failing_test_is_named_from_the_junit_report(tmp_path: Path) -> None:
    script = (
        "echo 'collected 1 item'\nmkdir -p reports\n"
        f"cat > reports/junit.xml <<'XML'\n{FAILING_REPORT}\nXML\nexit 1\n"
    )
    place = worker(tmp_path, {".orchestrator.yml": MANIFEST, "write_report.sh": script})
    report = await outcome_of(place)
    assert not report.passed and report.command == "sh write_report.sh"
    assert report.failing_tests == ["tests.test_greeting.test_greets"]
    assert report.failure_messages == {"tests.test_greeting.test_greets": "'Hi' != 'Hello'"}
    # Read, the report is gone: the pull request commits what the workspace holds.
    assert not (tmp_path / "reports/junit.xml").exists()
    # The command's own output is the output; the report read after it is not part of it.
    assert "collected 1 item" in report.output and "<testsuite" not in report.output
    # Two commands in the Worker: the inputs read, then the tests run and their report taken.
    assert len(place.argvs) == 2


async def test_a_stale_report_is_never_read(tmp_path: Path) -> None:
    place = worker(
        tmp_path,
        {
            ".orchestrator.yml": MANIFEST,
            "write_report.sh": "echo 'it broke before the tests ran' >&2\nexit 1\n",
            "reports/junit.xml": FAILING_REPORT,  # an earlier run's
        },
    )
    report = await outcome_of(place)
    assert not report.passed and report.failing_tests == []
    assert report.summary == (
        "the test command wrote no JUnit XML at reports/junit.xml; judged by its exit code 1"
    )
    assert "it broke before the tests ran" in report.output
    assert not (tmp_path / "reports/junit.xml").exists()


async def test_an_old_report_that_cannot_be_removed_runs_nothing_and_says_why(
    tmp_path: Path,
) -> None:
    place = worker(
        tmp_path, {".orchestrator.yml": MANIFEST, "write_report.sh": "touch ran\nexit 0\n"}
    )
    (tmp_path / "reports" / "junit.xml").mkdir(parents=True)  # a directory: rm -f refuses it
    report = await outcome_of(place)
    assert not report.passed and report.exit_code == -1
    assert report.summary.startswith("no tests ran: the old reports/junit.xml cannot be removed")
    assert "Is a directory" in report.summary
    assert not (tmp_path / "ran").exists()
    # The manifest read, then the command's one exec: the old report's removal is part of it.
    assert len(place.argvs) == 2


async def test_without_a_manifest_make_test_runs_and_its_unittest_output_is_read(
    tmp_path: Path,
) -> None:
    makefile = "test:\n\t@echo 'Ran 4 tests in 0.01s' >&2; echo >&2; echo OK >&2\n"
    report = await outcome_of(worker(tmp_path, {"Makefile": makefile}))
    assert report.passed and report.tests_run == 4 and report.command == "make test"


async def test_a_manifest_without_a_test_command_runs_make_test_and_says_what_it_answered(
    tmp_path: Path,
) -> None:
    report = await outcome_of(worker(tmp_path, {".orchestrator.yml": "name: x\nservices: []\n"}))
    assert not report.passed and report.command == "make test"
    assert "No rule to make target 'test'" in report.output
    assert report.summary == "the test command exited with 2"


async def test_an_invalid_manifest_runs_nothing_and_says_why(tmp_path: Path) -> None:
    place = worker(tmp_path, {".orchestrator.yml": "test:\n  junit: /etc/passwd\n"})
    report = await outcome_of(place)
    assert not report.passed
    assert report.summary.startswith("no tests ran: .orchestrator.yml is invalid: test.junit:")
    assert len(place.argvs) == 1  # the manifest read, nothing run


async def test_an_unknown_backing_service_runs_nothing_and_names_the_known_ones(
    tmp_path: Path,
) -> None:
    manifest = "backing_services: [mysql]\ntest: make test\n"
    place = worker(tmp_path, {".orchestrator.yml": manifest})
    report = await outcome_of(place)
    assert not report.passed
    assert report.summary == (
        "no tests ran: .orchestrator.yml is invalid: backing_services: Value error, unknown "
        "backing service 'mysql': known are postgresql"
    )
    assert len(place.argvs) == 1  # the manifest read, nothing started, nothing run


async def test_a_hanging_command_ends_at_its_limit(tmp_path: Path) -> None:
    place = worker(tmp_path, {".orchestrator.yml": "test: sleep 30\n"})
    report = await outcome_of(place, timeout_s=0.5)
    assert not report.passed and report.summary == "the tests ran past their 0.5 s limit"
