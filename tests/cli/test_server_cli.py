"""``orchestrator server`` against a real API process: add (a key file, never echoed), list,
show, provision, remove, exit codes, --json everywhere. (``--wait``, which needs the worker and
the bridges too: tests/cli/test_server_provision_cli.py.)"""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from core.contracts.provisioner import PROVISIONER_QUEUE, ProvisionerMessage
from tests.api.test_servers import key_body, private_key
from tests.cli.conftest import Api, Cli


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519"
    path.write_text(private_key())
    path.chmod(0o600)
    return path


def add(cli: Cli, handle: str, key_file: Path, *extra: str, expect: int = 0) -> dict:
    result = cli.json(
        "server", "add", "--handle", handle, "--host", "127.0.0.1", "--port", "2201",
        "--user", "deploy", "--key-file", str(key_file), *extra, expect=expect,
    )  # fmt: skip
    assert isinstance(result, dict)
    return result


def test_prepare_made_the_secret_key(api: Api) -> None:
    path = api.settings().secret_key_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text().strip()


def test_add_list_show_remove(cli: Cli, key_file: Path, api: Api) -> None:
    handle = unique("web")
    server = add(cli, handle, key_file)
    assert server["handle"] == handle and server["status"] == "NEW"
    assert server["port"] == 2201 and server["ssh_user"] == "deploy"
    assert len(server["request_id"]) == 32 and server["key_ref"].startswith("secret:")

    listed = cli.json("server", "list")
    assert handle in {s["handle"] for s in listed}
    assert cli.json("server", "show", handle)["id"] == server["id"]
    assert cli.json("server", "show", server["id"])["handle"] == handle

    human = cli("server", "list")
    assert human.exit_code == 0 and handle in human.stdout
    shown = cli("server", "show", handle)
    assert shown.exit_code == 0 and "deploy@127.0.0.1:2201" in shown.stdout

    removed = cli.json("server", "remove", handle)
    assert removed == {"id": server["id"], "handle": handle, "removed": True}
    missing = cli.json("server", "show", handle, expect=3)
    assert missing["error"]["status"] == 404
    assert cli("server", "remove", handle).exit_code == 3

    # The key went in and was never shown, nor written to the API's log.
    log = (api.home / "logs" / "api.log").read_text()
    assert "POST" in log and key_body(key_file.read_text()) not in log


