"""Datasets: a typed config, and `load_dataset`, which reads, splits and caches.

    split = load_dataset(DatasetConfig(name="ml-1m"))          # finds or downloads ML-1M, the paper's split
    split = load_dataset(DatasetConfig(name="file", path="clicks.parquet", user_col="uid", item_col="sku", rating_col=None))
    split = load_dataset(DatasetConfig(name="given", train="train.txt", test="test.txt", format="lightgcn"))  # fixed files

The processed split is cached under `<cache_dir>/processed/<name>-<hash16>.npz`; the hash covers the source
bytes (or the synthetic config), the resolved protocol, the reader options and `PROCESSED_FORMAT_VERSION`,
so any change to one of them builds a new split and an unchanged source is never read twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from multivae.data import download as dl
from multivae.data.given import DEFAULT_VALID_FRACTION, FORMATS, RETRAIN, load_given
from multivae.data.readers import MOVIELENS_FILES, SEP_OPTION, numeric_text_id, read_movielens, read_table, text_ids_note
from multivae.data.split import ProtocolConfig, SplitData, split_interactions
from multivae.data.synthetic import GENERATOR_VERSION, SyntheticConfig, generate
from multivae.errors import UserError, one_line
from multivae.files import atomic_write_json

# Bump when the split, the readers or the cache layout change what a cached file holds.
# 2: the .json sidecar holds a SHA-256 over the arrays and the metadata, checked on load.
# 3: ids read exactly (`readers.exact_ids`): "012" and "12" are two ids, "5.0" is text.
PROCESSED_FORMAT_VERSION = 3

DATASET_NAMES: tuple[str, ...] = ("synthetic", "ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-latest-small", "file", "given")

# Held-out users per split (validation and test each) when the protocol leaves it to the dataset.
HELDOUT_PRESETS: dict[str, int | float] = {
    "ml-20m": 10_000,         # the paper
    "ml-25m": 10_000,         # as ML-20M
    "ml-10m": 7_000,
    "ml-1m": 600,             # Microsoft Recommenders' MultiVAE notebook
    "ml-100k": 50,
    "ml-latest-small": 30,
    "synthetic": 500,
    "file": 0.1,              # a fraction of the users that pass the filters
    "given": 0.1,             # unused: given files are split already
}


@dataclass(frozen=True)
class DatasetConfig:
    name: str = "synthetic"
    path: str | None = None          # name=file: a CSV/TSV/Parquet file of interactions
    data_dir: str | None = None      # a folder with an extracted MovieLens copy (or its parent); else
                                     # $MULTIVAE_DATA_DIR, else the download cache
    user_col: str = "user"           # name=file only: column names and separator
    item_col: str = "item"
    rating_col: str | None = "rating"  # None: implicit data, every row is a positive
    sep: str | None = None           # None: from the extension
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    cache: bool = True               # read and write the processed split cache
    # name=given (multivae.data.given): fixed files, weak generalization; user_col/item_col/sep serve format csv
    train: str | None = None
    test: str | None = None
    valid: str | None = None         # None: a seeded valid_fraction of each user's training rows is held out
    format: str | None = None        # lightgcn | csv | recbole; None: from the train file's name
    valid_fraction: float = DEFAULT_VALID_FRACTION
    retrain: str = "none"            # none | train+valid: refit the chosen configuration on train + valid before the test

    def __post_init__(self) -> None:
        self._check_given()
        if self.name not in DATASET_NAMES:
            raise ValueError(f"unknown dataset name {self.name!r}; valid names: {', '.join(DATASET_NAMES)}")
        if self.name == "file" and not self.path:
            raise ValueError("name='file' needs path (a CSV, TSV or Parquet file)")
        if self.sep is not None and (not self.sep or "\n" in self.sep or "\r" in self.sep):
            raise ValueError(f"sep must be a non-empty separator without line breaks, got {self.sep!r}")
        if self.name != "file" and self.path is not None:
            raise ValueError(f"path is only used with name='file', got name={self.name!r} and path={self.path!r}")


    def _check_given(self) -> None:
        given = {"train": self.train, "test": self.test, "valid": self.valid, "format": self.format}
        if self.name != "given":
            extra = [k for k, v in given.items() if v is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} only apply to name='given', got name={self.name!r}")
            return
        if not self.train or not self.test:
            raise ValueError(f"name='given' needs train and test files, got train={self.train!r}, test={self.test!r}")
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.retrain not in RETRAIN:
            raise ValueError(f"retrain must be one of {', '.join(RETRAIN)}, got {self.retrain!r}")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}")


def resolve_protocol(cfg: DatasetConfig) -> ProtocolConfig:
    """The protocol with `heldout_users=None` replaced by the dataset's preset."""
    if cfg.protocol.heldout_users is not None:
        return cfg.protocol
    return dataclasses.replace(cfg.protocol, heldout_users=HELDOUT_PRESETS[cfg.name])


