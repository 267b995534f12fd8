"""Vectorised record validation that never drops a row silently.

A :class:`RecordChecker` wraps the raw records of one source (a pandas frame of text values, one
row per record, with its 1-based record number) and applies rules column by column. Each failing
record is either

* **rejected**: left out of the canonical table and written to the rejects table, or
* **flagged as a defect**: kept (possibly repaired, for example a derived title) and written to
  the defects table,

always with the record number, the field, the rule and a readable message. Checks are vectorised
over columns (pandas/numpy); measured throughput is in ``docs/benchmarks/datasets_build.md``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from skulens.data.contracts import ISSUES

ROW = "__row__"
_MAX_VALUE_CHARS = 200


def blank(series: pd.Series) -> np.ndarray:
    """True where a value is missing or whitespace only."""
    as_text = series.astype("string")
    return (as_text.isna() | (as_text.str.strip() == "")).to_numpy(dtype=bool)


@dataclass
class CheckResult:
    """What a checker produced: the surviving records and every issue found."""

    table: str
    rows_in: int
    valid: pd.DataFrame
    rejects: pa.Table
    defects: pa.Table

    @property
    def rows_out(self) -> int:
        return len(self.valid)

    @property
    def rows_rejected(self) -> int:
        return self.rows_in - self.rows_out

    def counts(self, kind: str) -> dict[str, int]:
        """Issues of ``kind`` ('rejects' or 'defects') counted by ``field:rule``."""
        issues = self.rejects if kind == "rejects" else self.defects
        if issues.num_rows == 0:
            return {}
        pairs = zip(issues.column("field").to_pylist(), issues.column("rule").to_pylist(), strict=True)
        return dict(sorted(Counter(f"{f}:{r}" for f, r in pairs).items()))


@dataclass
class RecordChecker:
    """Collects rejects and defects for the records of one source."""

    frame: pd.DataFrame
    table: str
    source: str
    key_field: str | None = None
    _rejected: np.ndarray = field(init=False)
    _issues: dict[str, list[pd.DataFrame]] = field(init=False)
    _unreadable: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.frame = self.frame.reset_index(drop=True)
        if ROW not in self.frame:
            self.frame[ROW] = np.arange(1, len(self.frame) + 1, dtype=np.int64)
        self._rejected = np.zeros(len(self.frame), dtype=bool)
        self._issues = {"rejects": [], "defects": []}

    # -- recording -------------------------------------------------------------------------
    @property
    def alive(self) -> np.ndarray:
        """Records not rejected so far."""
        return ~self._rejected

    def reject(self, mask: np.ndarray, field_name: str, rule: str, message: str,
               values: pd.Series | None = None) -> int:
        """Reject the records in ``mask`` (among those still alive); return how many."""
        mask = np.asarray(mask, dtype=bool) & self.alive
        self._record("rejects", mask, field_name, rule, message, values)
        self._rejected |= mask
        return int(mask.sum())

    def defect(self, mask: np.ndarray, field_name: str, rule: str, message: str,
               values: pd.Series | None = None) -> int:
        """Flag the records in ``mask`` (among those still alive) as kept with a defect."""
        mask = np.asarray(mask, dtype=bool) & self.alive
        self._record("defects", mask, field_name, rule, message, values)
        return int(mask.sum())

    def add_rejects(self, issues: pd.DataFrame) -> None:
        """Add rejects for records that never became rows of the frame (malformed lines)."""
        self._unreadable += len(issues)
        if len(issues):
            self._issues["rejects"].append(issues.assign(table=self.table, source=self.source))

    def _record(self, kind: str, mask: np.ndarray, field_name: str, rule: str, message: str,
                values: pd.Series | None) -> None:
        if not mask.any():
            return
        column = values if values is not None else self.frame.get(field_name)
        picked = pd.Series([None] * int(mask.sum()), dtype="object")
        if column is not None:
            picked = column[mask].astype("string").str.slice(0, _MAX_VALUE_CHARS).reset_index(drop=True)
        keys = None
        if self.key_field and self.key_field in self.frame:
            keys = self.frame.loc[mask, self.key_field].astype("string").reset_index(drop=True)
        self._issues[kind].append(
            pd.DataFrame(
                {
                    "table": self.table,
                    "source": self.source,
                    "row_number": self.frame.loc[mask, ROW].to_numpy(dtype=np.int64),
                    "record_key": keys if keys is not None else None,
                    "field": field_name,
                    "rule": rule,
                    "value": picked,
                    "message": message,
                }
            )
        )

    # -- reusable rules --------------------------------------------------------------------
    def require(self, field_name: str, message: str | None = None) -> None:
        """Reject records whose ``field_name`` is blank."""
        self.reject(blank(self.frame[field_name]), field_name, "required",
                    message or f"{field_name} is empty")

    def max_length(self, field_name: str, limit: int) -> None:
        """Reject records whose text in ``field_name`` is longer than ``limit`` characters."""
        lengths = self.frame[field_name].astype("string").str.len().fillna(0).to_numpy()
        self.reject(lengths > limit, field_name, "max_length",
                    f"{field_name} is longer than {limit} characters")

    def unique(self, fields: list[str]) -> None:
        """Reject every later record whose ``fields`` repeat an earlier live record's."""
        live = self.frame.loc[self.alive, fields]
        duplicated = np.zeros(len(self.frame), dtype=bool)
        duplicated[np.flatnonzero(self.alive)[live.duplicated(keep="first").to_numpy()]] = True
        name = "+".join(fields)
        self.reject(duplicated, fields[0] if len(fields) == 1 else name, "unique",
                    f"duplicate {name}: an earlier record has the same value")

    def one_of(self, field_name: str, allowed: tuple[str, ...]) -> None:
        """Reject records whose ``field_name`` is not one of ``allowed`` (blank is checked apart)."""
        values = self.frame[field_name].astype("string")
        bad = (~values.isin(allowed)).to_numpy(dtype=bool) & ~blank(values)
        self.reject(bad, field_name, "value_set", f"{field_name} must be one of {', '.join(allowed)}")

    def parse_float(self, field_name: str, *, minimum: float | None = None,
                    maximum: float | None = None) -> pd.Series:
        """Parse ``field_name`` as a number; reject unparsable or out-of-range values.

        Blank values parse to NaN and are not rejected here (use :meth:`require`).
        """
        raw = self.frame[field_name]
        empty = blank(raw)
        parsed = pd.to_numeric(raw.where(~empty, None), errors="coerce").astype("float64")
        bad_type = parsed.isna().to_numpy() & ~empty
        non_finite = ~np.isfinite(parsed.to_numpy()) & ~parsed.isna().to_numpy()
        self.reject(bad_type | non_finite, field_name, "type:float", f"{field_name} is not a number")
        numbers = parsed.to_numpy()
        with np.errstate(invalid="ignore"):
            if minimum is not None:
                self.reject(numbers < minimum, field_name, "range", f"{field_name} is below {minimum}")
            if maximum is not None:
                self.reject(numbers > maximum, field_name, "range", f"{field_name} is above {maximum}")
        return parsed

    def parse_timestamp(self, field_name: str, default: pd.Timestamp | None = None) -> pd.Series:
        """Parse ``field_name`` as a time (UTC); reject unparsable values; blank takes ``default``."""
        raw = self.frame[field_name]
        empty = blank(raw)
        parsed = pd.to_datetime(raw.where(~empty, None), errors="coerce", utc=True, format="mixed")
        bad = parsed.isna().to_numpy() & ~empty
        self.reject(bad, field_name, "type:timestamp", f"{field_name} is not a date/time")
        if default is not None:
            parsed = parsed.fillna(default)
        return parsed

    # -- result ----------------------------------------------------------------------------
    def result(self) -> CheckResult:
        """The live records and the issues as ISSUES-shaped Arrow tables."""
        return CheckResult(
            table=self.table,
            rows_in=len(self.frame) + self._unreadable,
            valid=self.frame.loc[self.alive].reset_index(drop=True),
            rejects=issues_table(self._issues["rejects"]),
            defects=issues_table(self._issues["defects"]),
        )


def issues_table(frames: list[pd.DataFrame]) -> pa.Table:
    """Concatenate issue frames into a table of the ISSUES schema, ordered by record."""
    if not frames:
        return ISSUES.empty_table()
    tables = []
    for frame in frames:
        columns = {}
        for name in ISSUES.names:
            values = frame[name] if name in frame else pd.Series([None] * len(frame))
            if name == "row_number":
                columns[name] = pa.array(values.to_numpy(dtype=np.int64))
            else:
                columns[name] = pa.array([None if pd.isna(v) else str(v) for v in values],
                                         type=pa.string())
        tables.append(pa.table(columns, schema=ISSUES))
    table = pa.concat_tables(tables)
    return table.sort_by([("source", "ascending"), ("row_number", "ascending")])
