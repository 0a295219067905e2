"""Readers: every MovieLens layout and the generic table reader on tiny generated files, and each bad input."""

from __future__ import annotations

import re

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from multivae.data.readers import MOVIELENS_FILES, read_movielens, read_table
from multivae.errors import UserError

from .conftest import fake_ratings, ml100k_bytes

ROWS = fake_ratings(n_users=20, n_items=30, seed=3)


def _expected(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"user": df["user"].astype(np.int64), "item": df["item"].astype(np.int64),
                         "rating": df["rating"].astype(np.float64)})


def _write_movielens(folder: Path, name: str, df: pd.DataFrame) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MOVIELENS_FILES[name]
    if name == "ml-100k":
        path.write_bytes(ml100k_bytes(df))
    elif name in ("ml-1m", "ml-10m"):
        path.write_text("".join(f"{u}::{i}::{r:g}::{t}\n" for u, i, r, t in df[["user", "item", "rating", "timestamp"]].itertuples(index=False)))
    else:
        df.rename(columns={"user": "userId", "item": "movieId"})[["userId", "movieId", "rating", "timestamp"]].to_csv(path, index=False)


@pytest.mark.parametrize("name", list(MOVIELENS_FILES))
def test_movielens_layouts_read_in_file_order(tmp_path, name):
    df = ROWS.copy()
    if name in ("ml-10m", "ml-20m", "ml-25m", "ml-latest-small"):
        df["rating"] = df["rating"] - 0.5 * (df.index % 2)   # half stars
    _write_movielens(tmp_path / name, name, df)
    got = read_movielens(name, tmp_path / name)
    pd.testing.assert_frame_equal(got, _expected(df))


def test_movielens_missing_file_names_it(tmp_path):
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "ratings.dat")) + ": file not found"):
        read_movielens("ml-1m", tmp_path)


@pytest.mark.parametrize("content, msg", [
    pytest.param(b"", "file is empty", id="empty"),
    pytest.param(b"1::2::5::978300760\n1::x7::4::978300761\n", r"item id \(field 2\) has a non-integer value 'x7' on line 2",
                 id="bad-item"),
    pytest.param(b"1::2::5::978300760\n1::3::good::978300761\n",
                 r"column 'rating \(field 3\)' has a non-numeric value 'good' on line 2", id="bad-rating"),
    pytest.param(b"1,2,5,978300760\n", "expected user, item, rating and timestamp fields, found 1", id="wrong-separator"),
])
def test_movielens_bad_lines(tmp_path, content, msg):
    (tmp_path / "ratings.dat").write_bytes(content)
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "ratings.dat")) + ": " + msg):
        read_movielens("ml-1m", tmp_path)


# --- the generic reader -------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t"), (".txt", "\t"), (".csv.gz", ",")])
def test_generic_text_by_extension(tmp_path, suffix, sep):
    path = tmp_path / f"clicks{suffix}"
    ROWS.rename(columns={"user": "uid", "item": "sku", "rating": "score"}).to_csv(path, sep=sep, index=False)
    got = read_table(path, user_col="uid", item_col="sku", rating_col="score")
    pd.testing.assert_frame_equal(got, _expected(ROWS))


def test_generic_parquet_with_string_ids_and_no_rating(tmp_path):
    df = pd.DataFrame({"who": ["alice", "bob", "alice"], "what": ["x1", "x2", "x3"], "other": [1, 2, 3]})
    df.to_parquet(tmp_path / "d.parquet")
    got = read_table(tmp_path / "d.parquet", user_col="who", item_col="what", rating_col=None)
    assert list(got.columns) == ["user", "item"]
    assert got["user"].tolist() == ["alice", "bob", "alice"] and got["item"].tolist() == ["x1", "x2", "x3"]


def test_generic_columns_come_back_in_our_order(tmp_path):
    (tmp_path / "d.csv").write_text("stars,movie,extra,person\n4,m1,x,p1\n2,m2,y,p2\n")
    got = read_table(tmp_path / "d.csv", user_col="person", item_col="movie", rating_col="stars")
    assert got.to_dict("list") == {"user": ["p1", "p2"], "item": ["m1", "m2"], "rating": [4.0, 2.0]}


