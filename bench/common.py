"""What the benchmarks share: a Temporal dev server on a SQLite file, and how a run exits."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

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
