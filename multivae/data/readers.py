"""Interaction readers: MovieLens ratings files and generic CSV/TSV/Parquet tables.

Every reader returns a DataFrame with columns `user`, `item` and, when the source has one, `rating`
(float64), in file order: the split draws from rows in that order, so it must not change.
Bad input raises `UserError` with one line naming the file, the column and the offending value.

Ids follow one rule (`exact_ids`), in every reader and across every file of a split: a column whose every
value is a canonical decimal integer (ASCII digits, an optional "-", no leading zero, no "+", within int64)
is read as int64; otherwise every id of that column is text, exactly as written ("012" is not "12", and
"5.0" is not "5"). Nothing is ever parsed as a float.
"""

from __future__ import annotations

import io
import lzma
import re
import zipfile
import zlib

from pathlib import Path

import numpy as np
import pandas as pd

from multivae.errors import UserError, short_repr

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

SEP_OPTION = "--sep, or sep: in the dataset section of a YAML file"   # where a user sets DatasetConfig.sep
_SEP_BY_SUFFIX = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}
_PARQUET_SUFFIXES = (".parquet", ".pq")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")
# What a damaged compressed file raises from inside pandas (gzip.BadGzipFile is an OSError).
_DECOMPRESSION_ERRORS = (EOFError, OSError, zipfile.BadZipFile, lzma.LZMAError, zlib.error)
_RAGGED = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
# A canonical int64 id: what str(int) writes. ASCII digits only (no full-width digits, no "7_5", no "+5",
# no "012", no "-0"); at most 19 digits, and the cast below refuses the 19-digit values past 2**63 - 1.
CANONICAL_INT = r"^(?:0|-?[1-9][0-9]{0,18})$"
_CANONICAL_INT = re.compile(CANONICAL_INT)
_LEADING_ZERO = re.compile(rb"(?:^|[\t\n])0[0-9]")


def _odd_field(data: bytes) -> bool:
    """Whether a field of a headerless MovieLens file may not be canonical: a sign, a space or a leading zero
    (bytes.find is memchr-fast; the regex runs only where a field starts with 0)."""
    if any(c in data for c in (b"+", b"-", b" ")):
        return True
    return (data.startswith(b"0") or b"\t0" in data or b"\n0" in data) and _LEADING_ZERO.search(data) is not None
_NON_FINITE = ("inf", "-inf", "+inf", "infinity", "-infinity", "+infinity")


def exact_ids(columns: list[pd.Series]) -> list[pd.Series]:
    """The ids of one column (user or item) of every file of a split, read by one rule: int64 when every value
    of every series is a canonical integer (an integer series already is), else text throughout (an integer
    written as text is its canonical form, so "12" still meets "12" and never "012")."""
    as_int = [_canonical_int64(c) for c in columns]
    if all(c is not None for c in as_int):
        return as_int
    return [c.astype(str) if c.dtype.kind in "iu" else c.astype(object) for c in columns]


