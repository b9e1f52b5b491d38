"""A server with a base domain: its apps go live at https://<project>.<base domain>, checked from
the orchestrator at that name (at the server, whatever DNS says) and verified with the edge's CA."""

from __future__ import annotations

from testing.apps import edge_of
from testing.deploy import DeployStack, curl_at, give_base_domain

BASE_DOMAIN = "apps.example.internal"  # no DNS knows it: only the edge's own CA can vouch for it


async def test_an_app_goes_live_at_its_https_name(deploy_stack: DeployStack) -> None:
    await give_base_domain(deploy_stack, BASE_DOMAIN)
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
    answer = await curl_at(str(ca), name, https)
    assert answer.returncode == 0, answer.stderr
    assert f'"service": "{project["name"]}"' in answer.stdout


async def test_a_custom_domain_is_served_from_the_next_deploy_and_gone_after_its_removal(
    deploy_stack: DeployStack,
) -> None:
    project = await deploy_stack.project()
    domain = f"{project['name']}.shop.example.net"
    added = await deploy_stack.api.post(f"/projects/{project['id']}/domains", json={"name": domain})
    assert added.status_code == 201, added.text

    done = await deploy_stack.finished((await deploy_stack.deploy(project["id"]))["id"])
    assert done["status"] == "COMPLETED", done["error"]
    https = edge_of(deploy_stack.apps_root).https_port
    # The server has no base domain: the custom domain is the app's name, and its URL.
    assert done["result"]["deployed_url"] == f"https://{domain}:{https}/"
    ca = deploy_stack.home / "edge-ca.pem"
    ca.write_text((await deploy_stack.api.get("/servers/local")).json()["edge_ca"])
    answer = await curl_at(str(ca), domain, https, "/health")
    assert answer.returncode == 0 and '"status": "ok"' in answer.stdout, answer.stderr

    removed = await deploy_stack.api.delete(f"/projects/{project['id']}/domains/{domain}")
    assert removed.status_code == 204
    again = await deploy_stack.finished((await deploy_stack.deploy(project["id"]))["id"])
    assert again["status"] == "COMPLETED", again["error"]
    assert again["result"]["deployed_url"] == f"http://127.0.0.1:{again['result']['port']}/"
    assert (await curl_at(str(ca), domain, https, "/health")).returncode != 0
