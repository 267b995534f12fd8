import numpy as np
import pandas as pd

from skulens.data.checks import RecordChecker, blank


def test_blank_detects_missing_and_whitespace():
    assert blank(pd.Series(["a", "", "  ", None])).tolist() == [False, True, True, True]


def test_rules_reject_once_and_keep_the_first_duplicate():
    frame = pd.DataFrame({"id": ["a", "a", "", "b"], "n": ["1", "x", "2", "-1"]})
    checker = RecordChecker(frame, "t", "src.csv", key_field="id")
    checker.require("id")
    checker.unique(["id"])
    numbers = checker.parse_float("n", minimum=0)
    result = checker.result()
    assert result.valid["id"].tolist() == ["a"]
    rules = [(r["row_number"], r["rule"]) for r in result.rejects.to_pylist()]
    # Row 2 is a duplicate: rejected for that reason only, not again for its bad number.
    assert rules == [(2, "unique"), (3, "required"), (4, "range")]
    assert result.counts("rejects") == {"id:required": 1, "id:unique": 1, "n:range": 1}
    assert np.isnan(numbers[1]) and numbers[0] == 1.0


def test_defects_keep_the_row():
    frame = pd.DataFrame({"id": ["a", "b"], "colour": ["", "red"]})
    checker = RecordChecker(frame, "t", "src.csv", key_field="id")
    checker.defect(blank(frame["colour"]), "colour", "missing_value", "colour is empty")
    result = checker.result()
    assert result.rows_out == 2 and result.rows_rejected == 0
    assert result.defects.to_pylist()[0]["record_key"] == "a"