def _canonical_int64(values: pd.Series) -> pd.Series | None:
    """`values` as int64 when every one is a canonical integer within int64, else None."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if values.dtype.kind == "i":
        return values.astype(np.int64)
    if values.dtype.kind == "u":
        return values.astype(np.int64) if len(values) == 0 or int(values.max()) < 2**63 else None
    if values.dtype.kind not in "OSU" or not all(isinstance(v, str) for v in values.head(1)):
        return None
    try:
        # pandas' "str" columns are Arrow strings already (no copy); object columns are converted
        text = pa.array(values) if isinstance(values.dtype, pd.StringDtype) else pa.array(values.to_numpy(dtype=object), type=pa.string())
        if pc.all(pc.match_substring_regex(text, CANONICAL_INT), skip_nulls=False).as_py() is not True:
            return None
        ints = pc.cast(text, pa.int64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):   # a value past int64, or not a string at all
        return None
    return pd.Series(ints, index=values.index, name=values.name)


def numeric_text_id(values: pd.Series) -> str | None:
    """The first id of a text column that reads as a number but is not a canonical integer ("5.0", "012",
    "+5"): why the column is text, for a note on stderr (a column of "sku-1" ids needs none)."""
    if values.dtype.kind in "iu":
        return None
    at = non_integer_id(values.astype(str))
    if at is not None and pd.notna(pd.to_numeric(pd.Series([at[1]]), errors="coerce").iloc[0]):
        return at[1]
    return None


def text_ids_note(column: str, value: str) -> str:
    return (f"note: {column} ids are read as text, exactly as written, because of {value!r}, which is not a plain integer: "
            f"'5' and '5.0', '12' and '012' are different {column}s")


def non_integer_id(values: pd.Series) -> tuple[int, str] | None:
    """(position, value) of the first id of a text series that is not a canonical integer, else None."""
    for i, v in enumerate(values):
        if not (isinstance(v, str) and _CANONICAL_INT.fullmatch(v) and -2**63 <= int(v) < 2**63):
            return i, v
    return None


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
    sep_option: str | None = None,
) -> pd.DataFrame:
    """A CSV/TSV/Parquet file with a header row. `sep=None`: from the extension (.csv ',', .tsv/.tab/.txt tab,
    .parquet/.pq Parquet; a trailing .gz/.bz2/.xz/.zst/.zip is decompressed). `rating_col=None`: implicit data.
    `sep_option`: how the caller's user sets the separator, for the message when the extension does not tell."""
    path = Path(path)
    wanted = [user_col, item_col] + ([rating_col] if rating_col is not None else [])
    if len(set(wanted)) != len(wanted):
        raise UserError(f"{path}: user, item and rating columns must differ, got {', '.join(repr(c) for c in wanted)}")
    _check_file(path)
    if sep is None and _base_suffix(path) in _PARQUET_SUFFIXES:
        df = _read_parquet(path, wanted)
        pos = ("row", 1)
    else:
        df = _read_text(path, wanted, sep if sep is not None else _sep_from_suffix(path, sep_option))
        pos = ("line", 2)  # the first data row is line 2, after the header
    if len(df) == 0:
        raise UserError(f"{path}: no rows (only a header)")
    df = df[wanted]   # usecols keeps the file's column order; ours is user, item, rating
    df.columns = ["user", "item", "rating"][: len(wanted)]
    _check_ids(path, df, {"user": user_col, "item": item_col}, pos)
    for col in ("user", "item"):   # integers stay integers; anything else is its text (a Parquet 5.0 is "5.0")
        values = df[col] if df[col].dtype.kind in "iu" else df[col].astype(str)
        df[col] = exact_ids([values])[0]
    if rating_col is not None:
        df["rating"] = _numeric_ratings(path, df["rating"], rating_col, pos)
    return df.reset_index(drop=True)


def ids_like(values: pd.Series, catalogue: np.ndarray, path: str | Path, column: str, first_line: int = 2) -> pd.Series:
    """Ids read from `path` in the type of the `catalogue`'s ids, so that they can be looked up in it: integers
    for an integer catalogue (a value that is not an integer is a one-line error naming its line), strings
    for a string catalogue. `first_line`: the line of the first value (2: after a header)."""
    kind = np.asarray(catalogue).dtype.kind
    if kind in "OUS":
        return values.astype(str)
    if kind not in "iuf":
        raise ValueError(f"unsupported catalogue id type {np.asarray(catalogue).dtype}")
    if kind in "iu" and values.dtype.kind in "OSU":   # ids read as text: the one rule, never a float ("5.0" is not 5)
        bad_at = non_integer_id(values.astype(str))
        if bad_at is not None:
            raise UserError(f"{path}: {column} id {short_repr(bad_at[1])} on line {bad_at[0] + first_line} is not one of the "
                            "model's ids, which are integers: a file for another catalogue?")
        return values.astype(str).astype(np.int64)
    numeric = values if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values) \
        else pd.to_numeric(values, errors="coerce")
    as_float = numeric.astype(np.float64).to_numpy()
    bad = ~np.isfinite(as_float) if kind == "f" else ~(np.isfinite(as_float) & (as_float == np.round(as_float)))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        value = values.iloc[i]
        value = value.item() if isinstance(value, np.generic) else value
        what = "numbers" if kind == "f" else "integers"
        raise UserError(f"{path}: {column} id {short_repr(value)} on line {i + first_line} is not one of the model's ids, "
                        f"which are {what}: a file for another catalogue?")
    return numeric.astype(np.float64 if kind == "f" else np.int64)


