"""The ``orchestrator`` CLI as a self-contained directory, for Workers to run without a network.

A PO Worker drives the CLI; its image has Debian's ``python3`` and nothing of ours. The bundle
``<root>/cli-<hash12>/`` holds

- ``lib/``: our ``cli`` package, the ``core`` modules it imports, and a copy of the installed
  distributions its client dependencies (:data:`CLIENT_REQUIREMENTS`) need, taken from the
  environment this process runs in, with their ``.dist-info`` (``importlib.metadata`` works);
- ``bin/orchestrator``: a ``/bin/sh`` launcher that runs the ``python3`` on ``PATH`` isolated
  (``-I -S -B``: no site-packages, no environment, no bytecode written) with ``lib`` first on
  ``sys.path``, and calls ``cli.main.main()``.

The distributions are copied as installed, compiled extensions included (pydantic_core): the
Worker's python3 must be the same minor version as ours (the launcher checks) on the same
platform, which Debian bookworm's 3.11 is for a 3.11 venv on Linux.

The name's hash covers what goes in (the distributions' names and versions, our source files, the
launcher), so a changed CLI makes a new bundle and an unchanged one is found, not rebuilt. Building
is atomic (a temporary directory renamed into place) and serialized by a file lock, so two
processes building at once make one bundle. Old bundles stay: a running Worker may mount one.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from core.paths import REPO_ROOT
from core.settings import Settings

# What the CLI imports beyond the standard library and our own packages (cli/*, core/*).
CLIENT_REQUIREMENTS = ("typer", "rich", "pydantic", "pydantic-settings")
# The packages of this repository the CLI is made of: all of ``cli``, and of ``core`` what it
# imports (found by reading the imports).
ENTRY_PACKAGE = "cli"
SHARED_PACKAGE = "core"
# Bump when the layout or the launcher changes in a way the inputs do not show.
FORMAT = 1
PREFIX = "cli-"
LAUNCHER = "orchestrator"
_BUILDING = ".cli-build-"
_LOCK = ".cli-bundle.lock"
_SKIP_PARTS = frozenset({"__pycache__"})
_SKIP_DIST_PARTS = frozenset({"__pycache__", "tests"})
_SKIP_SUFFIXES = (".pyc", ".pyo")


class BundleError(Exception):
    pass


@dataclass(frozen=True)
class CliBundle:
    path: Path
    built: bool  # False: it was there already

    @property
    def lib(self) -> Path:
        return self.path / "lib"

    @property
    def launcher(self) -> Path:
        return self.path / "bin" / LAUNCHER


def default_root(settings: Settings) -> Path:
    return settings.home_dir / "tools"


# --- the inputs -------------------------------------------------------------------------------


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def client_distributions(
    requirements: Iterable[str] = CLIENT_REQUIREMENTS,
) -> list[metadata.Distribution]:
    """The installed distributions ``requirements`` need, transitively; markers are evaluated
    for this interpreter and no extra is on."""
    found: dict[str, metadata.Distribution] = {}
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        key = _normalize(requirement.name)
        if key in found:
            continue
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise BundleError(
                f"the CLI needs {requirement.name}, which is not installed here"
            ) from None
        found[key] = dist
        pending.extend(Requirement(r) for r in dist.requires or [])
    return [found[key] for key in sorted(found)]


def _module_file(module: str) -> Path | None:
    base = REPO_ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> Iterator[str]:
    """Every absolute module an ``import`` in the file may name, lazy imports included."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def source_files() -> list[Path]:
    """Our files in the bundle: every module of ``cli`` and the ``core`` modules they import,
    with the ``__init__.py`` of each package on the way."""
    entry = REPO_ROOT / ENTRY_PACKAGE
    pending = sorted(p for p in entry.rglob("*.py") if not _SKIP_PARTS & set(p.parts))
    chosen: set[Path] = set()
    while pending:
        path = pending.pop()
        if path in chosen:
            continue
        chosen.add(path)
        parent = path.parent
        while parent != REPO_ROOT:
            init = parent / "__init__.py"
            if init.is_file() and init not in chosen:
                pending.append(init)
            parent = parent.parent
        for module in _imported_modules(path):
            if module.split(".")[0] not in (ENTRY_PACKAGE, SHARED_PACKAGE):
                continue
            found = _module_file(module)
            if found is not None and found not in chosen:
                pending.append(found)
    return sorted(chosen)


