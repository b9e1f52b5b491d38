"""The Vault: Fernet round trips, a wrong key said plainly, and one key file however many
processes make it at once."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from core.crypto import Vault, VaultError, ensure_key_file
from core.settings import Settings


def test_round_trip() -> None:
    vault = Vault(Vault.generate_key())
    for text in ("s3cr3t", "", "ünïcødé ✓\nline two", "x" * 10_000):
        token = vault.encrypt(text)
        assert text not in token or text == ""
        assert vault.decrypt(token) == text
    # A fresh IV each time: equal values do not give equal ciphertexts.
    assert vault.encrypt("same") != vault.encrypt("same")


def test_a_wrong_key_is_a_clear_error() -> None:
    token = Vault(Vault.generate_key()).encrypt("s3cr3t")
    with pytest.raises(VaultError, match="encrypted with another key"):
        Vault(Vault.generate_key()).decrypt(token)
    with pytest.raises(VaultError, match="damaged"):
        Vault(Vault.generate_key()).decrypt("not-a-token")


def test_an_invalid_key_is_refused_without_being_quoted() -> None:
    with pytest.raises(VaultError) as raised:
        Vault("too-short-key-value")
    assert "too-short-key-value" not in str(raised.value)
    assert "too-short-key-value" not in repr(Vault(Vault.generate_key()))


def test_the_key_from_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = Vault.generate_key()
    monkeypatch.setenv("ORCHESTRATOR_SECRET_KEY", key)
    settings = Settings(home=tmp_path)
    token = Vault.from_settings(settings).encrypt("v")
    assert Vault(key).decrypt(token) == "v"
    assert not settings.secret_key_file.exists()

    monkeypatch.setenv("ORCHESTRATOR_SECRET_KEY", "nope")
    with pytest.raises(VaultError, match="ORCHESTRATOR_SECRET_KEY is not a valid") as raised:
        Vault.from_settings(Settings(home=tmp_path))
    assert "nope" not in str(raised.value)


def test_the_key_file_is_made_once_with_mode_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORCHESTRATOR_SECRET_KEY", raising=False)
    settings = Settings(home=tmp_path / "home")
    first = Vault.from_settings(settings)
    path = settings.secret_key_file
    assert path == tmp_path / "home" / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    written = path.read_text()
    token = first.encrypt("kept")
    # The next process reads the same key: what the first stored, it can open.
    assert Vault.from_settings(Settings(home=tmp_path / "home")).decrypt(token) == "kept"
    assert path.read_text() == written
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]  # no temporary left


def test_racing_processes_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "race" / "secret.key"
    code = "import sys; from core.crypto import ensure_key_file; print(ensure_key_file(__import__('pathlib').Path(sys.argv[1])))"  # noqa: E501
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    keys = set()
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        keys.add(out.strip())
    assert len(keys) == 1
    assert keys == {path.read_text().strip()}
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret.key"]


def test_an_empty_key_file_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_text("")
    with pytest.raises(VaultError, match="is empty"):
        ensure_key_file(path)
    path.write_text("garbage\n")
    with pytest.raises(VaultError, match="does not hold a valid Fernet key"):
        Vault.from_settings(Settings(home=tmp_path))
