"""The prepared dataset: the one structure every model, trainer and evaluator reads.

Conventions (the contract the rest of the package relies on):

* Internal item ids are dense ``1..n_items``; ``0`` is the padding id and is never ranked.
  ``item_ids[i - 1]`` is the original id of internal item ``i``.
* Internal user ids are dense ``0..n_users-1``; ``-1`` marks a row whose user is unknown
  (the published DreamRec split has no user column).
* A split of evaluation samples (:class:`SampleRows`) is a right-aligned, zero-padded history
  matrix ``history[N, W]`` (oldest item first, the most recent item in the last column) and a
  ``target[N]``. An all-zero row is an empty history.
* Training data is either :class:`SampleRows` (one (history, target) pair per row, as the
  DreamRec split publishes it) or :class:`Sequences` (one chronological item sequence per user,
  as leave-one-out produces it); :mod:`dreamrec.data.batching` turns both into batches.

A prepared dataset is a directory of NumPy arrays, Parquet tables and ``meta.json``; it never
contains pickles.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from dreamrec.atomic import is_temp_name, make_temp_dir, remove, replace_dir
from dreamrec.errors import ArtifactError, DataError

SplitName = Literal["train", "val", "test"]
FORMAT_VERSION = 1


@dataclass
class SampleRows:
    """(history, target) samples. ``history`` is int64 ``[N, W]`` right-aligned, 0 = padding."""

    history: np.ndarray
    target: np.ndarray
    user: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.history = np.ascontiguousarray(self.history, dtype=np.int64)
        self.target = np.ascontiguousarray(self.target, dtype=np.int64)
        if self.user is None:
            self.user = np.full(len(self.target), -1, dtype=np.int64)
        self.user = np.ascontiguousarray(self.user, dtype=np.int64)
        if self.history.ndim != 2 or not (len(self.history) == len(self.target) == len(self.user)):
            raise ValueError("SampleRows: history must be [N, W] and target/user [N]")

    def __len__(self) -> int:
        return len(self.target)

    @property
    def width(self) -> int:
        return self.history.shape[1]

    def lengths(self) -> np.ndarray:
        return (self.history != 0).sum(1)


@dataclass
class Sequences:
    """One chronological sequence per user: ``items[offsets[u]:offsets[u+1]]``."""

    items: np.ndarray
    offsets: np.ndarray
    user: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.items = np.ascontiguousarray(self.items, dtype=np.int64)
        self.offsets = np.ascontiguousarray(self.offsets, dtype=np.int64)
        if self.user is None:
            self.user = np.arange(len(self.offsets) - 1, dtype=np.int64)
        self.user = np.ascontiguousarray(self.user, dtype=np.int64)

    @classmethod
    def from_lists(cls, seqs: list[list[int]] | list[np.ndarray], user: np.ndarray | None = None) -> "Sequences":
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        items = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]) if len(seqs) else np.zeros(0, np.int64)
        return cls(items, offsets, user)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def get(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u] : self.offsets[u + 1]]


TrainData = SampleRows | Sequences


def pad_left(seqs: list[np.ndarray] | list[list[int]], width: int) -> np.ndarray:
    """Right-align each sequence (keeping its most recent ``width`` items) in a zero matrix."""
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = np.asarray(s, dtype=np.int64)[-width:] if width > 0 else np.zeros(0, np.int64)
        if len(s):
            out[i, width - len(s) :] = s
    return out


@dataclass
class PreparedDataset:
    """Item/user id maps, optional item metadata, and the three splits."""

    item_ids: pd.Series  # original id of internal item i at position i-1
    train: TrainData
    val: SampleRows
    test: SampleRows
    max_len: int  # history window the split was built with (models may use a shorter one)
    protocol: str  # "dreamrec", "loo", or the published split's name
    user_ids: pd.Series | None = None  # original id of internal user u at position u
    item_meta: pd.DataFrame | None = None  # indexed like item_ids; columns e.g. title, genres, text
    info: dict[str, Any] = field(default_factory=dict)  # provenance, preparation config, stats

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return 0 if self.user_ids is None else len(self.user_ids)

    def split(self, name: str) -> SampleRows:
        if name == "val":
            return self.val
        if name == "test":
            return self.test
        raise ValueError(f"unknown evaluation split {name!r}; expected 'val' or 'test'")

    # ---- id maps -------------------------------------------------------------------------
    def item_index(self) -> dict[Any, int]:
        """Original item id -> internal id (1-based)."""
        return {k: i + 1 for i, k in enumerate(self.item_ids.tolist())}

    def to_internal(self, ids: list[Any]) -> tuple[list[int], list[Any]]:
        """Map original ids to internal ones; returns (known internal ids, unknown originals).

        Ids given as strings are also matched against integer catalogs (``"42"`` -> ``42``) so
        that command-line input works whatever the catalog's id type.
        """
        index = self.item_index()
        known, unknown = [], []
        for x in ids:
            key = coerce_id(x, index)
            if key is None:
                unknown.append(x)
            else:
                known.append(index[key])
        return known, unknown

    def to_original(self, internal: np.ndarray) -> list[Any]:
        """Original ids of internal ids (1..n_items; 0, the padding id, is an error)."""
        idx = np.asarray(internal, dtype=np.int64)
        if idx.size and (idx.min() < 1 or idx.max() > self.n_items):
            raise ValueError(f"internal item ids must lie in 1..{self.n_items}")
        arr = self.item_ids.to_numpy()
        return [python_scalar(v) for v in arr[idx - 1]]

    def train_item_counts(self) -> np.ndarray:
        """Interaction count per internal id (index 0 = padding, always 0) in the training data.

        For :class:`SampleRows` the counted events are the targets (each row is one event); for
        :class:`Sequences` every item of every sequence.
        """
        src = self.train.target if isinstance(self.train, SampleRows) else self.train.items
        return np.bincount(src, minlength=self.n_items + 1).astype(np.int64)

    def train_items_seen(self) -> np.ndarray:
        """Boolean mask per internal id (index 0 = padding, False): the item occurs somewhere in the
        training data, as a target or in a history (:class:`SampleRows`) or in a sequence."""
        src = [self.train.target, self.train.history.ravel()] if isinstance(self.train, SampleRows) else [self.train.items]
        seen = np.zeros(self.n_items + 1, dtype=bool)
        for a in src:
            seen[a] = True
        seen[0] = False
        return seen

    # ---- persistence ---------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the dataset directory atomically (a temp dir renamed into place).

        An existing dataset at ``path`` is replaced; a folder holding anything else than a prepared
        dataset's files is refused (:func:`foreign_files`), so that nothing dreamrec did not write is lost."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ArtifactError(f"{path}: is a file, not a dataset folder")
        foreign = foreign_files(path)
        if foreign:
            raise ArtifactError(f"{path}: not a prepared dataset: it holds {_names(foreign)}, which saving would "
                                "delete; choose a new or empty folder")
        tmp = make_temp_dir(path)
        try:
            pd.DataFrame({"item_id": self.item_ids.reset_index(drop=True)}).to_parquet(tmp / "items.parquet")
            if self.user_ids is not None:
                pd.DataFrame({"user_id": self.user_ids.reset_index(drop=True)}).to_parquet(tmp / "users.parquet")
            if self.item_meta is not None:
                meta = self.item_meta.reset_index(drop=True).copy()
                meta.insert(0, "item_id", self.item_ids.reset_index(drop=True))
                meta.to_parquet(tmp / "item_meta.parquet")
            if isinstance(self.train, SampleRows):
                _save_rows(tmp, "train", self.train)
                train_kind = "rows"
            else:
                np.save(tmp / "train_items.npy", self.train.items)
                np.save(tmp / "train_offsets.npy", self.train.offsets)
                np.save(tmp / "train_user.npy", self.train.user)
                train_kind = "sequences"
            _save_rows(tmp, "val", self.val)
            _save_rows(tmp, "test", self.test)
            meta_json = {
                "format_version": FORMAT_VERSION,
                "protocol": self.protocol,
                "max_len": self.max_len,
                "n_items": self.n_items,
                "n_users": self.n_users,
                "train_kind": train_kind,
                "n_train": len(self.train),
                "n_val": len(self.val),
                "n_test": len(self.test),
                "info": self.info,
            }
            (tmp / "meta.json").write_text(json.dumps(meta_json, indent=2, default=_json_default))
            replace_dir(tmp, path)
        except BaseException:
            remove(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PreparedDataset":
        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.is_file():
            raise ArtifactError(f"{path}: not a prepared dataset (no meta.json); run `dreamrec prepare` first")
        meta = json.loads(meta_file.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{meta_file}: unsupported format_version {meta.get('format_version')!r}")
        try:
            item_ids = pd.read_parquet(path / "items.parquet")["item_id"]
            user_ids = pd.read_parquet(path / "users.parquet")["user_id"] if (path / "users.parquet").exists() else None
            item_meta = None
            if (path / "item_meta.parquet").exists():
                item_meta = pd.read_parquet(path / "item_meta.parquet").drop(columns=["item_id"])
            if meta["train_kind"] == "rows":
                train: TrainData = _load_rows(path, "train")
            else:
                train = Sequences(
                    np.load(path / "train_items.npy"),
                    np.load(path / "train_offsets.npy"),
                    np.load(path / "train_user.npy"),
                )
            val, test = _load_rows(path, "val"), _load_rows(path, "test")
        except FileNotFoundError as e:
            raise ArtifactError(f"{path}: prepared dataset is incomplete ({e.filename} missing)") from e
        return cls(
            item_ids=item_ids,
            train=train,
            val=val,
            test=test,
            max_len=int(meta["max_len"]),
            protocol=meta["protocol"],
            user_ids=user_ids,
            item_meta=item_meta,
            info=meta.get("info", {}),
        )

    def summary(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "n_items": self.n_items,
            "n_users": self.n_users,
            "max_len": self.max_len,
            "train": f"{len(self.train)} {'rows' if isinstance(self.train, SampleRows) else 'sequences'}",
            "val": len(self.val),
            "test": len(self.test),
        }


def _save_rows(d: Path, name: str, rows: SampleRows) -> None:
    np.save(d / f"{name}_history.npy", rows.history.astype(np.int32))
    np.save(d / f"{name}_target.npy", rows.target.astype(np.int32))
    np.save(d / f"{name}_user.npy", rows.user.astype(np.int32))


def _load_rows(d: Path, name: str) -> SampleRows:
    return SampleRows(
        np.load(d / f"{name}_history.npy"), np.load(d / f"{name}_target.npy"), np.load(d / f"{name}_user.npy")
    )


# every file PreparedDataset.save writes (which of them depends on the dataset)
DATASET_FILES = frozenset(
    ["meta.json", "items.parquet", "users.parquet", "item_meta.parquet", "train_items.npy", "train_offsets.npy",
     "train_user.npy"] + [f"{s}_{a}.npy" for s in ("train", "val", "test") for a in ("history", "target", "user")]
)


def foreign_files(folder: str | Path, own: frozenset[str] = DATASET_FILES) -> list[Path]:
    """The entries of ``folder`` that dreamrec did not write: not named in ``own`` and not one of dreamrec's
    atomic-write temporaries (none when ``folder`` does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name not in own and not is_temp_name(p.name))