# --- helpers ----------------------------------------------------------------------------------------

def _check_file(path: Path) -> None:
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a file of interactions")
    if not path.is_file():
        raise UserError(f"{path}: not a regular file")
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


def _sep_from_suffix(path: Path, sep_option: str | None = None) -> str:
    suffix = _base_suffix(path)
    if suffix not in _SEP_BY_SUFFIX:
        how = f", or give the separator ({sep_option})" if sep_option else ""
        raise UserError(f"{path}: cannot tell the separator from the extension {suffix or '(none)'!r}; "
                        f"use .csv, .tsv, .txt or .parquet{how}")
    return _SEP_BY_SUFFIX[suffix]


def _read_headerless(path: Path, data: bytes, sep: str) -> pd.DataFrame:
    """MovieLens `user item rating timestamp` rows without a header: fast path with fixed dtypes, and on
    failure a slow pass that finds the bad line for the message."""
    if not data.strip():
        raise UserError(f"{path}: file is empty")
    try:
        # All four fields, not usecols: with usecols pandas silently drops the extra fields of a ragged line.
        df = pd.read_csv(io.BytesIO(data), sep=sep, header=None, names=_ML_COLUMNS, dtype=_ML_DTYPES, engine="c")
        # pandas reads "012", "+12" and " 12" as 12: a field that starts so takes the exact pass below
        if np.isfinite(df["rating"].to_numpy()).all() and not _odd_field(data):
            return df[["user", "item", "rating"]]
    except (ValueError, pd.errors.ParserError):
        pass
    try:
        raw = pd.read_csv(io.BytesIO(data), sep=sep, header=None, dtype=str, keep_default_na=False, engine="c")
    except pd.errors.ParserError as exc:
        raise _parser_error(path, exc, "as on line 1: user, item, rating, timestamp") from None
    if raw.shape[1] != 4:
        raise UserError(f"{path}: expected user, item, rating and timestamp fields, found {raw.shape[1]} on line 1")
    raw = raw.iloc[:, :3]
    raw.columns = ["user", "item", "rating"]
    ids = {}
    for field, col in enumerate(("user", "item"), start=1):
        bad_at = non_integer_id(raw[col])   # MovieLens ids are integers: the one rule, and text is an error here
        if bad_at is not None:
            raise UserError(f"{path}: {col} id (field {field}) has a non-integer value {short_repr(bad_at[1])} on line {bad_at[0] + 1}")
        ids[col] = raw[col].astype(np.int64)
    df = pd.DataFrame(ids)
    df["rating"] = _numeric_ratings(path, raw["rating"], "rating (field 3)", ("line", 1))
    return df


def _read_text(path: Path, wanted: list[str], sep: str) -> pd.DataFrame:
    engine = "c" if len(sep) == 1 else "python"   # pandas needs the python engine for multi-character separators
    header = _read_csv(path, sep, engine, nrows=0)
    found = [str(c) for c in header.columns]
    _check_columns(path, wanted, found, sep)
    # Ids as text (`exact_ids` decides after); ratings checked after. Every column, not usecols: with usecols
    # pandas silently drops the extra fields of a ragged line.
    # Only an empty field is missing: "NA", "null" or "None" are ids like any other text (pandas' default would
    # read them as missing); a rating spelled so is refused by `_numeric_ratings`.
    df = _read_csv(path, sep, engine, dtype={c: str for c in wanted[:2]}, keep_default_na=False, na_values={c: [""] for c in wanted})
    return df[wanted]


