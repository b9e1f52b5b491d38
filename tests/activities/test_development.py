"""What the Tester tells the agent for its next turn when the tests fail."""

from __future__ import annotations

from activities.development import failure_feedback
from infra.test_reports import parse_junit

REPORT = """<testsuite>
<testcase classname="tests.test_greeting" name="test_greets">
  <failure message="AssertionError: 'Hi' != 'Hello, Ada!'">Traceback (most recent call last):
  File "tests/test_greeting.py", line 6, in test_greets</failure>
</testcase>
<testcase classname="tests.test_greeting" name="test_waves"><error message="NameError: wave"/>
</testcase>
</testsuite>"""


def test_the_agent_is_told_each_failing_test_with_its_message() -> None:
    report = parse_junit(REPORT, 1, "2 failed in 0.1s", command="./run-tests")
    feedback = failure_feedback(report)
    assert feedback.splitlines() == [
        "The project's tests fail (2 tests ran: 1 failed, 1 errors, 0 skipped): "
        "tests.test_greeting.test_greets, tests.test_greeting.test_waves.",
        "The test command: ./run-tests",
        "- tests.test_greeting.test_greets: AssertionError: 'Hi' != 'Hello, Ada!'",
        "    Traceback (most recent call last):",
        '      File "tests/test_greeting.py", line 6, in test_greets',
        "- tests.test_greeting.test_waves: NameError: wave",
        "Its output ends with:",
        "2 failed in 0.1s",
    ]
