"""Relevance of every retriever (skulens eval) as a benchmark page: docs/benchmarks/eval.md (+ .json).

Runs the evaluation harness with its defaults (1,000 held-out Home Depot queries, full corpus and
rerank setting, clean and noisy; fashion attribute queries), or publishes the report that a
``skulens eval`` run already wrote:

    .venv/bin/python benchmarks/bench_eval.py                 # runs skulens eval's harness
    .venv/bin/skulens eval && .venv/bin/python benchmarks/bench_eval.py --from-report
"""

from __future__ import annotations

import argparse
import json
import sys

from _report import machine_description, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-report", action="store_true", help="use SKULENS_HOME/reports/eval/latest.json")
    args = parser.parse_args()

    from skulens.evaluation.harness import markdown, run_eval
    from skulens.settings import load_settings

    settings = load_settings()
    if args.from_report:
        report = json.loads((settings.home / "reports" / "eval" / "latest.json").read_text(encoding="utf-8"))
        command = "`.venv/bin/skulens eval` (defaults), then " \
                  "`.venv/bin/python benchmarks/bench_eval.py --from-report`"
    else:
        report = run_eval(settings)
        command = "`" + " ".join([".venv/bin/python benchmarks/bench_eval.py", *sys.argv[1:]]) + "`"
    body = markdown(report).splitlines()
    lines = [body[0], "", f"Measured on {machine_description()}. Command: {command}.", *body[1:]]
    write_report("eval", lines, {"machine": machine_description(), "command": command, "report": report})


if __name__ == "__main__":
    main()
