"""Train the two-tower model from the published training pairs (thin entry point).

    python training/train_two_tower.py --config offline [--epochs N] [--run-id ID]
    torchrun --nproc_per_node 8 training/train_two_tower.py --config vit-l-14   # several GPUs (DDP)

Re-running with the same ``--run-id`` resumes from the last checkpoint. The held-out evaluation
against the baselines runs after training on the main rank; the result JSON is printed.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="offline", help="configs/training/NAME.yaml or a YAML path")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-train-products", type=int)
    parser.add_argument("--run-id", default="manual")
    parser.add_argument("--pairs-dir", type=Path, help="pairs folder (default: the published pairs)")
    args = parser.parse_args()

    from skulens.settings import load_settings
    from skulens.storage.layout import pairs_dir
    from skulens.training.config import load_train_config
    from skulens.training.two_tower import evaluate_two_tower, train_two_tower

    settings = load_settings()
    cfg = load_train_config(args.config, settings, {"epochs": args.epochs,
                                                    "max_train_products": args.max_train_products})
    pairs = args.pairs_dir or pairs_dir(settings)
    result = train_two_tower(settings, cfg, pairs_dir=pairs, run_id=args.run_id)
    if int(os.environ.get("RANK", "0")) == 0:
        result["evaluation"] = evaluate_two_tower(settings, cfg, bundle=Path(result["bundle"]), pairs_dir=pairs)
        print(json.dumps({k: result[k] for k in ("run_id", "bundle", "best_epoch", "timings", "evaluation")},
                         indent=2, default=str))


if __name__ == "__main__":
    main()
