"""Versioned artefacts on an S3-compatible object store (moto's server here, MinIO or S3 in
production): a version published on one machine is what another machine reads, downloads and
rolls back; a store that goes away is a readable error that leaves the published version alone."""

from __future__ import annotations

import pytest

from skulens.settings import load_settings
from skulens.storage.layout import index_store
from skulens.storage.objects import ObjectStoreError
from tests.support.servers import S3_KEYS, s3_server

pytestmark = pytest.mark.integration


def _machine(monkeypatch, tmp_path, name: str, endpoint: str):
    monkeypatch.setenv("SKULENS_HOME", str(tmp_path / name))
    for key, value in S3_KEYS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SKULENS__STORAGE__BACKEND", "s3")
    monkeypatch.setenv("SKULENS__STORAGE__S3", f"{{bucket: skulens, endpoint_url: '{endpoint}', prefix: prod}}")
    return load_settings("local")


def test_a_version_published_on_one_machine_is_served_and_rolled_back_on_another(tmp_path, monkeypatch):
    with s3_server(tmp_path) as endpoint:
        builder = _machine(monkeypatch, tmp_path, "builder", endpoint)
        store = index_store(builder, "fashion")
        for version, payload in (("v1", "first"), ("v2", "second")):
            with store.build(version) as staging:
                (staging / "vector").mkdir()
                (staging / "vector" / "manifest.json").write_text(f'{{"build": "{payload}"}}')
                (staging / "products.parquet").write_bytes(b"PAR1" + payload.encode())

        server = _machine(monkeypatch, tmp_path, "server", endpoint)
        remote = index_store(server, "fashion")
        assert not remote.versions.exists()  # nothing local on this machine
        assert remote.current_id() == "v2" and remote.list_versions() == ["v1", "v2"]
        assert (remote.current() / "vector" / "manifest.json").read_text() == '{"build": "second"}'
        remote.set_current("v1")  # a rollback from this machine ...
        assert store.current_id() == "v1"  # ... is what the builder sees too
        assert (store.current() / "products.parquet").read_bytes() == b"PAR1first"

    with pytest.raises(ObjectStoreError, match="s3://skulens"):  # the server is gone
        with store.build("v3") as staging:
            (staging / "products.parquet").write_bytes(b"PAR1third")
    assert (store.root / "CURRENT").read_text().strip() != "v3"  # the pointer never moved to it
