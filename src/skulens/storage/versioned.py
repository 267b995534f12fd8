"""Versioned artefact folders with atomic publishing.

Layout of one artefact (a catalogue's tables, an index, a set of events)::

    <root>/versions/<version_id>/...   one complete build each
    <root>/CURRENT                     the id of the version readers use

A build writes into a hidden staging folder, which is renamed into ``versions/`` only when the
build finished, and ``CURRENT`` is then replaced atomically (``os.replace``). A failed build leaves
no version behind and never touches ``CURRENT``, so the previous good version keeps serving.
Older versions are kept (``keep`` of them) for rollback.

With a :class:`~skulens.storage.objects.Mirror` (``storage.backend: s3``) the object store is the
source of truth: a committed version is uploaded, then the ``CURRENT`` object is replaced; readers
take ``CURRENT`` from there and download a version they lack into the local folder (a cache, pruned
to ``keep``; the bucket keeps every version until its lifecycle rules say otherwise).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from skulens.storage.objects import Mirror


def new_version_id(now: datetime | None = None) -> str:
    """A sortable, unique version id such as ``20261122T060102Z-1a2b3c``."""
    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


class VersionedDir:
    """A folder of immutable versions with a ``CURRENT`` pointer."""

    def __init__(self, root: Path, mirror: Mirror | None = None) -> None:
        self.root = Path(root)
        self.versions = self.root / "versions"
        self.mirror = mirror

    def current_id(self) -> str | None:
        """The published version id, or None when nothing was published yet."""
        if self.mirror is not None:
            return self.mirror.current_id()
        pointer = self.root / "CURRENT"
        if not pointer.is_file():
            return None
        value = pointer.read_text(encoding="utf-8").strip()
        return value or None

    def current(self) -> Path | None:
        """The folder of the published version, or None."""
        version = self.current_id()
        return None if version is None else self.local(version)

    def local(self, version_id: str) -> Path:
        """The local folder of a version, downloaded from the object store first if missing here."""
        folder = self.versions / version_id
        if self.mirror is not None and not folder.is_dir():
            self.versions.mkdir(parents=True, exist_ok=True)
            self.mirror.download_version(version_id, folder)
        return folder

    def list_versions(self) -> list[str]:
        """Published version ids, oldest first."""
        local = set()
        if self.versions.is_dir():
            local = {p.name for p in self.versions.iterdir() if p.is_dir() and not p.name.startswith(".")}
        return sorted(local | set(self.mirror.versions() if self.mirror is not None else ()))

    @contextmanager
    def build(self, version_id: str | None = None, *, keep: int = 3) -> Iterator[Path]:
        """Yield a staging folder; on normal exit publish it as a new version and make it current.

        On an exception the staging folder is removed and the exception propagates: the previous
        version stays current.
        """
        version_id = version_id or new_version_id()
        staging = self.begin(version_id)
        try:
            yield staging
        except BaseException:
            self.abort(version_id)
            raise
        self.commit(version_id, keep=keep)

    def staging_path(self, version_id: str) -> Path:
        """Where a version is written before it is published."""
        return self.versions / f".staging-{version_id}"

    def begin(self, version_id: str) -> Path:
        """Create an empty staging folder for ``version_id`` (replacing a stale one) and return it.

        Use with :meth:`commit` or :meth:`abort` when writing and checking happen in separate
        steps (a pipeline writes, a quality gate checks, then the version is published).
        """
        self.versions.mkdir(parents=True, exist_ok=True)
        staging = self.staging_path(version_id)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        return staging

    def commit(self, version_id: str, *, keep: int = 3) -> Path:
        """Publish the staged ``version_id``: move it into ``versions/`` and point CURRENT at it."""
        staging = self.staging_path(version_id)
        if not staging.is_dir():
            raise FileNotFoundError(f"nothing staged for version {version_id!r} under {self.versions}")
        target = self.versions / version_id
        if target.exists():
            # Re-running a version id replaces it instead of duplicating it.
            shutil.rmtree(target)
        staging.rename(target)
        if self.mirror is not None:
            self.mirror.upload_version(version_id, target)  # every file before the pointer moves
        self.set_current(version_id)
        self.prune(keep)
        return target

    def abort(self, version_id: str) -> None:
        """Throw away the staged ``version_id``; CURRENT is untouched."""
        shutil.rmtree(self.staging_path(version_id), ignore_errors=True)

    def set_current(self, version_id: str) -> None:
        """Point ``CURRENT`` at an existing version (also used to roll back)."""
        if self.mirror is not None and version_id in self.mirror.versions():
            self.local(version_id)
        if not (self.versions / version_id).is_dir():
            raise FileNotFoundError(f"no version {version_id!r} under {self.versions}")
        tmp = self.root / f".CURRENT.{uuid.uuid4().hex}"
        tmp.write_text(version_id + "\n", encoding="utf-8")
        os.replace(tmp, self.root / "CURRENT")
        if self.mirror is not None:
            self.mirror.set_current(version_id)

    def prune(self, keep: int) -> list[str]:
        """Delete the oldest versions beyond ``keep``, never the current one; return what went."""
        current = self.current_id()
        local = sorted(p.name for p in self.versions.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if self.versions.is_dir() else []
        removable = [v for v in local if v != current]
        excess = len(removable) - max(keep - 1, 0)
        removed = removable[: max(excess, 0)]
        for version in removed:
            shutil.rmtree(self.versions / version, ignore_errors=True)
        return removed
