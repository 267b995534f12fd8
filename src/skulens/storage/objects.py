"""The object store behind versioned artefacts in production (``storage.backend: s3``): AWS S3,
MinIO or any S3-compatible server, through boto3.

A :class:`~skulens.storage.versioned.VersionedDir` with a :class:`Mirror` publishes each version to
the bucket (every file first, the ``CURRENT`` pointer object last, so a reader never sees a pointer
to a half-uploaded version) and reads ``CURRENT`` from there, so that a version published on one
machine is the one every other machine serves; a version missing locally is downloaded into the
local folder, which is then a cache. Stores register by name (``OBJECT_STORES``).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class ObjectStoreError(RuntimeError):
    """The object store could not be reached or refused a request (the message says which)."""


class ObjectStore(Protocol):
    def put_file(self, key: str, path: Path) -> None: ...
    def get_file(self, key: str, path: Path) -> None: ...
    def put_text(self, key: str, text: str) -> None: ...
    def get_text(self, key: str) -> str | None: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def list_children(self, prefix: str) -> list[str]: ...


class S3Objects:
    """An S3 bucket (``storage.s3``: bucket, endpoint_url for MinIO or a stand-in, region);
    credentials come from the environment (``AWS_ACCESS_KEY_ID`` ...), never from configuration."""

    def __init__(self, bucket: str, endpoint_url: str | None = None, region: str = "us-east-1") -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.endpoint_url = bucket, endpoint_url
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                                   config=Config(retries={"max_attempts": 5, "mode": "standard"},
                                                 connect_timeout=10, read_timeout=60))

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise ObjectStoreError(f"s3://{self.bucket}: {what} refused ({code}): {exc}") from exc
        except BotoCoreError as exc:
            raise ObjectStoreError(f"s3://{self.bucket} at {self.endpoint_url or 'AWS'}: {what} failed: {exc}") \
                from exc

    def put_file(self, key: str, path: Path) -> None:
        self._call(f"upload {key}", lambda: self.client.upload_file(str(path), self.bucket, key))

    def get_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._call(f"download {key}", lambda: self.client.download_file(self.bucket, key, str(path)))

    def put_text(self, key: str, text: str) -> None:
        self._call(f"write {key}", lambda: self.client.put_object(Bucket=self.bucket, Key=key,
                                                                  Body=text.encode("utf-8")))

    def get_text(self, key: str) -> str | None:
        from botocore.exceptions import ClientError

        def read() -> str | None:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read().decode("utf-8")
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                    return None
                raise
        return self._call(f"read {key}", read)

    def list_keys(self, prefix: str) -> list[str]:
        pages = self._call(f"list {prefix}", lambda: list(self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix)))
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def list_children(self, prefix: str) -> list[str]:
        """The names one level below ``prefix`` (which ends with ``/``)."""
        pages = self._call(f"list {prefix}", lambda: list(self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/")))
        return sorted(p["Prefix"][len(prefix):].rstrip("/") for page in pages for p in page.get("CommonPrefixes", []))


OBJECT_STORES: dict[str, Callable[[Any], ObjectStore]] = {
    "s3": lambda s: S3Objects(s.storage.s3.bucket, s.storage.s3.endpoint_url, s.storage.s3.region),
}


@dataclass
class Mirror:
    """Where one versioned folder lives in the object store: ``store`` under key ``prefix``."""

    store: ObjectStore
    prefix: str  # no trailing slash

    def upload_version(self, version_id: str, folder: Path) -> None:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            self.store.put_file(f"{self.prefix}/versions/{version_id}/{path.relative_to(folder).as_posix()}", path)

    def download_version(self, version_id: str, target: Path) -> Path:
        """The version's files into ``target`` (written beside it, renamed into place at the end)."""
        keys = self.store.list_keys(f"{self.prefix}/versions/{version_id}/")
        if not keys:
            raise FileNotFoundError(f"no version {version_id!r} in the object store under {self.prefix}/versions")
        staging = target.with_name(f".download-{version_id}-{uuid.uuid4().hex[:6]}")
        try:
            for key in keys:
                self.store.get_file(key, staging / key[len(f"{self.prefix}/versions/{version_id}/"):])
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def current_id(self) -> str | None:
        text = self.store.get_text(f"{self.prefix}/CURRENT")
        return (text or "").strip() or None

    def set_current(self, version_id: str) -> None:
        self.store.put_text(f"{self.prefix}/CURRENT", version_id + "\n")

    def versions(self) -> list[str]:
        return [v for v in self.store.list_children(f"{self.prefix}/versions/") if not v.startswith(".")]


_OPENED: dict[tuple[int, str], ObjectStore] = {}


def mirror_for(settings: Any, folder: Path) -> Mirror | None:
    """The object-store mirror of ``folder`` (a folder under ``SKULENS_HOME``), or None with the
    local backend. One client per process and bucket."""
    if settings.storage.backend == "local":
        return None
    key = (os.getpid(), settings.storage.backend)
    store = _OPENED.get(key)
    if store is None:
        store = _OPENED[key] = OBJECT_STORES[settings.storage.backend](settings)
    try:
        relative = Path(folder).resolve().relative_to(Path(settings.home).resolve()).as_posix()
    except ValueError:  # a folder configured outside SKULENS_HOME keeps its own path as the key
        relative = Path(folder).resolve().as_posix().lstrip("/")
    prefix = "/".join(part for part in (settings.storage.s3.prefix.strip("/"), relative) if part)
    return Mirror(store, prefix)
