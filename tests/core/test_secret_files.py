"""The passwords the orchestrator makes for itself: made once, 0600, reused, and shown to no one."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from core.secret_files import ensure_secret_file
from core.settings import Settings


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "ORCHESTRATOR_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)


def test_the_embedded_redis_password_is_made_once_0600_and_reused(
    tmp_path: Path, embedded: None
) -> None:
    home = tmp_path / "home"
    url = Settings(home=home, redis_port=4321).effective_redis_url
    path = home / "redis_password"
    password = path.read_text().strip()
    assert len(password) >= 40  # 256 random bits
    assert url == f"redis://orchestrator:{password}@127.0.0.1:4321/0"
    assert mode(path) == 0o600
    assert mode(home) == 0o700  # made by the first use: its owner's only
    # Every later process (each service of the stack) reads the same one.
    assert Settings(home=home, redis_port=4321).effective_redis_url == url
    assert path.read_text().strip() == password
    assert [p.name for p in home.iterdir()] == ["redis_password"]  # no temporary left


def test_each_home_has_a_password_of_its_own(tmp_path: Path, embedded: None) -> None:
    first = Settings(home=tmp_path / "a").effective_redis_url
    second = Settings(home=tmp_path / "b").effective_redis_url
    assert first != second


def test_a_given_redis_url_is_used_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://app:pw@cache.example:6379/2")
    settings = Settings(home=tmp_path / "home")
    assert settings.effective_redis_url == "redis://app:pw@cache.example:6379/2"
    assert not settings.redis_password_file.exists()  # no password made for a Redis we do not run


def test_an_existing_folder_becomes_private(tmp_path: Path) -> None:
    folder = tmp_path / "home"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    assert ensure_secret_file(folder / "token", lambda: "made") == "made"
    assert ensure_secret_file(folder / "token", lambda: "another") == "made"
    assert mode(folder) == 0o700
    assert mode(folder / "token") == 0o600
