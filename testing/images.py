"""Images for tests: the Worker images, built once per content hash and kept between test runs
(``image_builder``), and tiny images made of the host's own binaries, built in a blink, never
pulled.

The rootfs holds ``sh``, a few coreutils and their libraries; its tar is reproducible, so its
hash names the image and a container service that already has it skips the import.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import docker
import docker.errors

from infra.images import ImageBuilder
from testing import servers

TOOLS = ("sh", "cat", "sleep", "ls", "mkdir", "timeout", "env", "pwd", "head", "rm")
REPOSITORY = "localhost/orchestrator/test-tiny"


def _libraries(binary: Path) -> list[str]:
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    return [word for word in out.split() if word.startswith("/")]


def _add(tar: tarfile.TarFile, source: Path, arcname: str) -> None:
    info = tar.gettarinfo(str(source.resolve()), arcname=arcname)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0  # reproducible: the same binaries give the same tar, hence the same tag
    with open(source.resolve(), "rb") as handle:
        tar.addfile(info, handle)


def _directory(tar: tarfile.TarFile, name: str, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def tiny_rootfs() -> bytes:
    files: dict[str, Path] = {}
    for tool in TOOLS:
        found = shutil.which(tool)
        if found is None:
            raise RuntimeError(f"{tool} is not on this host's PATH")
        binary = Path(found)
        files[f"bin/{tool}"] = binary
        for lib in _libraries(binary):
            files[lib.lstrip("/")] = Path(lib)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        _directory(tar, "bin", 0o755)
        _directory(tar, "tmp", 0o1777)
        for arcname in sorted(files):
            _add(tar, files[arcname], arcname)
    return buffer.getvalue()


def tiny_image(client: docker.DockerClient) -> str:
    """The tiny image in ``client``'s service, imported once per content; returns its tag."""
    rootfs = tiny_rootfs()
    tag = hashlib.sha256(rootfs).hexdigest()[:16]
    name = f"{REPOSITORY}:{tag}"
    try:
        client.images.get(name)
        return name
    except docker.errors.ImageNotFound:
        pass
    imported = json.loads(client.api.import_image_from_data(rootfs))
    # podman 4.3 ignores the repository and tag of an import: tag it by the returned id.
    client.images.get(imported["id"]).tag(REPOSITORY, tag)
    return name


def image_builder(docker_client: docker.DockerClient) -> ImageBuilder:
    return ImageBuilder(docker_client, servers.test_images_root() / "image-builds")