def launcher_text() -> str:
    major, minor = sys.version_info[:2]
    # The code gets the bundle's lib and the launcher's own path as its first two arguments, so
    # that neither is ever quoted into it, and gives the CLI its own name back as argv[0].
    code = (
        "import sys\n"
        f"if sys.version_info[:2] != ({major}, {minor}):\n"
        f'    sys.exit("orchestrator: this bundle needs Python {major}.{minor}, not " + '
        "sys.version.split()[0])\n"
        "lib, prog = sys.argv[1:3]\n"
        "sys.argv[:3] = [prog]\n"
        "sys.path.insert(0, lib)\n"
        "from cli.main import main\n"
        "main()\n"
    )
    assert "'" not in code  # it goes into the script in single quotes
    return (
        "#!/bin/sh\n"
        "# The orchestrator CLI, bundled (activities/cli_bundle.py): ../lib on this python3.\n"
        'bundle=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd) || exit 1\n'
        "export PYTHONDONTWRITEBYTECODE=1\n"
        f'exec python3 -I -S -B -c \'{code}\' "$bundle/lib" "$0" "$@"\n'
    )


def bundle_hash(dists: Iterable[metadata.Distribution], sources: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    digest.update(f"format {FORMAT}\npython {sys.version_info[0]}.{sys.version_info[1]}\n".encode())
    digest.update(launcher_text().encode())
    for dist in dists:
        digest.update(f"dist {_normalize(dist.metadata['Name'])} {dist.version}\n".encode())
    for path in sources:
        content = hashlib.sha256(path.read_bytes()).hexdigest()
        digest.update(f"file {path.relative_to(REPO_ROOT).as_posix()} {content}\n".encode())
    return digest.hexdigest()[:12]


# --- building ---------------------------------------------------------------------------------


def ensure_bundle(root: Path) -> CliBundle:
    """The bundle of the current inputs under ``root``, built if it is not there yet."""
    dists = client_distributions()
    sources = source_files()
    target = root / f"{PREFIX}{bundle_hash(dists, sources)}"
    if target.is_dir():
        return CliBundle(target, built=False)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / _LOCK):
        if target.is_dir():  # another process built it while we waited
            return CliBundle(target, built=False)
        _remove_leftovers(root)
        building = Path(tempfile.mkdtemp(prefix=_BUILDING, dir=root))
        try:
            _build(building, dists, sources)
            building.rename(target)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    return CliBundle(target, built=True)


async def ensure_bundle_async(root: Path) -> CliBundle:
    """:func:`ensure_bundle` in a thread: it reads and copies files."""
    return await asyncio.to_thread(ensure_bundle, root)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(root: Path) -> None:
    """Half-built directories of killed builders (we hold the lock: nobody builds them)."""
    for leftover in root.glob(f"{_BUILDING}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _build(directory: Path, dists: list[metadata.Distribution], sources: list[Path]) -> None:
    # mkdtemp made it 0700: Workers run as another uid and must read all of it.
    directory.chmod(0o755)
    lib = directory / "lib"
    for dist in dists:
        for source, relative in _dist_files(dist):
            _copy(source, lib / relative, 0o644)
    for path in sources:
        _copy(path, lib / path.relative_to(REPO_ROOT), 0o644)
    launcher = directory / "bin" / LAUNCHER
    launcher.parent.mkdir(mode=0o755)
    launcher.write_text(launcher_text())
    launcher.chmod(0o755)


def _dist_files(dist: metadata.Distribution) -> Iterator[tuple[Path, Path]]:
    """(installed file, path relative to its site-packages) of each file the distribution
    installed there (scripts elsewhere and bytecode left out)."""
    files = dist.files
    if files is None:
        raise BundleError(f"{dist.metadata['Name']} lists no files (no RECORD): reinstall it")
    # normpath, not resolve: an entry like ../../bin/x leaves site-packages; symlinks may not.
    site = Path(os.path.normpath(os.path.abspath(str(dist.locate_file("")))))
    for entry in files:
        source = Path(os.path.normpath(os.path.abspath(str(dist.locate_file(entry)))))
        if site not in source.parents or not source.is_file():
            continue
        relative = source.relative_to(site)
        if _SKIP_DIST_PARTS & set(relative.parts) or relative.suffix in _SKIP_SUFFIXES:
            continue
        yield source, relative


def _copy(source: Path, target: Path, mode: int) -> None:
    _make_dirs(target.parent)
    shutil.copyfile(source, target)
    # Keep an extension module executable as installed; everything else is plain data.
    target.chmod(0o755 if os.access(source, os.X_OK) and source.suffix == ".so" else mode)


def _make_dirs(path: Path) -> None:
    if path.is_dir():
        return
    _make_dirs(path.parent)
    path.mkdir(mode=0o755)
    path.chmod(0o755)  # the umask may have taken bits away
