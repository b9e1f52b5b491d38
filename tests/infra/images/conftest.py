"""The Worker images, built once per content hash and kept between test runs.

``worker_images`` builds base, scripted, claude and codex on first use (a few minutes on a fresh
machine; the debootstrap and apt downloads are cached too) and is a handful of image inspects
afterwards.
"""

from __future__ import annotations

import sys
import time

import docker
import pytest

from infra.images import DEFAULT_IMAGES, ImageBuilder, ImageInfo
from testing.images import image_builder


@pytest.fixture(scope="session")
def images_builder(docker_client: docker.DockerClient) -> ImageBuilder:
    return image_builder(docker_client)


@pytest.fixture(scope="session")
def worker_images(images_builder: ImageBuilder) -> dict[str, ImageInfo]:
    """name -> the image, for base and the default agents."""
    built = {}
    for name in DEFAULT_IMAGES:
        started = time.monotonic()
        built[name] = images_builder.ensure(name)
        verdict = "built" if built[name].built else "cached"
        print(  # shown with -s: first builds take minutes, worth seeing where they go
            f"{built[name].reference}: {verdict} in {time.monotonic() - started:.1f} s",
            file=sys.stderr,
        )
    return built
