"""A Temporal cluster or Temporal Cloud is reached by settings alone."""

from pathlib import Path

from temporalio.service import TLSConfig

from core.settings import Settings
from core.temporal import _tls


def test_the_embedded_dev_server_needs_no_tls():
    assert _tls(Settings()) is False


def test_temporal_cloud_api_keys_travel_over_tls(monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_TEMPORAL_API_KEY", "cloud-key")
    assert _tls(Settings()) is True


def test_mtls_certificates_are_read_from_the_configured_files(tmp_path: Path, monkeypatch):
    for name, content in (("ca.pem", b"CA"), ("client.pem", b"CERT"), ("client.key", b"KEY")):
        (tmp_path / name).write_bytes(content)
    monkeypatch.setenv("ORCHESTRATOR_TEMPORAL_TLS_CA_CERT", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("ORCHESTRATOR_TEMPORAL_TLS_CLIENT_CERT", str(tmp_path / "client.pem"))
    monkeypatch.setenv("ORCHESTRATOR_TEMPORAL_TLS_CLIENT_KEY", str(tmp_path / "client.key"))
    monkeypatch.setenv("ORCHESTRATOR_TEMPORAL_TLS_SERVER_NAME", "ns.tmprl.cloud")
    tls = _tls(Settings())
    assert isinstance(tls, TLSConfig)
    assert (tls.server_root_ca_cert, tls.client_cert, tls.client_private_key, tls.domain) == (
        b"CA",
        b"CERT",
        b"KEY",
        "ns.tmprl.cloud",
    )
