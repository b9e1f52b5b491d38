"""A registry mirror on loopback for the deploy targets' podman: there is no Docker Hub here.

Deploy targets build a repository's Dockerfile with podman on the target. In tests the target is
this machine (testing/ssh_host.py), and a Dockerfile's ``FROM python:3.12-slim`` must resolve
without Docker Hub. So the tests run Debian's ``docker-registry`` on 127.0.0.1 and give the
target's sessions a ``registries.conf`` that mirrors ``docker.io`` to it; the production code
knows nothing of this.

- :func:`registry_server` starts ``docker-registry serve`` with a configuration of ours. Its
  storage is kept between sessions under ``~/.cache/orchestrator-tests/registry``, so what was
  pushed once stays; its configuration, log and ``registries.conf`` are the session's.
- :func:`ensure_python_slim` puts the stand-in of ``python:3.12-slim`` (testing/recipes/python-slim)
  in the mirror: built like the service images of infra/images.py and pushed once per hash of
  its recipe; a session whose mirror already has it only asks the registry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import httpx

from infra.images import RECIPE_VERSION, ImageBuilder, read_list
from testing import servers

REGISTRY_BIN = "docker-registry"
START_TIMEOUT_S = 30.0
PUSH_TIMEOUT_S = 600.0

PYTHON_SLIM_RECIPE = Path(__file__).parent / "recipes" / "python-slim"
# Where Dockerfiles look for it: docker.io's official images live under ``library/``.
PYTHON_SLIM_REPOSITORY = "library/python"
PYTHON_SLIM_TAG = "3.12-slim"  # a stand-in's tag: its Python is Debian's (3.11 on bookworm)
PYTHON_SLIM_LOCAL = "localhost/orchestrator/test-python-slim"
# The recipe's hash, on the image, so the mirror itself says which recipe its image came from.
INPUTS_LABEL = "orchestrator.test-inputs"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PYTHON_SLIM_CONFIG = [
    f"ENV PIP_CERT={CA_BUNDLE}",
    f"ENV SSL_CERT_FILE={CA_BUNDLE}",
    f"ENV REQUESTS_CA_BUNDLE={CA_BUNDLE}",
    # As the official image: pip as root in a build says nothing of it, and no version check.
    "ENV PIP_ROOT_USER_ACTION=ignore",
    "ENV PIP_DISABLE_PIP_VERSION_CHECK=1",
    "WORKDIR /",
    'CMD ["python3"]',
]

# What a manifest request accepts: podman pushes Docker v2 schema 2 or OCI manifests.
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    ]
)

_CONFIG = """\
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: {address}
"""

# The target's podman: Docker Hub's names resolve from the mirror first (podman falls back to
# docker.io itself, which fails here: a pull the mirror cannot serve fails loudly), and the
# mirror speaks plain HTTP on loopback.
_REGISTRIES_CONF = """\
unqualified-search-registries = ["docker.io"]

[[registry]]
prefix = "docker.io"
location = "docker.io"

[[registry.mirror]]
location = "{address}"
insecure = true

[[registry]]
prefix = "{address}"
location = "{address}"
insecure = true
"""

# Rootful podman's default ulimits cannot be applied in the containers this machine runs in
# ("error setting rlimit type 7: operation not permitted"), as for the stack's podman
# (stack/podman.py). A real server needs none of this: only the loopback target gets it.
_CONTAINERS_CONF = """\
[containers]
default_ulimits = []
"""


class RegistryError(RuntimeError):
    """The mirror cannot start or take an image; the message says why."""


@dataclass(frozen=True)
class RegistryMirror:
    address: str  # 127.0.0.1:PORT
    registries_conf: Path  # give it to podman as CONTAINERS_REGISTRIES_CONF
    containers_conf: Path  # this machine's podman settings, as CONTAINERS_CONF (see above)
    storage: Path
    log_file: Path

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def target_environment(self) -> dict[str, str]:
        """What the loopback target's sessions need for their podman to use the mirror."""
        return {
            "CONTAINERS_REGISTRIES_CONF": str(self.registries_conf),
            "CONTAINERS_CONF": str(self.containers_conf),
        }

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def requests(self) -> list[str]:
        """The access log's lines (``"GET /v2/... HTTP/1.1" 200 ...``), oldest first."""
        return [line for line in self.log().splitlines() if '"' in line and " HTTP/" in line]

    def catalog(self) -> list[str]:
        answer = httpx.get(f"{self.url}/v2/_catalog", timeout=10)
        answer.raise_for_status()
        return list(answer.json().get("repositories") or [])

    def config_digest(self, repository: str, tag: str) -> str | None:
        """The digest of the image configuration ``repository:tag`` names in the mirror (what
        podman shows as the image's id); None when the mirror has no such tag."""
        manifest = httpx.get(
            f"{self.url}/v2/{repository}/manifests/{tag}",
            headers={"Accept": MANIFEST_TYPES},
            timeout=30,
        )
        if manifest.status_code == 404:
            return None
        manifest.raise_for_status()
        return str(manifest.json()["config"]["digest"])

    def image_config(self, repository: str, tag: str) -> dict | None:
        """The image configuration the mirror serves for ``repository:tag``; None without one."""
        digest = self.config_digest(repository, tag)
        if digest is None:
            return None
        blob = httpx.get(f"{self.url}/v2/{repository}/blobs/{digest}", timeout=30)
        blob.raise_for_status()
        return dict(json.loads(blob.content))


def registry_root() -> Path:
    """The mirror's files kept between sessions, beside the tests' other image caches."""
    return servers.test_images_root() / "registry"


