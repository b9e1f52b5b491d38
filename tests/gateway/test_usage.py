"""Reading usage from answers, pricing it, and the gateway's settings."""

from __future__ import annotations

import json

import pytest

from core.contracts.agents import TaskUsage
from db.tables import ModelUsage
from gateway import GatewaySettings, ModelPrice, PriceTable
from gateway.usage import Provider, UsageReader
from testing.standins.model_upstream import (
    A_CACHE_READ,
    A_CACHE_WRITE,
    A_IN,
    A_OUT,
    O_CACHED,
    O_IN,
    O_OUT,
    TEXT,
    anthropic_events,
    openai_events,
)


def read(provider: Provider, body: bytes, chunk: int, content_type: str = "text/event-stream"):
    reader = UsageReader(provider, "asked-model", content_type)
    for start in range(0, len(body), chunk):
        reader.feed(body[start : start + chunk])
    return reader.finish()


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_anthropic_usage_is_read_from_a_stream_cut_anywhere(chunk: int):
    body = b"".join(anthropic_events(TEXT)).replace(b"\n", b"\r\n")
    usage = read(Provider.anthropic, body, chunk)
    assert usage.seen
    assert (usage.tokens_in, usage.tokens_out) == (A_IN + A_CACHE_WRITE + A_CACHE_READ, A_OUT)
    assert (usage.cache_read, usage.cache_write) == (A_CACHE_READ, A_CACHE_WRITE)


@pytest.mark.parametrize("chunk", [1, 13, 10_000])
def test_openai_usage_is_read_from_a_stream_cut_anywhere(chunk: int):
    usage = read(Provider.openai, b"".join(openai_events(TEXT)), chunk)
    assert (usage.model, usage.tokens_in, usage.tokens_out, usage.cache_read) == (
        "gpt-test",
        O_IN,
        O_OUT,
        O_CACHED,
    )


def test_a_stream_that_breaks_off_counts_what_it_said():
    events = anthropic_events(TEXT)
    usage = read(Provider.anthropic, b"".join(events[:3]), 5)
    assert (usage.tokens_in, usage.tokens_out) == (A_IN + A_CACHE_WRITE + A_CACHE_READ, 1)


def test_json_answers_and_answers_without_usage():
    body = json.dumps({"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    usage = read(Provider.openai, body.encode(), 2, "application/json")
    assert (usage.model, usage.tokens_in, usage.tokens_out) == ("m", 3, 4)
    empty = read(Provider.openai, b'{"error": {"message": "no"}}', 4, "application/json")
    assert not empty.seen
    assert not read(Provider.anthropic, b"not json", 4, "application/json").seen


def test_prices_match_a_model_or_its_dated_snapshot_only():
    table = PriceTable()
    assert table.price("claude-sonnet-4-5-20250929") == table.price("claude-sonnet-4-5")
    assert table.price("gpt-5-2025-08-07") == table.price("gpt-5")
    # Other models are unknown, not priced as their nearest name.
    assert table.price("gpt-5.5") is None
    assert table.price("claude-opus-4-6") is None
    assert table.cost("gpt-5.5", tokens_in=10, tokens_out=10) is None
    custom = PriceTable({"m": ModelPrice(input=2, output=4)}, defaults=False)
    assert custom.cost("m", tokens_in=1_000_000, tokens_out=500_000, cache_read=500_000) == 4.0
    assert custom.price("gpt-5") is None


def test_calls_of_unpriced_models_count_their_tokens():
    usage = TaskUsage(task_id="t")
    usage.add(ModelUsage(task_id="t", provider="openai", tokens_in=5, tokens_out=6))
    usage.add(ModelUsage(task_id="t", provider="openai", tokens_in=1, tokens_out=1, cost_usd=0.5))
    assert (usage.calls, usage.tokens, usage.cost_usd, usage.unpriced_calls) == (2, 13, 0.5, 1)


def test_settings_come_from_the_environment_and_keep_keys_secret(monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_ANTHROPIC_BASE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("ORCHESTRATOR_OPENAI_BASE_URL", "http://127.0.0.1:2")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret-value")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret-value")
    monkeypatch.setenv("ORCHESTRATOR_GATEWAY_PRICES", '{"m": {"input": 1, "output": 2}}')
    settings = GatewaySettings()
    assert settings.anthropic_base_url == "http://127.0.0.1:1"
    assert settings.openai_base_url == "http://127.0.0.1:2"
    assert settings.anthropic_api_key is not None
    assert settings.anthropic_api_key.get_secret_value() == "sk-ant-secret-value"
    assert PriceTable(settings.gateway_prices).price("m") == ModelPrice(input=1, output=2)
    shown = repr(settings) + str(settings.model_dump())
    assert "secret-value" not in shown


async def test_the_activities_open_report_and_close(gateway, socket_dir):
    from temporalio.testing import ActivityEnvironment

    from activities.gateway import GatewayActivities, OpenGatewayInput
    from testing.standins.model_upstream import OPENAI_MODEL
    from tests.gateway.conftest import uds_client

    activities = GatewayActivities(gateway)
    env = ActivityEnvironment()
    sock = socket_dir / "t" / "gateway.sock"
    request = OpenGatewayInput(task_id="t1", socket_path=str(sock))
    await env.run(activities.open_gateway, request)
    await env.run(activities.open_gateway, request)  # a retry: same socket, still served
    async with uds_client(sock) as client:
        answer = await client.post("/v1/responses", json={"model": OPENAI_MODEL, "input": "x"})
        assert answer.status_code == 200
    usage = await env.run(activities.gateway_usage, "t1")
    assert (usage.calls, usage.tokens) == (1, O_IN + O_OUT)
    assert usage.model_dump()["tokens"] == O_IN + O_OUT
    await env.run(activities.close_gateway, "t1")
    assert not sock.exists()
    assert not gateway.is_open("t1")
