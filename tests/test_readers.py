"""Readers: every format round-trips, ids keep their type, bad input raises typed errors."""
from __future__ import annotations

import pandas as pd
import pytest

from dreamrec.data.readers import read_interactions, read_item_meta, read_movielens_movies
from dreamrec.errors import (
    DataError,
    DuplicateIdError,
    EmptyDataError,
    InvalidValueError,
    MissingColumnError,
    UnknownFormatError,
)


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_csv_custom_columns_and_id_types(tmp_path):
    p = write(tmp_path / "log.csv", "who,what,when,stars\n10,007,100,4.5\n11,abc,101,3\n10,abc,99.5,\n")
    inter = read_interactions(p, "csv", user_col="who", item_col="what", time_col="when", rating_col="stars")
    df = inter.df
    assert list(df.columns) == ["user", "item", "timestamp", "rating"]
    assert df["user"].tolist() == [10, 11, 10]
    assert df["user"].dtype == "int64"
    assert df["item"].tolist() == ["007", "abc", "abc"]  # "007" is not turned into 7
    assert df["timestamp"].dtype == "float64"
    assert df["timestamp"].tolist() == [100.0, 101.0, 99.5]
    assert df["rating"].iloc[0] == 4.5 and pd.isna(df["rating"].iloc[2])
    assert inter.source == str(p) and inter.item_meta is None


def test_csv_int_ids_and_int_timestamps(tmp_path):
    p = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,5,100\n2,6,200\n")
    df = read_interactions(p, "csv").df
    assert df["user"].dtype == "int64" and df["item"].dtype == "int64" and df["timestamp"].dtype == "int64"
    assert df.values.tolist() == [[1, 5, 100], [2, 6, 200]]


def test_tsv_and_custom_sep(tmp_path):
    p = write(tmp_path / "log.tsv", "user_id\titem_id\ttimestamp\nu1\ti1\t5\nu2\ti2\t6\n")
    df = read_interactions(p, "tsv").df
    assert df["user"].tolist() == ["u1", "u2"] and df["item"].tolist() == ["i1", "i2"]
    q = write(tmp_path / "log.txt", "user_id;item_id;timestamp\n1;2;3\n")
    assert read_interactions(q, "csv", sep=";").df.values.tolist() == [[1, 2, 3]]


def test_iso_datetime_timestamps(tmp_path):
    p = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,2,1970-01-01T00:01:40\n1,3,2020-01-01 00:00:00\n")
    df = read_interactions(p, "csv").df
    assert df["timestamp"].tolist() == [100, 1577836800]


def test_parquet_keeps_types(tmp_path):
    src = pd.DataFrame(
        {
            "user_id": ["a", "b"],
            "item_id": [7, 8],
            "ts": pd.to_datetime(["2020-01-01", "2020-01-02"]),
            "r": [1.0, 2.0],
        }
    )
    p = tmp_path / "log.parquet"
    src.to_parquet(p)
    df = read_interactions(p, "parquet", time_col="ts", rating_col="r").df
    assert df["user"].tolist() == ["a", "b"]
    assert df["item"].dtype == "int64" and df["item"].tolist() == [7, 8]
    assert df["timestamp"].tolist() == [1577836800, 1577923200]
    assert df["rating"].tolist() == [1.0, 2.0]


def test_recbole_inter(tmp_path):
    p = write(
        tmp_path / "ml.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t3\t100\n2\t011\t4\t101.5\n",
    )
    df = read_interactions(p, "recbole", rating_col="rating").df
    assert df["user"].tolist() == ["1", "2"]  # token columns are strings
    assert df["item"].tolist() == ["10", "011"]
    assert df["timestamp"].tolist() == [100.0, 101.5]
    assert df["rating"].tolist() == [3.0, 4.0]


def test_movielens_with_movies_beside(tmp_path):
    write(tmp_path / "ratings.dat", "1::1::5::978300760\n1::2::3::978302109\n2::1::4::978301968\n")
    write(
        tmp_path / "movies.dat",
        "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Città (1999)::Drama\n3::No Year::Comedy\n",
        encoding="latin-1",
    )
    inter = read_interactions(tmp_path / "ratings.dat", "movielens")
    assert inter.df.values.tolist() == [[1, 1, 978300760, 5.0], [1, 2, 978302109, 3.0], [2, 1, 978301968, 4.0]]
    assert inter.df["user"].dtype == "int64"
    meta = inter.item_meta
    assert meta.index.tolist() == [1, 2, 3]
    assert meta.loc[1, "title"] == "Toy Story" and meta.loc[1, "year"] == 1995
    assert meta.loc[1, "genres"] == "Animation|Children's|Comedy"
    assert meta.loc[1, "text"] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert meta.loc[2, "title"] == "Città"
    assert pd.isna(meta.loc[3, "year"]) and meta.loc[3, "title"] == "No Year"
    # the folder works too, and an explicit movies path
    assert len(read_interactions(tmp_path, "movielens").df) == 3
    other = write(tmp_path / "other.dat", "1::A (2000)::Drama\n")
    (tmp_path / "movies.dat").unlink()
    assert read_interactions(tmp_path / "ratings.dat", "movielens").item_meta is None
    meta2 = read_interactions(tmp_path / "ratings.dat", "movielens", item_meta_path=other).item_meta
    assert meta2.loc[1, "title"] == "A"


