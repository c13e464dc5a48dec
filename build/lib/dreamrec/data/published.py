"""Loaders for published benchmark splits, kept exactly as their authors cut them.

.. warning::
   Both formats are Python pickles. Unpickling can execute arbitrary code, so these loaders
   only run when the user explicitly names the format (``dreamrec`` / ``diffurec``) and should
   only be pointed at files from a source you trust. A prepared dataset written by dreamrec
   never contains pickles.
"""
from __future__ import annotations

import math
import pickle
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dreamrec.data.dataset import PreparedDataset, SampleRows, Sequences, pad_left
from dreamrec.data.readers import read_movielens_movies
from dreamrec.errors import DataError, IdRangeError, InvalidValueError, MissingColumnError

DREAMREC_FILES = {"train": "train_data.df", "val": "val_data.df", "test": "test_data.df"}


def load_dreamrec_split(directory: str | Path) -> PreparedDataset:
    """Load the DreamRec split (``train_data.df``, ``val_data.df``, ``test_data.df``, ``data_statis.df``).

    **Security: these files are pandas pickles read with ``pd.read_pickle``, which can execute
    arbitrary code. Only load directories you trust; dreamrec reads them only when the user asks
    for the ``dreamrec`` format.**

    ``data_statis.df`` gives ``seq_size`` and ``item_num``; the split files have columns ``seq``
    (``seq_size`` ids post-padded with ``item_num``), ``len_seq`` and ``next``. Every row is kept:
    its history is the non-padding ids of ``seq`` in order (empty for the first event of a
    sequence, even though ``len_seq`` is 1 there), right-aligned in a ``seq_size`` window, and its
    target is ``next``. Original ids ``0..item_num-1`` become internal ids ``1..item_num``; users
    are unknown (-1). Every id and ``len_seq`` must be an integer (a float only if finite and
    whole, never a bool): anything else raises :class:`InvalidValueError` naming the file and
    the 1-based row.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError("DreamRec split directory not found", directory)
    statis_path = directory / "data_statis.df"
    statis = _read_df_pickle(statis_path)
    for col in ("seq_size", "item_num"):
        if col not in statis.columns:
            raise MissingColumnError(f"missing column {col!r}; columns found: {list(statis.columns)}", statis_path)
    if len(statis) == 0:
        raise InvalidValueError("no statistics row", statis_path)
    seq_size = _int_scalar(statis["seq_size"].iloc[0], statis_path, "seq_size", 1)
    item_num = _int_scalar(statis["item_num"].iloc[0], statis_path, "item_num", 1)
    if seq_size < 1 or item_num < 1:
        raise InvalidValueError(f"seq_size={seq_size} and item_num={item_num} must be positive", statis_path)

    splits: dict[str, SampleRows] = {}
    mismatched: dict[str, int] = {}
    for name, fname in DREAMREC_FILES.items():
        splits[name], mismatched[name] = _dreamrec_rows(directory / fname, seq_size, item_num)
    info = {
        "source": str(directory),
        "format": "dreamrec",
        "seq_size": seq_size,
        "item_num": item_num,
        "id_map": "internal id = original id + 1",
        "counts": {name: len(rows) for name, rows in splits.items()},
        "rows_len_seq_differs": mismatched,
    }
    return PreparedDataset(
        item_ids=pd.Series(np.arange(item_num, dtype=np.int64), name="item_id"),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        max_len=seq_size,
        protocol="dreamrec",
        user_ids=None,
        info=info,
    )


def load_diffurec_pkl(path: str | Path, max_len: int = 50, movies_path: str | Path | None = None) -> PreparedDataset:
    """Load a DiffuRec leave-one-out split (a pickled dict).

    **Security: the file is read with ``pickle.load``, which can execute arbitrary code. Only
    load files you trust; dreamrec reads them only when the user asks for the ``diffurec``
    format.**

    The dict holds ``train``/``val``/``test`` (user id -> list of item ids from 1), ``umap``
    (original user -> user id) and ``smap`` (original item -> item id). Internal item ids are the
    ``smap`` values (they must be exactly ``1..n``); internal user ids the ``umap`` values (exactly
    ``0..U-1``). Training data is one sequence ``train[u]`` per user in user-id order; validation
    rows are ``train[u] -> val[u][0]`` and test rows ``train[u] + val[u] -> test[u][0]`` (users
    without a validation/test item get no such row), histories windowed to ``max_len``. With
    ``movies_path`` (a MovieLens ``movies.dat``) item metadata is attached. User keys, item ids
    and map values must be integers (a float only if finite and whole, never a bool): anything
    else raises :class:`InvalidValueError` naming the file, the split and the user key.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    try:
        with path.open("rb") as f:
            data = pickle.load(f)
    except Exception as e:  # any unpickling failure
        raise InvalidValueError(f"cannot unpickle DiffuRec file: {e}", path) from None
    if not isinstance(data, dict):
        raise InvalidValueError(f"expected a pickled dict, found {type(data).__name__}", path)
    for key in ("train", "val", "test", "umap", "smap"):
        if key not in data:
            raise MissingColumnError(f"missing key {key!r}; keys found: {list(data)}", path)
    for key in ("train", "val", "test", "umap", "smap"):
        if not isinstance(data[key], dict):
            raise InvalidValueError(f"{key}: expected a dict, found {type(data[key]).__name__}", path)
    smap: dict[Any, int] = data["smap"]
    umap: dict[Any, int] = data["umap"]
    n_items, n_users = len(smap), len(umap)

    item_ids = _invert_dense(smap, 1, path, "smap", "item")
    user_ids = _invert_dense(umap, 0, path, "umap", "user")
    checked: dict[str, dict[int, np.ndarray]] = {}
    for name in ("train", "val", "test"):
        checked[name] = {}
        for u, seq in data[name].items():
            if not _is_int(u):
                raise InvalidValueError(f"{name}: user key {_show(u)} is not an integer user id", path)
            uid = int(u)
            if not 0 <= uid < n_users:
                raise IdRangeError(f"{name}: user id {_show(u)} is not in 0..{n_users - 1}", path)
            if not _is_seq(seq):
                raise InvalidValueError(f"{name}: user {_show(u)}: expected a list of item ids, found {seq!r}", path)
            arr = _int_ids(list(seq), path, f"{name}: user {_show(u)}: item id")
            if arr.size and (arr.min() < 1 or arr.max() > n_items):
                bad = arr[(arr < 1) | (arr > n_items)][0]
                raise IdRangeError(f"{name}: user {_show(u)}: item id {int(bad)} is not in 1..{n_items}", path)
            checked[name][uid] = arr
    train_d, val_d, test_d = checked["train"], checked["val"], checked["test"]
    empty = np.zeros(0, np.int64)

    seqs, val_hist, val_tgt, val_user, test_hist, test_tgt, test_user = [], [], [], [], [], [], []
    for u in range(n_users):
        tr = train_d.get(u, empty).tolist()
        va = val_d.get(u, empty).tolist()
        te = test_d.get(u, empty).tolist()
        seqs.append(tr)
        if va:
            val_hist.append(tr)
            val_tgt.append(va[0])
            val_user.append(u)
        if te:
            test_hist.append(tr + va)
            test_tgt.append(te[0])
            test_user.append(u)
    train = Sequences.from_lists(seqs, np.arange(n_users, dtype=np.int64))
    val = SampleRows(pad_left(val_hist, max_len), np.asarray(val_tgt, dtype=np.int64), np.asarray(val_user, np.int64))
    test = SampleRows(
        pad_left(test_hist, max_len), np.asarray(test_tgt, dtype=np.int64), np.asarray(test_user, np.int64)
    )
    item_meta = None
    if movies_path is not None:
        movies = read_movielens_movies(movies_path)
        hits = movies.index.get_indexer(item_ids)
        if len(hits) and (hits < 0).all():
            hits = pd.Index(movies.index.astype(str)).get_indexer(item_ids.astype(str))
        item_meta = movies.reset_index(drop=True).reindex(hits).reset_index(drop=True)
    info = {
        "source": str(path),
        "format": "diffurec",
        "window": max_len,
        "counts": {"n_users": n_users, "n_items": n_items, "n_train_items": int(len(train.items)),
                   "n_val": len(val), "n_test": len(test)},
    }
    if movies_path is not None:
        info["movies"] = str(movies_path)
    return PreparedDataset(
        item_ids=item_ids,
        train=train,
        val=val,
        test=test,
        max_len=max_len,
        protocol="loo",
        user_ids=user_ids,
        item_meta=item_meta,
        info=info,
    )


