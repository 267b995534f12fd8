import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skulens.data.sources import SourceError, read_records


def test_csv_keeps_text_and_record_numbers(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('id,name\n1,"Shirt, blue"\n\n2,0042\n3,x,extra\n')
    raw = read_records(path)
    assert raw.frame["name"].tolist() == ["Shirt, blue", "0042"]  # text stays text
    assert raw.frame["__row__"].tolist() == [2, 4]  # file lines: header is 1, line 3 blank
    assert raw.malformed["row_number"].tolist() == [5]
    assert raw.malformed["rule"].tolist() == ["malformed"]
    assert "3 fields, the header has 2" in raw.malformed["message"][0]


def test_jsonl_bad_lines_become_rejects(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"id": 1, "tags": ["a", "b"]}) + "\n{broken\n[1, 2]\n")
    raw = read_records(path)
    assert raw.frame["id"].tolist() == ["1"]
    assert raw.frame["tags"].tolist() == [["a", "b"]]
    assert raw.malformed["row_number"].tolist() == [2, 3]  # file lines
    assert raw.malformed["message"].str.contains("JSON").all()


def test_parquet_values_become_text(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": [1, 2], "price": [9.5, None], "path": [["A", "B"], None]}), path)
    raw = read_records(path)
    assert raw.frame["id"].tolist() == ["1", "2"]
    assert raw.frame["price"].tolist() == ["9.5", ""]
    assert raw.frame["path"].tolist() == [["A", "B"], ""]


def test_unreadable_files_raise_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        read_records(tmp_path / "missing.csv")
    (tmp_path / "a.xlsx").write_text("x")
    with pytest.raises(SourceError, match="cannot tell the format"):
        read_records(tmp_path / "a.xlsx")
    (tmp_path / "latin.csv").write_bytes("id,name\n1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(SourceError, match="not valid utf-8"):
        read_records(tmp_path / "latin.csv")
    assert read_records(tmp_path / "latin.csv", encoding="latin-1").frame["name"][0] == "café"
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(SourceError, match="not a readable Parquet"):
        read_records(tmp_path / "bad.parquet")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SourceError, match="empty"):
        read_records(tmp_path / "empty.csv")
