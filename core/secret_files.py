"""Secrets the orchestrator makes for itself, each kept in a file only its owner can read.

``ensure_secret_file`` makes the file once (mode 0600, its folder 0700) and every later call reads
it back. Creation is atomic: a complete file is linked into place, so two processes starting
together end up with the same secret, never with two.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path


def new_password() -> str:
    """256 random bits, URL-safe: it goes into a URL as it is, no quoting."""
    return secrets.token_urlsafe(32)


def private_dir(path: Path) -> Path:
    """``path`` made if missing, and readable by its owner only (0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)  # an older folder, or a umask that kept bits: 0700 either way
    return path


def ensure_secret_file(path: Path, make: Callable[[], str]) -> str:
    """The secret in ``path``; ``make()``'s written there (0600) first if there is none."""
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().strip()
    private_dir(path.parent)
    # Write a complete file under a temporary name, then link it to ``path``: a link never
    # replaces an existing file, so of two racing processes one wins and both read its secret.
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(make() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.unlink(temporary)
    return path.read_text().strip()
