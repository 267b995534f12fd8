"""The address book of ``SKULENS_HOME``: where each kind of artefact lives, in one place.

Every module that reads or writes these folders asks here, so that the layout can change (or move
to an object store) without a hunt through the code::

    tables/<catalog>/         canonical tables (versioned, CURRENT)
    prepared/<catalog>/       Spark-prepared catalogue (versioned)
    pairs/                    training pairs and shards (versioned)
    indexes/<catalog>/        search index versions (versioned; RELOAD marker beside CURRENT)
    events/<catalog>/         click logs (date partitions)
    reports/<pipeline>/       run logs and summaries
    cache/                    model and registry caches

With ``storage.backend: s3`` the versioned folders are mirrored to the object store (key prefix
``storage.s3.prefix`` + the same relative path), which then holds the published versions and
their ``CURRENT`` pointers; the local folders are caches (:mod:`skulens.storage.objects`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from skulens.storage.versioned import VersionedDir


def versioned(settings: Any, folder: Path) -> VersionedDir:
    """The versioned folder ``folder`` (under ``SKULENS_HOME``), mirrored to the object store when
    ``storage.backend`` names one."""
    from skulens.storage.objects import mirror_for

    return VersionedDir(folder, mirror_for(settings, folder))


def tables_store(settings: Any, catalog: str) -> VersionedDir:
    """The versioned folder of a catalogue's canonical tables."""
    return versioned(settings, settings.tables_dir / catalog)


def prepared_store(settings: Any, catalog: str) -> VersionedDir:
    """The versioned folder of a catalogue's prepared outputs."""
    return versioned(settings, settings.home / "prepared" / catalog)


def pairs_store(settings: Any) -> VersionedDir:
    """The versioned folder of the training pairs."""
    return versioned(settings, settings.home / "pairs")


def index_store(settings: Any, catalog: str) -> VersionedDir:
    """The versioned folder of a catalogue's search indexes."""
    return versioned(settings, settings.home / "indexes" / catalog)


def events_store(settings: Any, name: str) -> VersionedDir:
    """The versioned folder of a set of (simulated or imported) click events."""
    return versioned(settings, settings.events_dir / name)


def reload_marker(settings: Any, catalog: str) -> Path:
    """The file ``notify_serving`` rewrites after each publish."""
    return settings.home / "indexes" / catalog / "RELOAD"


def events_dir(settings: Any, catalog: str) -> Path:
    return settings.events_dir / catalog


def control_db(settings: Any) -> Path:
    """The serving workers' shared control store when it is a SQLite file (``serving.shared``)."""
    return settings.home / "serving" / "control.db"


def model_cache(settings: Any) -> Path:
    return settings.home / "cache" / "models"


def pairs_dir(settings: Any) -> Path:
    """The published training pairs' folder; FileNotFoundError before catalog_ingest has run."""
    current = pairs_store(settings).current()
    if current is None:
        raise FileNotFoundError("no published training pairs; run the catalog_ingest pipeline first")
    return current


class StreamPaths:
    """The stream's folders: the landing zone the service writes, and what the stream job writes.

    ``landing``      JSON lines from the service (``stream.files_dir``)
    ``checkpoint``   Spark's offsets and commits (what makes a restart exact)
    ``events``       the events table: Parquet, partitioned by ``date`` and ``batch_id``
    ``dead_letter``  rows that broke a rule (``rule``, ``field``, the line), same partitions
    ``state``        clicks waiting for their impression, per batch
    ``aggregates``   windowed per-product and per-query aggregates (the latest batch's)
    ``online_db``    the embedded online feature store (SQLite)
    """

    def __init__(self, root: Path, landing: Path) -> None:
        self.root, self.landing = root, landing
        self.checkpoint = root / "checkpoints" / "events"
        self.events = root / "tables" / "events"
        self.dead_letter = root / "tables" / "dead_letter"
        self.state = root / "state"
        self.aggregates = root / "aggregates"
        self.online_db = root / "online.db"


def stream_paths(settings: Any) -> StreamPaths:
    """Where the stream lives under ``SKULENS_HOME/stream`` (the landing zone may be elsewhere)."""
    root = settings.home / "stream"
    return StreamPaths(root, Path(settings.stream.files_dir or root / "landing"))
