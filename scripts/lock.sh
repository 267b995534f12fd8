#!/usr/bin/env bash
# Re-resolve the stack from pyproject.toml + requirements/constraints.txt in a scratch venv and
# write requirements/lock.txt. Run when a dependency changes; commit the result.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
python3.11 -m venv "$SCRATCH/venv"
"$SCRATCH/venv/bin/pip" install -q torch==2.13.0
"$SCRATCH/venv/bin/pip" install -q -c "$ROOT/requirements/constraints.txt" -e "$ROOT[all,dev]"
"$SCRATCH/venv/bin/pip" check
{
  echo "# Full lock of the resolved stack (Python 3.11, CPU torch), used as constraints by scripts/setup.sh."
  echo "# Regenerate with: make lock   (resolves requirements/constraints.txt + pyproject extras afresh)"
  "$SCRATCH/venv/bin/pip" freeze --exclude-editable | sed -e 's/^torch==2.13.0+cpu/torch==2.13.0/'
} > "$ROOT/requirements/lock.txt"
echo "wrote $ROOT/requirements/lock.txt"