def _names(paths: list[Path], n: int = 3) -> str:
    shown = ", ".join(p.name for p in paths[:n])
    return shown + (f" and {len(paths) - n} more" if len(paths) > n else "")


def check_apart(out: str | Path, inputs: list[str | Path], what: str = "the input", replaces: bool = True) -> None:
    """Raise :class:`DataError` if ``out`` is one of ``inputs``, lies inside one, or contains one
    (``replaces``: writing ``out`` replaces the folder as a whole, as a dataset's save does)."""
    resolved = Path(out).resolve()
    for k in inputs:
        k = Path(k).resolve()
        if replaces and (resolved == k or resolved in k.parents):
            raise DataError(f"--out {out} would replace {what} {k}; choose another folder")
        if resolved == k:
            raise DataError(f"--out {out} is {what} {k}; choose another folder")
        if k in resolved.parents:
            raise DataError(f"--out {out} lies inside {what} {k}; choose a folder outside it")
        if resolved in k.parents:
            raise DataError(f"--out {out} contains {what} {k}; choose a folder that does not hold it")


def check_output_dir(out: str | Path, keep: list[str | Path] | None = None, overwrite: bool = False) -> Path:
    """``out`` as a place :meth:`PreparedDataset.save` may write. It replaces ``out`` as a whole, so refuse:
    ``out`` equal to, inside or containing any of ``keep`` (the inputs); a file; a folder holding files that
    are not a prepared dataset's (never deleted, even with ``overwrite``); and an existing prepared dataset
    unless ``overwrite``. An empty folder is fine."""
    out = Path(out)
    check_apart(out, keep or [])
    if out.is_file():
        raise DataError(f"--out {out} is a file, not a dataset folder")
    foreign = foreign_files(out)
    if foreign:
        raise DataError(f"--out {out} is not a prepared dataset: it holds {_names(foreign)}, which dreamrec did not "
                        "write and never deletes (it replaces the folder as a whole); choose a new or empty folder")
    if out.is_dir() and not overwrite and any(not is_temp_name(p.name) for p in out.iterdir()):
        raise DataError(f"--out {out} already holds a prepared dataset; pass --overwrite to replace it")
    return out


def python_scalar(v: Any) -> Any:
    """NumPy scalar -> plain Python value (JSON-friendly)."""
    return v.item() if isinstance(v, np.generic) else v


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


_INT_TEXT = re.compile(r"-?[0-9]+")


def coerce_id(x: Any, index: dict[Any, int]) -> Any | None:
    """The catalog key ``x`` stands for, or None.

    Exact keys match as they are; a string of ASCII digits also matches an integer id (``"42"``
    -> ``42``) and an integer also matches a string id, so that command-line and JSON input work
    whatever the catalog's id type. Booleans and non-integral numbers never match.
    """
    if isinstance(x, (bool, np.bool_)):
        return None
    if isinstance(x, (float, np.floating)):
        return None
    if isinstance(x, np.integer):
        x = int(x)
    if x in index:
        return x
    if isinstance(x, str):
        s = x.strip()
        if s in index:
            return s
        if _INT_TEXT.fullmatch(s) and int(s) in index:
            return int(s)
        return None
    if isinstance(x, int) and str(x) in index:
        return str(x)
    return None
