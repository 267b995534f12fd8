import sys

import pytest

from skulens.compat import torchvision_ops


@pytest.fixture
def fresh_state(monkeypatch):
    monkeypatch.setattr(torchvision_ops, "_state", {"done": False, "patched": False, "library": None})
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)


def test_leaves_a_matching_torchvision_alone(fresh_state, monkeypatch):
    # A GPU machine whose torchvision matches its torch: its own ops load, nothing is patched.
    monkeypatch.setattr(torchvision_ops, "_native_ops_load", lambda: True)
    assert torchvision_ops.ensure_torchvision_ops() is False
    assert torchvision_ops._state["library"] is None


def test_hook_installs_once_and_removes_itself():
    torchvision_ops.uninstall_import_hook()
    if "torchvision" in sys.modules:
        pytest.skip("torchvision already imported in this process")
    torchvision_ops.install_import_hook()
    torchvision_ops.install_import_hook()
    hooks = [f for f in sys.meta_path if isinstance(f, torchvision_ops._TorchvisionHook)]
    assert len(hooks) == 1
    torchvision_ops.uninstall_import_hook()
    assert not any(isinstance(f, torchvision_ops._TorchvisionHook) for f in sys.meta_path)
