"""The container service answers the Docker API, and a locked-down Worker container runs on it."""

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import docker


def tiny_rootfs() -> bytes:
    """A rootfs with the host's ``sh`` and its libraries: enough to run a command."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        sh = Path(shutil.which("sh") or "/bin/sh").resolve()
        libs = subprocess.run(["ldd", str(sh)], capture_output=True, text=True).stdout.split()
        for path in [str(sh), *(p for p in libs if p.startswith("/"))]:
            tar.add(Path(path).resolve(), arcname=path.lstrip("/"))
        tar.add(sh, arcname="bin/sh")
    return buffer.getvalue()


# Prints 42 and the user the process runs as (the rootfs has no `id`).
UID_AND_ANSWER = (
    "echo $((6 * 7)); "
    'while read -r key uid _; do [ "$key" = Uid: ] && echo "$uid"; done < /proc/self/status; true'
)


def test_a_network_less_unprivileged_container_runs(docker_client: docker.DockerClient):
    imported = json.loads(docker_client.api.import_image_from_data(tiny_rootfs()))
    image = docker_client.images.get(imported["id"])
    output = docker_client.containers.run(
        image.id,
        ["/bin/sh", "-c", UID_AND_ANSWER],
        user="1000:1000",
        network_mode="none",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        mem_limit="128m",
        pids_limit=32,
        labels={"orchestrator.test": "docker-api"},
        remove=True,
    )
    assert output.decode().split() == ["42", "1000"]
