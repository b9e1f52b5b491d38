"""A server with a base domain: its apps go live at https://<project>.<base domain>, checked from
the orchestrator at that name (at the server, whatever DNS says) and verified with the edge's CA."""

from __future__ import annotations

import asyncio
import subprocess

from sqlmodel import col, select

from db.tables import Server
from testing.apps import edge_of
from testing.deploy import SERVER, DeployStack

BASE_DOMAIN = "apps.example.internal"  # no DNS knows it: only the edge's own CA can vouch for it


async def test_an_app_goes_live_at_its_https_name(deploy_stack: DeployStack) -> None:
    async with deploy_stack.db.session() as session:
        server = (await session.exec(select(Server).where(col(Server.handle) == SERVER))).one()
        server.base_domain = BASE_DOMAIN
        session.add(server)
        await session.commit()
    project = await deploy_stack.project()

    done = await deploy_stack.finished((await deploy_stack.deploy(project["id"]))["id"])

    # COMPLETED: the DevOps graph's health node asked the name itself and trusted the edge's CA.
    assert done["status"] == "COMPLETED", done["error"]
    https = edge_of(deploy_stack.apps_root).https_port
    name = f"{project['name']}.{BASE_DOMAIN}"
    assert done["result"]["deployed_url"] == f"https://{name}:{https}/"
    listed = (await deploy_stack.api.get("/servers/local")).json()
    assert listed["base_domain"] == BASE_DOMAIN
    certificate = listed["edge_ca"]
    assert certificate.startswith("-----BEGIN CERTIFICATE-----")
    ca = deploy_stack.home / "edge-ca.pem"
    ca.write_text(certificate)

    # A person with the server's CA reaches it by name, as curl --resolve stands in for DNS.
    answer = await asyncio.to_thread(
        subprocess.run,
        ["curl", "-sS", "--max-time", "10", "--cacert", str(ca), "--resolve",
         f"{name}:{https}:127.0.0.1", f"https://{name}:{https}/"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    assert f'"service": "{project["name"]}"' in answer.stdout
