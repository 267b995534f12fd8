"""Rules of the code base, checked as tests."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "src" / "skulens"
APPS = ("dags", "spark_jobs", "training", "serving")


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    folders = ["src", "tests", "benchmarks", "dags", "spark_jobs", "training"]
    done = subprocess.run([ruff, "check", *folders], cwd=PROJECT_ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_package_never_imports_the_apps():
    """Imports flow one way: apps -> skulens, never back."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path}: {n}" for n in names if n.split(".")[0] in APPS]
    assert not offenders


def test_importing_skulens_is_light():
    """The CLI and contracts start fast: no torch, pyspark or airflow at import time."""
    code = ("import sys, skulens.cli.app, skulens.data.contracts, skulens.settings;"
            "heavy = [m for m in ('torch', 'pyspark', 'airflow', 'open_clip') if m in sys.modules];"
            "print(','.join(heavy))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
