"""What a release archive gets before it is shipped: the packages a uv lockfile pins, as the
``requirements.txt`` a server installs them from.

A project locked with uv (``pyproject.toml`` and ``uv.lock``) and no ``requirements.txt`` of its
own gets one exported here, on the controller, with ``uv export --frozen``: the exact versions and
hashes of the lockfile's default groups (no dev group, not the project itself, which runs from its
directory). The server then needs only Python's venv and pip (deploy.yml's ``appctl.sh deps``),
and pip checks every file's hash. Nothing is resolved here and nothing is fetched: a lockfile that
uv cannot read fails the release with uv's words.
"""

from __future__ import annotations

import base64
import gzip
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from uv import find_uv_bin

from infra.errors import InfraError, refused

LOCKFILE = "uv.lock"
PROJECT_FILE = "pyproject.toml"
REQUIREMENTS = "requirements.txt"
EXPORT_TIMEOUT_S = 60
# An archive up to this size travels inside the release step's own call (its stdin), not by a
# copy of its own: one SSH round trip fewer, about a second of every deploy.
INLINE_ARCHIVE_MAX = 4 * 1024 * 1024


def archive_vars(archive: Path) -> dict[str, str]:
    """deploy.yml's variables for shipping ``archive``: its path, and its bytes (base64) when
    it is small enough to go inline."""
    shipped = {"archive": str(archive)}
    if archive.stat().st_size <= INLINE_ARCHIVE_MAX:
        shipped["archive_b64"] = base64.b64encode(archive.read_bytes()).decode()
    return shipped


def export_locked_requirements(archive: Path) -> bool:
    """Add ``requirements.txt`` exported from the lockfile to ``archive`` (a .tar.gz of the
    release's files) when it has a lockfile and no requirements of its own; True if it did."""
    with tarfile.open(archive, "r:gz") as tar:
        names = {member.name.removeprefix("./") for member in tar.getmembers()}
    if LOCKFILE not in names or PROJECT_FILE not in names or REQUIREMENTS in names:
        return False
    with tempfile.TemporaryDirectory(prefix="release-export-") as scratch:
        project = Path(scratch) / "project"
        with tarfile.open(archive, "r:gz") as tar:
            # The repository's files are not ours: nothing may land outside the directory.
            try:
                tar.extractall(project, filter="data")
            except tarfile.FilterError as exc:
                raise refused(f"the release archive holds {exc}", "ReleaseFailed") from exc
        requirements = _export(project)
        _append(archive, REQUIREMENTS, requirements, Path(scratch) / "release.tar")
    return True


def _export(project: Path) -> bytes:
    try:
        done = _run_export(project)
    except subprocess.TimeoutExpired as exc:
        raise InfraError(f"uv export ran past {EXPORT_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip()[-1500:]
        raise refused(f"{LOCKFILE} cannot be exported to {REQUIREMENTS}: {said}", "ReleaseFailed")
    return done.stdout


def _run_export(project: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            find_uv_bin(),
            "export",
            "--frozen",
            "--no-dev",
            "--no-emit-project",
            "--no-config",  # a uv.toml in the repository has no say on the controller
            "--quiet",
            "--format",
            "requirements-txt",
        ],
        cwd=project,
        capture_output=True,
        env={**os.environ, "UV_OFFLINE": "1", "UV_NO_PROGRESS": "1"},
        timeout=EXPORT_TIMEOUT_S,
    )


def _append(archive: Path, name: str, content: bytes, scratch: Path) -> None:
    """``archive`` (.tar.gz) with one more regular file, rewritten in place."""
    with gzip.open(archive, "rb") as packed, scratch.open("wb") as plain:
        shutil.copyfileobj(packed, plain)
    with tarfile.open(scratch, "a") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(content))
    with scratch.open("rb") as plain, gzip.open(archive, "wb") as packed:
        shutil.copyfileobj(plain, packed)
