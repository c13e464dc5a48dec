"""Turn an interaction log into a :class:`~dreamrec.data.dataset.PreparedDataset`.

Steps: optional de-duplication of exact (user, item, timestamp) repeats, iterative k-core
filtering, stable chronological ordering per user (events with equal timestamps keep their file
order), dense id maps and one of two split protocols:

* ``"loo"`` (leave-one-out, SASRec/DiffuRec style): per user, training sequence ``seq[:-2]``,
  validation row ``seq[:-2] -> seq[-2]``, test row ``seq[:-1] -> seq[-1]``.
* ``"dreamrec"`` (the DreamRec paper's split): users ordered by the time of their first
  interaction (ties by user id) are cut 8:1:1 (``split_ratio``) into train/val/test users, and
  every position of every sequence becomes one (history, target) row, including the first item
  with an empty history.

Histories keep the most recent ``config.window()`` items, right-aligned (see ``pad_left``).

Id maps: internal item ids ``1..n`` follow the *sorted* original item ids (so they do not depend
on the order of rows in the file); internal user ids ``0..U-1`` follow the sorted original user
ids likewise.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dreamrec.config import PrepareConfig
from dreamrec.data.dataset import PreparedDataset, SampleRows, Sequences
from dreamrec.data.published import load_diffurec_pkl, load_dreamrec_split
from dreamrec.data.readers import LOG_FORMATS, Interactions, read_interactions
from dreamrec.errors import ConfigError, DuplicateIdError, EmptyDataError, UnknownFormatError

PUBLISHED_FORMATS = ("dreamrec", "diffurec")
ALL_FORMATS = LOG_FORMATS + PUBLISHED_FORMATS


def dedupe(df: pd.DataFrame) -> pd.DataFrame:
    """Drop exact repeats of (user, item, timestamp), keeping the first occurrence in file order."""
    return df.drop_duplicates(subset=["user", "item", "timestamp"], keep="first").reset_index(drop=True)


def sort_chronological(df: pd.DataFrame) -> pd.DataFrame:
    """Sort by user then timestamp; events with equal (user, timestamp) keep their input order."""
    tmp = df.assign(_pos=np.arange(len(df)))
    return tmp.sort_values(["user", "timestamp", "_pos"], kind="stable").drop(columns="_pos").reset_index(drop=True)


def kcore(df: pd.DataFrame, min_item_count: int, min_seq_len: int) -> pd.DataFrame:
    """Repeatedly drop items with fewer than ``min_item_count`` interactions and users with fewer
    than ``min_seq_len`` until nothing changes. Row order is preserved."""
    cur = df
    while True:
        n = len(cur)
        item_n = cur["item"].map(cur["item"].value_counts())
        cur = cur[item_n.to_numpy() >= min_item_count]
        user_n = cur["user"].map(cur["user"].value_counts())
        cur = cur[user_n.to_numpy() >= min_seq_len]
        if len(cur) == n:
            return cur.reset_index(drop=True)


def prepare(inter: Interactions, config: PrepareConfig) -> PreparedDataset:
    """Filter, index and split an interaction log according to ``config`` (see module docs)."""
    if config.protocol == "loo" and config.min_seq_len < 3:
        raise ConfigError(
            f"protocol 'loo' needs min_seq_len >= 3 (train, validation and test items), got {config.min_seq_len}"
        )
    window = config.window()
    df = inter.df[["user", "item", "timestamp"]]
    counts: dict[str, Any] = {"raw_interactions": len(df)}
    if config.dedupe:
        df = dedupe(df)
    counts["after_dedupe"] = len(df)
    df = kcore(df, config.min_item_count, config.min_seq_len)
    counts["after_kcore"] = len(df)
    if len(df) == 0:
        raise EmptyDataError(
            f"no interactions left after filtering (min_item_count={config.min_item_count}, "
            f"min_seq_len={config.min_seq_len}, {counts['raw_interactions']} interactions read)",
            inter.source,
        )

    item_ids = pd.Series(df["item"].drop_duplicates().sort_values().to_numpy()).rename("item_id")
    user_ids = pd.Series(df["user"].drop_duplicates().sort_values().to_numpy()).rename("user_id")
    items = pd.Index(item_ids).get_indexer(df["item"]).astype(np.int64) + 1
    users = pd.Index(user_ids).get_indexer(df["user"]).astype(np.int64)
    ts = df["timestamp"].to_numpy()
    order = np.lexsort((np.arange(len(df)), ts, users))  # stable: file order breaks ties
    items, users, ts = items[order], users[order], ts[order]
    n_users = len(user_ids)
    lengths = np.bincount(users, minlength=n_users).astype(np.int64)
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    starts, ends = offsets[:-1], offsets[1:]

    if config.protocol == "loo":
        keep = np.ones(len(items), dtype=bool)
        keep[ends - 1] = False
        keep[ends - 2] = False
        train: SampleRows | Sequences = Sequences(
            items[keep], np.concatenate([[0], np.cumsum(lengths - 2)]), np.arange(n_users)
        )
        val = SampleRows(_windows(items, starts, ends - 2, window), items[ends - 2], np.arange(n_users))
        test = SampleRows(_windows(items, starts, ends - 1, window), items[ends - 1], np.arange(n_users))
        split_users: dict[str, int] = {"train": n_users, "val": n_users, "test": n_users}
    else:
        first_ts = ts[starts]
        by_first = np.lexsort((np.arange(n_users), first_ts))
        n_train, n_val = _split_sizes(n_users, config.split_ratio)
        if n_train == 0 or n_val == 0 or n_users - n_train - n_val == 0:
            raise EmptyDataError(
                f"{n_users} users after filtering are too few for a {tuple(config.split_ratio)} user split "
                "(a split would be empty)",
                inter.source,
            )
        groups = {
            "train": by_first[:n_train],
            "val": by_first[n_train : n_train + n_val],
            "test": by_first[n_train + n_val :],
        }
        rows = {name: _prefix_rows(items, starts, lengths, g, window) for name, g in groups.items()}
        train, val, test = rows["train"], rows["val"], rows["test"]
        split_users = {name: len(g) for name, g in groups.items()}

    item_meta = _align_meta(inter.item_meta, item_ids, inter.source) if inter.item_meta is not None else None
    counts.update(
        n_users=n_users,
        n_items=len(item_ids),
        n_train=len(train),
        n_val=len(val),
        n_test=len(test),
        split_users=split_users,
    )
    info = {
        "source": inter.source,
        "prepare": config.model_dump(mode="json"),
        "window": window,
        "id_order": "sorted original ids",
        "counts": counts,
    }
    return PreparedDataset(
        item_ids=item_ids,
        train=train,
        val=val,
        test=test,
        max_len=window,
        protocol=config.protocol,
        user_ids=user_ids,
        item_meta=item_meta,
        info=info,
    )


def prepare_source(path: str | Path, fmt: str, config: PrepareConfig, **reader_kwargs: Any) -> PreparedDataset:
    """Read and prepare ``path`` in format ``fmt`` (one of :data:`ALL_FORMATS`).

    Log formats go through :func:`read_interactions` (``reader_kwargs`` passed on) and
    :func:`prepare`. The published splits keep their own split: ``"dreamrec"`` is a directory of
    DreamRec ``*.df`` pickles, ``"diffurec"`` a DiffuRec ``.pkl`` (windowed to ``config.max_len``,
    default 50; ``item_meta_path`` may name a MovieLens ``movies.dat``). Both unpickle files:
    only use them on files you trust. Other reader options are ignored for published formats.
    """
    fmt_l = str(fmt).lower()
    if fmt_l in LOG_FORMATS:
        return prepare(read_interactions(path, fmt_l, **reader_kwargs), config)
    if fmt_l == "dreamrec":
        return load_dreamrec_split(path)
    if fmt_l == "diffurec":
        return load_diffurec_pkl(
            path, max_len=config.max_len or 50, movies_path=reader_kwargs.get("item_meta_path")
        )
    raise UnknownFormatError(f"unknown format {fmt!r}; known formats: {', '.join(ALL_FORMATS)}", path)


# ---- helpers ---------------------------------------------------------------------------------
def _windows(items: np.ndarray, starts: np.ndarray, positions: np.ndarray, width: int) -> np.ndarray:
    """History before each position (within its own sequence), last ``width`` items right-aligned."""
    positions = np.asarray(positions, dtype=np.int64)
    idx = positions[:, None] - width + np.arange(width, dtype=np.int64)[None, :]
    valid = idx >= np.asarray(starts, dtype=np.int64)[:, None]
    if len(items) == 0:
        return np.zeros((len(positions), width), dtype=np.int64)
    return np.where(valid, items[np.clip(idx, 0, None)], 0).astype(np.int64)


def _prefix_rows(
    items: np.ndarray, starts: np.ndarray, lengths: np.ndarray, users: np.ndarray, width: int
) -> SampleRows:
    """One row per event of each user in ``users`` (in that order), history = earlier events."""
    lens = lengths[users]
    total = int(lens.sum())
    row_starts = np.repeat(starts[users], lens)
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
    pos = row_starts + within
    return SampleRows(_windows(items, row_starts, pos, width), items[pos], np.repeat(users, lens))


def _split_sizes(n: int, ratio: tuple[float, float, float]) -> tuple[int, int]:
    total = float(sum(ratio))
    if total <= 0 or any(r < 0 for r in ratio):
        raise ConfigError(f"split_ratio must be non-negative with a positive sum, got {tuple(ratio)}")
    n_train = math.floor(n * ratio[0] / total + 1e-9)
    n_val = math.floor(n * ratio[1] / total + 1e-9)
    return n_train, n_val


def _align_meta(meta: pd.DataFrame, item_ids: pd.Series, source: str) -> pd.DataFrame:
    """Metadata rows in internal-id order (row i-1 = item i); unknown items get missing values."""
    if not meta.index.is_unique:
        dup = meta.index[meta.index.duplicated()][0]
        dup = dup.item() if isinstance(dup, np.generic) else dup
        raise DuplicateIdError(f"duplicate item id {dup!r} in item metadata", source)
    hits = meta.index.get_indexer(item_ids)
    if len(hits) and (hits < 0).all():  # e.g. int ids in the log, string ids in the metadata
        hits = pd.Index(meta.index.astype(str)).get_indexer(item_ids.astype(str))
    return meta.reset_index(drop=True).reindex(hits).reset_index(drop=True)
