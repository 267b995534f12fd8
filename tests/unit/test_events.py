import pandas as pd

from skulens.data.events import load_events, sessions_ordered

HEADER = "event_id,ts,user_id,session_id,query,product_id,event_type,position\n"


def test_valid_events_are_sorted_within_sessions(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text(HEADER
                    + "e2,2026-01-01T10:00:05Z,u1,s1,drill,p1,click,1\n"
                    + "e1,2026-01-01T10:00:00Z,u1,s1,drill,p1,impression,1\n"
                    + "e3,2026-01-01T11:00:00Z,u2,s2,,p9,impression,\n")
    table, check = load_events(path)
    assert table.column("event_id").to_pylist() == ["e1", "e2", "e3"]
    assert table.column("query").to_pylist() == ["drill", "drill", None]
    assert table.column("position").to_pylist() == [1, 1, None]
    assert check.rows_rejected == 0
    assert sessions_ordered(table)


def test_bad_events_are_rejected_with_rules(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text(HEADER
                    + "e1,2026-01-01T10:00:00Z,u1,s1,q,p1,impression,1\n"
                    + "e1,2026-01-01T10:00:01Z,u1,s1,q,p1,click,1\n"        # duplicate id
                    + "e3,yesterday-ish,u1,s1,q,p1,click,1\n"             # bad time
                    + "e4,2026-01-01T10:00:02Z,u1,s1,q,p1,view,1\n"       # unknown type
                    + "e5,2026-01-01T10:00:02Z,u1,s1,q,p1,click,0\n"      # position < 1
                    + "e6,2026-01-01T10:00:02Z,u1,s1,q,p1,click,1.5\n"    # fractional
                    + "e7,2026-01-01T10:00:02Z,u9,s1,q,p1,click,1\n")     # session of two users
    table, check = load_events(path)
    issues = {(r["row_number"], r["rule"]) for r in check.rejects.to_pylist()}
    assert {(3, "unique"), (4, "type:timestamp"), (5, "value_set"), (6, "range"),
            (7, "type:int")} <= issues
    assert any(rule == "session_user" for _, rule in issues)
    assert pd.Series(table.column("event_id").to_pylist()).is_unique