def test_item_meta_csv(tmp_path):
    p = write(tmp_path / "items.csv", "item_id,title\n5,Five\n6,Six\n")
    meta = read_item_meta(p)
    assert meta.index.tolist() == [5, 6] and meta["title"].tolist() == ["Five", "Six"]
    log = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,5,1\n")
    assert read_interactions(log, "csv", item_meta_path=p).item_meta.loc[5, "title"] == "Five"


# ---- errors ----------------------------------------------------------------------------------
def test_unknown_format(tmp_path):
    with pytest.raises(UnknownFormatError, match="csv, tsv, parquet, recbole, movielens"):
        read_interactions(tmp_path / "x.xls", "excel")


def test_file_not_found(tmp_path):
    with pytest.raises(DataError, match="nope.csv.*not found"):
        read_interactions(tmp_path / "nope.csv", "csv")


def test_missing_column_names_found_columns(tmp_path):
    p = write(tmp_path / "log.csv", "user,item_id,timestamp\n1,2,3\n")
    with pytest.raises(MissingColumnError) as e:
        read_interactions(p, "csv")
    msg = str(e.value)
    assert "log.csv" in msg and "'user_id'" in msg and "['user', 'item_id', 'timestamp']" in msg


def test_bad_timestamp_row(tmp_path):
    p = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,2,3\n1,3,4\n1,4,soon\n")
    with pytest.raises(InvalidValueError, match=r"log\.csv, row 3: .*'soon'") as e:
        read_interactions(p, "csv")
    assert e.value.row == 3


def test_bad_datetime_row(tmp_path):
    p = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,2,2020-01-01\n1,3,not a date\n")
    with pytest.raises(InvalidValueError, match=r"log\.csv, row 2"):
        read_interactions(p, "csv")


def test_missing_timestamp_row(tmp_path):
    p = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,2,3\n1,3,\n")
    with pytest.raises(InvalidValueError, match=r"log\.csv, row 2: missing timestamp"):
        read_interactions(p, "csv")


def test_missing_ids_row(tmp_path):
    p = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,2,3\n,3,4\n")
    with pytest.raises(InvalidValueError, match=r"log\.csv, row 2: missing user"):
        read_interactions(p, "csv")
    q = write(tmp_path / "log.tsv", "user_id\titem_id\ttimestamp\n1\t2\t3\n1\t3\t4\n2\t \t5\n")
    with pytest.raises(InvalidValueError, match=r"log\.tsv, row 3: missing item"):
        read_interactions(q, "tsv")
    pq = tmp_path / "log.parquet"
    pd.DataFrame({"user_id": ["a", None], "item_id": [1, 2], "timestamp": [1, 2]}).to_parquet(pq)
    with pytest.raises(InvalidValueError, match=r"log\.parquet, row 2: missing user"):
        read_interactions(pq, "parquet")


def test_empty_files(tmp_path):
    with pytest.raises(EmptyDataError, match="empty.csv"):
        read_interactions(write(tmp_path / "empty.csv", ""), "csv")
    with pytest.raises(EmptyDataError, match="header.csv: no data rows"):
        read_interactions(write(tmp_path / "header.csv", "user_id,item_id,timestamp\n"), "csv")
    with pytest.raises(EmptyDataError, match="ratings.dat"):
        read_interactions(write(tmp_path / "ratings.dat", "\n"), "movielens")


def test_malformed_colon_line(tmp_path):
    p = write(tmp_path / "ratings.dat", "1::1::5::978300760\n1::2::3\n")
    with pytest.raises(InvalidValueError, match=r"ratings\.dat, row 2: malformed") as e:
        read_interactions(p, "movielens")
    assert e.value.row == 2
    m = write(tmp_path / "movies.dat", "1::A (1990)::Drama\n2::B::C::D\n")
    with pytest.raises(InvalidValueError, match=r"movies\.dat, row 2"):
        read_movielens_movies(m)


def test_duplicate_movie_id(tmp_path):
    m = write(tmp_path / "movies.dat", "1::A (1990)::Drama\n2::B (1991)::Drama\n1::C (1992)::Drama\n")
    with pytest.raises(DuplicateIdError, match=r"movies\.dat, row 3: duplicate item id 1"):
        read_movielens_movies(m)
    c = write(tmp_path / "items.csv", "item_id,title\nx,A\nx,B\n")
    with pytest.raises(DuplicateIdError, match=r"items\.csv, row 2"):
        read_item_meta(c)
