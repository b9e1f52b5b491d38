"""Worker images: built locally from their recipes, run without a network, cached by content."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import docker
import docker.errors
import pytest
from typer.testing import CliRunner

from cli.main import app
from infra.images import (
    AGENTS_DIR,
    DEFAULT_IMAGES,
    IMAGE_LABEL,
    INPUTS_LABEL,
    LIBRARY_DIR,
    TOOLS_DIR,
    AptSource,
    ImageBuilder,
    ImageError,
    ImageInfo,
    default_deploy_dir,
    host_apt_source,
    read_list,
)

# A first build on a fresh machine downloads Debian and two agent CLIs.
pytestmark = pytest.mark.timeout(1200)

RECIPES = default_deploy_dir() / "images"


def run(client: docker.DockerClient, image: str, script: str) -> str:
    """Run ``script`` the way a Worker runs: no network, the worker user, no privileges.

    Through an exec, whose output comes back on the call: the logs of a container that has just
    exited can still miss their last lines on podman.
    """
    container = client.containers.run(
        image,
        ["sleep", "300"],
        detach=True,
        network_mode="none",
        user="worker",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        mem_limit="512m",
        labels={"orchestrator.test": "images"},
    )
    try:
        result = container.exec_run(["/bin/bash", "-c", script], user="worker")
    finally:
        container.remove(force=True)
    assert result.exit_code == 0, result.output.decode()
    return result.output.decode()


def pinned_version(agent: str) -> str:
    (spec,) = read_list(RECIPES / "agents" / agent / "npm-packages.txt")
    return spec.rsplit("@", 1)[1]


def test_the_base_image_has_the_tools_and_a_worker_user(
    docker_client: docker.DockerClient, worker_images: dict[str, ImageInfo]
):
    script = (
        "id -un; id -u; pwd; echo $HOME; stat -c %U /workspace;"
        "git --version; python3 --version; make --version | head -1; node --version; npm --version;"
        "touch /workspace/probe && echo workspace-writable;"
        "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '"
    )
    lines = run(docker_client, worker_images["base"].reference, script).splitlines()
    assert lines[:5] == ["worker", "1000", "/workspace", "/home/worker", "worker"]
    assert lines[5].startswith("git version ")
    assert lines[6].startswith("Python 3.")
    assert lines[7].startswith("GNU Make")
    assert lines[8].startswith("v") and lines[9][0].isdigit()  # node, npm
    assert lines[10] == "workspace-writable"
    assert lines[11:] == ["lo"]  # no network interface but loopback


def test_the_base_image_has_what_projects_build_with(
    docker_client: docker.DockerClient, worker_images: dict[str, ImageInfo]
):
    """venv and pip of the image's python3, and uv at the version wheels.txt pins."""
    (uv,) = read_list(RECIPES / "base" / "wheels.txt")
    script = (
        "cd /tmp && python3 -m venv v && v/bin/python -m pip --version | cut -d' ' -f1;"
        "python3 -m pip --version | cut -d' ' -f1; uv --version | cut -d' ' -f1,2;"
        "uv venv --quiet u && u/bin/python -c 'import sys; print(sys.prefix)'"
    )
    lines = run(docker_client, worker_images["base"].reference, script).splitlines()
    assert lines == ["pip", "pip", uv.replace("==", " "), "/tmp/u"]


def test_the_base_image_carries_every_tool_file_executable(
    docker_client: docker.DockerClient, worker_images: dict[str, ImageInfo]
):
    expected = sorted(p.name for p in (RECIPES / "base" / "files").iterdir() if p.is_file())
    assert expected, "deploy/images/base/files holds the tools Workers run"
    script = f'cd {TOOLS_DIR} && for f in *; do [ -x "$f" ] && echo "$f"; done'
    assert run(docker_client, worker_images["base"].reference, script).split() == expected
    for name in expected:  # the same bytes as in the repository
        copied = run(docker_client, worker_images["base"].reference, f"cat {TOOLS_DIR}/{name}")
        assert copied == (RECIPES / "base" / "files" / name).read_text()


def test_claude_and_codex_run_in_their_images(
    docker_client: docker.DockerClient, worker_images: dict[str, ImageInfo]
):
    claude = run(docker_client, worker_images["claude"].reference, "claude --version")
    assert claude.strip() == f"{pinned_version('claude')} (Claude Code)"
    codex = run(docker_client, worker_images["codex"].reference, "codex --version")
    assert codex.strip() == f"codex-cli {pinned_version('codex')}"
    # Each agent image is the base plus one layer holding that agent only.
    assert "claude" not in run(docker_client, worker_images["codex"].reference, "ls /usr/local/bin")
    base_layers = docker_client.images.get(worker_images["base"].reference).attrs["RootFS"]
    for agent in ("claude", "codex", "droid"):
        layers = docker_client.images.get(worker_images[agent].reference).attrs["RootFS"]
        assert layers["Layers"][:-1] == base_layers["Layers"]
        assert len(layers["Layers"]) == len(base_layers["Layers"]) + 1


