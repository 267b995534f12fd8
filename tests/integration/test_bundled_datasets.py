"""The canonical tables built from the real bundled datasets (../shared/datasets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

from skulens.data.catalog import read_report, read_table
from skulens.data.loaders import build_bundled
from skulens.settings import load_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def built(shared_datasets, tmp_path_factory):
    home = tmp_path_factory.mktemp("bundled")
    settings = load_settings("local", env={**os.environ, "SKULENS_HOME": str(home)})
    build_bundled(settings)
    return settings


def test_fashion_counts_and_defects(built):
    products = read_table(built, "fashion", "products")
    assert products.num_rows == 42_874
    assert products.num_rows - products.column("image_uri").null_count == 8_011
    assert pc.all(pc.greater(pc.utf8_length(products.column("title")), 0)).as_py()
    report = read_report(built, "fashion")["tables"]["products"]
    assert report["rejected"] == 0
    assert report["defects_by_rule"] == {
        "attributes.colour:missing_value": 15,
        "attributes.season:missing_value": 21,
        "attributes.usage:missing_value": 316,
        "attributes.year:missing_value": 1,
        "image_uri:image_missing": 34_863,
        "title:title_missing": 7,
    }
    assert report["stats"]["leaf_categories"] == 143
    first = products.slice(0, 1).to_pylist()[0]
    assert first["product_id"] == "15970"
    assert first["category_path"] == ["Apparel", "Topwear", "Shirts"]
    assert dict(first["attributes"])["year"] == "2011"  # "2011.0" in the CSV
    assert all(Path(u).is_file() for u in products.column("image_uri").drop_null().to_pylist()[:50])


def test_homedepot_counts(built):
    judgments = read_table(built, "homedepot", "judgments")
    assert judgments.num_rows == 59_167
    assert len(pc.unique(judgments.column("query"))) == 9_423
    assert pc.min(judgments.column("grade")).as_py() == 1.0
    assert pc.max(judgments.column("grade")).as_py() == 3.0
    assert set(judgments.column("source").to_pylist()) == {"homedepot:human"}
    products = read_table(built, "homedepot", "products")
    assert products.num_rows == 45_782
    assert set(judgments.column("product_id").to_pylist()) == set(products.column("product_id").to_pylist())
    report = read_report(built, "homedepot")["tables"]
    assert report["products"]["defects_by_rule"] == {"title:title_conflict": 11}


def test_main_job_commands_end_to_end(shared_datasets, tmp_path):
    """What `make demo` runs, through the installed console script."""
    skulens = [str(Path(sys.executable).with_name("skulens")), "--home", str(tmp_path)]
    env = {**os.environ, "SKULENS_HOME": str(tmp_path)}
    for args in (["datasets", "build"],
                 ["datasets", "simulate-events", "--catalog", "homedepot", "--users", "300"]):
        done = subprocess.run(skulens + args, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    assert "SIMULATED" in done.stdout
    done = subprocess.run(skulens + ["datasets", "summary", "--json"], capture_output=True,
                          text=True, env=env, timeout=120)
    summary = json.loads(done.stdout)
    assert summary["catalogs"]["fashion"]["tables"]["products"]["rows_out"] == 42_874
    assert summary["catalogs"]["homedepot"]["tables"]["judgments"]["stats"]["queries"] == 9_423
    events = summary["events"]["homedepot"]
    assert events["simulated"] is True and events["users"] == 300
    assert events["by_type"]["click"] < events["by_type"]["impression"]