def test_generic_explicit_separator(tmp_path):
    path = tmp_path / "data.dat"
    path.write_text("user;item;rating\n1;2;4.5\n3;4;1\n")
    got = read_table(path, sep=";")
    assert got.to_dict("list") == {"user": [1, 3], "item": [2, 4], "rating": [4.5, 1.0]}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BAD_TEXT = [
    pytest.param("missing.csv", None, {}, r"missing\.csv: file not found", id="missing"),
    pytest.param("empty.csv", "", {}, r"empty\.csv: file is empty", id="empty"),
    pytest.param("blank.csv", "\n\n", {}, r"blank\.csv: file is empty", id="blank-lines"),
    pytest.param("header.csv", "user,item,rating\n", {}, r"header\.csv: no rows \(only a header\)", id="header-only"),
    pytest.param("nouser.csv", "uid,item,rating\n1,2,3\n", {},
                 r"nouser\.csv: no user column 'user'; columns found: 'uid', 'item', 'rating'", id="no-user-column"),
    pytest.param("noitem.csv", "user,sku,rating\n1,2,3\n", {"item_col": "movie"},
                 r"noitem\.csv: no item column 'movie'; columns found: 'user', 'sku', 'rating'", id="no-item-column"),
    pytest.param("norating.csv", "user,item\n1,2\n", {},
                 r"norating\.csv: no rating column 'rating' \(set rating_col to none for implicit data\); columns found: 'user', 'item'",
                 id="no-rating-column"),
    pytest.param("badrating.csv", "user,item,rating\n1,2,4\n1,3,five\n1,4,3\n", {},
                 r"badrating\.csv: column 'rating' has a non-numeric value 'five' on line 3", id="non-numeric-rating"),
    pytest.param("emptyrating.tsv", "user\titem\trating\n1\t2\t4\n1\t3\t\n", {},
                 r"emptyrating\.tsv: column 'rating' has an empty value on line 3", id="empty-rating"),
    pytest.param("emptyuser.csv", "user,item,rating\n1,2,4\n,3,4\n", {},
                 r"emptyuser\.csv: column 'user' has an empty value on line 3", id="empty-user"),
    pytest.param("wrongsep.csv", "user\titem\trating\n1\t2\t3\n", {},
                 r"wrongsep\.csv: no user column 'user'; columns found: 'user\\titem\\trating'; separator ','", id="wrong-separator"),
    pytest.param("data.json", "{}", {}, r"data\.json: cannot tell the separator from the extension '\.json'", id="unknown-extension"),
    pytest.param("same.csv", "user,item\n1,2\n", {"rating_col": "user"}, r"same\.csv: user, item and rating columns must differ",
                 id="same-columns"),
]


@pytest.mark.parametrize("name, content, kw, msg", BAD_TEXT)
def test_generic_bad_input(tmp_path, name, content, kw, msg):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=msg):
        read_table(path, **kw)


def test_parquet_bad_rating_reports_the_row(tmp_path):
    pd.DataFrame({"user": [1, 2], "item": [3, 4], "rating": ["4", "n/a"]}).to_parquet(tmp_path / "r.parquet")
    with pytest.raises(UserError, match=r"r\.parquet: column 'rating' has a non-numeric value 'n/a' on row 2"):
        read_table(tmp_path / "r.parquet")


def test_parquet_missing_column_lists_columns(tmp_path):
    pd.DataFrame({"user": [1], "movie": [3]}).to_parquet(tmp_path / "c.parquet")
    with pytest.raises(UserError, match=r"c\.parquet: no item column 'item'; columns found: 'user', 'movie'"):
        read_table(tmp_path / "c.parquet", rating_col=None)


@pytest.mark.parametrize("content", [b"PAR1 this is not parquet", b"user,item\n1,2\n"])
def test_unreadable_parquet(tmp_path, content):
    (tmp_path / "bad.parquet").write_bytes(content)
    with pytest.raises(UserError, match=r"bad\.parquet: not a readable Parquet file"):
        read_table(tmp_path / "bad.parquet")


def test_parquet_header_only(tmp_path):
    pd.DataFrame({"user": pd.Series([], dtype="int64"), "item": pd.Series([], dtype="int64")}).to_parquet(tmp_path / "e.parquet")
    with pytest.raises(UserError, match=r"e\.parquet: no rows"):
        read_table(tmp_path / "e.parquet", rating_col=None)


def test_a_directory_is_not_a_file(tmp_path):
    with pytest.raises(UserError, match="not a file"):
        read_table(tmp_path)


# --- issue 27: one rule for ids -----------------------------------------------------------------------

