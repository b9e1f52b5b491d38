"""The queue contracts: what producers may send, and the reasons a consumer gives for refusing."""

import json

import pytest

from core.contracts import QUEUE_MODELS, ContractError, json_schemas
from core.contracts.base import decode_fields
from core.contracts.engineering import EngineeringMessage
from core.contracts.worker import CreateWorker, DeleteWorker, WorkerCommand

VALID = {"task_id": "t1", "project_id": "p1", "user_id": "u1", "action": "feature"}


def test_round_trip_through_stream_fields():
    message = EngineeringMessage(**VALID, callback_stream="chat:42")
    fields = message.to_fields()
    assert list(fields) == ["data"]
    decoded = EngineeringMessage.from_fields({k.encode(): v.encode() for k, v in fields.items()})
    assert decoded == message
    assert decoded.version == "1"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"data": json.dumps({"project_id": "p", "user_id": "u"})}, "missing field 'task_id'"),
        ({"data": json.dumps({**VALID, "colour": "red"})}, "unknown field 'colour'"),
        ({"data": json.dumps({**VALID, "version": "2"})}, "unsupported contract version '2'"),
        ({"data": b"\xff\xfe not json"}, "is not valid JSON"),
        ({"data": "[1, 2]"}, "must hold a JSON object"),
        ({"payload": "{}"}, "has no 'data' field"),
        ({"data": json.dumps({**VALID, "action": "destroy"})}, "'action'"),
    ],
)
def test_bad_messages_are_refused_with_a_reason(fields, reason):
    with pytest.raises(ContractError) as caught:
        EngineeringMessage.from_fields(fields)
    assert reason in caught.value.reason


def test_worker_commands_are_told_apart_by_their_command():
    create = decode_fields(
        WorkerCommand,
        {"data": json.dumps({"command": "create", "config": {"name": "dev", "agent": "scripted"}})},
    )
    delete = decode_fields(
        WorkerCommand, {"data": json.dumps({"command": "delete", "worker_id": "w"})}
    )
    assert isinstance(create, CreateWorker) and create.config.agent == "scripted"
    assert isinstance(delete, DeleteWorker)
    with pytest.raises(ContractError, match="command"):
        decode_fields(WorkerCommand, {"data": json.dumps({"command": "explode"})})


def test_schema_covers_every_queue_and_forbids_unknown_fields():
    schemas = json_schemas()
    assert (
        set(schemas["queues"])
        == set(QUEUE_MODELS)
        == {
            "engineering:queue",
            "deploy:queue",
            "scaffolder:queue",
            "provisioner:queue",
            "ansible:deploy:queue",
            "worker:commands",
            "worker:responses",
        }
    )
    engineering = schemas["queues"]["engineering:queue"]
    assert engineering["additionalProperties"] is False
    assert {"task_id", "project_id", "user_id"} <= set(engineering["required"])
    assert {"engineering", "deploy", "provisioner", "task_progress"} <= set(schemas["results"])
