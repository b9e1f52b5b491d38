"""What the benchmarks share: a Temporal dev server on a SQLite file, the scripted agent's
feature, and how a run reports and exits."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NoReturn

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from core.temporal import SEARCH_ATTRIBUTES
from testing import servers


async def temporal_on_file(database: Path) -> WorkflowEnvironment:
    """The dev server on a SQLite file (WAL), as the embedded stack keeps it."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(servers.TEMPORAL_BIN),
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_database_filename=str(database),
        dev_server_log_level="error",
        dev_server_extra_args=servers.TEMPORAL_SQLITE_PRAGMAS,
    )


def exit_now(status: int) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    # The Temporal core runtime can abort at interpreter exit (sdk-python #300).
    os._exit(status)


FEATURE_TEST_FILE = """import unittest

from app.feature_{i} import value


class Feature{i}Test(unittest.TestCase):
    def test_value(self):
        self.assertEqual(value(), {i})
"""


# The same feature's test for pytest, as a project of the ``app`` template writes its tests.
PYTEST_FEATURE_TEST_FILE = """from app.feature_{i} import value


def test_value() -> None:
    assert value() == {i}
"""


def feature_script(i: int, *, pytest: bool = False) -> dict[str, Any]:
    """The scripted agent's one round: feature ``i`` and its passing test (unittest, or pytest
    for the ``app`` template), committed."""
    test_file = PYTEST_FEATURE_TEST_FILE if pytest else FEATURE_TEST_FILE
    return {
        "rounds": [
            {
                "write": [
                    {
                        "path": f"app/feature_{i}.py",
                        "content": f"def value() -> int:\n    return {i}\n",
                    },
                    {"path": f"tests/test_feature_{i}.py", "content": test_file.format(i=i)},
                ],
                "commit": f"Add feature {i}",
                "report": "completed",
                "summary": f"Added feature {i} and its test.",
            }
        ]
    }


def report_and_exit(run: Coroutine[Any, Any, tuple[dict[str, Any], int]]) -> NoReturn:
    """Run the benchmark, print its figures as one JSON line, exit with its status (1 when it
    raised, with the traceback)."""
    try:
        figures, status = asyncio.run(run)
        print(json.dumps(figures), flush=True)
    except BaseException:
        traceback.print_exc()
        status = 1
    exit_now(status)
