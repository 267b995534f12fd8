"""Every control store (``skulens.control.store.CONTROL_STORES``) against a real server where it
has one (Redis: Debian's ``redis-server`` started here): compare-and-set documents, counters added
from several processes at once, the rollout log, and two serving states following one routing."""

from __future__ import annotations

import multiprocessing

import pytest

from skulens.control.routing import ROUTING, Routing, VariantSpec
from skulens.control.store import CONTROL_STORES, Conflict, open_control
from skulens.settings import load_settings
from tests.integration.test_online_stores import redis_url  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration


@pytest.fixture(params=sorted(CONTROL_STORES))
def control_settings(request, tmp_path):
    env = {"SKULENS_HOME": str(tmp_path / "home")}
    if request.param == "redis":
        url, _ = request.getfixturevalue("redis_url")
        env.update({"SKULENS__SERVING__SHARED__BACKEND": "redis", "SKULENS__SERVING__SHARED__REDIS_URL": url,
                    "SKULENS__SERVING__SHARED__KEY_PREFIX": f"test-{tmp_path.name}/"})
    return load_settings("local", env=env)


def _spend(env: dict, times: int) -> None:
    settings = load_settings("local", env=env)
    store = open_control(settings)
    for _ in range(times):
        store.add("llm:spend:2026-12-02", {"usd": 0.25})


def test_each_store_sets_documents_by_revision_and_adds_across_processes(control_settings):
    store = open_control(control_settings)
    assert store.read(ROUTING) == (None, 0)
    routing = Routing(variants={"control": VariantSpec("v1")})
    first = store.write(ROUTING, routing.to_doc(), expect=0)
    with pytest.raises(Conflict):
        store.write(ROUTING, routing.to_doc(), expect=0)  # another admin wrote first
    doc, revision = store.read(ROUTING)
    assert revision == first and Routing.from_doc(doc).variants["control"] == VariantSpec("v1")

    shared = control_settings.serving.shared
    env = {"SKULENS_HOME": str(control_settings.home), "SKULENS__SERVING__SHARED__BACKEND": shared.backend}
    if shared.backend == "redis":
        env.update({"SKULENS__SERVING__SHARED__REDIS_URL": shared.redis_url,
                    "SKULENS__SERVING__SHARED__KEY_PREFIX": shared.key_prefix})
    workers = [multiprocessing.get_context("spawn").Process(target=_spend, args=(env, 50)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert store.totals("llm:spend:2026-12-02") == {"usd": pytest.approx(37.5)}  # 3 x 50 x 0.25, none lost

    store.append("rollouts", {"id": "r1", "outcome": "rolled_back"})
    store.append("rollouts", {"id": "r2", "outcome": "promoted"})
    assert [r["id"] for r in store.records("rollouts")] == ["r1", "r2"]


def test_a_dead_store_is_a_readable_error(control_settings):
    from skulens.control.store import ControlStoreError

    if control_settings.serving.shared.backend != "redis":
        pytest.skip("a SQLite file cannot be made unreachable the same way")
    dead = control_settings.model_copy(update={"serving": control_settings.serving.model_copy(update={
        "shared": control_settings.serving.shared.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})})})
    with pytest.raises(ControlStoreError, match="control store"):
        open_control(dead).read(ROUTING)
