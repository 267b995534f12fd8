"""Work-arounds for third-party packaging problems, applied only where they are needed."""

from skulens.compat.torchvision_ops import ensure_torchvision_ops, install_import_hook

__all__ = ["ensure_torchvision_ops", "install_import_hook"]
