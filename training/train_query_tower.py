"""Text-text mode: fine-tune the text (query) tower of a two-tower bundle on Home Depot
query → title pairs, and report before/after on held-out queries (thin entry point).

    python training/train_query_tower.py [--bundle DIR] [--epochs 8] [--out DIR]

Without ``--bundle`` the current champion's bundle from the last train_and_export run is used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="two-tower bundle folder (default: latest train_and_export run)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, help="output folder (default SKULENS_HOME/training/query_tower)")
    args = parser.parse_args()

    from skulens.settings import load_settings
    from skulens.storage.layout import pairs_dir
    from skulens.training.text_text import train_query_tower

    settings = load_settings()
    bundle = args.bundle
    if bundle is None:
        latest = settings.reports_dir / "train_and_export" / "latest.json"
        if not latest.is_file():
            raise SystemExit(f"no --bundle given and no train_and_export run found ({latest})")
        bundle = Path(json.loads(latest.read_text())["stages"]["train_embedder"]["result"]["bundle"])
    result = train_query_tower(settings, bundle=bundle, pairs_dir=pairs_dir(settings), epochs=args.epochs,
                               out_dir=args.out or settings.home / "training" / "query_tower")
    print(json.dumps({k: result[k] for k in ("bundle", "before", "after", "seconds")}, indent=2))


if __name__ == "__main__":
    main()