def test_human_add_does_not_echo_the_key(cli: Cli, key_file: Path) -> None:
    handle = unique("human")
    result = cli(
        "server", "add", "--handle", handle, "--host", "h.example", "--user", "u",
        "--key-file", str(key_file),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"Added server {handle}" in result.stdout and "provisioning requested" in result.stdout
    assert key_body(key_file.read_text()) not in result.output
    assert cli.json("server", "show", handle)["port"] == 22


def test_key_file_problems_are_usage_errors(cli: Cli, tmp_path: Path) -> None:
    handle = unique("nokey")
    error = add(cli, handle, tmp_path / "missing", expect=2)["error"]
    assert error["exit_code"] == 2 and "no key file" in error["message"]
    unreadable = tmp_path / "dir"
    unreadable.mkdir()
    assert "directory" in add(cli, handle, unreadable, expect=2)["error"]["message"]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert "empty" in add(cli, handle, empty, expect=2)["error"]["message"]
    not_a_key = tmp_path / "id.pub"
    not_a_key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBogus test\n")
    error = add(cli, handle, not_a_key, expect=2)["error"]
    assert error["status"] == 422 and "private key" in error["detail"]
    assert cli.json("server", "show", handle, expect=3)["error"]["status"] == 404


def test_a_duplicate_handle_and_a_plain_user_fail_with_1(
    cli: Cli, key_file: Path, api: Api
) -> None:
    handle = unique("dup")
    add(cli, handle, key_file)
    assert add(cli, handle, key_file, expect=1)["error"]["status"] == 409

    admin = {"Authorization": f"Bearer {api.settings().read_api_key()}"}
    with httpx.Client(base_url=api.url, headers=admin) as http:
        user = http.post("/users", json={"name": unique("dev")}).json()
        key = http.post("/api-keys", json={"name": "k", "user_id": user["id"]}).json()["key"]
    refused = cli.json(
        "server", "add", "--handle", unique("x"), "--host", "h", "--user", "u",
        "--key-file", str(key_file), expect=1, ORCHESTRATOR_API_KEY=key,
    )  # fmt: skip
    assert refused["error"]["status"] == 403
    # Reading is for everyone.
    assert handle in {s["handle"] for s in cli.json("server", "list", ORCHESTRATOR_API_KEY=key)}
    refused = cli.json("server", "remove", handle, expect=1, ORCHESTRATOR_API_KEY=key)
    assert refused["error"]["status"] == 403
    refused = cli.json("server", "provision", handle, expect=1, ORCHESTRATOR_API_KEY=key)
    assert refused["error"]["status"] == 403


def queued_messages(api: Api) -> dict[str, ProvisionerMessage]:
    """What is on provisioner:queue, by request_id (no bridge runs here: nothing takes it)."""
    with redis.Redis.from_url(api.redis_url) as client:
        entries = client.xrange(PROVISIONER_QUEUE)
    messages = (ProvisionerMessage.from_fields(fields) for _, fields in entries)
    return {message.request_id: message for message in messages}


def test_provision_queues_a_new_request(cli: Cli, key_file: Path, api: Api) -> None:
    handle = unique("prov")
    server = add(cli, handle, key_file)
    forced = cli.json("server", "provision", handle, "--force-reinstall")
    assert forced["id"] == server["id"] and forced["handle"] == handle
    assert len(forced["request_id"]) == 32 and forced["request_id"] != server["request_id"]
    plain = cli.json("server", "provision", server["id"])

    queued = queued_messages(api)
    assert queued[forced["request_id"]].force_reinstall
    assert not queued[plain["request_id"]].force_reinstall
    assert {queued[r].server_handle for r in (forced["request_id"], plain["request_id"])} == {
        handle
    }

    human = cli("server", "provision", handle)
    assert human.exit_code == 0, human.output
    assert f"Provisioning of server {handle} requested" in human.stdout
    missing = cli.json("server", "provision", unique("nope"), expect=3)
    assert missing["error"]["status"] == 404


def test_a_server_with_a_base_domain_names_its_apps_and_a_bad_one_is_refused(
    cli: Cli, key_file: Path
) -> None:
    handle = unique("edge")
    server = add(
        cli, handle, key_file, "--base-domain", "apps.example.com", "--tls", "internal",
        "--https-port", "8443",
    )  # fmt: skip
    assert server["base_domain"] == "apps.example.com"
    assert server["edge"]["tls"] == "internal" and server["edge"]["https_port"] == 8443
    assert server["database"] == {"port": 5432}  # its apps' PostgreSQL, on its default port
    shown = cli("server", "show", handle)
    assert "https://<project>.apps.example.com" in shown.stdout

    bad = add(cli, unique("edge"), key_file, "--base-domain", "not a domain", expect=2)
    assert bad["error"]["status"] == 422 and "base_domain" in json.dumps(bad["error"])
    bad = add(cli, unique("edge"), key_file, "--tls", "self-signed", expect=2)
    assert bad["error"]["status"] == 422 and "tls" in json.dumps(bad["error"])


def test_update_sets_and_takes_away_the_base_domain_and_keeps_the_rest_of_the_edge(
    cli: Cli, key_file: Path
) -> None:
    handle = unique("upd")
    add(cli, handle, key_file, "--https-port", "8443")
    named = cli.json("server", "update", handle, "--base-domain", "apps.example.org")
    assert named["base_domain"] == "apps.example.org" and named["edge"]["https_port"] == 8443
    internal = cli.json("server", "update", handle, "--tls", "internal")
    assert internal["edge"] == {**named["edge"], "tls": "internal"}
    assert internal["base_domain"] == "apps.example.org"
    bare = cli.json("server", "update", handle, "--no-base-domain")
    assert bare["base_domain"] is None and bare["edge"]["tls"] == "internal"

    moved = cli.json("server", "update", handle, "--database-port", "5433")
    assert moved["database"] == {"port": 5433} and moved["edge"] == bare["edge"]
    assert cli("server", "update", handle).exit_code == 2  # nothing to change
    bad = cli.json("server", "update", handle, "--base-domain", "-bad-", expect=2)
    assert bad["error"]["status"] == 422
    missing = cli.json("server", "update", unique("none"), "--tls", "acme", expect=3)
    assert missing["error"]["status"] == 404
