"""Benchmark: the model stage of the main job, from a finished ``train_and_export`` run.

Runs the pipeline (unless ``--from-latest``) and writes docs/benchmarks/train_and_export.md (and
.json): seconds per stage, the held-out before/after table against the named baselines, the
reranker against BM25 and the bi-encoder, the INT8 parity decisions and the gate decisions.

    .venv/bin/python benchmarks/bench_train_and_export.py              # runs `skulens pipeline train-and-export`
    .venv/bin/python benchmarks/bench_train_and_export.py --from-latest  # formats the last run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _report import machine_description, write_report

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-latest", action="store_true", help="format the last run instead of running one")
    args = parser.parse_args()
    from skulens.settings import load_settings

    settings = load_settings("local")
    wall = None
    command = "skulens pipeline train-and-export"
    if not args.from_latest:
        started = time.perf_counter()
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
        subprocess.run([str(Path(sys.executable).parent / "skulens"), "pipeline", "train-and-export"], check=True,
                       cwd=ROOT, env=env)
        wall = time.perf_counter() - started
    latest = json.loads((settings.reports_dir / "train_and_export" / "latest.json").read_text())
    stages, summary = latest["stages"], latest["summary"]
    emb, rr = summary["embedder"], summary["reranker"]
    train = stages["train_embedder"]["result"]
    lines = [
        "# The model stage of the main job: train_and_export on the bundled data", "",
        f"Run `{latest['run_id']}` ({latest['status']}), finished {latest['finished_at']}, on {machine_description()}.",
        f"Command: `{command}` (the last step of `make demo`; Airflow `dag.test()`), formatted by "
        f"`.venv/bin/python benchmarks/bench_train_and_export.py{' --from-latest' if args.from_latest else ''}`.",
    ]
    if wall is not None:
        lines.append(f"Wall time of the command: {wall / 60:.1f} min.")
    total = sum(s["seconds"] for s in stages.values())
    lines += ["", f"## Seconds per stage (sum {total / 60:.1f} min; the two branches run one after the other here)",
              "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {s['seconds']:.1f} |" for name, s in stages.items()]
    timings = train["timings"]
    lines += ["", f"Embedder: config `{train['config']['name']}` ({train['model']}), "
              f"{train['data']['train_products']:,} training products, best validation epoch "
              f"{train['best_epoch']} of {train['config']['epochs']}; trunk features "
              f"{timings.get('features_s', 0):.0f} s, heads {timings['train_s']:.0f} s.",
              "", "## Held-out lift (fashion test split; **attribute-derived** queries)", "",
              "| setting | baseline | baseline | trained | delta |", "|---|---|---|---|---|"]
    for row in emb["lift"]:
        lines.append(f"| {row['setting']} | {row['baseline']} | {row['before']:.4f} | {row['after']:.4f} | "
                     f"{row['delta']:+.4f} |")
    lines += ["", "## Reranker (held-out **real** Home Depot queries, each query's judged candidates)", "",
              "| ranker | nDCG@10 | MRR (grade >= 2.33) |", "|---|---|---|"]
    for name, m in rr["test"].items():
        lines.append(f"| {name} | {m['nDCG@10']:.4f} | {m['RR(rel=4)']:.4f} |")
    ep = stages["export_embedder"]["result"]
    lines += ["", "## INT8 parity gate", "",
              "| artefact | candidate | mean cosine vs fp32 | ms (batch 8) | fp32 ms (batch 8) | served |",
              "|---|---|---|---|---|---|"]
    for tower in ("text", "image"):
        for method, c in ep[tower]["candidates"].items():
            cos = f"{c['cosine_mean']:.4f}" if "cosine_mean" in c else "-"
            ms = f"{c['latency_ms_batch8']:.1f}" if "latency_ms_batch8" in c else "-"
            lines.append(f"| {tower} tower | {method} | {cos} | {ms} | {ep[tower]['fp32_latency_ms']:.1f} | "
                         f"{'yes' if ep[tower]['chosen'] == method else 'no'} |")
    rp = stages["export_reranker"]["result"]
    lines.append(f"| reranker | dynamic | {rp['score_cosine']:.4f} (scores) | - | - | "
                 f"{'yes' if rp['int8_served'] else 'no'} |")
    lines += ["", f"Embedder recall@10 (title → own photo, held-out): fp32 {ep['recall@10']['fp32']:.4f}, served "
              f"{ep['recall@10']['served']:.4f}. Reranker nDCG@10: fp32 {rp['nDCG@10']['fp32']:.4f}, INT8 "
              f"{rp['nDCG@10']['int8']:.4f}.", ""]
    if ep["reasons"] or rp["reasons"]:
        lines += ["Rejected INT8 candidates and why:", ""] + [f"- {r}" for r in ep["reasons"] + rp["reasons"]] + [""]
    lines += ["## Gate", ""]
    for part in (emb, rr):
        gate = part["gate"]
        verdict = "promoted to champion" if gate["promoted"] else f"refused: {gate['reasons']}"
        lines.append(f"- {part['registered']['name']} v{part['registered']['version']}: {verdict} "
                     f"(champion now v{gate['champion_after']})")
    write_report("train_and_export", lines, {"machine": machine_description(), "wall_s": wall, "run": latest})


if __name__ == "__main__":
    main()
