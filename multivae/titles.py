"""Item titles and genres for recommendations, from MovieLens metadata files or a user's own table.

    ml-100k          u.item      latin-1, `|`-separated: id|title|release date|video date|url|19 genre flags
    ml-1m, ml-10m    movies.dat  `::`-separated id::title::genres (genres `|`-joined); ml-1m is latin-1
    ml-20m/25m/latest-small  movies.csv  movieId,title,genres (UTF-8)
    anything else    a CSV/TSV/Parquet table with an item column (`item` or `movieId`), `title`, optional `genres`

Returns a DataFrame indexed by the item id (as str, so int and str ids of a model both match) with columns
`title` and, when known, `genres`.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from multivae.errors import UserError

# The metadata file of each MovieLens release, next to its ratings file.
MOVIELENS_METADATA = {"ml-100k": "u.item", "ml-1m": "movies.dat", "ml-10m": "movies.dat", "ml-20m": "movies.csv",
                      "ml-25m": "movies.csv", "ml-latest-small": "movies.csv"}
ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
                 "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def locate(dataset: dict | None, source_path: str | None) -> Path | None:
    """The metadata file of the MovieLens release a model was trained on, when it is still next to its ratings."""
    name = (dataset or {}).get("name")
    if name not in MOVIELENS_METADATA or not source_path:
        return None
    candidate = Path(source_path).parent / MOVIELENS_METADATA[name]
    return candidate if candidate.is_file() else None


def read_titles(path: str | Path) -> pd.DataFrame:
    """Titles (and genres) by item id (str) from `path`; a file that cannot be read is one UserError line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        if path.name == "u.item":
            df = _read_u_item(path)
        elif path.name == "movies.dat":
            df = _read_movies_dat(path)
        else:
            df = _read_table(path)
    except UserError:
        raise
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise UserError(f"{path}: cannot read titles from it ({' '.join(str(exc).split())[:200]})") from None
    df = df.dropna(subset=["item"]).drop_duplicates("item")
    df["item"] = df["item"].astype(str).str.strip()
    return df.set_index("item")


def _read_u_item(path: Path) -> pd.DataFrame:
    raw = pd.read_csv(path, sep="|", header=None, encoding="latin-1", dtype=str, keep_default_na=False)
    flags = raw.iloc[:, 5:5 + len(ML100K_GENRES)]
    genres = flags.apply(lambda r: "|".join(g for g, f in zip(ML100K_GENRES, r) if f == "1"), axis=1)
    return pd.DataFrame({"item": raw[0], "title": raw[1], "genres": genres})


def _read_movies_dat(path: Path) -> pd.DataFrame:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")    # ml-1m's movies.dat is latin-1
    rows = [line.split("::", 2) for line in text.splitlines() if line.strip()]
    bad = next((i for i, r in enumerate(rows) if len(r) != 3), None)
    if bad is not None:
        raise UserError(f"{path}: line {bad + 1} is not id::title::genres")
    return pd.DataFrame(rows, columns=["item", "title", "genres"])


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        df = pd.read_parquet(path)
    else:
        df = pd.read_csv(io.BytesIO(path.read_bytes()), sep="\t" if suffix in (".tsv", ".tab", ".txt") else ",", dtype=str,
                         keep_default_na=False)
    item_col = next((c for c in ("item", "movieId", "item_id", "itemId") if c in df.columns), None)
    if item_col is None or "title" not in df.columns:
        raise UserError(f"{path}: a titles table needs an item column (item or movieId) and a title column; "
                        f"columns found: {', '.join(map(str, df.columns[:10]))}")
    out = pd.DataFrame({"item": df[item_col].astype(str), "title": df["title"].astype(str)})
    if "genres" in df.columns:
        out["genres"] = df["genres"].astype(str)
    return out


__all__ = ["MOVIELENS_METADATA", "locate", "read_titles"]
