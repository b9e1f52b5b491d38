"""``orchestrator deploy domain``: a project's custom domains through a real API process: added,
listed, refused when another project has one or the name is no DNS name, removed."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cli.conftest import Cli
from tests.cli.test_server_cli import unique


@pytest.fixture
def project(cli: Cli) -> dict[str, Any]:
    created: dict[str, Any] = cli.json("project", "create", "--name", unique("dom"))
    return created


def test_add_list_remove_and_the_refusals(cli: Cli, project: dict[str, Any]) -> None:
    name = project["name"]
    domain = f"{name}.Example.COM."  # as a person types it: DNS compares without case or dot
    added = cli.json("deploy", "domain", "add", name, domain)
    assert added["name"] == f"{name}.example.com" and added["project_id"] == project["id"]
    again = cli.json("deploy", "domain", "add", name, f"{name}.example.com")
    assert again["name"] == added["name"]  # adding it twice changes nothing
    human = cli("deploy", "domain", "add", name, f"www.{name}.example.com")
    assert human.exit_code == 0 and "served from its next deploy" in human.stdout
    listed = cli.json("deploy", "domain", "list", name)
    assert [d["name"] for d in listed] == [f"{name}.example.com", f"www.{name}.example.com"]

    # Another project cannot take it; a name that is not a DNS name says the rule.
    other = cli.json("project", "create", "--name", unique("dom"))["name"]
    taken = cli.json("deploy", "domain", "add", other, f"{name}.example.com", expect=1)
    assert taken["error"]["status"] == 409 and "another project" in taken["error"]["detail"]
    bad = cli.json("deploy", "domain", "add", name, "localhost", expect=2)
    assert bad["error"]["status"] == 422 and "two labels or more" in bad["error"]["detail"]

    removed = cli.json("deploy", "domain", "remove", name, f"{name}.example.com")
    assert removed["removed"] is True
    assert [d["name"] for d in cli.json("deploy", "domain", "list", name)] == [
        f"www.{name}.example.com"
    ]
    missing = cli.json("deploy", "domain", "remove", name, f"{name}.example.com", expect=3)
    assert missing["error"]["status"] == 404