@contextlib.contextmanager
def registry_server(root: Path | None = None) -> Iterator[RegistryMirror]:
    """``docker-registry serve`` on 127.0.0.1:<free port>, answering ``/v2/``; stopped after."""
    if shutil.which(REGISTRY_BIN) is None:
        raise RegistryError("docker-registry is not installed (scripts/install.sh installs it)")
    storage = (root or registry_root()) / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    session = Path(tempfile.mkdtemp(prefix="o-registry-"))
    address = f"127.0.0.1:{servers.free_port()}"
    mirror = RegistryMirror(
        address=address,
        registries_conf=session / "registries.conf",
        containers_conf=session / "containers.conf",
        storage=storage,
        log_file=session / "registry.log",
    )
    config = session / "config.yml"
    config.write_text(_CONFIG.format(storage=storage, address=address))
    mirror.registries_conf.write_text(_REGISTRIES_CONF.format(address=address))
    mirror.containers_conf.write_text(_CONTAINERS_CONF)
    proc: subprocess.Popen[bytes] | None = None
    try:
        with mirror.log_file.open("ab") as out:
            proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        _wait_until_serving(mirror, proc)
        yield mirror
    finally:
        if proc is not None:
            servers.stop_process(proc)
        shutil.rmtree(session, ignore_errors=True)


def _wait_until_serving(mirror: RegistryMirror, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(f"{mirror.url}/v2/"):
        if proc.poll() is not None or time.monotonic() > deadline:
            state = f"exited with {proc.returncode}" if proc.poll() is not None else "timed out"
            raise RegistryError(f"docker-registry did not start ({state}); log:\n{mirror.log()}")
        time.sleep(0.05)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# --- the python:3.12-slim stand-in ----------------------------------------------------------


def python_slim_inputs(builder: ImageBuilder) -> str:
    """A hash of everything the stand-in is made of: its packages, the Debian suite, the CA
    bundle copied in and its configuration."""
    digest = hashlib.sha256()
    digest.update(f"recipe {RECIPE_VERSION}\0suite {builder.apt_source().suite}\0".encode())
    digest.update("\n".join(read_list(PYTHON_SLIM_RECIPE / "packages.txt")).encode() + b"\0")
    digest.update(hashlib.sha256(CA_BUNDLE.read_bytes()).digest())
    digest.update("\n".join(PYTHON_SLIM_CONFIG).encode())
    return digest.hexdigest()


def ensure_python_slim(mirror: RegistryMirror, builder: ImageBuilder) -> str:
    """The stand-in in the mirror as ``library/python:3.12-slim``, built and pushed unless the
    mirror already serves the one of this recipe; returns its hash."""
    inputs = python_slim_inputs(builder)
    if _mirror_has(mirror, inputs):
        return inputs
    # Sessions running side by side share the storage: one pushes, the next finds it there.
    with _lock(mirror.storage.parent / "python-slim.lock"):
        if not _mirror_has(mirror, inputs):
            local = _local_python_slim(builder, inputs)
            _push(builder.docker, local, f"{mirror.address}/{PYTHON_SLIM_REPOSITORY}")
    return inputs


def _mirror_has(mirror: RegistryMirror, inputs: str) -> bool:
    config = mirror.image_config(PYTHON_SLIM_REPOSITORY, PYTHON_SLIM_TAG)
    labels = ((config or {}).get("config") or {}).get("Labels") or {}
    return labels.get(INPUTS_LABEL) == inputs


def _local_python_slim(builder: ImageBuilder, inputs: str) -> str:
    """The stand-in in the builder's container storage, built when it is not there yet."""
    reference = f"{PYTHON_SLIM_LOCAL}:{inputs[:12]}"
    with contextlib.suppress(docker.errors.ImageNotFound):
        builder.docker.images.get(reference)
        return reference
    changes = [f"LABEL {INPUTS_LABEL}={inputs}", *PYTHON_SLIM_CONFIG]
    packages = read_list(PYTHON_SLIM_RECIPE / "packages.txt")
    # infra/images.py's service-image steps (debootstrap, apt in a chroot, import), with a recipe
    # of the tests' own (not one of deploy/images, which are the product's).
    builder.build_rootfs(
        "test-python-slim", packages, _finish_python_slim, reference, inputs, changes
    )
    return reference


def _finish_python_slim(root: Path, _log_file: Path) -> None:
    # The official image's pip installs system-wide; Debian's refuses while this marker exists.
    for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    # pip in a build on the target reaches PyPI through this machine's TLS-inspecting proxy.
    bundle = root / CA_BUNDLE.relative_to("/")
    bundle.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CA_BUNDLE, bundle)


def _push(client: docker.DockerClient, local: str, repository: str) -> None:
    """Push ``local`` as ``repository:3.12-slim``; the extra tag is removed again after."""
    client.images.get(local).tag(repository, PYTHON_SLIM_TAG)
    try:
        # podman's Docker API verifies TLS unless told (the mirror is plain HTTP); Docker ignores
        # the parameter and treats 127.0.0.0/8 as insecure by itself. The SDK's push has no way
        # to pass it, hence the raw request.
        answer = client.api.post(
            client.api._url("/images/{0}/push", repository),
            params={"tag": PYTHON_SLIM_TAG, "tlsVerify": "false"},
            headers={"X-Registry-Auth": "e30="},  # base64 of "{}": no credentials
            stream=True,
            timeout=PUSH_TIMEOUT_S,
        )
        answer.raise_for_status()
        for line in answer.iter_lines():
            message = json.loads(line) if line.strip() else {}
            if message.get("error"):
                raise RegistryError(f"pushing {local} to {repository} failed: {message['error']}")
    finally:
        client.images.remove(f"{repository}:{PYTHON_SLIM_TAG}")


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
