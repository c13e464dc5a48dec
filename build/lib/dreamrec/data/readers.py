"""Readers for interaction logs: CSV, TSV, Parquet, RecBole atomic ``.inter`` and MovieLens ``.dat``.

Every reader returns :class:`Interactions`: a DataFrame with columns ``user``, ``item``,
``timestamp`` (int64 or float64 seconds) and optionally ``rating``, in file order, plus optional
item metadata indexed by the original item id.

Ids keep their original values and type. For text formats (CSV, TSV, ``.dat``) an id column
whose every value is a plain integer literal (``42``, ``-3``; no leading zeros, no sign ``+``)
becomes int64; any other id column stays a string column (so ``"007"`` stays ``"007"``).
RecBole ``token`` columns are always strings. Parquet keeps the column's own type.

Timestamps may be numbers or, in CSV/TSV/Parquet, datetime strings that ``pd.to_datetime``
parses (ISO 8601); those become (float or int) seconds since the Unix epoch, UTC for naive times.

Bad input raises a typed :class:`~dreamrec.errors.DataError` naming the file and, where there is
one, the 1-based data row (header excluded; blank lines count as rows).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dreamrec.errors import (
    DataError,
    DuplicateIdError,
    EmptyDataError,
    InvalidValueError,
    MissingColumnError,
    UnknownFormatError,
)

LOG_FORMATS = ("csv", "tsv", "parquet", "recbole", "movielens")

_INT_RE = re.compile(r"^-?(0|[1-9][0-9]*)$")
_YEAR_RE = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


@dataclass
class Interactions:
    """An interaction log in file order.

    ``df`` has columns ``user``, ``item``, ``timestamp`` and optionally ``rating``; ids keep their
    original values and dtype. ``item_meta`` (or None) is indexed by original item id.
    ``source`` names where the log came from (used in error messages).
    """

    df: pd.DataFrame
    item_meta: pd.DataFrame | None
    source: str


# ---- public entry points ---------------------------------------------------------------------
def read_interactions(
    path: str | Path,
    fmt: str,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    rating_col: str | None = None,
    sep: str | None = None,
    item_meta_path: str | Path | None = None,
) -> Interactions:
    """Read an interaction log of format ``fmt`` (one of :data:`LOG_FORMATS`).

    ``user_col``/``item_col``/``time_col``/``rating_col`` name the columns for csv, tsv, parquet
    and recbole (recbole names are compared after stripping the ``:type`` suffix). ``movielens``
    reads ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``; ``path`` may also be the folder
    holding it) and ignores the column names; its ``movies.dat`` is read as item metadata when it
    sits beside ``ratings.dat`` or when ``item_meta_path`` names it. For the other formats
    ``item_meta_path`` may name a ``.dat`` movies file or a csv/tsv/parquet table with an
    ``item_col`` column.
    """
    fmt_l = str(fmt).lower()
    if fmt_l not in LOG_FORMATS:
        raise UnknownFormatError(f"unknown format {fmt!r}; known formats: {', '.join(LOG_FORMATS)}", path)
    path = Path(path)
    if fmt_l == "movielens" and path.is_dir():
        path = path / "ratings.dat"
    _check_file(path)

    if fmt_l == "movielens":
        df = _read_movielens_ratings(path)
        meta_path = Path(item_meta_path) if item_meta_path is not None else path.parent / "movies.dat"
        meta = None
        if item_meta_path is not None or meta_path.is_file():
            meta = read_movielens_movies(meta_path)
        return Interactions(df, meta, str(path))

    if fmt_l == "parquet":
        raw = _read_parquet(path)
        infer_ids = False
    elif fmt_l == "recbole":
        raw = _read_text_table(path, "\t" if sep is None else sep)
        raw.columns = [str(c).split(":", 1)[0] for c in raw.columns]
        infer_ids = False
    else:
        default_sep = "," if fmt_l == "csv" else "\t"
        raw = _read_text_table(path, default_sep if sep is None else sep)
        infer_ids = True

    df = _standardise(raw, path, user_col, item_col, time_col, rating_col, infer_ids)
    meta = read_item_meta(item_meta_path, item_col) if item_meta_path is not None else None
    return Interactions(df, meta, str(path))


def read_movielens_movies(path: str | Path) -> pd.DataFrame:
    """Read MovieLens ``movies.dat`` (``MovieID::Title::Genres``, latin-1) as item metadata.

    Returns a DataFrame indexed by ``item_id`` (the MovieID, int) with columns ``title`` (the
    title without its ``(year)``), ``year`` (nullable ``Int64``; missing when the title has no
    year), ``genres`` (the ``|``-joined genre string exactly as in the file, e.g.
    ``"Animation|Children's|Comedy"``) and ``text`` (e.g.
    ``"Toy Story (1995). Genres: Animation, Children's, Comedy"``).
    """
    path = Path(path)
    _check_file(path)
    numbers, rows = _read_colon_lines(path, 3, "MovieID::Title::Genres")
    ids = _infer_ids(pd.Series([r[0] for r in rows], dtype=object), path, "MovieID")
    titles, years, genres, texts = [], [], [], []
    for _, full_title, genre in rows:
        full_title = full_title.strip()
        m = _YEAR_RE.match(full_title)
        if m:
            titles.append(m.group(1))
            years.append(int(m.group(2)))
        else:
            titles.append(full_title)
            years.append(None)
        genre = genre.strip()
        genres.append(genre)
        names = [g for g in genre.split("|") if g]
        texts.append(f"{full_title}. Genres: {', '.join(names)}" if names else full_title)
    meta = pd.DataFrame(
        {
            "title": pd.Series(titles, dtype=str),
            "year": pd.array(years, dtype="Int64"),
            "genres": pd.Series(genres, dtype=str),
            "text": pd.Series(texts, dtype=str),
        }
    )
    meta.index = pd.Index(ids.to_numpy(), name="item_id")
    _check_unique(meta.index, numbers, path)
    return meta


def read_item_meta(path: str | Path, item_col: str = "item_id") -> pd.DataFrame:
    """Item metadata from a MovieLens ``.dat`` movies file or a csv/tsv/parquet table.

    Tables must have an ``item_col`` column (it becomes the index, ids typed as in
    :func:`read_interactions`); every other column is kept as is.
    """
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix == ".dat":
        return read_movielens_movies(path)
    if suffix == ".parquet":
        raw = _read_parquet(path)
        ids = raw[item_col] if item_col in raw.columns else None
    else:
        raw = _read_text_table(path, "\t" if suffix in (".tsv", ".tab") else ",")
        ids = _infer_ids(raw[item_col], path, item_col) if item_col in raw.columns else None
    if ids is None:
        raise MissingColumnError(f"missing column {item_col!r}; columns found: {list(raw.columns)}", path)
    missing = _missing_mask(ids)
    if missing.any():
        raise InvalidValueError(f"missing value in column {item_col!r}", path, _first_row(raw, missing))
    meta = raw.drop(columns=[item_col])
    numbers = list(raw.index)
    meta.index = pd.Index(ids.to_numpy(), name="item_id")
    _check_unique(meta.index, numbers, path)
    return meta


# ---- file-level helpers ----------------------------------------------------------------------
def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError("file not found", path)
    if not path.is_file():
        raise DataError("not a file", path)


def _read_text_table(path: Path, sep: str) -> pd.DataFrame:
    """All columns as strings; blank lines kept as rows so row numbers match the file."""
    try:
        raw = pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            encoding="utf-8-sig",
        )
    except pd.errors.EmptyDataError:
        raise EmptyDataError("file is empty", path) from None
    except pd.errors.ParserError as e:
        raise InvalidValueError(f"cannot parse file: {e}", path) from None
    except UnicodeDecodeError as e:
        raise InvalidValueError(f"file is not UTF-8 text: {e}", path) from None
    raw.index = pd.RangeIndex(1, len(raw) + 1)  # 1-based data row numbers
    blank = np.ones(len(raw), dtype=bool)
    for c in raw.columns:
        blank &= _missing_mask(raw[c]).to_numpy()
    raw = raw[~blank]
    if len(raw) == 0:
        raise EmptyDataError("no data rows", path)
    return raw


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        raw = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for bad files
        raise InvalidValueError(f"cannot read parquet file: {e}", path) from None
    raw = raw.reset_index(drop=True)
    raw.index = pd.RangeIndex(1, len(raw) + 1)
    if len(raw) == 0:
        raise EmptyDataError("no data rows", path)
    return raw


def _read_colon_lines(path: Path, n_fields: int, layout: str) -> tuple[list[int], list[list[str]]]:
    """``a::b::c`` lines (latin-1): (1-based line numbers, fields). Blank lines are skipped."""
    text = path.read_bytes().decode("latin-1")
    numbers: list[int] = []
    rows: list[list[str]] = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != n_fields:
            raise InvalidValueError(
                f"malformed line: expected {n_fields} '::'-separated fields ({layout}), found {len(parts)}",
                path,
                i,
            )
        numbers.append(i)
        rows.append(parts)
    if not rows:
        raise EmptyDataError("file is empty", path)
    return numbers, rows


def _read_movielens_ratings(path: Path) -> pd.DataFrame:
    numbers, rows = _read_colon_lines(path, 4, "UserID::MovieID::Rating::Timestamp")
    cols = list(zip(*rows))
    raw = pd.DataFrame(
        {
            "user_id": pd.Series(cols[0], dtype=object),
            "item_id": pd.Series(cols[1], dtype=object),
            "rating": pd.Series(cols[2], dtype=object),
            "timestamp": pd.Series(cols[3], dtype=object),
        }
    )
    raw.index = pd.Index(numbers)
    return _standardise(raw, path, "user_id", "item_id", "timestamp", "rating", infer_ids=True)


# ---- column-level helpers --------------------------------------------------------------------
def _standardise(
    raw: pd.DataFrame,
    path: Path,
    user_col: str,
    item_col: str,
    time_col: str,
    rating_col: str | None,
    infer_ids: bool,
) -> pd.DataFrame:
    """Pick, validate and type the columns. ``raw.index`` holds 1-based row numbers."""
    wanted = [user_col, item_col, time_col] + ([rating_col] if rating_col is not None else [])
    for c in wanted:
        if c not in raw.columns:
            raise MissingColumnError(f"missing column {c!r}; columns found: {list(map(str, raw.columns))}", path)
    out: dict[str, Any] = {}
    for name, col in (("user", user_col), ("item", item_col)):
        s = raw[col]
        missing = _missing_mask(s)
        if missing.any():
            raise InvalidValueError(f"missing {name} id in column {col!r}", path, _first_row(raw, missing))
        out[name] = _infer_ids(s, path, col) if infer_ids else _tidy_ids(s)
    out["timestamp"] = _parse_timestamps(raw[time_col], raw.index, path, time_col)
    if rating_col is not None:
        out["rating"] = _parse_ratings(raw[rating_col], raw.index, path, rating_col)
    return pd.DataFrame(
        {k: (v.reset_index(drop=True) if isinstance(v, pd.Series) else v) for k, v in out.items()}
    )


def _missing_mask(s: pd.Series) -> pd.Series:
    """NaN/None, and for text columns also empty or all-blank strings."""
    mask = s.isna()
    if s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
        is_str = s.map(lambda v: isinstance(v, str)) if s.dtype == object else ~mask
        blank = s.where(is_str & ~mask, "x").astype(str).str.strip().eq("")
        mask = mask | blank.astype(bool)
    return mask


def _first_row(raw: pd.DataFrame | pd.Series, mask: pd.Series | np.ndarray) -> int:
    return int(raw.index[np.flatnonzero(np.asarray(mask))[0]])


def _infer_ids(s: pd.Series, path: Path, col: str) -> pd.Series:
    """Text ids: int64 when every value is a plain integer literal, else stripped strings."""
    text = s.astype(str).str.strip()
    if text.str.fullmatch(_INT_RE.pattern).all():
        try:
            return text.astype("int64")
        except (OverflowError, ValueError):
            pass  # too large for int64: keep as strings
    return text


def _tidy_ids(s: pd.Series) -> pd.Series:
    """Typed (parquet/recbole) ids: floats that are all whole numbers become int64."""
    if pd.api.types.is_float_dtype(s.dtype):
        v = s.to_numpy(dtype=float)
        if np.all(v == np.round(v)):
            return s.astype("int64")
    return s


def _parse_timestamps(s: pd.Series, rows: pd.Index, path: Path, col: str) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        if s.isna().any():
            raise InvalidValueError(f"missing timestamp in column {col!r}", path, _first_row(s, s.isna()))
        return _datetimes_to_seconds(s)
    missing = _missing_mask(s)
    if missing.any():
        raise InvalidValueError(f"missing timestamp in column {col!r}", path, _first_row(s, missing))
    if pd.api.types.is_bool_dtype(s.dtype):
        raise InvalidValueError(f"timestamp column {col!r} is boolean", path)
    if pd.api.types.is_numeric_dtype(s.dtype):
        num = pd.to_numeric(s, errors="coerce")
    else:
        num = pd.to_numeric(s.astype(str).str.strip(), errors="coerce")
    bad_num = num.isna() | ~np.isfinite(num.to_numpy(dtype=float, na_value=np.nan))
    if not bad_num.any():
        return _numbers_to_array(num)
    text = s.astype(str).str.strip()
    dt = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    bad_dt = dt.isna()
    if not bad_dt.any():
        return _datetimes_to_seconds(dt)
    first_is_number = not bool(bad_num.iloc[0])
    bad = bad_num if first_is_number else bad_dt
    row = _first_row(s, bad)
    value = _plain(s.loc[row])
    kind = "a number" if first_is_number else "a number or an ISO datetime"
    raise InvalidValueError(f"timestamp {value!r} in column {col!r} is not {kind}", path, row)


def _numbers_to_array(num: pd.Series) -> np.ndarray:
    v = num.to_numpy(dtype=float)
    if pd.api.types.is_integer_dtype(num.dtype):
        return num.to_numpy(dtype=np.int64)
    if np.all(v == np.round(v)) and np.all(np.abs(v) < 2**62):
        return v.astype(np.int64)
    return v.astype(np.float64)


def _datetimes_to_seconds(dt: pd.Series) -> np.ndarray:
    if getattr(dt.dt, "tz", None) is None:
        dt = dt.dt.tz_localize("UTC")
    secs = ((dt - pd.Timestamp("1970-01-01", tz="UTC")) / pd.Timedelta(1, "s")).to_numpy(dtype=float)
    if np.all(secs == np.round(secs)):
        return secs.astype(np.int64)
    return secs


def _parse_ratings(s: pd.Series, rows: pd.Index, path: Path, col: str) -> np.ndarray:
    """Ratings are float64; an empty cell is NaN, a non-numeric one an error."""
    missing = _missing_mask(s)
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return s.to_numpy(dtype=float, na_value=np.nan)
    num = pd.to_numeric(s.astype(str).str.strip().where(~missing, "nan"), errors="coerce")
    bad = num.isna() & ~missing
    if bad.any():
        row = _first_row(s, bad)
        raise InvalidValueError(f"rating {_plain(s.loc[row])!r} in column {col!r} is not a number", path, row)
    return num.to_numpy(dtype=float)


def _check_unique(index: pd.Index, rows: list[int], path: Path) -> None:
    dup = index.duplicated()
    if dup.any():
        pos = int(np.flatnonzero(dup)[0])
        raise DuplicateIdError(f"duplicate item id {_plain(index[pos])!r}", path, int(rows[pos]))


def _plain(v: Any) -> Any:
    """NumPy scalar -> Python scalar (for readable messages)."""
    return v.item() if isinstance(v, np.generic) else v
