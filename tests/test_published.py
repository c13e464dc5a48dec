"""Published splits: a tiny DreamRec split and a tiny DiffuRec dict, written in tmp_path."""
from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from dreamrec.config import PrepareConfig
from dreamrec.data.dataset import PreparedDataset, SampleRows, Sequences
from dreamrec.data.prepare import prepare_source
from dreamrec.data.published import load_diffurec_pkl, load_dreamrec_split
from dreamrec.errors import DataError, IdRangeError, InvalidValueError, MissingColumnError

PAD = 5  # item_num: ids 0..4, padding 5


def write_dreamrec(d, train=None, val=None, test=None, seq_size=4):
    d.mkdir(exist_ok=True)
    pd.DataFrame({"seq_size": [seq_size], "item_num": [PAD]}).to_pickle(d / "data_statis.df")
    default = pd.DataFrame(
        {
            "seq": [[PAD] * 4, [2, PAD, PAD, PAD], [2, 0, PAD, PAD]],
            "len_seq": [1, 1, 2],
            "next": [2, 0, 4],
        }
    )
    for name, df in (("train", train), ("val", val), ("test", test)):
        (default if df is None else df).to_pickle(d / f"{name}_data.df")
    return d


def test_dreamrec_rows_kept_exactly(tmp_path):
    train = pd.DataFrame(
        {"seq": [[1, 3, 4, 0], [PAD] * 4, [3, PAD, PAD, PAD]], "len_seq": [4, 1, 1], "next": [2, 3, 1]}
    )
    ds = load_dreamrec_split(write_dreamrec(tmp_path / "split", train=train))
    assert ds.protocol == "dreamrec" and ds.max_len == 4 and ds.n_items == PAD and ds.user_ids is None
    assert ds.item_ids.tolist() == [0, 1, 2, 3, 4]
    assert isinstance(ds.train, SampleRows)
    assert ds.train.history.tolist() == [[2, 4, 5, 1], [0, 0, 0, 0], [0, 0, 0, 4]]
    assert ds.train.target.tolist() == [3, 4, 2]
    assert ds.val.history.tolist() == [[0, 0, 0, 0], [0, 0, 0, 3], [0, 0, 3, 1]]
    assert ds.val.target.tolist() == [3, 1, 5]
    assert ds.test.user.tolist() == [-1, -1, -1]
    assert ds.info["counts"] == {"train": 3, "val": 3, "test": 3}
    # through the dispatcher, and persisted without pickles
    again = prepare_source(tmp_path / "split", "dreamrec", PrepareConfig())
    assert np.array_equal(again.val.history, ds.val.history)
    back = PreparedDataset.load(ds.save(tmp_path / "prepared"))
    assert np.array_equal(back.train.history, ds.train.history) and back.user_ids is None


def test_dreamrec_bad_ids_and_columns(tmp_path):
    bad_seq = pd.DataFrame({"seq": [[PAD] * 4, [7, PAD, PAD, PAD]], "len_seq": [1, 1], "next": [1, 1]})
    with pytest.raises(IdRangeError, match=r"val_data\.df, row 2"):
        load_dreamrec_split(write_dreamrec(tmp_path / "a", val=bad_seq))
    bad_next = pd.DataFrame({"seq": [[PAD] * 4], "len_seq": [1], "next": [PAD]})
    with pytest.raises(IdRangeError, match=r"test_data\.df, row 1: next item 5"):
        load_dreamrec_split(write_dreamrec(tmp_path / "b", test=bad_next))
    no_next = pd.DataFrame({"seq": [[PAD] * 4], "len_seq": [1], "tgt": [1]})
    with pytest.raises(MissingColumnError, match=r"train_data\.df: missing column 'next'"):
        load_dreamrec_split(write_dreamrec(tmp_path / "c", train=no_next))
    with pytest.raises(DataError, match="not found"):
        load_dreamrec_split(tmp_path / "missing")


def test_dreamrec_non_integer_values(tmp_path):
    def rows(seq=None, len_seq=None, nxt=None):
        return pd.DataFrame({"seq": seq or [[PAD] * 4, [2, PAD, PAD, PAD]], "len_seq": len_seq or [1, 1],
                             "next": nxt or [2, 0]})

    cases = [
        ("seq", rows(seq=[[PAD] * 4, [0.7, PAD, PAD, PAD]]), r"val_data\.df, row 2: seq 0\.7 is not an integer"),
        ("seq", rows(seq=[[PAD] * 4, [True, PAD, PAD, PAD]]), r"val_data\.df, row 2: seq True is not an integer"),
        ("seq", rows(seq=[[PAD] * 4, ["2", PAD, PAD, PAD]]), r"val_data\.df, row 2: seq '2' is not an integer"),
        ("next", rows(nxt=[2, 1.9]), r"val_data\.df, row 2: next 1\.9 is not an integer"),
        ("next", rows(nxt=[float("nan"), 1]), r"val_data\.df, row 1: next nan is not an integer"),
        ("len_seq", rows(len_seq=[1, "x"]), r"val_data\.df, row 2: len_seq 'x' is not an integer"),
        ("len_seq", rows(len_seq=[1.5, 1]), r"val_data\.df, row 1: len_seq 1\.5 is not an integer"),
    ]
    for i, (_, val, pattern) in enumerate(cases):
        with pytest.raises(InvalidValueError, match=pattern) as err:
            load_dreamrec_split(write_dreamrec(tmp_path / f"c{i}", val=val))
        assert err.value.path.endswith("val_data.df") and err.value.row is not None
        assert "-9223372036854775808" not in str(err.value)
    # whole floats (a float column, or NaN-free object values) are ids like any other
    whole = pd.DataFrame({"seq": [[2.0, 0.0, PAD, PAD]], "len_seq": [2.0], "next": [4.0]})
    ds = load_dreamrec_split(write_dreamrec(tmp_path / "whole", test=whole))
    assert ds.test.history.tolist() == [[0, 0, 3, 1]] and ds.test.target.tolist() == [5]
    d = write_dreamrec(tmp_path / "statis")
    pd.DataFrame({"seq_size": [4.5], "item_num": [PAD]}).to_pickle(d / "data_statis.df")
    with pytest.raises(InvalidValueError, match=r"data_statis\.df, row 1: seq_size 4\.5 is not an integer"):
        load_dreamrec_split(d)


