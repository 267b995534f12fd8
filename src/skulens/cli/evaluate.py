"""``skulens eval``: relevance of every retriever on real judgments and on the fashion catalogue."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skulens.cli.common import console, fail_on_errors, settings_from


@fail_on_errors
def eval_command(
    catalog: Annotated[str, typer.Option(help="Judged text catalogue (imported with skulens datasets).")]
    = "homedepot",
    judgments: Annotated[Path | None, typer.Option(
        help="Judgments file (canonical query,product_id,grade as CSV/Parquet, or a Home Depot CSV); "
             "default: the catalogue's own judgments.")] = None,
    fashion: Annotated[str | None, typer.Option(
        help="Photo catalogue for the attribute-query and image→image evaluation; 'none' to skip.")] = "fashion",
    encoder: Annotated[str, typer.Option(
        help="Dense text encoder of the judged catalogue: auto (what its index serves: the text-encoder "
             "champion when one passed its gate, else minilm), text_encoder, or a registered name (minilm).")]
    = "auto",
    reranker: Annotated[str | None, typer.Option(
        help="Cross-encoder: 'champion' (registry), a model folder, or 'none'.")] = "champion",
    max_test_queries: Annotated[int, typer.Option(help="Held-out queries evaluated (seeded sample).")] = 1000,
    max_train_queries: Annotated[int, typer.Option(
        help="Training queries the fusion weight and the rescorer are learned on.")] = 4000,
    noisy: Annotated[bool, typer.Option(help="Also evaluate a noisy copy of the queries (typo, dropped word).")]
    = True,
) -> None:
    """Evaluate BM25, dense, hybrid and hybrid+rerank; write reports/eval/latest.json and latest.md."""
    from skulens.evaluation.harness import EvalConfig, run_eval

    settings = settings_from()
    cfg = EvalConfig(max_test_queries=max_test_queries, max_train_queries=max_train_queries, encoder=encoder,
                     reranker=None if reranker in (None, "none") else reranker, noisy=noisy)
    report = run_eval(settings, cfg, catalog=catalog, judgments_path=judgments,
                      fashion=None if fashion in (None, "none") else fashion)
    clean = report["judged"]["full_corpus"]["clean"]
    for name, row in clean.items():
        console.print(f"{name:28s} nDCG@10 {row['nDCG@10']:.4f}  recall@100 {row['recall@100']:.4f}  "
                      f"MRR {row['MRR']:.4f}  zero-useful {row['zero_useful@10']:.3f}", highlight=False)
    console.print(f"report: {settings.home / 'reports' / 'eval' / 'latest.md'}", highlight=False)