def load_dataset(cfg: DatasetConfig, cache_dir: str | Path | None = None, verbose: bool = True,
                 base_url: str | None = None) -> SplitData:
    """The split of `cfg`, from the processed cache when it is there, else built (and cached).

    `cache_dir`: downloads and processed splits (default `$MULTIVAE_DATA_DIR`, else ~/.cache/multivae).
    `base_url`: a mirror of the GroupLens archives (default `$MULTIVAE_BASE_URL`, else GroupLens).
    """
    if cfg.name == "given":
        return load_given(cfg, verbose=verbose)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else dl.default_cache_dir()
    if cache.exists() and not cache.is_dir():
        raise UserError(f"cache folder {cache}: is a file, not a folder")
    protocol = resolve_protocol(cfg)
    source = _locate_source(cfg, cache, base_url, verbose)
    key_material: dict[str, Any] = {
        "format": PROCESSED_FORMAT_VERSION,
        "name": cfg.name,
        "protocol": dataclasses.asdict(protocol),
    }
    source_sha256 = None if source is None else _source_sha256(source, cache)
    if source is None:
        key_material["synthetic"] = {**dataclasses.asdict(cfg.synthetic), "generator": GENERATOR_VERSION}
    else:
        key_material["source_sha256"] = source_sha256
    if cfg.name == "file":
        key_material["reader"] = {"user_col": cfg.user_col, "item_col": cfg.item_col, "rating_col": cfg.rating_col, "sep": cfg.sep}
    digest = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()[:16]
    cache_path = cache / "processed" / f"{cfg.name}-{digest}.npz"

    split = _load_cached(cache_path) if cfg.cache else None
    if split is not None:
        cached = True
        if verbose:
            print(f"loaded the processed split from {cache_path}", file=sys.stderr)
    else:
        df = _read_source(cfg, source)
        if verbose:
            for col in ("user", "item"):
                if (value := numeric_text_id(df[col])) is not None:
                    print(f"{source}: {text_ids_note(col, value)}", file=sys.stderr)
        split = split_interactions(df, protocol, source=str(source) if source is not None else "synthetic")
        split.info.update({"dataset": cfg.name, "source_sha256": source_sha256, "cache_key": digest})
        cached = cfg.cache and _save(split, cache_path, verbose)
    # Where this split is now (the cached info may name another copy of the same bytes) and can be loaded again.
    split.info["source_path"] = str(source) if source is not None else None
    split.info["cache_path"] = str(cache_path) if cached else None
    if verbose:
        _report(cfg.name, split)
    return split


# --- steps -----------------------------------------------------------------------------------------

