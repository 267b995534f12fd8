"""Drift detection on simulated traffic: how long after a shift ``monitor_drift`` asks for
retraining, how often it triggers per shift, and how often it raises a false alarm on stable
traffic. Writes docs/benchmarks/drift.md and .json.

Simulated searches (``skulens.data.query_shift``: 40 an hour over a 20-word vocabulary), the
production windows (current 24 h; reference 3 days here, 7 in configuration, shortened so that a
run fits in minutes), ``monitor_drift`` every ``--every-h`` hours over the second week, the
query encoder a hashed bag of words. Scenarios: stable; a new category at 30% of queries with
typos; a mild new category at 10%; typos alone (50% of words).

Usage: python benchmarks/bench_drift.py [--seeds 3] [--every-h 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from _report import machine_description, write_report

START = datetime(2026, 11, 1, tzinfo=UTC)
SHIFT_DAY = 9
SCENARIOS = {"stable": (0.0, 0.0), "new category 30% + typos": (0.3, 0.3), "new category 10%": (0.1, 0.0),
             "typos alone (50% of words)": (0.0, 0.5)}


def run(name: str, shift: float, typos: float, seed: int, every_h: int) -> dict:
    from skulens.data.query_shift import VOCABULARY, hashed_vectors, simulated_searches
    from skulens.pipelines.monitor_drift import monitor_drift
    from skulens.settings import load_settings

    rng = np.random.default_rng(seed)
    shifted = name != "stable"
    events = pd.concat([simulated_searches(START + timedelta(days=day), 24, rng,
                                           shift=shift if shifted and day >= SHIFT_DAY else 0.0,
                                           typos=typos if shifted and day >= SHIFT_DAY else 0.0)
                        for day in range(14)], ignore_index=True)
    with tempfile.TemporaryDirectory() as home:
        settings = load_settings("local", env={"SKULENS_HOME": home})
        settings = settings.model_copy(update={"monitoring": settings.monitoring.model_copy(update={
            "drift": settings.monitoring.drift.model_copy(update={"reference_days": 3.0})})})
        triggers, runs, took = [], 0, []
        for hour in range(7 * 24, 14 * 24 + 1, every_h):
            now = START + timedelta(hours=hour)
            started = time.perf_counter()
            decision = monitor_drift(settings, f"h{hour}", now=now, events=events, encode=hashed_vectors,
                                     vocabulary=set(VOCABULARY))
            took.append(time.perf_counter() - started)
            runs += 1
            if decision["triggered"]:
                triggers.append(hour)
    shift_hour = SHIFT_DAY * 24
    early = [h for h in triggers if h <= shift_hour] if shifted else triggers
    late = [h for h in triggers if h > shift_hour] if shifted else []
    return {"scenario": name, "seed": seed, "runs": runs, "triggers": len(triggers),
            "false_alarms": len(early), "delay_h": (late[0] - shift_hour) if late else None,
            "triggers_after_shift": len(late), "run_s_median": round(float(np.median(took)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--every-h", type=int, default=6)
    args = parser.parse_args()
    os.environ.setdefault("SKULENS_PROGRESS", "0")
    rows = [run(name, shift, typos, seed, args.every_h) for name, (shift, typos) in SCENARIOS.items()
            for seed in range(args.seeds)]
    command = f"python benchmarks/bench_drift.py --seeds {args.seeds} --every-h {args.every_h}"
    lines = ["# Drift detection (simulated traffic)", "",
             f"Command: `{command}`  ", f"Machine: {machine_description()}  ",
             f"Date: {datetime.now(UTC):%Y-%m-%d}", "",
             "**Simulated** searches (`skulens.data.query_shift`, 40 an hour); `monitor_drift` every "
             f"{args.every_h} h over the second of two weeks, current window 24 h, reference 3 days (7 in "
             f"configuration), thresholds as configured. Shifts start at hour {SHIFT_DAY * 24}.", "",
             "| scenario | seeds | runs each | false alarms | triggers after the shift | detection delay (h) | "
             "monitor run (s, median) |", "|---|---|---|---|---|---|---|"]
    for name in SCENARIOS:
        mine = [r for r in rows if r["scenario"] == name]
        delays = [r["delay_h"] for r in mine if r["delay_h"] is not None]
        lines.append(f"| {name} | {len(mine)} | {mine[0]['runs']} | {sum(r['false_alarms'] for r in mine)} | "
                     f"{', '.join(str(r['triggers_after_shift']) for r in mine) if name != 'stable' else '-'} | "
                     f"{', '.join(str(d) for d in delays) if delays else ('-' if name == 'stable' else 'missed')} | "
                     f"{np.median([r['run_s_median'] for r in mine]):.2f} |")
    lines += ["", "A detection delay of 6 h with runs every 6 h is the first run whose current window holds "
              "shifted traffic past the thresholds; one trigger per shift is the re-baselining at each "
              "decision (the next reference starts there)."]
    write_report("drift", lines, {"command": command, "machine": machine_description(),
                                  "date": f"{datetime.now(UTC):%Y-%m-%d}", "simulated": True, "runs": rows})


if __name__ == "__main__":
    sys.exit(main())
