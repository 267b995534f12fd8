"""ONNX Runtime provider selection by configuration (models.onnx_device)."""

from __future__ import annotations

import pytest

from skulens.models.onnx import ProviderError, configure, providers

CPU = ["CPUExecutionProvider"]
GPU = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_auto_takes_cuda_where_the_runtime_has_it_and_the_cpu_elsewhere(monkeypatch):
    monkeypatch.delenv("SKULENS_ONNX_DEVICE", raising=False)
    assert providers("auto", available=GPU) == GPU
    assert providers("auto", available=CPU) == CPU
    assert providers("cpu", available=GPU) == CPU


def test_cuda_required_but_missing_is_a_clear_error():
    with pytest.raises(ProviderError, match="no CUDAExecutionProvider"):
        providers("cuda", available=CPU)
    assert providers("cuda", available=GPU) == GPU


def test_configuration_and_environment_pick_the_default(monkeypatch):
    monkeypatch.delenv("SKULENS_ONNX_DEVICE", raising=False)
    configure("cpu")
    try:
        assert providers(available=GPU) == CPU
        monkeypatch.setenv("SKULENS_ONNX_DEVICE", "auto")
        assert providers(available=GPU) == GPU
    finally:
        configure("auto")
    with pytest.raises(ValueError, match="one of auto, cpu, cuda"):
        configure("tpu")


def test_this_runtime_runs_a_session_on_what_it_has(tmp_path):
    import onnxruntime as ort

    from skulens.models.onnx import providers_of, session

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "id.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    expected = "CUDAExecutionProvider" if "CUDAExecutionProvider" in ort.get_available_providers() \
        else "CPUExecutionProvider"
    assert providers_of(session(path))[0] == expected


def test_the_retrieval_check_refuses_real_losses_not_boundary_flips():
    import numpy as np

    from skulens.export.parity import _retrieval_holds
    from skulens.settings import ParitySettings

    parity = ParitySettings()
    base = np.zeros(512, bool)
    base[:334] = True  # recall@10 0.652, as on the fashion parity pairs
    flips = base.copy()
    flips[[0, 1, 2, 3, 4, 5, 6, 7]] = False  # 8 queries lost ...
    flips[[400, 401]] = True  # ... 2 gained: a 0.0117 drop, within what boundary flips do
    ok, detail = _retrieval_holds(base, flips, parity)
    assert ok is True and "8 queries lost, 2 gained" in detail  # a plain bool: it goes into export.json
    loss = base.copy()
    loss[:9] = False  # 9 lost, none gained: a real loss (p = 0.002)
    assert not _retrieval_holds(base, loss, parity)[0]
    big = base.copy()
    big[:40] = False
    big[400:420] = True  # 0.039 net: above the hard limit, whatever the test says
    ok, detail = _retrieval_holds(base, big, parity)
    assert not ok and "hard limit" in detail
    assert _retrieval_holds(base, base, parity)[0]
