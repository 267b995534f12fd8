"""The user-catalogue import path on tiny fixtures, good and broken."""

import pytest

from skulens.data.catalog import DataQualityError, read_table
from skulens.data.loaders import import_catalog
from skulens.data.mapping import MappingError, load_mapping
from skulens.data.products import build_products, photo_root
from skulens.data.sources import read_records
from tests.conftest import FIXTURES, PROJECT_ROOT

EXAMPLE = PROJECT_ROOT / "configs" / "mappings" / "example.yaml"


def _issues(table):
    return {(r["row_number"], r["field"], r["rule"]) for r in table.to_pylist()}


def test_example_mapping_imports_the_fixture(settings):
    report = import_catalog(settings, load_mapping(EXAMPLE))
    products = read_table(settings, "mystore", "products").to_pylist()
    by_id = {p["product_id"]: p for p in products}
    assert set(by_id) == {"A1", "A2", "A3", "A4", "A5"}
    assert by_id["A1"]["category_path"] == ["Apparel", "T-Shirts"]
    assert dict(by_id["A1"]["attributes"]) == {"colour": "White", "gender": "Men"}
    assert by_id["A1"]["image_uri"].endswith("fixtures/mystore/images/a1.jpg")
    published = photo_root(read_table(settings, "mystore", "products"))  # kept through publish
    assert published == (FIXTURES / "mystore" / "images").resolve()
    assert by_id["A2"]["currency"] == "USD"  # upper-cased
    assert by_id["A3"]["title"] == "Acme Black T-Shirts"  # derived from title_template
    assert by_id["A3"]["currency"] == "USD"  # defaults.currency
    assert by_id["A4"]["image_uri"] is None and "colour" not in dict(by_id["A4"]["attributes"])
    assert by_id["A5"]["image_uri"] == "https://cdn.example.com/a5.jpg"
    table = report.tables["products"]
    assert (table.rows_in, table.rows_out, table.rejected) == (5, 5, 0)
    assert table.defects_by_rule == {
        "attributes.colour:missing_value": 1,
        "image_uri:image_missing": 1,
        "image_uri:image_not_found": 1,
        "title:title_missing": 1,
    }
    assert table.stats["with_photo"] == 3
    defects = read_table(settings, "mystore", "defects")
    assert (4, "title", "title_missing") in _issues(defects)
    assert (5, "image_uri", "image_not_found") in _issues(defects)


def test_broken_catalogue_is_rejected_row_by_row():
    mapping = load_mapping(EXAMPLE, source=str(FIXTURES / "mystore" / "broken.csv"))
    products, check = build_products(read_records(mapping.source), mapping)
    assert products.column("product_id").to_pylist() == ["B1"]
    # Row numbers are file lines (the header is line 1).
    assert _issues(check.rejects) == {
        (3, "price", "type:float"),
        (4, "product_id", "required"),
        (5, "product_id", "unique"),
        (6, "price", "range"),
        (7, "currency", "pattern"),
        (8, "updated_at", "type:timestamp"),
        (9, "category_path", "required"),
        (10, "(record)", "malformed"),
        (11, "product_id", "required"),
    }
    assert check.rows_in == 10 and check.rows_rejected == 9
    messages = {r["row_number"]: r["message"] for r in check.rejects.to_pylist()}
    assert messages[3] == "price is not a number"
    assert messages[5].startswith("duplicate product_id")


def test_too_many_rejects_publish_nothing(settings):
    good = load_mapping(EXAMPLE)
    import_catalog(settings, good)
    before = read_table(settings, "mystore", "products").num_rows
    broken = load_mapping(EXAMPLE, source=str(FIXTURES / "mystore" / "broken.csv"))
    with pytest.raises(DataQualityError) as err:
        import_catalog(settings, broken)
    message = str(err.value)
    assert "9 of 10 records rejected" in message
    assert "price:type:float" in message and "stays current" in message
    assert read_table(settings, "mystore", "products").num_rows == before
    failed = list((settings.reports_dir / "datasets" / "mystore").glob("failed-*/rejects.parquet"))
    assert len(failed) == 1


