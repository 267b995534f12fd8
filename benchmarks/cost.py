"""Cost: dollars per million searches and per QPS, from the measured throughput in
docs/benchmarks/serving.json (and docs/benchmarks/gpu.json when a lent GPU has written it).

Prices are **assumptions given on the command line** (defaults: on-demand list prices of the kind
of instance named, as the author understood them; no price list can be read from this machine):
replace them with your own. The throughput taken is the best concurrent text-search figure with at
most 1% of responses degraded and at most 1% refused, per catalogue size, with and without rerank; where
none is within 1%, the best measured one, with its degraded share in bold.

    .venv/bin/python benchmarks/cost.py [--cpu-hourly 0.1008] [--cpu-name "2 vCPU, 8 GiB (m7i.large class)"]
        [--gpu-hourly 3.50] [--gpu-name "1x H100 80 GB, on demand"]
"""

from __future__ import annotations

import argparse
import json

from _report import OUT, write_report

HOURS_PER_MONTH = 730


def best(rows: dict, rerank: bool) -> tuple[str, dict] | None:
    """The highest-QPS concurrent row (with or without rerank) at <= 1% degraded and <= 1% refused."""
    fits = [(name, r) for name, r in rows.items() if ("+ rerank" in name) == rerank
            and (r.get("fallback_rate") or 0) <= 0.01 and (r.get("refused_share") or 0) <= 0.01]
    return max(fits, key=lambda nr: nr[1]["qps"], default=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-hourly", type=float, default=0.1008)
    parser.add_argument("--cpu-name", default="2 vCPU, 8 GiB (m7i.large class), on demand")
    parser.add_argument("--big-cpu-hourly", type=float, default=0.1323,
                        help="a 2-vCPU instance with the memory the 1M service needs")
    parser.add_argument("--big-cpu-name", default="2 vCPU, 16 GiB (r7i.large class), on demand")
    parser.add_argument("--gpu-hourly", type=float, default=3.50)
    parser.add_argument("--gpu-name", default="1x H100 80 GB, on demand")
    args = parser.parse_args()
    serving = json.loads((OUT / "serving.json").read_text(encoding="utf-8"))
    lines = ["# Cost per million searches", "",
             "Command: `.venv/bin/python benchmarks/cost.py` (prices are arguments; the defaults below are "
             "assumptions, not quotes)  ",
             f"Throughput from: [serving.md](serving.md), written {serving['written_at']}",
             "", "| catalogue | search | instance (assumed $/h) | QPS | p95 | $ per 1M searches | "
             "$ per QPS-month |", "|---|---|---|---:|---:|---:|---:|"]
    payload: dict = {"prices": vars(args), "rows": []}
    for size, res in serving["sizes"].items():
        memory_gb = (res.get("memory_loaded") or {}).get("pss_mb", 0) / 1024
        name, hourly = (args.cpu_name, args.cpu_hourly) if memory_gb < 7 else (args.big_cpu_name, args.big_cpu_hourly)
        for rerank in (False, True):
            found = best(res["concurrent"], rerank)
            if found is None:  # none within 1%: the best measured, with its degraded share said
                found = max(((n, r) for n, r in res["concurrent"].items() if ("+ rerank" in n) == rerank),
                            key=lambda nr: nr[1]["qps"] * (1 - (nr[1].get("fallback_rate") or 0)))
                found = (f"{found[0]} (**{found[1]['fallback_rate']:.1%} degraded**)", found[1])
            label, r = found
            per_million = hourly / (r["qps"] * 3600) * 1e6
            per_qps_month = hourly * HOURS_PER_MONTH / r["qps"]
            payload["rows"].append({"size": size, "scenario": label, "qps": r["qps"], "hourly": hourly,
                                    "usd_per_million": round(per_million, 4),
                                    "usd_per_qps_month": round(per_qps_month, 3)})
            lines.append(f"| {size} | {label} | {name} (${hourly}) | {r['qps']} | {r['p95_ms']} ms | "
                         f"${per_million:.3f} | ${per_qps_month:.2f} |")
    gpu = OUT / "gpu.json"
    if gpu.is_file():
        figures = json.loads(gpu.read_text(encoding="utf-8")).get("batched_search_budget")
        if figures:
            per_million = args.gpu_hourly / (figures["searches_per_second"] * 3600) * 1e6
            lines += ["", f"GPU ({args.gpu_name}, ${args.gpu_hourly}/h assumed): the batched GPU work of a search "
                          f"(encode, exact scan at 10M, rerank of 20) sustains {figures['searches_per_second']:,} "
                          f"searches/s: ${per_million:.4f} per million searches for the GPU part alone "
                          "(gpu.md; the HTTP layer and BM25 need CPU cores beside it)."]
    else:
        lines += ["", "GPU: no figures yet. No accelerator was lent to the session that wrote this; "
                      "`benchmarks/bench_gpu.py` measures the GPU side when one is, and this script then adds its "
                      "line."]
    lines += ["", "Where an index version's learned ranking gives the reranker no share (the bundled index here), "
                  "its '+ rerank' rows run no reranker: the same work as text search."]
    lines += ["", "The reference case quotes $0.19 per QPS (unit period not stated); read the last column as the "
                  "cost of one query per second sustained for a month on the assumed instance."]
    write_report("cost", lines, payload)


if __name__ == "__main__":
    main()
