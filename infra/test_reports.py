"""What a project's tests said: read from the JUnit XML the test command wrote (pytest, node's
test runner, anything that writes it), else from the output of ``python -m unittest`` (the
template's ``make test``), else from the exit code and the output's tail."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from pydantic import BaseModel, Field

# What a report keeps of the command's output: its end, where the failures are summed up.
OUTPUT_TAIL = 4000
# What a report keeps of each failing test's message, and of how many tests: it goes back to
# the agent in its next prompt and into the task's events.
MESSAGE_CHARS = 600
MESSAGE_LINES = 8
MAX_MESSAGES = 20
# A document type can declare entities that expand a small file into gigabytes (the "billion
# laughs"); JUnit XML never needs one, so a report declaring any is refused unread.
_DECLARATION = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


class TestReport(BaseModel):
    __test__ = False  # not a pytest class
    passed: bool
    exit_code: int
    tests_run: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    failing_tests: list[str] = Field(default_factory=list)
    failure_messages: dict[str, str] = Field(
        default_factory=dict,
        description="A failing test's message and the first lines of its failure, by its name "
        f"(at most {MAX_MESSAGES} tests)",
    )
    command: str = Field(default="make test", description="The test command that ran")
    summary: str = ""
    output: str = Field(default="", description="The command's last lines")


_RAN = re.compile(r"^Ran (\d+) tests? in", re.MULTILINE)
_VERDICT = re.compile(r"^(OK|FAILED)(?: \(([^)]*)\))?\s*$", re.MULTILINE)
_FAILING = re.compile(r"^(?:FAIL|ERROR): (\S+) \(([^)]+)\)", re.MULTILINE)


def parse_unittest(output: str, exit_code: int) -> TestReport:
    """The outcome of ``python -m unittest`` (the template's ``make test``) from its output."""
    ran = _RAN.findall(output)
    counts: dict[str, int] = {}
    verdicts = _VERDICT.findall(output)
    if verdicts:
        for part in (verdicts[-1][1] or "").split(","):
            name, _, value = part.strip().partition("=")
            if value.strip().isdigit():
                counts[name] = int(value)
    # 3.11+ print "FAIL: test_y (tests.test_x.Case.test_y)"; older ones "(tests.test_x.Case)".
    found = (_dedupe_name(f"{where}.{name}") for name, where in _FAILING.findall(output))
    failing = list(dict.fromkeys(found))
    passed = exit_code == 0 and (not verdicts or verdicts[-1][0] == "OK")
    total = int(ran[-1]) if ran else 0
    if passed:
        summary = f"{total} tests passed"
    elif verdicts:
        summary = f"{total} tests ran: {verdicts[-1][0]} ({verdicts[-1][1]})"
    else:
        summary = f"the test command exited with {exit_code}"
    return TestReport(
        passed=passed,
        exit_code=exit_code,
        tests_run=total,
        failures=counts.get("failures", 0),
        errors=counts.get("errors", 0),
        skipped=counts.get("skipped", 0),
        failing_tests=failing,
        summary=summary,
        output=output[-OUTPUT_TAIL:],
    )


def _dedupe_name(name: str) -> str:
    parts = name.split(".")
    if len(parts) >= 2 and parts[-1] == parts[-2]:
        return ".".join(parts[:-1])
    return name


def parse_junit(xml: str, exit_code: int, output: str, *, command: str = "make test") -> TestReport:
    """The outcome in a JUnit XML report (``<testsuites>`` or a bare ``<testsuite>``), with the
    command's exit code and output. A report that cannot be read falls back to the output and
    the exit code, the summary saying why."""
    try:
        if _DECLARATION.search(xml):
            raise ValueError("it declares a document type or entities, which JUnit XML never needs")
        root = ET.fromstring(xml)
        if root.tag not in ("testsuites", "testsuite"):
            raise ValueError(f"its root is <{root.tag}>, not <testsuites> or <testsuite>")
    except (ET.ParseError, ValueError) as exc:
        return judged_without_junit(
            output, exit_code, f"the JUnit XML could not be read ({exc})", command=command
        )
    total = failures = errors = skipped = 0
    failing: dict[str, str] = {}
    for case in root.iter("testcase"):
        total += 1
        name = ".".join(part for part in (case.get("classname"), case.get("name")) if part)
        failed = case.findall("failure")
        errored = case.findall("error")
        failures += bool(failed)
        errors += bool(errored) and not failed
        skipped += case.find("skipped") is not None and not (failed or errored)
        for problem in (*failed, *errored):
            if name not in failing:
                failing[name] = _message(problem)
    failed_count = failures + errors
    passed = exit_code == 0 and failed_count == 0
    if failed_count:
        summary = f"{total} tests ran: {failures} failed, {errors} errors, {skipped} skipped"
    elif exit_code != 0:
        summary = f"{total} tests passed, but the test command exited with {exit_code}"
    else:
        summary = f"{total} tests passed" + (f" ({skipped} skipped)" if skipped else "")
    return TestReport(
        passed=passed,
        exit_code=exit_code,
        tests_run=total,
        failures=failures,
        errors=errors,
        skipped=skipped,
        failing_tests=list(failing),
        failure_messages=dict(list(failing.items())[:MAX_MESSAGES]),
        command=command,
        summary=summary,
        output=output[-OUTPUT_TAIL:],
    )


def judged_without_junit(
    output: str, exit_code: int, why: str, *, command: str = "make test"
) -> TestReport:
    """The outcome when no JUnit XML can be read: ``why`` says so, then what the unittest output
    shows, else the exit code alone."""
    report = parse_unittest(output, exit_code)
    if report.tests_run or report.failing_tests:
        report.summary = f"{why}; from its unittest output: {report.summary}"
    else:
        report.summary = f"{why}; judged by its exit code {exit_code}"
    report.command = command
    return report


def _message(problem: ET.Element) -> str:
    """A failure's message attribute and the first lines of its text, bounded."""
    message = (problem.get("message") or "").strip()
    lines = [line for line in (problem.text or "").strip().splitlines() if line.strip()]
    detail = "\n".join(lines[:MESSAGE_LINES])
    if not detail or detail == message:
        text = message
    elif detail.startswith(message):  # pytest's text repeats the message first
        text = detail
    else:
        text = f"{message}\n{detail}"
    text = text.strip() or (problem.get("type") or problem.tag)
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"
