"""Let ``torchvision`` import on a CPU-only torch whose registry torchvision is a CUDA build.

The registry's torchvision that matches torch 2.13.0 is built for CUDA. On the CPU torch wheel its
C++ extension fails to load, and ``import torchvision`` then raises
``RuntimeError: operator torchvision::nms does not exist`` while registering fake kernels.
open_clip, timm and sentence-transformers (through transformers) all import torchvision, so the
whole model stack fails with it.

The fix declares the two operator schemas that torchvision's meta registrations look up, before
torchvision is imported. It is applied only when torchvision's own extension cannot be loaded, so a
GPU machine whose torchvision matches its torch is left untouched. Image decoding through
torchvision stays unavailable on CPU: skulens decodes images with Pillow.

Two ways in:

* :func:`ensure_torchvision_ops` - call before importing open_clip/timm/sentence_transformers.
  skulens' own model code does this.
* :func:`install_import_hook` - a meta-path hook that runs the fix the first time anything imports
  ``torchvision``. ``scripts/setup.sh`` installs a ``.pth`` file that calls it, so that plain
  ``python -c "import open_clip"`` works in the project's virtual environment.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import threading
from pathlib import Path

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)
_lock = threading.RLock()  # re-entrant: find_spec below may run the import hook
_state: dict[str, object] = {"done": False, "patched": False, "library": None}


def _extension_path() -> Path | None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for candidate in sorted(Path(folder).glob("_C*.so")) + sorted(Path(folder).glob("_C*.pyd")):
            return candidate
    return None


def _native_ops_load() -> bool:
    """True when torchvision's compiled operators load into this torch."""
    import torch

    if _has_nms(torch):
        return True
    path = _extension_path()
    if path is None:
        return False
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError):
        return False
    return _has_nms(torch)


def _has_nms(torch) -> bool:  # noqa: ANN001 - torch is imported lazily
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("torchvision::nms", "CPU") or bool(
            torch._C._jit_get_operation("torchvision::nms")
        )
    except (RuntimeError, AttributeError):
        return False


def ensure_torchvision_ops() -> bool:
    """Make ``import torchvision`` work on this torch; return True when the schemas were patched in.

    Idempotent and thread-safe. Does nothing (returns False) when torchvision is not installed,
    when it is already imported, or when its own compiled operators load.
    """
    with _lock:
        if _state["done"]:
            return bool(_state["patched"])
        _state["done"] = True
        uninstall_import_hook()  # the fix runs once; the hook has nothing left to do
        if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
            return False
        if _native_ops_load():
            return False
        import torch

        library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _SCHEMAS:
            library.define(schema)
        # Keep the Library object alive: dropping it would unregister the schemas.
        _state["library"] = library
        _state["patched"] = True
        return True


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    """Runs :func:`ensure_torchvision_ops` right before the first ``import torchvision``."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - importlib protocol
        if fullname != "torchvision":
            return None
        # Remove ourselves first so that the lookups inside the fix do not recurse.
        uninstall_import_hook()
        ensure_torchvision_ops()
        return None  # let the normal finders import torchvision


def install_import_hook() -> None:
    """Install the meta-path hook (cheap: imports nothing heavy until torchvision is imported)."""
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(finder, _TorchvisionHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionHook())


def uninstall_import_hook() -> None:
    """Remove the meta-path hook if present."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchvisionHook)]
