"""Interaction readers: MovieLens ratings files and generic CSV/TSV/Parquet tables.

Every reader returns a DataFrame with columns `user`, `item` and, when the source has one, `rating`
(float64), in file order: the split draws from rows in that order, so it must not change.
Bad input raises `UserError` with one line naming the file, the column and the offending value.
"""

from __future__ import annotations

import io

from pathlib import Path

import numpy as np
import pandas as pd

from multivae.errors import UserError

# Ratings file inside each extracted MovieLens folder, and its layout.
MOVIELENS_FILES: dict[str, str] = {
    "ml-100k": "u.data",
    "ml-1m": "ratings.dat",
    "ml-10m": "ratings.dat",
    "ml-20m": "ratings.csv",
    "ml-25m": "ratings.csv",
    "ml-latest-small": "ratings.csv",
}
_ML_COLUMNS = ["user", "item", "rating", "timestamp"]
_ML_DTYPES = {"user": np.int64, "item": np.int64, "rating": np.float64}

_SEP_BY_SUFFIX = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}
_PARQUET_SUFFIXES = (".parquet", ".pq")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")


def read_movielens(name: str, folder: str | Path) -> pd.DataFrame:
    """The ratings of MovieLens `name` from its extracted folder (the one holding u.data / ratings.*)."""
    if name not in MOVIELENS_FILES:
        raise ValueError(f"not a MovieLens dataset: {name!r} (known: {', '.join(MOVIELENS_FILES)})")
    path = Path(folder) / MOVIELENS_FILES[name]
    if name == "ml-100k":
        return _read_headerless(path, _read_bytes(path), "\t")
    if name in ("ml-1m", "ml-10m"):
        # `::` would force pandas' slow python engine (~10x); one byte replace keeps the C engine.
        return _read_headerless(path, _read_bytes(path).replace(b"::", b"\t"), "\t")
    return read_table(path, user_col="userId", item_col="movieId", rating_col="rating", sep=",")


def read_table(
    path: str | Path,
    user_col: str = "user",
    item_col: str = "item",
    rating_col: str | None = "rating",
    sep: str | None = None,
) -> pd.DataFrame:
    """A CSV/TSV/Parquet file with a header row. `sep=None`: from the extension (.csv ',', .tsv/.tab/.txt tab,
    .parquet/.pq Parquet; a trailing .gz/.bz2/.xz/.zst/.zip is decompressed). `rating_col=None`: implicit data."""
    path = Path(path)
    wanted = [user_col, item_col] + ([rating_col] if rating_col is not None else [])
    if len(set(wanted)) != len(wanted):
        raise UserError(f"{path}: user, item and rating columns must differ, got {', '.join(repr(c) for c in wanted)}")
    _check_file(path)
    if sep is None and _base_suffix(path) in _PARQUET_SUFFIXES:
        df = _read_parquet(path, wanted)
        pos = ("row", 1)
    else:
        df = _read_text(path, wanted, sep if sep is not None else _sep_from_suffix(path))
        pos = ("line", 2)  # the first data row is line 2, after the header
    if len(df) == 0:
        raise UserError(f"{path}: no rows (only a header)")
    df = df[wanted]   # usecols keeps the file's column order; ours is user, item, rating
    df.columns = ["user", "item", "rating"][: len(wanted)]
    _check_ids(path, df, {"user": user_col, "item": item_col}, pos)
    if rating_col is not None:
        df["rating"] = _numeric_ratings(path, df["rating"], rating_col, pos)
    return df.reset_index(drop=True)


# --- helpers ----------------------------------------------------------------------------------------

def _check_file(path: Path) -> None:
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: file is empty")


