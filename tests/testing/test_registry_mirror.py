"""The loopback deploy target's podman gets Docker Hub's names from the tests' registry mirror.

Over SSH, as a deploy does: the target's sessions carry the mirror's ``registries.conf``
(testing/ssh_host.py's ``SetEnv``), so ``python:3.12-slim`` resolves from the mirror, and a
Dockerfile built on the target with ``--network host`` installs from PyPI through this machine's
proxy. Rootful podman keeps what it makes in the system storage: each test removes it.
"""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.registry_mirror import (
    INPUTS_LABEL,
    PYTHON_SLIM_REPOSITORY,
    PYTHON_SLIM_TAG,
    RegistryMirror,
)
from testing.ssh_host import SshHost

BASE = "python:3.12-slim"  # as a Dockerfile names it: a short name, docker.io's
DOCKERFILE = f"""\
FROM {BASE}
RUN pip install six==1.16.0
CMD python -c "import six; print(six.__version__)"
"""
BUILD_TIMEOUT_S = 300


def ok(sshd: SshHost, *command: str, timeout: float = 60) -> str:
    """Run ``command`` on the target; fail with its output unless it succeeds."""
    # ssh hands the remote shell one line: quote, so each argument arrives as it is.
    done = sshd.run(shlex.join(command), timeout=timeout)
    assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture
def image_name(sshd: SshHost, registry_mirror: RegistryMirror) -> Iterator[str]:
    """A fresh image name on the target; afterwards its containers, the image and the base
    pulled from the mirror are gone from the target's (the system's) storage."""
    name = f"localhost/orchestrator-test/mirror-{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        sshd.run("podman", "rm", "--force", "--filter", f"ancestor={name}", timeout=60)
        sshd.run("podman", "rmi", "--force", "--ignore", name, timeout=60)
        base = f"docker.io/{PYTHON_SLIM_REPOSITORY}:{PYTHON_SLIM_TAG}"
        sshd.run("podman", "rmi", "--ignore", base, timeout=60)  # kept if another image uses it


def test_the_targets_sessions_point_podman_at_the_mirror(
    sshd: SshHost, registry_mirror_server: RegistryMirror
) -> None:
    env = ok(sshd, "env")
    assert f"CONTAINERS_REGISTRIES_CONF={registry_mirror_server.registries_conf}" in env
    assert f'location = "{registry_mirror_server.address}"' in ok(
        sshd, "cat", str(registry_mirror_server.registries_conf)
    )


@pytest.mark.usefixtures("image_name")
def test_a_pull_of_python_slim_resolves_from_the_mirror(
    sshd: SshHost, registry_mirror: RegistryMirror
) -> None:
    seen = len(registry_mirror.requests())
    ok(sshd, "podman", "pull", BASE, timeout=120)
    manifest = f"GET /v2/{PYTHON_SLIM_REPOSITORY}/manifests/{PYTHON_SLIM_TAG} "
    assert any(manifest in line for line in registry_mirror.requests()[seen:]), (
        registry_mirror.log()[-3000:]
    )
    assert PYTHON_SLIM_REPOSITORY in registry_mirror.catalog()
    # The image the target now has is the one the mirror serves (an image's id is the digest of
    # its configuration), the stand-in of this recipe.
    pulled = ok(sshd, "podman", "image", "inspect", "--format", "{{.Id}}", BASE)
    served = registry_mirror.config_digest(PYTHON_SLIM_REPOSITORY, PYTHON_SLIM_TAG)
    assert served == f"sha256:{pulled.strip()}"
    config = registry_mirror.image_config(PYTHON_SLIM_REPOSITORY, PYTHON_SLIM_TAG) or {}
    assert INPUTS_LABEL in config["config"]["Labels"]


@pytest.mark.usefixtures("image_name", "registry_mirror")
def test_the_stand_in_offers_what_dockerfiles_count_on(sshd: SshHost) -> None:
    script = (
        "for c in python pip useradd; do command -v $c; done"
        " && python -c 'import venv, ssl' && echo $PIP_CERT"
    )
    run = ["podman", "run", "--rm", "--network", "host", BASE, "sh", "-c", script]
    found = ok(sshd, *run, timeout=120).split()
    assert [Path(path).name for path in found[:3]] == ["python", "pip", "useradd"]
    assert found[3] == "/etc/ssl/certs/ca-certificates.crt"
    command = ok(sshd, "podman", "image", "inspect", "--format", "{{json .Config.Cmd}}", BASE)
    assert command.strip() == '["python3"]'


def test_a_dockerfile_from_python_slim_builds_and_runs_on_the_target(
    sshd: SshHost, registry_mirror: RegistryMirror, image_name: str, tmp_path: Path
) -> None:
    context = tmp_path / "app"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE)
    build = ["podman", "build", "--network", "host", "--tag", image_name, str(context)]
    ok(sshd, *build, timeout=BUILD_TIMEOUT_S)
    printed = ok(sshd, "podman", "run", "--rm", "--network", "host", image_name)
    assert printed.strip() == "1.16.0"
    assert ok(sshd, "podman", "ps", "--all", "--quiet", "--filter", f"ancestor={image_name}") == ""
