from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.agents import install_clis
from testing.standins.anthropic_api import AnthropicStandIn
from testing.standins.openai_api import OpenAIStandIn
from testing.standins.server import serve


@pytest.fixture(scope="session")
def agent_clis() -> dict[str, Path]:
    return install_clis()


@pytest.fixture
def anthropic_api() -> Iterator[tuple[AnthropicStandIn, str]]:
    standin = AnthropicStandIn()
    with serve(standin.app) as url:
        yield standin, url


@pytest.fixture
def openai_api() -> Iterator[tuple[OpenAIStandIn, str]]:
    standin = OpenAIStandIn()
    with serve(standin.app) as url:
        yield standin, url


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path
