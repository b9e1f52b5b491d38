"""The gateway's registry path: a task's socket reaches the real package caches (proxpi,
verdaccio: the session's, tests/conftest.py), links lead back through the path, and each request
is logged with its task; an unknown registry is a readable 404."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from core.ids import new_id
from db.engine import Database
from gateway import Gateway, GatewaySettings
from gateway.server import socket_path_for
from testing.servers import PackageCaches
from tests.gateway.conftest import Forwarders

# How a Worker addresses the path: the forwarder's loopback port.
WORKER_HOST = "127.0.0.1:8788"


@pytest_asyncio.fixture
async def registry_gateway(
    sqlite_database: Database, package_caches: PackageCaches
) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(
        pypi_cache_url=package_caches.settings.pypi_cache_url,
        npm_cache_url=package_caches.settings.npm_cache_url,
    )
    async with Gateway(sqlite_database, settings) as gateway:
        yield gateway


async def open_socket(gateway: Gateway, socket_dir: Path) -> tuple[str, Path]:
    task_id = new_id()
    sock = socket_path_for(socket_dir, task_id)
    await gateway.open(task_id, sock)
    return task_id, sock


async def test_an_unknown_registry_is_a_readable_404_logged_with_the_task(
    registry_gateway: Gateway,
    socket_dir: Path,
    forwarder: Forwarders,
    capfd: pytest.CaptureFixture[str],
) -> None:
    task_id, sock = await open_socket(registry_gateway, socket_dir)
    async with httpx.AsyncClient(base_url=forwarder(sock), timeout=30) as client:
        answer = await client.get("/registry/rubygems/gems/rails")
    assert answer.status_code == 404
    assert "no package registry 'rubygems'" in answer.text
    assert "/registry/pypi/" in answer.text and "/registry/npm/" in answer.text
    logged = capfd.readouterr()
    lines = [line for line in (logged.out + logged.err).splitlines() if "registry" in line]
    refused = [line for line in lines if "refused" in line and "rubygems" in line]
    assert refused and task_id in refused[0], lines


async def test_a_pypi_index_page_comes_through_with_links_that_stay_on_the_path(
    registry_gateway: Gateway,
    socket_dir: Path,
    forwarder: Forwarders,
    capfd: pytest.CaptureFixture[str],
) -> None:
    task_id, sock = await open_socket(registry_gateway, socket_dir)
    async with httpx.AsyncClient(base_url=forwarder(sock), timeout=60) as client:
        page = await client.get("/registry/pypi/index/six/")
        assert page.status_code == 200, page.text
        # The file links are relative: from the Worker they resolve under the same path.
        assert 'href="six-1.16.0-py2.py3-none-any.whl' in page.text
        wheel = await client.get("/registry/pypi/index/six/six-1.16.0-py2.py3-none-any.whl")
    assert wheel.status_code == 200 and wheel.content[:2] == b"PK"  # the wheel itself, no redirect
    logged = capfd.readouterr()
    lines = [line for line in (logged.out + logged.err).splitlines() if "registry request" in line]
    page_line = next(line for line in lines if "/index/six/" in line and "whl" not in line)
    assert task_id in page_line and "pypi" in page_line and "200" in page_line, lines


async def test_npm_metadata_points_its_tarballs_back_through_the_path(
    registry_gateway: Gateway, socket_dir: Path
) -> None:
    _, sock = await open_socket(registry_gateway, socket_dir)
    transport = httpx.AsyncHTTPTransport(uds=str(sock))
    async with httpx.AsyncClient(
        transport=transport, base_url=f"http://{WORKER_HOST}", timeout=60
    ) as client:
        packument = await client.get("/registry/npm/is-number")
        assert packument.status_code == 200, packument.text
        tarball = packument.json()["versions"]["7.0.0"]["dist"]["tarball"]
        assert tarball == f"http://{WORKER_HOST}/registry/npm/is-number/-/is-number-7.0.0.tgz"
        # A scoped name travels with its %2F as npm sends it.
        scoped = await client.get("/registry/npm/@types%2fnode")
        assert scoped.status_code == 200 and scoped.json()["name"] == "@types/node"
        got = await client.get(tarball.removeprefix(f"http://{WORKER_HOST}"))
    assert got.status_code == 200 and got.content[:2] == b"\x1f\x8b"  # a gzip tarball


async def test_a_worker_cannot_publish_or_clear_a_cache(
    registry_gateway: Gateway, socket_dir: Path, package_caches: PackageCaches
) -> None:
    _, sock = await open_socket(registry_gateway, socket_dir)
    transport = httpx.AsyncHTTPTransport(uds=str(sock))
    async with httpx.AsyncClient(transport=transport, base_url="http://w", timeout=60) as client:
        cleared = await client.delete("/registry/pypi/cache/list")  # proxpi's invalidation
        published = await client.put("/registry/npm/is-number", json={"name": "is-number"})
    assert (cleared.status_code, published.status_code) == (405, 405)
    assert "Invalidating" not in package_caches.pypi.log()  # what proxpi logs when cleared


async def test_the_workers_credentials_never_reach_a_cache(
    registry_gateway: Gateway, socket_dir: Path, package_caches: PackageCaches
) -> None:
    _, sock = await open_socket(registry_gateway, socket_dir)
    transport = httpx.AsyncHTTPTransport(uds=str(sock))
    planted = "worker-planted-credential-5e1a"
    async with httpx.AsyncClient(transport=transport, base_url="http://w", timeout=60) as client:
        answer = await client.get(
            "/registry/npm/is-number", headers={"authorization": f"Bearer {planted}"}
        )
    assert answer.status_code == 200
    # verdaccio logs each request's headers: the Worker's credential is not among them.
    assert "/is-number" in package_caches.npm.log()
    assert planted not in package_caches.npm.log()