def test_the_scripted_agent_plays_a_round_in_its_image(
    docker_client: docker.DockerClient, worker_images: dict[str, ImageInfo]
):
    recipe = sorted(p.name for p in (RECIPES / "agents" / "scripted").iterdir() if p.is_file())
    listed = run(docker_client, worker_images["scripted"].reference, f"ls {AGENTS_DIR}/scripted")
    assert set(recipe) <= set(listed.split())
    script = {"rounds": [{"write": {"path": "hello.txt", "content": "hi"}, "report": "completed"}]}
    output = run(
        docker_client,
        worker_images["scripted"].reference,
        f"mkdir -p /tmp/w && echo '{json.dumps(script)}' > /tmp/s.json && "
        f"python3 {LIBRARY_DIR}/scripted_agent.py --script /tmp/s.json --workdir /tmp/w "
        "&& cat /tmp/w/hello.txt",
    )
    result = [json.loads(line) for line in output.splitlines() if line.startswith("{")][-1]
    assert result["type"] == "result" and result["status"] == "completed"
    assert output.endswith("hi")


def test_images_are_labelled_with_their_name_and_inputs(
    docker_client: docker.DockerClient, worker_images: dict[str, ImageInfo]
):
    for name, info in worker_images.items():
        labels = docker_client.images.get(info.reference).labels
        assert labels[IMAGE_LABEL] == name
        assert labels[INPUTS_LABEL] == info.inputs
        assert info.reference.endswith(":" + info.inputs[:12])


def test_a_second_ensure_is_a_cache_hit(
    images_builder: ImageBuilder, worker_images: dict[str, ImageInfo]
):
    started = time.monotonic()
    again = {name: images_builder.ensure(name) for name in DEFAULT_IMAGES}
    elapsed = time.monotonic() - started
    for name, info in again.items():
        assert not info.built
        assert info.image_id == worker_images[name].image_id
    assert elapsed < 5, f"cached ensures took {elapsed:.1f} s"


def test_changing_an_input_changes_the_hash(
    docker_client: docker.DockerClient, images_builder: ImageBuilder, tmp_path: Path
):
    shutil.copytree(RECIPES, tmp_path / "images")
    copy = ImageBuilder(docker_client, tmp_path / "cache", tmp_path)
    names = DEFAULT_IMAGES
    original = {name: images_builder.inputs(name) for name in names}
    assert {name: copy.inputs(name) for name in names} == original  # same recipe, same hash

    packages = tmp_path / "images" / "base" / "packages.txt"
    packages.write_text(packages.read_text() + "# a comment changes nothing\n")
    assert copy.base_inputs() == original["base"]

    claude = tmp_path / "images" / "agents" / "claude" / "npm-packages.txt"
    claude.write_text(claude.read_text().replace(pinned_version("claude"), "2.1.0"))
    assert copy.agent_inputs("claude") != original["claude"]
    assert copy.agent_inputs("codex") == original["codex"]
    assert copy.base_inputs() == original["base"]

    wheels = tmp_path / "images" / "base" / "wheels.txt"
    wheels.write_text(wheels.read_text().replace("uv==", "uv==0.0.1 # was "))
    assert copy.base_inputs() != original["base"]  # uv's pinned version is an input
    wheels.write_text((RECIPES / "base" / "wheels.txt").read_text())
    assert copy.base_inputs() == original["base"]

    tool = next(p for p in (tmp_path / "images" / "base" / "files").iterdir() if p.is_file())
    tool.write_text(tool.read_text() + "\n# edited\n")
    changed = {name: copy.inputs(name) for name in names}
    assert all(changed[name] != original[name] for name in names)  # the base moves them all
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(copy.reference("base"))


def test_droid_runs_in_its_image_from_npm_alone(
    docker_client: docker.DockerClient, worker_images: dict[str, ImageInfo]
):
    """droid's image holds the two pinned npm packages and no optional platform variant, and its
    executable once (the launcher is a hard link to the platform package's binary)."""
    pins = dict(
        spec.rsplit("@", 1) for spec in read_list(RECIPES / "agents" / "droid" / "npm-packages.txt")
    )
    home = f"{AGENTS_DIR}/droid/node_modules/@factory"
    script = (
        f"droid --version; ls {home}; stat -L -c %h /usr/local/bin/droid;"
        f"du -sm {AGENTS_DIR}/droid | cut -f1"
    )
    lines = run(docker_client, worker_images["droid"].reference, script).splitlines()
    assert lines[0] == pins["@factory/cli-linux-x64"]
    assert lines[1:3] == ["cli", "cli-linux-x64"]
    assert lines[3] == "2"  # the launcher and the platform binary are one file
    assert int(lines[4]) < 400, f"{lines[4]} MB: more than one droid binary?"


