"""Shared by the benchmark scripts: the machine line and writing the Markdown + JSON figures."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def machine_description() -> str:
    """Architecture, cores, Python, memory; benchmarks here use no GPU."""
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    try:
        machine += f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        pass
    return machine + ", no GPU used"


def write_report(name: str, lines: list[str], payload: dict) -> None:
    """Write docs/benchmarks/<name>.md and <name>.json, and print the Markdown."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (OUT / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print("\n".join(lines))
