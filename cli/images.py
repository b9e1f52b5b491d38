"""``orchestrator images build / list``: the Worker images, built here and cached by content.

These run on this machine against the Docker API Workers use (``DOCKER_HOST``, else the embedded
stack's podman socket), not through the orchestrator's HTTP API.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from cli.output import FAILED, UNREACHABLE, CliError, JsonOption, Output, command

if TYPE_CHECKING:
    # Imported where used: the CLI imports with its client dependencies only, and builds its
    # command tree without even those.
    from rich.table import Table

    from core.settings import Settings
    from infra.images import ImageBuilder, ImageInfo

app = typer.Typer(help="Worker images (built locally, never pulled).", no_args_is_help=True)


def docker_host(settings: Settings) -> str:
    """The Docker API Workers are created through."""
    configured = getattr(settings, "docker_host", None) or os.environ.get("DOCKER_HOST")
    if configured:
        return str(configured)
    from stack.services import effective_docker_host

    return effective_docker_host(settings)


@contextmanager
def builder(settings: Settings) -> Iterator[ImageBuilder]:
    import docker
    import docker.errors

    from infra.images import ImageBuilder

    url = docker_host(settings)
    try:
        client = docker.DockerClient(base_url=url, timeout=900)
        client.ping()
    except docker.errors.DockerException as exc:
        raise CliError(
            UNREACHABLE,
            f"no Docker API answers at {url}",
            "Start the stack (orchestrator up), which serves one with podman, or set DOCKER_HOST "
            f"to a Docker engine or podman socket. ({exc})",
        ) from None
    try:
        yield ImageBuilder(client, settings.home_dir / "images")
    finally:
        client.close()


def _table(images: list[ImageInfo], timing: bool) -> Table:
    from rich.table import Table

    from infra.images import REPOSITORY_PREFIX

    columns = ["image", "tag", "id", "size"] + (["result", "seconds"] if timing else ["created"])
    caption = f"repository: {REPOSITORY_PREFIX}<image>, localhost/orchestrator/service-<name>"
    table = Table(*columns, caption=caption)
    for info in images:
        size = f"{info.size / 1e6:.0f} MB" if info.size else "-"
        tag = info.reference.rsplit(":", 1)[1]
        row = [info.name, tag, info.image_id.removeprefix("sha256:")[:12], size]
        if timing:
            row += ["built" if info.built else "cached", f"{info.seconds:.1f}"]
        else:
            row += [(info.created or "-")[:19].replace("T", " ")]
        table.add_row(*row)
    return table


@command(app, "build")
def build(
    images: Annotated[
        list[str] | None,
        typer.Argument(
            help="base, agents (scripted, claude, codex, droid) and/or test services "
            "(service-postgresql)",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Build the Worker images whose inputs changed; the others are cache hits.

    Default: all of them (base, scripted, claude, codex, droid).
    """
    from core.settings import Settings
    from infra.images import DEFAULT_IMAGES, ImageError

    out = Output(json_output)
    names = list(dict.fromkeys(images or DEFAULT_IMAGES))
    done: list[ImageInfo] = []
    with builder(Settings()) as images_builder:
        for name in names:
            out.say(f"{name}: checking ...")
            try:
                info = images_builder.ensure(name)
            except ImageError as exc:
                raise CliError(
                    FAILED,
                    f"the {name} image was not built",
                    str(exc),
                    extra={"done": [i.to_json() for i in done]},
                ) from None
            done.append(info)
            verdict = f"built in {info.seconds:.1f} s" if info.built else "cached"
            out.say(f"{name}: {info.reference} ({verdict})")
    out.emit([info.to_json() for info in done], lambda: out.console.print(_table(done, True)))


@command(app, "list")
def list_images(json_output: JsonOption = False) -> None:
    """The Worker and test service images this machine holds."""
    from core.settings import Settings

    out = Output(json_output)
    with builder(Settings()) as images_builder:
        found = images_builder.list_images()

    def render() -> None:
        if not found:
            out.console.print("No Worker images yet: orchestrator images build")
            return
        out.console.print(_table(found, False))

    out.emit([info.to_json() for info in found], render)