@pytest.mark.parametrize("ids, expected", [
    pytest.param(["12", "7", "-3", "0"], [12, 7, -3, 0], id="canonical-int64-in-file-order"),
    pytest.param(["12", "012"], ["12", "012"], id="leading-zero-kept-apart"),      # was one id, 12
    pytest.param(["5", "5.0"], ["5", "5.0"], id="a-float-is-text-not-5"),
    pytest.param(["5", "+5"], ["5", "+5"], id="plus-sign"),
    pytest.param(["1", "\uff11\uff12"], ["1", "１２"], id="full-width-digits"),
    pytest.param(["1", "7_5"], ["1", "7_5"], id="underscore"),
    pytest.param(["1", "9223372036854775808"], ["1", "9223372036854775808"], id="past-int64"),
    pytest.param(["1", "9223372036854775807"], [1, 9223372036854775807], id="int64-max"),
])
def test_generic_ids_are_int64_only_when_every_one_is_a_canonical_integer(tmp_path, ids, expected):
    path = tmp_path / "d.csv"
    path.write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in zip(ids, range(len(ids)))), encoding="utf-8")
    got = read_table(path, rating_col=None)
    assert got["user"].tolist() == expected
    assert got["user"].dtype == (np.int64 if isinstance(expected[0], int) else object)
    assert got["item"].dtype == np.int64


def test_parquet_float_ids_are_their_text_never_a_float(tmp_path):
    pd.DataFrame({"user": [1.0, 2.5], "item": [3, 4]}).to_parquet(tmp_path / "f.parquet")
    assert read_table(tmp_path / "f.parquet", rating_col=None)["user"].tolist() == ["1.0", "2.5"]


def test_movielens_ids_with_a_leading_zero_are_an_error_not_another_id(tmp_path):
    (tmp_path / "ratings.dat").write_bytes(b"1::2::5::978300760\n1::012::4::978300761\n")
    with pytest.raises(UserError, match=r"item id \(field 2\) has a non-integer value '012' on line 2"):
        read_movielens("ml-1m", tmp_path)


def test_the_separator_message_names_an_option_that_exists(tmp_path):
    from multivae.data import DatasetConfig, load_dataset
    from multivae.train_cli import _parser, dataset_config_from_args, explicit_flags

    path = _write(tmp_path / "d.dat", "user;item\n" + "".join(f"{u};{i}\n" for u in range(1, 9) for i in range(u, u + 6)))
    with pytest.raises(UserError, match=r"use \.csv, \.tsv, \.txt or \.parquet, or give the separator \(--sep, or sep: in the dataset "
                                        r"section of a YAML file\)$") as err:
        load_dataset(DatasetConfig(name="file", path=str(path), rating_col=None), cache_dir=tmp_path / "c", verbose=False)
    assert "set sep" not in str(err.value)
    argv = ["--data", str(path), "--sep", ";", "--rating-col", "none"]
    cfg = dataset_config_from_args(_parser().parse_args(argv), explicit_flags(argv))
    assert cfg.sep == ";" and len(load_dataset(cfg, cache_dir=tmp_path / "c", verbose=False).item_ids) == 13


def test_text_ids_that_look_like_numbers_are_named_on_stderr(tmp_path, capsys):
    from multivae.data import DatasetConfig, ProtocolConfig, load_dataset

    rows = "".join(f"{u},{i}\n" for u in range(1, 41) for i in range(1, 9)) + "41,012\n41,12\n41,3\n41,4\n41,5\n"
    path = _write(tmp_path / "d.csv", "user,item\n" + rows)
    split = load_dataset(DatasetConfig(name="file", path=str(path), rating_col=None, protocol=ProtocolConfig(heldout_users=5)),
                         cache_dir=tmp_path / "c")
    assert {"012", "12"} <= set(split.item_ids.tolist())
    assert (f"{path}: note: item ids are read as text, exactly as written, because of '012', which is not a plain integer"
            in capsys.readouterr().err)


def test_text_ids_that_pandas_would_take_for_missing_are_ids(tmp_path):
    path = _write(tmp_path / "d.csv", "user,item,rating\nNA,null,4\nNone,NaN,5\nu,,3\n")
    with pytest.raises(UserError, match=r"d\.csv: column 'item' has an empty value on line 4$"):   # only an empty field is missing
        read_table(path)
    path.write_text("user,item,rating\nNA,null,4\nNone,n/a,5\n")
    assert read_table(path).to_dict("list") == {"user": ["NA", "None"], "item": ["null", "n/a"], "rating": [4.0, 5.0]}
