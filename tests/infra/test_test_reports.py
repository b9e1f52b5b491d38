"""Test reports: the outcome of a project's tests from the JUnit XML its command wrote, else from
its unittest output or its exit code."""

from __future__ import annotations

import time

from infra.test_reports import MAX_MESSAGES, MESSAGE_CHARS, parse_junit, parse_unittest

# As pytest --junitxml writes it: one <testsuite> inside <testsuites>, the classname dotted.
PYTEST_XML = """<?xml version="1.0" encoding="utf-8"?>
<testsuites name="pytest tests">
  <testsuite name="pytest" errors="1" failures="1" skipped="1" tests="4" time="0.05">
    <testcase classname="tests.test_greeting" name="test_greets_by_name" time="0.001">
      <failure message="AssertionError: assert 'Hi' == 'Hello, Ada!'">def test_greets_by_name():
&gt;       assert greet("Ada") == "Hello, Ada!"
E       AssertionError: assert 'Hi' == 'Hello, Ada!'

tests/test_greeting.py:6: AssertionError</failure>
    </testcase>
    <testcase classname="tests.test_greeting" name="test_greets_nobody" time="0.001"/>
    <testcase classname="tests.test_store.StoreTest" name="test_saves" time="0.002">
      <error message="failed on setup with &quot;ConnectionRefusedError: [Errno 111]&quot;"
        >ConnectionRefusedError: [Errno 111] Connection refused</error>
    </testcase>
    <testcase classname="tests.test_store.StoreTest" name="test_later" time="0.000">
      <skipped type="pytest.skip" message="not yet">tests/test_store.py:20: not yet</skipped>
    </testcase>
  </testsuite>
</testsuites>
"""

# As node --test --test-reporter=junit writes it: a bare <testsuite> per describe() is allowed
# too, here the whole run is one <testsuites> with top-level tests and a nested suite.
NODE_XML = """<?xml version="1.0" encoding="utf-8"?>
<testsuites>
  <testcase name="adds" time="0.000412" classname="test"/>
  <testsuite name="greeting" time="0.002" disabled="0" errors="0" tests="2" failures="1"
      skipped="0" hostname="worker">
    <testcase name="greets by name" time="0.00131" classname="test" failure="1">
      <failure type="testCodeFailure" message="Expected values to be strictly equal:

'Hi' !== 'Hello, Ada!'
">
[Error [ERR_TEST_FAILURE]: Expected values to be strictly equal:

'Hi' !== 'Hello, Ada!'
] {
  code: 'ERR_TEST_FAILURE',
  failureType: 'testCodeFailure',
}
      </failure>
    </testcase>
    <testcase name="waves" time="0.0002" classname="test">
      <skipped type="todo" message="TODO"/>
    </testcase>
  </testsuite>
</testsuites>
"""


def test_a_pytest_report_names_each_failing_test_with_its_message() -> None:
    report = parse_junit(PYTEST_XML, 1, "2 failed", command="pytest --junitxml=junit.xml")
    assert not report.passed
    assert (report.tests_run, report.failures, report.errors, report.skipped) == (4, 1, 1, 1)
    failing = "tests.test_greeting.test_greets_by_name"
    erroring = "tests.test_store.StoreTest.test_saves"
    assert report.failing_tests == [failing, erroring]
    assert report.failure_messages[failing].startswith(
        "AssertionError: assert 'Hi' == 'Hello, Ada!'\ndef test_greets_by_name():"
    )
    assert "tests/test_greeting.py:6: AssertionError" in report.failure_messages[failing]
    assert "ConnectionRefusedError" in report.failure_messages[erroring]
    assert report.summary == "4 tests ran: 1 failed, 1 errors, 1 skipped"
    assert report.command == "pytest --junitxml=junit.xml"


def test_a_node_report_names_the_failing_test_of_a_nested_suite() -> None:
    report = parse_junit(NODE_XML, 1, "")
    assert (report.tests_run, report.failures, report.errors, report.skipped) == (3, 1, 0, 1)
    assert report.failing_tests == ["test.greets by name"]
    message = report.failure_messages["test.greets by name"]
    assert message.startswith("Expected values to be strictly equal:")
    assert "'Hi' !== 'Hello, Ada!'" in message


def test_a_bare_testsuite_that_passes_passes() -> None:
    xml = '<testsuite tests="2"><testcase classname="a" name="b"/><testcase name="c"/></testsuite>'
    report = parse_junit(xml, 0, "all good")
    assert report.passed and report.tests_run == 2 and report.failing_tests == []
    assert report.summary == "2 tests passed"


def test_passing_tests_do_not_pass_a_command_that_failed() -> None:
    report = parse_junit('<testsuite><testcase name="a"/></testsuite>', 2, "coverage too low")
    assert not report.passed
    assert report.summary == "1 tests passed, but the test command exited with 2"
    assert report.output == "coverage too low"


def test_failing_tests_fail_a_command_that_exited_0() -> None:
    xml = '<testsuite><testcase name="a"><failure message="no"/></testcase></testsuite>'
    report = parse_junit(xml, 0, "")
    assert not report.passed and report.failure_messages == {"a": "no"}


def test_messages_are_bounded() -> None:
    cases = "".join(
        f'<testcase name="t{i}"><failure message="{"x" * 5000}"/></testcase>' for i in range(50)
    )
    report = parse_junit(f"<testsuites><testsuite>{cases}</testsuite></testsuites>", 1, "")
    assert len(report.failing_tests) == 50
    assert len(report.failure_messages) == MAX_MESSAGES
    assert all(len(m) == MESSAGE_CHARS for m in report.failure_messages.values())


def test_malformed_xml_falls_back_to_the_exit_code_saying_why() -> None:
    report = parse_junit("<testsuite><testcase name=", 1, "Traceback ...\nboom")
    assert not report.passed and report.exit_code == 1
    assert report.summary.startswith("the JUnit XML could not be read (")
    assert report.summary.endswith("; judged by its exit code 1")
    assert report.output.endswith("boom")


def test_another_document_is_no_junit_report() -> None:
    report = parse_junit("<html><body>nope</body></html>", 0, "")
    assert report.passed  # the exit code says so
    assert "its root is <html>" in report.summary


def test_unreadable_xml_falls_back_to_the_unittest_output_when_there_is_one() -> None:
    output = "FAIL: test_y (tests.test_x.Case.test_y)\n---\n"
    output += "Ran 3 tests in 0.01s\n\nFAILED (failures=1)\n"
    report = parse_junit("", 1, output)
    assert report.failing_tests == ["tests.test_x.Case.test_y"] and report.tests_run == 3
    assert report.summary.startswith("the JUnit XML could not be read (")
    assert report.summary.endswith("from its unittest output: 3 tests ran: FAILED (failures=1)")


def test_an_entity_bomb_is_refused_unexpanded() -> None:
    bomb = '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
    bomb += "".join(
        f' <!ENTITY lol{i} "{f"&lol{i - 1};" * 10 if i > 1 else "&lol;" * 10}">\n'
        for i in range(1, 10)
    )
    bomb += ']>\n<testsuite><testcase name="&lol9;"/></testsuite>\n'
    started = time.monotonic()
    report = parse_junit(bomb, 0, "")
    assert time.monotonic() - started < 1
    assert "declares a document type or entities" in report.summary
    assert report.tests_run == 0


def test_unittest_output_is_still_read_without_junit() -> None:
    output = "Ran 2 tests in 0.003s\n\nOK\n"
    report = parse_unittest(output, 0)
    assert report.passed and report.tests_run == 2 and report.summary == "2 tests passed"