# ---- helpers ---------------------------------------------------------------------------------
def _read_df_pickle(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError("file not found", path)
    try:
        df = pd.read_pickle(path)
    except Exception as e:  # any unpickling failure
        raise InvalidValueError(f"cannot read pandas pickle: {e}", path) from None
    if not isinstance(df, pd.DataFrame):
        raise InvalidValueError(f"expected a pickled DataFrame, found {type(df).__name__}", path)
    return df


def _dreamrec_rows(path: Path, seq_size: int, item_num: int) -> tuple[SampleRows, int]:
    """Rows of one DreamRec split file and the number whose ``len_seq`` differs from the real count."""
    df = _read_df_pickle(path)
    for col in ("seq", "len_seq", "next"):
        if col not in df.columns:
            raise MissingColumnError(f"missing column {col!r}; columns found: {list(df.columns)}", path)
    seq_list = df["seq"].tolist()
    for i, s in enumerate(seq_list, start=1):
        if not _is_seq(s) or len(s) != seq_size:
            raise InvalidValueError(f"seq must hold {seq_size} ids, found {s!r}", path, i)
    seq = _int_rows(seq_list, path, "seq").reshape(len(df), seq_size)
    target = _int_rows([(x,) for x in df["next"].tolist()], path, "next").reshape(-1)
    len_seq = _int_rows([(x,) for x in df["len_seq"].tolist()], path, "len_seq").reshape(-1)
    bad_seq = ((seq < 0) | (seq > item_num)).any(axis=1)
    if bad_seq.any():
        i = int(np.flatnonzero(bad_seq)[0])
        raise IdRangeError(f"seq {seq[i].tolist()} has ids outside 0..{item_num} (padding {item_num})", path, i + 1)
    bad_tgt = (target < 0) | (target >= item_num)
    if bad_tgt.any():
        i = int(np.flatnonzero(bad_tgt)[0])
        raise IdRangeError(f"next item {int(target[i])} is outside 0..{item_num - 1}", path, i + 1)
    real = seq != item_num
    order = np.argsort(real, axis=1, kind="stable")  # padding first, real items after, in order
    hist = np.take_along_axis(seq + 1, order, axis=1)
    hist[~np.take_along_axis(real, order, axis=1)] = 0
    mismatched = int((real.sum(1) != len_seq).sum())
    return SampleRows(hist, target + 1), mismatched


def _invert_dense(mapping: dict[Any, int], first: int, path: Path, key: str, what: str) -> pd.Series:
    """Original ids ordered by their dense id (``first..first+n-1``); IdRangeError otherwise."""
    n = len(mapping)
    for k, v in mapping.items():
        if not _is_int(v):
            raise InvalidValueError(f"{key}: {what} id {_show(v)} (for {_show(k)}) is not an integer", path)
    values = np.fromiter((int(v) for v in mapping.values()), dtype=np.int64, count=n)
    if n and not np.array_equal(np.sort(values), np.arange(first, first + n)):
        raise IdRangeError(f"{key}: {what} ids are not exactly {first}..{first + n - 1}", path)
    originals = np.empty(n, dtype=object)
    originals[values - first] = list(mapping.keys())
    return pd.Series(list(originals), name=f"{what}_id")


_I64 = (-(2**63), 2**63)


def _is_seq(s: Any) -> bool:
    """A flat sequence of values (its values are checked one by one later)."""
    return isinstance(s, (list, tuple)) or (isinstance(s, np.ndarray) and s.ndim == 1)


def _is_int_type(t: type) -> bool:
    return issubclass(t, (int, np.integer)) and not issubclass(t, (bool, np.bool_))


def _is_int(x: Any) -> bool:
    """An integer value that fits int64: an int (never a bool), or a finite whole float."""
    if isinstance(x, (bool, np.bool_)):
        return False
    if isinstance(x, (int, np.integer)):
        return _I64[0] <= int(x) < _I64[1]
    if isinstance(x, (float, np.floating)):
        return math.isfinite(x) and float(x).is_integer() and _I64[0] <= x < _I64[1]
    return False


def _show(x: Any) -> str:
    """``repr`` of a value, NumPy scalars shown as the Python value (``1.5``, not ``np.float64(1.5)``)."""
    return repr(x.item() if isinstance(x, np.generic) else x)


def _why_not_int(x: Any) -> str:
    if isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)):
        return "does not fit a 64-bit integer"
    return "is not an integer"