def _read_bytes(path: Path) -> bytes:
    _check_file(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _base_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _sep_from_suffix(path: Path) -> str:
    suffix = _base_suffix(path)
    if suffix not in _SEP_BY_SUFFIX:
        raise UserError(f"{path}: cannot tell the separator from the extension {suffix or '(none)'!r}; "
                        f"use .csv, .tsv, .txt or .parquet, or set sep")
    return _SEP_BY_SUFFIX[suffix]


def _read_headerless(path: Path, data: bytes, sep: str) -> pd.DataFrame:
    """MovieLens `user item rating timestamp` rows without a header: fast path with fixed dtypes, and on
    failure a slow pass that finds the bad line for the message."""
    if not data.strip():
        raise UserError(f"{path}: file is empty")
    try:
        return pd.read_csv(io.BytesIO(data), sep=sep, header=None, names=_ML_COLUMNS, usecols=[0, 1, 2],
                           dtype=_ML_DTYPES, engine="c")
    except (ValueError, pd.errors.ParserError):
        pass
    try:
        raw = pd.read_csv(io.BytesIO(data), sep=sep, header=None, dtype=str, keep_default_na=False, engine="c")
    except pd.errors.ParserError as exc:
        raise UserError(f"{path}: malformed line ({_one_line(exc)})") from None
    if raw.shape[1] < 3:
        raise UserError(f"{path}: expected user, item, rating and timestamp fields, found {raw.shape[1]} on line 1")
    raw = raw.iloc[:, :3]
    raw.columns = ["user", "item", "rating"]
    ids = {}
    for field, col in enumerate(("user", "item"), start=1):
        as_num = pd.to_numeric(raw[col], errors="coerce")
        bad = (as_num.isna() | (as_num != as_num.round())).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UserError(f"{path}: {col} id (field {field}) has a non-integer value {raw[col].iloc[i]!r} on line {i + 1}")
        ids[col] = as_num.astype(np.int64)
    df = pd.DataFrame(ids)
    df["rating"] = _numeric_ratings(path, raw["rating"], "rating (field 3)", ("line", 1))
    return df


def _read_text(path: Path, wanted: list[str], sep: str) -> pd.DataFrame:
    engine = "c" if len(sep) == 1 else "python"   # pandas needs the python engine for multi-character separators
    try:
        header = pd.read_csv(path, sep=sep, nrows=0, engine=engine)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise UserError(f"{path}: cannot read as a {sep!r}-separated table ({_one_line(exc)})") from None
    _check_columns(path, wanted, [str(c) for c in header.columns], sep)
    # Ids as pandas infers them (integers stay integers, anything else is a string); ratings checked after.
    try:
        return pd.read_csv(path, sep=sep, usecols=wanted, engine=engine)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise UserError(f"{path}: cannot read as a {sep!r}-separated table ({_one_line(exc)})") from None


def _read_parquet(path: Path, wanted: list[str]) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged or non-parquet file
        raise UserError(f"{path}: not a readable Parquet file ({_one_line(exc)})") from None
    _check_columns(path, wanted, names, None)
    try:
        return pd.read_parquet(path, columns=wanted)
    except Exception as exc:
        raise UserError(f"{path}: not a readable Parquet file ({_one_line(exc)})") from None


def _check_columns(path: Path, wanted: list[str], found: list[str], sep: str | None) -> None:
    roles = dict(zip(wanted, ("user", "item", "rating")))
    for col in wanted:
        if col not in found:
            hint = " (set rating_col to none for implicit data)" if roles[col] == "rating" else ""
            shown = ", ".join(repr(c) for c in found[:20]) + (", ..." if len(found) > 20 else "")
            sep_hint = f"; separator {sep!r}" if sep is not None and len(found) == 1 else ""
            raise UserError(f"{path}: no {roles[col]} column {col!r}{hint}; columns found: {shown}{sep_hint}")


def _check_ids(path: Path, df: pd.DataFrame, names: dict[str, str], pos: tuple[str, int]) -> None:
    for col, original in names.items():
        missing = df[col].isna().to_numpy()
        if missing.any():
            i = int(np.flatnonzero(missing)[0])
            raise UserError(f"{path}: column {original!r} has an empty value on {pos[0]} {i + pos[1]}")


def _numeric_ratings(path: Path, values: pd.Series, column: str, pos: tuple[str, int]) -> pd.Series:
    """`values` as float64; `pos` = ("line" or "row", number of the first value) for the message."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numeric = values.astype(np.float64)
    else:
        numeric = pd.to_numeric(values, errors="coerce").astype(np.float64)
    bad = numeric.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        value = values.iloc[i]
        shown = "an empty value" if pd.isna(value) or str(value).strip() == "" else f"a non-numeric value {value!r}"
        raise UserError(f"{path}: column {column!r} has {shown} on {pos[0]} {i + pos[1]}")
    return numeric


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
