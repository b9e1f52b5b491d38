"""What a project's tests said: the outcome of ``python -m unittest`` (the template's ``make test``)
read from its output."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

# What a report keeps of the command's output: its end, where the failures are summed up.
OUTPUT_TAIL = 4000


class TestReport(BaseModel):
    __test__ = False  # not a pytest class
    passed: bool
    exit_code: int
    tests_run: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    failing_tests: list[str] = Field(default_factory=list)
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
