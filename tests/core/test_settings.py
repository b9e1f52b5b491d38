"""Settings: the embedded default, and existing servers chosen by environment alone."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import Settings


def test_defaults_describe_the_embedded_stack(monkeypatch, tmp_path):
    for name in ("DATABASE_URL", "REDIS_URL", "TEMPORAL_ADDRESS", "ORCHESTRATOR_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path))
    settings = Settings()
    assert settings.home_dir == tmp_path
    assert settings.effective_database_url == f"sqlite+aiosqlite:///{tmp_path / 'orchestrator.db'}"
    # The embedded Redis wants its ACL user's password (tests/core/test_secret_files.py).
    assert settings.effective_redis_url.startswith("redis://orchestrator:")
    assert settings.effective_redis_url.endswith(f"@127.0.0.1:{settings.redis_port}/0")
    assert settings.effective_temporal_address == f"127.0.0.1:{settings.temporal_port}"
    assert settings.workflow_url("engineering-x").endswith(
        "/namespaces/default/workflows/engineering-x"
    )


def test_existing_servers_and_ports_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u@db/orch")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("ORCHESTRATOR_TEMPORAL_ADDRESS", "temporal.example:7233")
    monkeypatch.setenv("ORCHESTRATOR_TEMPORAL_NAMESPACE", "prod.abc12")
    monkeypatch.setenv("ORCHESTRATOR_API_PORT", "9999")
    settings = Settings()
    assert settings.effective_database_url == "postgresql+asyncpg://u@db/orch"
    assert settings.effective_redis_url == "redis://cache:6379/2"
    assert settings.effective_temporal_address == "temporal.example:7233"
    assert settings.temporal_namespace == "prod.abc12"
    assert settings.effective_api_url == "http://127.0.0.1:9999"


def test_the_cli_finds_the_bootstrap_key_in_the_home(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("ORCHESTRATOR_API_KEY", raising=False)
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path))
    assert Settings().read_api_key() is None
    (tmp_path / "api_key").write_text("orch_abc_secret\n")
    assert Settings().read_api_key() == "orch_abc_secret"
    monkeypatch.setenv("ORCHESTRATOR_API_KEY", "orch_env_key")
    assert Settings().read_api_key() == "orch_env_key"


def test_task_ids_are_read_from_workflow_ids():
    from core.temporal import task_id_of

    assert task_id_of("engineering-abc123") == "abc123"
    assert task_id_of("deploy-abc123") == "abc123"
    assert task_id_of("scaffold-p1") is None
    assert task_id_of("engineering-") is None


def test_telegram_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_TELEGRAM_TOKEN", "1:abc")
    monkeypatch.setenv("ORCHESTRATOR_TELEGRAM_ADMINS", " 12, 34,")
    monkeypatch.setenv("ORCHESTRATOR_TELEGRAM_API_URL", "http://127.0.0.1:8081")
    settings = Settings()
    assert settings.telegram_token is not None
    assert settings.telegram_token.get_secret_value() == "1:abc"
    assert "1:abc" not in repr(settings)
    assert settings.telegram_admins == [12, 34]
    assert settings.telegram_api_url == "http://127.0.0.1:8081"
    assert settings.telegram_webhook_url is None
    monkeypatch.setenv("ORCHESTRATOR_TELEGRAM_ADMINS", "")
    assert Settings().telegram_admins == []


def test_worker_capabilities_are_a_comma_separated_list_of_known_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The stack's one worker does everything unless told otherwise.
    monkeypatch.delenv("ORCHESTRATOR_WORKER_CAPABILITIES", raising=False)
    assert Settings().worker_capabilities == ["containers", "ansible"]
    monkeypatch.setenv("ORCHESTRATOR_WORKER_CAPABILITIES", " containers , containers")
    assert Settings().worker_capabilities == ["containers"]
    monkeypatch.setenv("ORCHESTRATOR_WORKER_CAPABILITIES", "")
    assert Settings().worker_capabilities == []
    monkeypatch.setenv("ORCHESTRATOR_WORKER_CAPABILITIES", "ansible,gpu")
    with pytest.raises(ValidationError, match="worker_capabilities"):
        Settings()


def test_workers_trust_the_hosts_certificate_authorities_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ORCHESTRATOR_WORKER_CA_BUNDLE", raising=False)
    host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    assert Settings().worker_ca_bundle == (host_bundle if host_bundle.is_file() else None)
    bundle = tmp_path / "corporate.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("ORCHESTRATOR_WORKER_CA_BUNDLE", str(bundle))
    assert Settings().worker_ca_bundle == bundle
    monkeypatch.setenv("ORCHESTRATOR_WORKER_CA_BUNDLE", "")  # the image's own bundle
    assert Settings().worker_ca_bundle is None
    monkeypatch.setenv("ORCHESTRATOR_WORKER_CA_BUNDLE", str(tmp_path / "missing.pem"))
    with pytest.raises(ValidationError, match="ORCHESTRATOR_WORKER_CA_BUNDLE names no file"):
        Settings()
