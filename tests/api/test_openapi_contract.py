"""The API keeps its OpenAPI contract: schemathesis makes requests from the document (its
examples, the coverage phase's boundaries and invalid values and undocumented methods, then
Hypothesis's valid and invalid data) and checks every answer against it: no 5xx, only documented
statuses, content types, bodies and headers, valid data accepted, invalid data refused, a 405
naming the path's methods in ``Allow``.

The app runs on the suite's real servers (a migrated PostgreSQL database, Redis, the Temporal dev
server) under a real uvicorn, in a thread with an event loop of its own: schemathesis sends its
cases synchronously from the test, while the suite's loop is not running. PostgreSQL, not SQLite:
it refuses more (32-bit columns, NUL in text), and one database keeps the run short; every route
also runs on both in the other tests.

Chat messages go through Temporal's update-with-start and wait until a worker accepts them: a
stand-in PO session (tests/api/test_chats.py's probe) polls a task queue of this run, so they are
accepted at once instead of waiting 30 s; the sessions are terminated afterwards. Event streams
are never asked for (schemathesis sends ``Accept: */*``, which gets the JSON list);
tests/api/test_events_stream.py covers them.

A few rows are seeded, and about half the valid cases are aimed at them (decided by the generated
value, so a failing case and its replays agree), so that routes get past "not found" too.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis import Case
from schemathesis.config import SchemathesisConfig
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from api.app import create_app
from core.ids import po_session_workflow_id
from core.settings import Settings
from db.engine import Database
from db.migrate import upgrade_async
from db.users import ensure_admin_key
from tests.api.conftest import auth, live_server
from tests.api.test_chats import SessionProbe
from tests.api.test_servers import private_key
from tests.conftest import fresh_postgres_database

# Cases Hypothesis makes per operation and generation mode (valid, invalid); the coverage phase
# adds a fixed set. About 1,400 requests in all, in about 20 s.
FUZZ_EXAMPLES = 25
# With derandomization, every run (in CI too) sends the same requests.
SEED = 20_251_011
# A request the app does not answer within this fails its case instead of hanging the suite.
REQUEST_TIMEOUT_S = 10
# The Telegram user that exists, for the chat messages aimed at one.
TELEGRAM_USER = 777_000_111
PRIVATE_KEY = private_key()

CONFIG: dict[str, Any] = {
    "seed": SEED,
    "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
    "request-timeout": REQUEST_TIMEOUT_S,
    "generation": {
        "mode": "all",
        "max-examples": FUZZ_EXAMPLES,
        "deterministic": True,
        # Nothing is kept between runs: a run sends what the code and this file make.
        "database": "none",
        "dictionaries": {"integer": {"dictionary": "past-columns", "probability": 0.2}},
        # The API refuses NUL in any text (its description says so; no schema keyword says it of
        # every string without burying each one): valid cases carry none.
        "allow-x00": False,
    },
    # Integers at and past what 32- and 64-bit columns hold and what JSON carries exactly, drawn
    # for paths, queries and headers now and then: Hypothesis alone rarely draws them.
    "dictionaries": {
        "past-columns": {
            "values": [2**31 - 1, 2**31, -(2**31) - 1, 2**53, 2**63 - 1, 2**63, -(2**63) - 1, 2**64]
        }
    },
    # Each case stands alone; the stateful phase (links between operations) is not used.
    "phases": {"stateful": {"enabled": False}},
}


@dataclass
class ContractApi:
    """The app under test: its URL, the admin's key, seeded rows by the path parameter or body
    field that names them, and the chats that were written to."""

    url: str = ""
    key: str = ""
    known: dict[str, Any] = field(default_factory=dict)
    chats: set[int] = field(default_factory=set)

    def aim(self, case: Case) -> None:
        if "chat_id" in (case.path_parameters or {}):
            with contextlib.suppress(TypeError, ValueError):  # invalid cases send anything
                self.chats.add(int(case.path_parameters["chat_id"]))
        if case.meta is None or not case.meta.generation.mode.is_positive:
            return
        for name, value in (case.path_parameters or {}).items():
            if name in self.known and _heads(value):
                case.path_parameters[name] = self.known[name]
        if isinstance(case.body, dict):
            for name in ("project_id", "telegram_user_id"):
                if name in case.body and name in self.known and _heads(case.body[name]):
                    case.body[name] = self.known[name]
            if "private_key" in case.body:
                # A key is valid when it parses, which no schema can say: valid cases send one.
                case.body["private_key"] = PRIVATE_KEY


def _heads(value: Any) -> bool:
    return zlib.crc32(repr(value).encode()) % 2 == 0


class ServedApp(threading.Thread):
    """The app under uvicorn in a thread and an event loop of its own, until ``stop()``."""

    def __init__(self, settings: Settings, postgres_server_url: str) -> None:
        super().__init__(name="contract-api", daemon=True)
        self.settings = settings
        self.postgres_server_url = postgres_server_url
        self.api = ContractApi()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # raised again in the test's thread
            self.error = exc
        finally:
            self.ready.set()

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended already
                self._loop.call_soon_threadsafe(self._stopping.set)
        self.join(timeout=60)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        url = await fresh_postgres_database(self.postgres_server_url)
        await upgrade_async(url)
        settings = self.settings.model_copy(update={"database_url": url})
        database = Database(url)
        try:
            key = await ensure_admin_key(database, settings.home / "api_key")
        finally:
            await database.dispose()
        client = await Client.connect(
            settings.effective_temporal_address, data_converter=pydantic_data_converter
        )
        app = create_app(settings, temporal=client)
        session = Worker(
            client,
            task_queue=settings.temporal_task_queue,
            workflows=[SessionProbe],
            workflow_runner=UnsandboxedWorkflowRunner(),
        )
        async with session, app.router.lifespan_context(app), live_server(app) as base_url:
            try:
                async with httpx.AsyncClient(base_url=base_url, headers=auth(key)) as admin:
                    known = await _seed(admin)
                self.api = ContractApi(url=base_url, key=key, known=known)
                self.ready.set()
                await self._stopping.wait()
            finally:
                await _end_sessions(client, self.api.chats)


async def _seed(admin: httpx.AsyncClient) -> dict[str, Any]:
    """A row of each kind a path parameter names; what to aim at each."""

    async def created(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await admin.post(path, json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    project = await created("/projects", {"name": "shop"})
    task = await created("/tasks", {"project_id": project["id"], "spec": "add a /ping endpoint"})
    user = await created("/users", {"name": "ann", "telegram_id": TELEGRAM_USER})
    # A key of its own to revoke: the admin's key must keep working for the whole run.
    spare = await created("/api-keys", {"name": "spare"})
    server = {"handle": "web-1", "host": "192.0.2.10", "ssh_user": "deploy"}
    await created("/servers", {**server, "private_key": PRIVATE_KEY})
    secret = await admin.put("/projects/shop/secrets/API_TOKEN", json={"value": "s3cret"})
    assert secret.status_code == 201, secret.text
    return {
        "id_or_name": project["name"],
        "project_id_or_name": project["name"],
        "project_id": project["id"],
        "task_id": task["id"],
        "user_id": user["id"],
        "key_id": spare["id"],
        "id_or_handle": server["handle"],
        "name": "API_TOKEN",
        "telegram_user_id": TELEGRAM_USER,
    }


async def _end_sessions(client: Client, chats: set[int]) -> None:
    """The stand-in sessions would outlive their worker: other tests use the same workflow ids
    (po-<chat>) on the same Temporal server."""
    for chat_id in chats:
        with contextlib.suppress(RPCError):  # never started, or already ended
            await client.get_workflow_handle(po_session_workflow_id(chat_id)).terminate()


@pytest.fixture(scope="module")
def contract_api(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server_url: str,
    redis_url: str,
    temporal_address: str,
) -> Iterator[ContractApi]:
    settings = Settings(
        home=tmp_path_factory.mktemp("contract"),
        redis_url=redis_url,
        temporal_address=temporal_address,
        temporal_task_queue=f"contract-{uuid.uuid4().hex[:8]}",
        telegram_admins=[],
    )
    served = ServedApp(settings, postgres_server_url)
    served.start()
    try:
        served.ready.wait(timeout=120)
        if served.error is not None:
            raise served.error
        assert served.api.url, "the app did not start within 120 s"
        yield served.api
    finally:
        served.stop()
    if served.error is not None:
        raise served.error


# Made from the code at collection, when no server runs yet; the server serves the same.
DOCUMENT = create_app(Settings()).openapi()
schema = schemathesis.openapi.from_dict(
    copy.deepcopy(DOCUMENT), config=SchemathesisConfig.from_dict(CONFIG)
)


@schema.parametrize()
def test_every_operation_keeps_the_documented_contract(
    case: Case, contract_api: ContractApi
) -> None:
    contract_api.aim(case)
    case.call_and_validate(base_url=contract_api.url, headers=auth(contract_api.key))


def test_the_served_document_is_fuzzed(contract_api: ContractApi) -> None:
    served = httpx.get(f"{contract_api.url}/openapi.json", timeout=REQUEST_TIMEOUT_S)
    assert served.status_code == 200
    assert served.json() == DOCUMENT