def _int_rows(rows: list, path: Path, what: str) -> np.ndarray:
    """``rows`` (equal-length sequences) as an int64 matrix; InvalidValueError naming the 1-based
    row of the first value that is not an integer (floats pass only when finite and whole)."""
    n = len(rows)
    if n and all(isinstance(r, np.ndarray) and r.dtype.kind == "i" for r in rows):
        return np.asarray(rows, dtype=np.int64).reshape(n, -1)
    if all(_is_int_type(t) for t in set(map(type, chain.from_iterable(rows)))):
        try:
            return np.asarray(rows, dtype=np.int64).reshape(n, -1)
        except OverflowError:
            pass
    for i, r in enumerate(rows, start=1):
        for x in r:
            if not _is_int(x):
                raise InvalidValueError(f"{what} {_show(x)} {_why_not_int(x)}", path, i)
    return np.asarray([[int(x) for x in r] for r in rows], dtype=np.int64).reshape(n, -1)


def _int_ids(values: list, path: Path, what: str) -> np.ndarray:
    """One list of ids as int64; InvalidValueError naming ``what`` and the 1-based position otherwise."""
    if all(_is_int_type(t) for t in set(map(type, values))):
        try:
            return np.asarray(values, dtype=np.int64).reshape(-1)
        except OverflowError:
            pass
    for j, x in enumerate(values, start=1):
        if not _is_int(x):
            raise InvalidValueError(f"{what} {_show(x)} (position {j}) {_why_not_int(x)}", path)
    return np.asarray([int(x) for x in values], dtype=np.int64)


def _int_scalar(x: Any, path: Path, what: str, row: int) -> int:
    if not _is_int(x):
        raise InvalidValueError(f"{what} {_show(x)} {_why_not_int(x)}", path, row)
    return int(x)
