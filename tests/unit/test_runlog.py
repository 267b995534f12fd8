"""The run log: stages of parallel branches (threads and processes) hand over without losing each
other's records, and a retried stage replaces its earlier attempt."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from skulens.pipelines.runlog import finish, read_log, stage, stage_result
from skulens.settings import load_settings

# Many short stages per branch, so that the two branches' writes interleave many times.
BRANCHES = {branch: [f"{step}_{branch}_{i}" for i in range(20) for step in ("train", "evaluate", "gate")]
            for branch in ("embedder", "reranker")}


def _branch(names: list[str], start: multiprocessing.synchronize.Barrier | threading.Barrier) -> None:
    settings = load_settings()  # a task process loads its own settings, as an Airflow worker does
    start.wait()
    for name in names:
        with stage(settings, "p", "run1", name) as result:
            result["by"] = name


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_two_branches_finishing_at_once_keep_every_stage(settings, kind):
    if kind == "threads":
        barrier = threading.Barrier(2)
        workers = [threading.Thread(target=_branch, args=(names, barrier)) for names in BRANCHES.values()]
    else:
        context = multiprocessing.get_context("fork")
        barrier = context.Barrier(2)
        workers = [context.Process(target=_branch, args=(names, barrier)) for names in BRANCHES.values()]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    if kind == "processes":
        assert [w.exitcode for w in workers] == [0, 0]
    stages = read_log(settings, "p", "run1")["stages"]
    assert sorted(stages) == sorted(n for names in BRANCHES.values() for n in names)
    assert all(entry["status"] == "success" and entry["result"]["by"] == name for name, entry in stages.items())
    summary = finish(settings, "p", "run1", [n for names in BRANCHES.values() for n in names])
    assert summary["status"] == "success" and summary["not_run"] == []


def test_a_retried_stage_replaces_its_failed_attempt(settings):
    with pytest.raises(RuntimeError), stage(settings, "p", "run2", "train") as result:
        raise RuntimeError("out of memory")
    with pytest.raises(RuntimeError, match="has not succeeded"):
        stage_result(settings, "p", "run2", "train")
    with stage(settings, "p", "run2", "train") as result:
        result["epochs"] = 3
    assert stage_result(settings, "p", "run2", "train") == {"epochs": 3}
    assert finish(settings, "p", "run2", ["train"])["status"] == "success"
    assert read_log(settings, "p", "other-run")["stages"] == {}
