"""Fine-tune the cross-encoder reranker on the Home Depot judgments (thin entry point).

    python training/train_reranker.py --config reranker [--max-train-pairs N] [--run-id ID]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="reranker", help="configs/training/NAME.yaml or a YAML path")
    parser.add_argument("--max-train-pairs", type=int)
    parser.add_argument("--run-id", default="manual")
    args = parser.parse_args()

    from skulens.settings import load_settings
    from skulens.storage.layout import pairs_dir
    from skulens.training.reranker import evaluate_reranker, load_reranker_config, train_reranker

    settings = load_settings()
    cfg = load_reranker_config(args.config, settings, {"max_train_pairs": args.max_train_pairs})
    pairs = pairs_dir(settings)
    result = train_reranker(settings, cfg, pairs_dir=pairs, run_id=args.run_id)
    result["evaluation"] = evaluate_reranker(settings, cfg, model_dir=Path(result["model_dir"]), pairs_dir=pairs)
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
