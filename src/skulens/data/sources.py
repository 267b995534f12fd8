"""Read CSV, Parquet or JSONL files into raw text records, keeping malformed records as rejects.

Readers return every value as text (or a list for list-valued Parquet columns) together with the
record's ``row_number``, so that validation can name the record and nothing is coerced silently.
For CSV and JSONL the row number is the line of the file where the record starts (a CSV header is
line 1), so a user can open the file at that line; for Parquet it is the 1-based record index.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from skulens.data.checks import ROW

Format = Literal["csv", "parquet", "jsonl"]
_SUFFIXES: dict[str, Format] = {
    ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
}


class SourceError(ValueError):
    """A source file cannot be read at all (missing, wrong format, wrong encoding)."""


@dataclass
class RawRecords:
    """Records of one file as text, plus the records that could not be parsed."""

    path: Path
    frame: pd.DataFrame
    malformed: pd.DataFrame  # columns: row_number, field, rule, value, message, record_key

    @property
    def columns(self) -> list[str]:
        return [c for c in self.frame.columns if c != ROW]


def infer_format(path: Path, declared: str | None = None) -> Format:
    """The format named in a mapping, else inferred from the file suffix."""
    if declared:
        if declared not in ("csv", "parquet", "jsonl"):
            raise SourceError(f"unknown format {declared!r}; use csv, parquet or jsonl")
        return declared  # type: ignore[return-value]
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise SourceError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}; "
            "name it (csv, parquet or jsonl) in the mapping"
        )
    return fmt


def read_records(path: Path, fmt: str | None = None, *, encoding: str = "utf-8",
                 delimiter: str | None = None) -> RawRecords:
    """Read ``path`` into :class:`RawRecords`. Raises :class:`SourceError` if it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"source file {path} does not exist")
    kind = infer_format(path, fmt)
    if kind == "csv":
        return _read_csv(path, encoding, delimiter or ("\t" if path.suffix.lower() == ".tsv" else ","))
    if kind == "jsonl":
        return _read_jsonl(path, encoding)
    return _read_parquet(path)


def _malformed(rows: list[tuple[int, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "row_number": np.array([r[0] for r in rows], dtype=np.int64),
            "record_key": None,
            "field": "(record)",
            "rule": "malformed",
            "value": [r[1][:200] for r in rows],
            "message": [r[2] for r in rows],
        }
    )


def _read_csv(path: Path, encoding: str, delimiter: str) -> RawRecords:
    try:
        with path.open(newline="", encoding=encoding) as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration as exc:
                raise SourceError(f"{path} is empty (no header row)") from exc
            if len(set(header)) != len(header):
                raise SourceError(f"{path}: the header repeats a column name: {header}")
            width = len(header)
            rows: list[list[str]] = []
            numbers: list[int] = []
            bad: list[tuple[int, str, str]] = []
            while True:
                number = reader.line_num + 1  # the line where this record starts
                try:
                    row = next(reader)
                except StopIteration:
                    break
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line: not a record
                if len(row) != width:
                    bad.append((number, delimiter.join(row),
                                f"record has {len(row)} fields, the header has {width}"))
                    continue
                rows.append(row)
                numbers.append(number)
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"{path} is not valid {encoding} (byte {exc.start}); set `encoding` in the mapping"
        ) from exc
    except csv.Error as exc:
        raise SourceError(f"{path}: CSV parse error: {exc}") from exc
    frame = pd.DataFrame(rows, columns=header, dtype="object")
    frame[ROW] = np.array(numbers, dtype=np.int64)
    return RawRecords(path, frame, _malformed(bad))


def _read_jsonl(path: Path, encoding: str) -> RawRecords:
    records: list[dict[str, object]] = []
    numbers: list[int] = []
    bad: list[tuple[int, str, str]] = []
    try:
        with path.open(encoding=encoding) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    bad.append((number, line.strip(), f"not valid JSON: {exc.msg}"))
                    continue
                if not isinstance(value, dict):
                    bad.append((number, line.strip(), "a record must be a JSON object"))
                    continue
                records.append({k: _text(v) for k, v in value.items()})
                numbers.append(number)
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path} is not valid {encoding}; set `encoding` in the mapping") from exc
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    frame = frame.astype("object").where(pd.notna(frame), "")
    frame[ROW] = np.array(numbers, dtype=np.int64)
    return RawRecords(path, frame, _malformed(bad))


def _read_parquet(path: Path) -> RawRecords:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise SourceError(f"{path} is not a readable Parquet file: {exc}") from exc
    frame = table.to_pandas(types_mapper=None)
    for column in frame.columns:
        frame[column] = [_text(v) for v in frame[column].tolist()]
    frame[ROW] = np.arange(1, len(frame) + 1, dtype=np.int64)
    return RawRecords(path, frame, _malformed([]))


def _text(value: object) -> object:
    """Values as text; lists stay lists of text (a category path); nulls become ''."""
    if value is None:
        return ""
    if isinstance(value, float) and np.isnan(value):
        return ""
    if isinstance(value, list | tuple | np.ndarray):
        return [str(v) for v in value if v is not None and str(v).strip()]
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)