def _locate_source(cfg: DatasetConfig, cache: Path, base_url: str | None, verbose: bool) -> Path | None:
    """The file to read: None for synthetic data; the given file; or the MovieLens ratings file, found in
    `cfg.data_dir`, else `$MULTIVAE_DATA_DIR`, else the cache (downloading into it when absent)."""
    if cfg.name == "synthetic":
        return None
    if cfg.name == "file":
        path = Path(cfg.path).expanduser()
        if path.is_dir():
            raise UserError(f"{path}: is a folder, not a file of interactions")
        if not path.is_file():
            raise UserError(f"{path}: file not found")
        return path.resolve()
    ratings = MOVIELENS_FILES[cfg.name]
    if cfg.data_dir is not None:
        folder = dl.find_local(cfg.name, dl.existing_dir(cfg.data_dir, "data folder (data_dir, --data-dir)"))
        if folder is None:
            below = " or ".join(f"{d}/" for d in dict.fromkeys((cfg.name, dl.ARCHIVES[cfg.name].folder)))
            raise UserError(f"{cfg.data_dir}: no {cfg.name} copy there (looked for {ratings} in it and in {below} below it)")
        return (folder / ratings).resolve()
    env = dl.env_data_dir()
    for place in ([env] if env else []) + [cache]:
        folder = dl.find_local(cfg.name, place)
        if folder is not None:
            return (folder / ratings).resolve()
    return (dl.download(cfg.name, cache, base_url=base_url, verbose=verbose) / ratings).resolve()


def _read_source(cfg: DatasetConfig, source: Path | None) -> pd.DataFrame:
    if source is None:
        return generate(cfg.synthetic)
    if cfg.name == "file":
        return read_table(source, user_col=cfg.user_col, item_col=cfg.item_col, rating_col=cfg.rating_col, sep=cfg.sep,
                          sep_option=SEP_OPTION)
    return read_movielens(cfg.name, source.parent)


def _source_sha256(path: Path, cache: Path) -> str:
    """SHA-256 of the file's bytes, remembered per (path, size, mtime) in `<cache>/processed/fingerprints.json`
    so that a cache hit costs one stat() and not a read of a multi-GB file."""
    st = path.stat()
    index_path = cache / "processed" / "fingerprints.json"
    try:
        index: dict[str, dict] = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}  # absent or damaged: rebuilt as we go
    known = index.get(str(path)) if isinstance(index, dict) else None
    if isinstance(known, dict) and known.get("size") == st.st_size and known.get("mtime_ns") == st.st_mtime_ns:
        return str(known["sha256"])
    digest = file_sha256(path)
    index = index if isinstance(index, dict) else {}
    index[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    try:
        atomic_write_json(index_path, index)
    except OSError:
        pass  # a read-only cache only costs re-hashing next time
    return digest


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return h.hexdigest()


def _load_cached(path: Path) -> SplitData | None:
    if not path.exists():
        return None
    try:
        return SplitData.load(path)
    except UserError as exc:
        # A damaged cache is never fatal: say so, and build the split again (which overwrites it).
        print(f"warning: ignoring the damaged processed cache, rebuilding it: {one_line(exc)}", file=sys.stderr)
        return None


def _save(split: SplitData, path: Path, verbose: bool) -> bool:
    try:
        split.save(path)
    except OSError as exc:
        print(f"warning: could not write the processed cache {path} ({exc.strerror or exc}); continuing without it", file=sys.stderr)
        return False
    if verbose:
        print(f"cached the processed split in {path}", file=sys.stderr)
    return True


def _report(name: str, split: SplitData) -> None:
    dropped = split.info.get("duplicate_rows_dropped")
    if dropped:
        print(f"warning: {name}: {dropped:,} duplicated (user, item) rows were dropped (the first of each kept)", file=sys.stderr)
    print(f"{name}: {split.format_stats()}", file=sys.stderr)


__all__ = [
    "DATASET_NAMES", "HELDOUT_PRESETS", "PROCESSED_FORMAT_VERSION", "DatasetConfig", "ProtocolConfig", "SplitData",
    "SyntheticConfig", "load_dataset", "resolve_protocol",
]
