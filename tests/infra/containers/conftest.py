from __future__ import annotations

import docker
import pytest

from testing.images import tiny_image


@pytest.fixture(scope="session")
def tiny(docker_client: docker.DockerClient) -> str:
    """The tag of a tiny image with sh and a few coreutils."""
    return tiny_image(docker_client)
