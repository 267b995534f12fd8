"""Publishing an index version: CURRENT moves only when everything serving follows has moved, and
a Milvus connection refused once is retried on a fresh connection."""

from __future__ import annotations

import pytest

from skulens.pipelines import build_index
from skulens.retrieval import milvus_store
from skulens.retrieval.milvus_store import MilvusVectorStore


def _stage(settings, monkeypatch, fail_alias_for: str | None):
    results = {"embed": {"catalog": "shop", "model_version": "m/1"}, "build_vector": {}, "build_lexical": {},
               "learn_ranking": {}}
    monkeypatch.setattr(build_index, "_previous", lambda _s, _run, name: results[name])

    def alias(_settings, _catalog, version_dir):
        if version_dir.name == fail_alias_for:
            raise ConnectionError("Milvus refused the connection")
        return None

    monkeypatch.setattr(build_index, "_point_milvus_alias", alias)


def test_publish_keeps_the_previous_version_current_when_the_alias_cannot_move(settings, monkeypatch):
    store = build_index.index_store(settings, "shop")
    _stage(settings, monkeypatch, fail_alias_for="v2")
    for run_id in ("v1", "v2"):
        store.begin(run_id)
    build_index.publish(settings, "v1")
    assert store.current_id() == "v1"
    with pytest.raises(ConnectionError, match="refused"):
        build_index.publish(settings, "v2")
    assert store.current_id() == "v1"


def test_connect_retries_a_refused_connection_on_a_dedicated_one(monkeypatch, tmp_path):
    from pymilvus.exceptions import MilvusException

    calls = []

    def client(uri, **kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise MilvusException(message="Fail connecting to server: too many pings")
        return "client"

    monkeypatch.setattr("pymilvus.MilvusClient", client)
    monkeypatch.setattr(milvus_store.time, "sleep", lambda _s: None)
    assert MilvusVectorStore.connect(str(tmp_path / "m.db")) == "client"
    assert [c["dedicated"] for c in calls] == [False, True]
    assert calls[0]["grpc_options"]["grpc.keepalive_permit_without_calls"] is False
    calls.clear()
    with pytest.raises(MilvusException):
        MilvusVectorStore.connect("http://milvus:19530", attempts=1)
    assert "grpc_options" not in calls[0]  # a real server's keepalive settings are left alone