def test_mapping_errors_are_specific(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("catalog: My Store\ncolumns: {title: name}\n")
    with pytest.raises(MappingError) as err:
        load_mapping(path)
    assert "catalog" in str(err.value) and "product_id is required" in str(err.value)
    path.write_text("catalog: shop\nsource: p.csv\ncolumns: {product_id: sku, title: nom}\n")
    (tmp_path / "p.csv").write_text("sku,name\n1,x\n")
    mapping = load_mapping(path)
    with pytest.raises(MappingError, match="mapped columns not found: nom. Columns in the file: sku, name"):
        build_products(read_records(mapping.source), mapping)


def test_jsonl_catalogue_with_delimited_category(settings, tmp_path):
    (tmp_path / "p.jsonl").write_text(
        '{"id": "x1", "name": "Lamp", "path": "Home > Lighting", "price": 12}\n'
        '{"id": "x2", "name": "Chair", "path": ["Home", "Furniture"], "price": null}\n'
    )
    (tmp_path / "m.yaml").write_text(
        "catalog: home\nsource: p.jsonl\ncolumns: {product_id: id, title: name, price: price}\n"
        "category: {column: path}\ndefaults: {currency: EUR}\n"
    )
    import_catalog(settings, load_mapping(tmp_path / "m.yaml"))
    rows = {r["product_id"]: r for r in read_table(settings, "home", "products").to_pylist()}
    assert rows["x1"]["category_path"] == ["Home", "Lighting"]
    assert rows["x2"]["category_path"] == ["Home", "Furniture"]
    assert rows["x1"]["price"] == 12.0 and rows["x2"]["price"] is None


def test_photo_paths_outside_the_photo_folder_are_rejected_by_name(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "ok.jpg").write_bytes(b"\xff\xd8\xff")
    (images / "sub").mkdir()
    (images / "sub" / "deep.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "secret.jpg").write_bytes(b"\xff\xd8\xff")
    (images / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    header = "sku,name,description,brand,price,currency,photo,modified,department,category,color,gender\n"
    rows = [("C1", "ok.jpg"), ("C2", "sub/deep.jpg"), ("C3", "../secret.jpg"), ("C4", str(tmp_path / "secret.jpg")),
            ("C5", "/etc/passwd"), ("C6", "sub/../../secret.jpg"), ("C7", "link.jpg")]
    source = tmp_path / "products.csv"
    source.write_text(header + "".join(f"{sku},Shirt {sku},,Acme,9.5,USD,{photo},,Apparel,Shirts,Red,Men\n"
                                       for sku, photo in rows))
    mapping = load_mapping(EXAMPLE, source=str(source), images_dir=str(images))
    products, check = build_products(read_records(mapping.source), mapping)
    kept = dict(zip(products.column("product_id").to_pylist(), products.column("image_uri").to_pylist(), strict=True))
    assert kept == {"C1": str(images / "ok.jpg"), "C2": str(images / "sub" / "deep.jpg")}
    assert {(r["row_number"], r["rule"]) for r in check.rejects.to_pylist()} == {
        (4, "image_outside_folder"), (5, "image_outside_folder"), (6, "image_outside_folder"),
        (7, "image_outside_folder"), (8, "image_outside_folder")}
    assert photo_root(products) == images.resolve()  # travels with the table, for the service


def test_a_gate_on_the_staged_tables_runs_before_anything_is_published(settings):
    """The judgments' Great Expectations gate runs on the staged version: a failing gate publishes
    nothing and the previous version stays current (it used to run after the publish)."""
    from skulens.data.catalog import publish_catalog
    from skulens.storage import VersionedDir

    mapping = load_mapping(EXAMPLE)
    products, check = build_products(read_records(mapping.source), mapping)
    first = publish_catalog(settings, "gated", {"products": products}, {"products": check}, [mapping.source])
    seen = []

    def failing(staging):
        seen.append(sorted(p.name for p in staging.iterdir()))
        raise RuntimeError("expectation failed: product_known")

    with pytest.raises(RuntimeError, match="product_known"):
        publish_catalog(settings, "gated", {"products": products}, {"products": check}, [mapping.source],
                        gate=failing)
    assert "products.parquet" in seen[0]  # the gate saw the tables that would have been published
    assert VersionedDir(settings.tables_dir / "gated").current_id() == first.version
