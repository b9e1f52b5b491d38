"""A release archive of a project locked with uv gets the requirements its lockfile pins
(``infra.release_archives``), exported on the controller with the real uv, offline."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from infra.errors import InfraError
from infra.release_archives import export_locked_requirements
from testing.locked_app import DEPENDENCY, DEV_DEPENDENCY, PYPROJECT, UV_LOCK

APP = "print('serving')\n"


def make_archive(path: Path, files: dict[str, str]) -> Path:
    """A .tar.gz as ``git archive`` makes one."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return path


def members(archive: Path) -> dict[str, str]:
    with tarfile.open(archive, "r:gz") as tar:
        return {
            m.name: (tar.extractfile(m) or io.BytesIO()).read().decode()
            for m in tar.getmembers()
            if m.isfile()
        }


def test_a_locked_project_gets_the_pinned_packages_with_their_hashes(tmp_path: Path) -> None:
    files = {"app.py": APP, "pyproject.toml": PYPROJECT, "uv.lock": UV_LOCK}
    archive = make_archive(tmp_path / "release.tar.gz", files)
    assert export_locked_requirements(archive)
    found = members(archive)
    # The release's own files are all still there, unchanged.
    assert {name: found[name] for name in files} == files
    requirements = found["requirements.txt"]
    assert f"{DEPENDENCY} \\" in requirements
    # pip checks every file against the lockfile's hashes (the wheel's and the sdist's).
    assert requirements.count("--hash=sha256:") == 2
    # Not the dev group, not the project itself (it runs from its directory).
    assert DEV_DEPENDENCY.split("==")[0] not in requirements
    assert "-e ." not in requirements and "\nhello" not in requirements


def test_an_archive_with_its_own_requirements_or_without_a_lockfile_is_left_alone(
    tmp_path: Path,
) -> None:
    own = {"pyproject.toml": PYPROJECT, "uv.lock": UV_LOCK, "requirements.txt": "six\n"}
    for name, files in (("own", own), ("unlocked", {"pyproject.toml": PYPROJECT, "app.py": APP})):
        archive = make_archive(tmp_path / f"{name}.tar.gz", files)
        before = archive.read_bytes()
        assert not export_locked_requirements(archive)
        assert archive.read_bytes() == before


def test_a_lockfile_uv_cannot_read_fails_the_release_with_uvs_words(tmp_path: Path) -> None:
    files = {"pyproject.toml": PYPROJECT, "uv.lock": "version = 1\n[[package]]\nname = 3\n"}
    archive = make_archive(tmp_path / "release.tar.gz", files)
    with pytest.raises(InfraError) as failed:
        export_locked_requirements(archive)
    assert failed.value.kind == "ReleaseFailed" and not failed.value.retryable
    assert str(failed.value).startswith("uv.lock cannot be exported to requirements.txt: ")
    assert "uv.lock" in str(failed.value).split(": ", 1)[1]


def test_an_archive_reaching_outside_its_directory_is_refused(tmp_path: Path) -> None:
    files = {"pyproject.toml": PYPROJECT, "uv.lock": UV_LOCK, "../escaped.txt": "x"}
    archive = make_archive(tmp_path / "release.tar.gz", files)
    with pytest.raises(InfraError, match="the release archive holds"):
        export_locked_requirements(archive)
