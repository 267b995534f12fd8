"""Where skulens keeps its artefacts: versioned folders published by an atomic pointer swap."""

from skulens.storage.versioned import VersionedDir, new_version_id

__all__ = ["VersionedDir", "new_version_id"]