def test_an_unknown_image_is_refused(images_builder: ImageBuilder):
    with pytest.raises(ImageError, match=r"unknown image 'nope': .*service-postgresql"):
        images_builder.ensure("nope")
    with pytest.raises(ImageError, match="unknown backing service 'redis': known are postgresql"):
        images_builder.ensure_service("redis")


def test_the_postgresql_image_is_built_from_its_recipe_and_listed(
    docker_client: docker.DockerClient,
    docker_host: str,
    images_builder: ImageBuilder,
    postgresql_image: str,
    tmp_path: Path,
):
    info = images_builder.ensure("service-postgresql")
    assert (info.reference, info.built) == (postgresql_image, False)
    env = {"DOCKER_HOST": docker_host, "ORCHESTRATOR_HOME": str(tmp_path / "home")}
    built = CliRunner().invoke(app, ["images", "build", "service-postgresql", "--json"], env=env)
    assert built.exit_code == 0, built.output
    assert [(i["reference"], i["built"]) for i in json.loads(built.stdout)] == [
        (info.reference, False)
    ]
    assert info.reference == f"localhost/orchestrator/service-postgresql:{info.inputs[:12]}"
    image = docker_client.images.get(info.reference)
    assert image.labels[IMAGE_LABEL] == "service-postgresql"
    assert image.attrs["Config"]["User"] == "postgres"
    assert image.attrs["Config"]["Cmd"] == [f"{TOOLS_DIR}/start"]
    assert info.reference in {i.reference for i in images_builder.list_images()}
    # Its own recipe moves its hash, and only its.
    shutil.copytree(RECIPES, tmp_path / "images")
    copy = ImageBuilder(docker_client, tmp_path / "cache", tmp_path)
    assert copy.inputs("service-postgresql") == info.inputs
    start = tmp_path / "images" / "services" / "postgresql" / "files" / "start"
    start.write_text(start.read_text() + "\n# edited\n")
    assert copy.inputs("service-postgresql") != info.inputs
    assert copy.inputs("base") == images_builder.inputs("base")


def test_the_cli_builds_from_cache_and_lists(
    docker_host: str, worker_images: dict[str, ImageInfo], tmp_path: Path
):
    env = {"DOCKER_HOST": docker_host, "ORCHESTRATOR_HOME": str(tmp_path)}
    runner = CliRunner()
    built = runner.invoke(app, ["images", "build", "base", "claude", "--json"], env=env)
    assert built.exit_code == 0, built.output
    answer = json.loads(built.stdout)
    assert [(i["name"], i["built"]) for i in answer] == [("base", False), ("claude", False)]
    assert answer[1]["reference"] == worker_images["claude"].reference

    listed = runner.invoke(app, ["images", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    references = {i["reference"] for i in json.loads(listed.stdout)}
    assert {info.reference for info in worker_images.values()} <= references


def test_the_cli_says_when_no_docker_api_answers(tmp_path: Path):
    env = {"DOCKER_HOST": f"unix://{tmp_path}/none.sock", "ORCHESTRATOR_HOME": str(tmp_path)}
    result = CliRunner().invoke(app, ["images", "list", "--json"], env=env)
    assert result.exit_code == 4
    assert "no Docker API answers" in json.loads(result.stdout)["error"]["message"]


def test_the_debian_archive_comes_from_the_apt_sources(tmp_path: Path):
    one_line = tmp_path / "one"
    (one_line / "sources.list.d").mkdir(parents=True)
    (one_line / "sources.list").write_text(
        "# comment\ndeb [signed-by=/k.gpg] http://mirror.example/debian/ trixie main\n"
        "deb http://mirror.example/debian trixie-updates main\n"
    )
    assert host_apt_source(one_line) == AptSource(
        "http://mirror.example/debian", "trixie", Path("/k.gpg")
    )
    deb822 = tmp_path / "deb822"
    (deb822 / "sources.list.d").mkdir(parents=True)
    (deb822 / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://m.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb deb-src\nURIs: http://m.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert host_apt_source(deb822) == AptSource("http://m.example/debian", "bookworm")
    with pytest.raises(ImageError, match="no Debian archive"):
        host_apt_source(tmp_path / "empty")
