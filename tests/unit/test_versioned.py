import pytest

from skulens.storage import VersionedDir


def test_build_publishes_and_failure_keeps_previous(tmp_path):
    store = VersionedDir(tmp_path / "art")
    assert store.current() is None
    with store.build("v1") as staging:
        (staging / "data.txt").write_text("one")
    assert store.current_id() == "v1"
    with pytest.raises(RuntimeError), store.build("v2") as staging:
        (staging / "data.txt").write_text("half")
        raise RuntimeError("build broke")
    assert store.current_id() == "v1"
    assert store.list_versions() == ["v1"]
    assert (store.current() / "data.txt").read_text() == "one"


def test_rerun_replaces_and_prune_keeps_current(tmp_path):
    store = VersionedDir(tmp_path / "art")
    for version in ("v1", "v2", "v3", "v4"):
        with store.build(version, keep=2) as staging:
            (staging / "data.txt").write_text(version)
    assert store.list_versions() == ["v3", "v4"]
    with store.build("v4", keep=2) as staging:
        (staging / "data.txt").write_text("again")
    assert store.list_versions() == ["v3", "v4"]
    assert (store.current() / "data.txt").read_text() == "again"
    store.set_current("v3")  # rollback
    assert (store.current() / "data.txt").read_text() == "v3"
    with pytest.raises(FileNotFoundError):
        store.set_current("v9")