def write_diffurec(path, **override):
    data = {
        "train": {0: [1, 2, 3], 1: [2, 4], 2: [3]},
        "val": {0: [4], 1: [1], 2: [2]},
        "test": {0: [2], 1: [3], 2: [4]},
        "umap": {"alice": 0, "bob": 1, "carol": 2},
        "smap": {30: 3, 10: 1, 40: 4, 20: 2},
    }
    data.update(override)
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path


def test_diffurec_exact(tmp_path):
    ds = load_diffurec_pkl(write_diffurec(tmp_path / "d.pkl"), max_len=3)
    assert ds.protocol == "loo" and ds.max_len == 3
    assert ds.item_ids.tolist() == [10, 20, 30, 40]
    assert ds.user_ids.tolist() == ["alice", "bob", "carol"]
    assert isinstance(ds.train, Sequences)
    assert [ds.train.get(u).tolist() for u in range(3)] == [[1, 2, 3], [2, 4], [3]]
    assert ds.val.history.tolist() == [[1, 2, 3], [0, 2, 4], [0, 0, 3]]
    assert ds.val.target.tolist() == [4, 1, 2]
    assert ds.test.history.tolist() == [[2, 3, 4], [2, 4, 1], [0, 3, 2]]  # window keeps the last 3
    assert ds.test.target.tolist() == [2, 3, 4]
    assert ds.test.user.tolist() == [0, 1, 2]


def test_diffurec_movies_and_dispatch(tmp_path):
    movies = tmp_path / "movies.dat"
    movies.write_bytes("10::Ten (1990)::Drama\n20::Vingt-été (1991)::Comedy|Drama\n".encode("latin-1"))
    pkl = write_diffurec(tmp_path / "d.pkl")
    ds = prepare_source(pkl, "diffurec", PrepareConfig(max_len=2), item_meta_path=movies)
    assert ds.max_len == 2 and ds.val.width == 2
    assert ds.item_meta["title"].iloc[1] == "Vingt-été"
    assert ds.item_meta["text"].iloc[1] == "Vingt-été (1991). Genres: Comedy, Drama"
    assert pd.isna(ds.item_meta["title"].iloc[2])
    assert prepare_source(pkl, "diffurec", PrepareConfig()).max_len == 50


def test_diffurec_bad_ids(tmp_path):
    with pytest.raises(IdRangeError, match=r"d\.pkl: smap"):
        load_diffurec_pkl(write_diffurec(tmp_path / "d.pkl", smap={10: 1, 20: 3}))
    with pytest.raises(IdRangeError, match=r"e\.pkl: val: user 0: item id 9"):
        load_diffurec_pkl(write_diffurec(tmp_path / "e.pkl", val={0: [9]}))
    p = tmp_path / "f.pkl"
    with open(p, "wb") as f:
        pickle.dump({"train": {}}, f)
    with pytest.raises(MissingColumnError, match="missing key 'val'"):
        load_diffurec_pkl(p)


def test_diffurec_non_integer_values(tmp_path):
    cases = [
        (dict(val={0: [1.5]}), r"a0\.pkl: val: user 0: item id 1\.5 \(position 1\) is not an integer"),
        (dict(train={0: [1, 2, float("nan")]}), r"train: user 0: item id nan \(position 3\) is not an integer"),
        (dict(test={1: [True]}), r"test: user 1: item id True \(position 1\) is not an integer"),
        (dict(train={True: [1]}), r"train: user key True is not an integer user id"),
        (dict(train={"0": [1]}), r"train: user key '0' is not an integer user id"),
        (dict(train={0.5: [1]}), r"train: user key 0\.5 is not an integer user id"),
        (dict(val={0: 4}), r"val: user 0: expected a list of item ids, found 4"),
        (dict(smap={10: 1, 20: 2.5}), r"smap: item id 2\.5 \(for 20\) is not an integer"),
        (dict(umap={"alice": False}), r"umap: user id False \(for 'alice'\) is not an integer"),
        (dict(test=[[1]]), r"test: expected a dict, found list"),
    ]
    for i, (override, pattern) in enumerate(cases):
        with pytest.raises(InvalidValueError, match=pattern) as err:
            load_diffurec_pkl(write_diffurec(tmp_path / f"a{i}.pkl", **override))
        assert err.value.path.endswith(f"a{i}.pkl")
    # whole floats are ids; the result equals the all-int file
    ds = load_diffurec_pkl(write_diffurec(tmp_path / "w.pkl", train={0: [1.0, 2.0, 3], 1.0: [2, 4], 2: [3]},
                                          val={0: [4.0], 1: [1], 2: [2]}), max_len=3)
    ref = load_diffurec_pkl(write_diffurec(tmp_path / "ref.pkl"), max_len=3)
    assert ds.val.history.tolist() == ref.val.history.tolist() and ds.val.target.tolist() == [4, 1, 2]
    assert ds.train.items.dtype == np.int64 and ds.train.items.tolist() == ref.train.items.tolist()
