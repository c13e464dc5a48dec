import json

from dreamrec.eval.report import REQUIRED_KEYS, aggregate, load_records, make_record, render_markdown, write_record


def test_aggregate_hand_computed():
    a = aggregate([{"HR@20": 0.1, "n": 5}, {"HR@20": 0.3, "n": 5}])
    assert abs(a["HR@20"]["mean"] - 0.2) < 1e-12
    assert abs(a["HR@20"]["std"] - 0.1414213562) < 1e-9  # sample std of (0.1, 0.3)
    assert a["HR@20"]["values"] == [0.1, 0.3]


def test_record_schema_and_table(tmp_path):
    rec = make_record(dataset="d", protocol="loo", model="m", variant="v", config={"a": 1}, seeds=[0, 1],
                      test=[{"HR@20": 0.1, "NDCG@20": 0.05}, {"HR@20": 0.2, "NDCG@20": 0.07}])
    assert all(k in rec for k in REQUIRED_KEYS)
    p = write_record(rec, tmp_path)
    assert json.loads(p.read_text())["metrics"]["HR@20"]["values"] == [0.1, 0.2]
    md = render_markdown(load_records(tmp_path))
    assert "15.00 ± 7.07" in md and "| m | v | 2 |" in md