def _read_csv(path: Path, sep: str, engine: str, **kwargs) -> pd.DataFrame:
    """pd.read_csv with every way it fails on bad bytes turned into one line naming the file (and the line)."""
    try:
        return pd.read_csv(path, sep=sep, engine=engine, **kwargs)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: file is empty") from None
    except pd.errors.ParserError as exc:
        raise _parser_error(path, exc, "as in the header") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a text file in UTF-8 ({_one_line(exc)})") from None
    except _DECOMPRESSION_ERRORS as exc:
        suffix = path.suffix.lower()
        if suffix in _COMPRESSION_SUFFIXES:
            raise UserError(f"{path}: not a readable {suffix} file, corrupt or truncated ({_one_line(exc) or exc.__class__.__name__})") from None
        raise UserError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or _one_line(exc)})") from None
    except ValueError as exc:   # e.g. a .zip holding several files
        raise UserError(f"{path}: cannot read as a {sep!r}-separated table ({_one_line(exc)})") from None


def _parser_error(path: Path, exc: Exception, why: str) -> UserError:
    m = _RAGGED.search(str(exc))
    if m:
        expected, line, saw = m.groups()
        return UserError(f"{path}: line {line} has {saw} fields, expected {expected} ({why})")
    return UserError(f"{path}: malformed line ({_one_line(exc)})")


def _read_parquet(path: Path, wanted: list[str]) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.ParquetFile(path).schema_arrow
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged or non-parquet file
        raise UserError(f"{path}: not a readable Parquet file ({_one_line(exc)})") from None
    _check_columns(path, wanted, schema.names, None)
    for col, role in zip(wanted, ("user", "item", "rating")):
        tp = schema.field(col).type
        tp = tp.value_type if pa.types.is_dictionary(tp) else tp
        if not any(f(tp) for f in (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal, pa.types.is_string,
                                   pa.types.is_large_string)):
            # lists, structs, maps, bytes, dates: not one id or one rating per row
            what = {"user": "a user id", "item": "an item id", "rating": "a rating"}[role]
            raise UserError(f"{path}: column {col!r} has Parquet type {short_repr(str(tp))}; {what} must be a number or a string")
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
        if pd.api.types.is_float_dtype(df[col]):
            bad = ~np.isfinite(df[col].to_numpy())
        elif df[col].dtype.kind == "O":   # text: an "inf" is a float column written out, never an id
            bad = df[col].astype(str).str.strip().str.lower().isin(_NON_FINITE).to_numpy()
        else:
            continue
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UserError(f"{path}: column {original!r} has a non-finite id {float(df[col].iloc[i])!r} on {pos[0]} {i + pos[1]}")


def _numeric_ratings(path: Path, values: pd.Series, column: str, pos: tuple[str, int]) -> pd.Series:
    """`values` as float64; `pos` = ("line" or "row", number of the first value) for the message."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numeric = values.astype(np.float64)
    else:
        numeric = pd.to_numeric(values, errors="coerce").astype(np.float64)
    bad = ~np.isfinite(numeric.to_numpy())
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        value = values.iloc[i]
        value = value.item() if isinstance(value, np.generic) else value
        if pd.isna(value) or str(value).strip() == "":
            shown = "an empty value"
        elif pd.isna(numeric.iloc[i]) and not str(value).strip().lower() in ("nan", "-nan", "+nan"):
            shown = f"a non-numeric value {short_repr(value)}"
        else:
            shown = f"a non-finite value {short_repr(value)}"
        raise UserError(f"{path}: column {column!r} has {shown} on {pos[0]} {i + pos[1]}")
    return numeric


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
