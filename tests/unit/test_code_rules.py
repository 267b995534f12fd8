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


# Lowest first: a module may import its own layer and the ones before it, never a later one; imports
# inside functions count too (a lazy import is still a dependency). Inference code (models: ONNX
# sessions, reranker scorers, text features) sits below everything that runs models; serving
# sits below evaluation (which scores the served pipeline), training and the pipelines, so a
# service never pulls in training code.
LAYERS = [
    {"__init__", "compat", "vectors", "progress", "settings", "storage"},
    {"data"},
    {"streaming", "control"},  # the events contract, the event log and online store the service uses, the stream job
    {"models"},
    {"retrieval"},
    {"tracking"},
    {"serving"},
    {"evaluation"},  # it scores the served pipeline itself (serve what you evaluate)
    {"export"},
    {"training"},
    {"spark", "quality", "warehouse"},
    {"pipelines", "orchestration"},
    {"cli", "__main__"},
]


def _upward_imports() -> list[str]:
    rank = {name: i for i, names in enumerate(LAYERS) for name in names}
    found = []
    for path in PACKAGE.rglob("*.py"):
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        assert own in rank, f"{own} is in no layer of LAYERS"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for name in names:
                parts = name.split(".")
                if parts[0] == "skulens" and len(parts) > 1 and parts[1] != own and \
                        rank.get(parts[1], -1) > rank[own]:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {own} imports {name}")
    return found


def test_imports_follow_the_layer_order_inside_functions_too():
    assert _upward_imports() == []


def test_the_layer_check_sees_an_import_inside_a_function(tmp_path, monkeypatch):
    """The check can fail: a lazy upward import in a retrieval module is found."""
    fake = tmp_path / "skulens"
    (fake / "retrieval").mkdir(parents=True)
    (fake / "retrieval" / "x.py").write_text("def f():\n    from skulens.pipelines.build_index import embed\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert _upward_imports() == ["retrieval/x.py:2: retrieval imports skulens.pipelines.build_index"]


def test_every_lazy_import_of_skulens_names_something_that_exists():
    """Imports inside functions run only when the function does: check that each ``from skulens.x
    import y`` anywhere in the package, the apps and the benchmarks names a module or attribute that
    exists (a moved function must not break a stage that only the DAG runs)."""
    import importlib

    missing = []
    roots = [PACKAGE, *(PROJECT_ROOT / app for app in (*APPS, "benchmarks"))]
    for root in roots:
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("skulens")):
                    continue
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            missing.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}: "
                                           f"{node.module}.{alias.name}")
    assert missing == []
