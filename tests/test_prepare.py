"""prepare: dedupe, k-core, ordering, the two split protocols, persistence."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dreamrec.config import PrepareConfig
from dreamrec.data.dataset import PreparedDataset, SampleRows, Sequences
from dreamrec.data.prepare import dedupe, kcore, prepare, prepare_source, sort_chronological
from dreamrec.data.readers import Interactions
from dreamrec.errors import ConfigError, EmptyDataError, UnknownFormatError


def log(rows, meta=None):
    return Interactions(pd.DataFrame(rows, columns=["user", "item", "timestamp"]), meta, "test-log")


def test_dedupe_drops_exact_repeats_only():
    df = pd.DataFrame({"user": [1, 1, 1, 1], "item": [5, 5, 5, 6], "timestamp": [10, 10, 11, 10]})
    out = dedupe(df)
    assert out.values.tolist() == [[1, 5, 10], [1, 5, 11], [1, 6, 10]]


def test_sort_chronological_is_stable():
    df = pd.DataFrame({"user": [2, 1, 1, 1, 2], "item": [9, 3, 1, 2, 8], "timestamp": [5, 7, 7, 6, 5]})
    out = sort_chronological(df)
    assert out.values.tolist() == [[1, 2, 6], [1, 3, 7], [1, 1, 7], [2, 9, 5], [2, 8, 5]]


def test_kcore_iterates_until_stable():
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u2", "a", 1), ("u2", "b", 2), ("u3", "c", 1), ("u3", "d", 2)]
    df = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    # one pass drops d, then u3 (1 event left); only a second pass drops c (now seen once)
    out = kcore(df, min_item_count=2, min_seq_len=2)
    assert out.values.tolist() == [["u1", "a", 1], ["u1", "b", 2], ["u2", "a", 1], ["u2", "b", 2]]
    assert kcore(df, 1, 1).equals(df)


def loo_log():
    rows = [
        ("b", 30, 3), ("b", 10, 1), ("b", 50, 5), ("b", 20, 2), ("b", 40, 4),
        ("a", 50, 1), ("a", 30, 1), ("a", 20, 2),  # 50 and 30 tie: file order kept
        ("a", 20, 2),  # exact duplicate
    ]
    return log(rows)


def test_loo_split_exact():
    ds = prepare(loo_log(), PrepareConfig(protocol="loo", min_item_count=1, min_seq_len=3, max_len=2))
    assert ds.protocol == "loo" and ds.max_len == 2
    assert ds.item_ids.tolist() == [10, 20, 30, 40, 50]
    assert ds.user_ids.tolist() == ["a", "b"]
    assert isinstance(ds.train, Sequences)
    assert [ds.train.get(u).tolist() for u in range(2)] == [[5], [1, 2, 3]]
    assert ds.train.user.tolist() == [0, 1]
    assert ds.val.history.tolist() == [[0, 5], [2, 3]]
    assert ds.val.target.tolist() == [3, 4]
    assert ds.test.history.tolist() == [[5, 3], [3, 4]]
    assert ds.test.target.tolist() == [2, 5]
    assert ds.test.user.tolist() == [0, 1]
    assert ds.info["counts"]["raw_interactions"] == 9 and ds.info["counts"]["after_dedupe"] == 8
    assert ds.info["prepare"]["max_len"] == 2


def test_loo_default_window_and_min_seq_len_check():
    ds = prepare(loo_log(), PrepareConfig(protocol="loo", min_item_count=1))
    assert ds.max_len == 50 and ds.test.width == 50
    with pytest.raises(ConfigError, match="min_seq_len"):
        prepare(loo_log(), PrepareConfig(protocol="loo", min_item_count=1, min_seq_len=2))


def dreamrec_log():
    # users u0..u9, three events each; first timestamps decreasing with the id, u8 and u9 tie
    rows = []
    for k in range(10):
        first = 100 - 10 * k if k < 9 else 100 - 10 * 8
        for j in range(3):
            rows.append((f"u{k}", (k + j) % 4, first + j))
    return log(rows)


def test_dreamrec_split():
    cfg = PrepareConfig(protocol="dreamrec", min_item_count=1, min_seq_len=1, max_len=2)
    ds = prepare(dreamrec_log(), cfg)
    assert ds.protocol == "dreamrec" and ds.max_len == 2
    assert ds.user_ids.tolist() == [f"u{k}" for k in range(10)]
    assert ds.item_ids.tolist() == [0, 1, 2, 3]
    # order by first timestamp: u8, u9 (tie, by id), u7, ..., u0 -> train 8 users, val u1, test u0
    for split in (ds.train, ds.val, ds.test):
        assert isinstance(split, SampleRows) and split.width == 2
    assert ds.train.user.tolist() == np.repeat([8, 9, 7, 6, 5, 4, 3, 2], 3).tolist()
    assert ds.val.user.tolist() == [1, 1, 1] and ds.test.user.tolist() == [0, 0, 0]
    # u1 items (1,2,3) -> internal (2,3,4); u0 items (0,1,2) -> (1,2,3)
    assert ds.val.history.tolist() == [[0, 0], [0, 2], [2, 3]]
    assert ds.val.target.tolist() == [2, 3, 4]
    assert ds.test.history.tolist() == [[0, 0], [0, 1], [1, 2]]
    assert ds.test.target.tolist() == [1, 2, 3]
    assert ds.info["counts"]["split_users"] == {"train": 8, "val": 1, "test": 1}


def test_dreamrec_window_truncation_and_default():
    rows = [("u", i, i) for i in range(1, 13)] + [(f"v{k}", 1, 100 + k) for k in range(9)]
    cfg = PrepareConfig(protocol="dreamrec", min_item_count=1, min_seq_len=1)
    ds = prepare(log(rows), cfg)
    assert ds.max_len == 10
    u_rows = ds.train.history[ds.train.user == 0]
    assert len(u_rows) == 12
    assert u_rows[0].tolist() == [0] * 10
    assert u_rows[-1].tolist() == list(range(2, 12))  # 11 earlier items, most recent 10 kept


def test_empty_after_filtering_names_source():
    with pytest.raises(EmptyDataError, match="test-log: no interactions left"):
        prepare(loo_log(), PrepareConfig(protocol="loo", min_item_count=10))
    with pytest.raises(EmptyDataError, match="too few"):
        prepare(loo_log(), PrepareConfig(protocol="dreamrec", min_item_count=1, min_seq_len=1))


def test_item_meta_aligned_and_save_load_round_trip(tmp_path):
    meta = pd.DataFrame(
        {"title": ["Ten", "Thirty", "Unused"], "year": pd.array([1990, None, 2000], dtype="Int64")},
        index=pd.Index([10, 30, 99], name="item_id"),
    )
    inter = loo_log()
    inter.item_meta = meta
    ds = prepare(inter, PrepareConfig(protocol="loo", min_item_count=1, max_len=3))
    titles, years = ds.item_meta["title"], ds.item_meta["year"]
    assert len(ds.item_meta) == ds.n_items == 5
    assert titles.iloc[0] == "Ten" and titles.iloc[2] == "Thirty" and years.iloc[0] == 1990
    assert pd.isna(titles.iloc[1]) and pd.isna(years.iloc[2]) and pd.isna(titles.iloc[4])
    back = PreparedDataset.load(ds.save(tmp_path / "prepared"))
    pd.testing.assert_series_equal(back.item_ids, ds.item_ids, check_names=False)
    pd.testing.assert_series_equal(back.user_ids, ds.user_ids, check_names=False)
    pd.testing.assert_frame_equal(back.item_meta, ds.item_meta)
    assert np.array_equal(back.train.items, ds.train.items)
    assert np.array_equal(back.train.offsets, ds.train.offsets)
    assert np.array_equal(back.train.user, ds.train.user)
    for name in ("val", "test"):
        a, b = back.split(name), ds.split(name)
        assert np.array_equal(a.history, b.history) and np.array_equal(a.target, b.target)
        assert np.array_equal(a.user, b.user)
    assert back.info == ds.info and back.protocol == ds.protocol and back.max_len == ds.max_len


def test_prepare_source_dispatch(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("u,i,t\n" + "".join(f"{u},{i},{i}\n" for u in (1, 2) for i in (1, 2, 3)))
    ds = prepare_source(p, "csv", PrepareConfig(min_item_count=1), user_col="u", item_col="i", time_col="t")
    assert ds.n_users == 2 and ds.n_items == 3 and ds.test.target.tolist() == [3, 3]
    with pytest.raises(UnknownFormatError, match="dreamrec, diffurec"):
        prepare_source(p, "xml", PrepareConfig())
