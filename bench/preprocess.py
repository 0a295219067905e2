"""Preprocessing: read + filter + split + CSR, time and peak memory, cold and cached, against the reference's pandas.

    python -m bench.preprocess                  # ML-1M (if ../shared/datasets has it) and a 20M-row synthetic CSV
    python -m bench.preprocess --rows 5000000   # a smaller synthetic file
    python -m bench.preprocess --tiny           # seconds; what the smoke test runs (no MovieLens)

Every measurement runs in a fresh Python process, which reports its wall time, CPU time and peak resident
memory (VmHWM of /proc/self/status: it sees numpy's and pandas' C allocations, which tracemalloc does not;
`ru_maxrss` would include the parent's memory, which Linux carries into a child across fork and exec).
  ours cold    `load_dataset` with an empty cache folder: hash the source, read, filter, split, CSR, write the cache.
  ours cached  the second `load_dataset` call on the same cache folder: one stat() of the source and the .npz load.
  naive        the reference notebook's pipeline (dawenl/vae_cf, ML-20M), written here: read_csv, groupby
               counts + isin filters, permutation, `numerize` with Python `map` over dicts, the per-user
               split loop over held-out users with pd.concat, the notebook's CSV round trip of the processed
               splits, then CSR matrices. It must produce the same matrices as ours (checked).
  imports      a process that only imports pandas, scipy and multivae.data: the memory every case starts from.
The OS page cache is warm for every case (the source file was just written or read); "cold" means no
processed cache, not a cold disk.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import sys
import tempfile
import time

from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine_info, print_table, worker_result, write_result
from bench.common import run_worker as common_run_worker

DATASETS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
ML20M_LIKE = {"users": 138_000, "items": 27_000, "rows": 20_000_000}


# --- the synthetic file ------------------------------------------------------------------------------

def write_synthetic_csv(path: Path, n_rows: int, n_users: int, n_items: int, seed: int = 0) -> dict[str, Any]:
    """`user,item,rating` rows shaped like ML-20M: log-normal activity (at least 20 rows per user, as
    MovieLens), Zipf item popularity, MovieLens' half-star ratings (about half are > 3.5), sorted by user."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    mean = n_rows / n_users
    sigma = 1.0
    activity = np.maximum(20, np.rint(rng.lognormal(np.log(mean) - sigma ** 2 / 2, sigma, n_users))).astype(np.int64)
    activity = np.minimum(activity, n_items // 2)
    activity = np.maximum(1, np.rint(activity * (n_rows / activity.sum()))).astype(np.int64)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    cdf = np.cumsum(pop) / pop.sum()
    item_of_rank = rng.permutation(n_items) + 1
    for _ in range(3):   # draws with replacement lose their repeats: draw more until the count is right
        user = np.repeat(np.arange(1, n_users + 1, dtype=np.int64), activity)
        item = item_of_rank[np.minimum(np.searchsorted(cdf, rng.random(len(user))), n_items - 1)]
        key = np.sort(user * (n_items + 1) + item)         # distinct (user, item), sorted by user then item
        key = key[np.r_[True, key[1:] != key[:-1]]]        # (np.unique hashes, several times slower here)
        if len(key) >= n_rows:
            break
        activity = np.minimum(n_items // 2, np.ceil(activity * n_rows / len(key))).astype(np.int64)
    if len(key) > n_rows:                                  # drop a random surplus
        key = np.sort(rng.choice(key, n_rows, replace=False))
    user, item = key // (n_items + 1), key % (n_items + 1)
    inner = rng.random(len(user))                          # shuffle items inside each user
    order = np.lexsort((inner, user))
    user, item = user[order], item[order]
    stars = np.arange(1, 11) / 2
    probs = np.array([0.012, 0.034, 0.017, 0.071, 0.044, 0.198, 0.111, 0.27, 0.078, 0.165])
    rating = rng.choice(stars, size=len(user), p=probs / probs.sum())
    table = pa.table({"user": user, "item": item, "rating": rating})
    pacsv.write_csv(table, path, pacsv.WriteOptions(quoting_style="none"))
    return {"rows": int(len(user)), "users": int(np.count_nonzero(np.diff(user)) + 1), "items": int(np.count_nonzero(np.bincount(item))),
            "bytes": path.stat().st_size, "positive_share": float((rating > 3.5).mean())}


# --- workers (one fresh process per measurement) -----------------------------------------------------

def _digest(mats: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, m in mats.items():
        m = m.tocsr()
        m.sort_indices()
        h = hashlib.sha256(np.asarray(m.indptr, dtype=np.int64).tobytes() + np.asarray(m.indices, dtype=np.int64).tobytes()).hexdigest()[:16]
        out[name] = {"shape": list(m.shape), "nnz": int(m.nnz), "sha": h}
    return out


def _ours(spec: dict[str, Any]) -> dict[str, Any]:
    from multivae.data import DatasetConfig, ProtocolConfig, load_dataset

    protocol = ProtocolConfig(heldout_users=spec["heldout"])
    if spec["dataset"] == "ml-1m":
        cfg = DatasetConfig(name="ml-1m", data_dir=spec["path"], protocol=protocol)
    else:
        cfg = DatasetConfig(name="file", path=spec["path"], user_col="user", item_col="item", rating_col="rating", protocol=protocol)
    processed = Path(spec["cache_dir"]) / "processed"
    had_cache = processed.exists() and any(processed.glob("*.npz"))
    t0, c0 = time.perf_counter(), time.process_time()
    split = load_dataset(cfg, cache_dir=spec["cache_dir"], verbose=False)
    t1, c1 = time.perf_counter(), time.process_time()
    mats = {n: getattr(split, n) for n in ("train", "val_fold_in", "val_target", "test_fold_in", "test_target")}
    return {"wall_s": t1 - t0, "cpu_s": c1 - c0, "cache_hit": had_cache, "digest": _digest(mats)}


def _ours_phases(spec: dict[str, Any]) -> dict[str, Any]:
    """The cold path's steps timed one by one (same calls as load_dataset makes)."""
    from multivae.data import DatasetConfig, ProtocolConfig, _read_source, file_sha256
    from multivae.data.split import split_interactions

    protocol = ProtocolConfig(heldout_users=spec["heldout"])
    if spec["dataset"] == "ml-1m":
        cfg = DatasetConfig(name="ml-1m", data_dir=spec["path"], protocol=protocol)
        source = Path(spec["path"]) / "ml-1m" / "ratings.dat"
    else:
        cfg = DatasetConfig(name="file", path=spec["path"], user_col="user", item_col="item", rating_col="rating", protocol=protocol)
        source = Path(spec["path"])
    t = [time.perf_counter()]
    file_sha256(source)
    t.append(time.perf_counter())
    df = _read_source(cfg, source)
    t.append(time.perf_counter())
    split = split_interactions(df, protocol)
    t.append(time.perf_counter())
    split.save(Path(spec["cache_dir"]) / "phases.npz")
    t.append(time.perf_counter())
    return {"phases_s": dict(zip(("sha256", "read", "filter+split+csr", "write cache"), np.diff(t).tolist()))}


def _naive(spec: dict[str, Any]) -> dict[str, Any]:
    """The reference notebook (dawenl/vae_cf, ML-20M preprocessing), step by step, on `spec['path']`."""
    import pandas as pd
    from scipy import sparse

    times: dict[str, float] = {}
    t = time.perf_counter()
    c0 = time.process_time()
    if spec["dataset"] == "ml-1m":
        raw_data = pd.read_csv(Path(spec["path"]) / "ml-1m" / "ratings.dat", sep="::", engine="python", header=None,
                               names=["userId", "movieId", "rating", "timestamp"])
    else:
        raw_data = pd.read_csv(spec["path"], header=0).rename(columns={"user": "userId", "item": "movieId"})
    fraction = spec.get("fraction", 1.0)
    if fraction < 1.0:   # a subsample of users, for when the whole file takes too long
        keep = raw_data["userId"].drop_duplicates().sample(frac=fraction, random_state=0)
        raw_data = raw_data[raw_data["userId"].isin(keep)]
    times["read"] = time.perf_counter() - t
    t = time.perf_counter()
    raw_data = raw_data[raw_data["rating"] > 3.5]

    def get_count(tp, id):
        playcount_groupbyid = tp[[id]].groupby(id, as_index=False)
        return playcount_groupbyid.size()

    def filter_triplets(tp, min_uc=5, min_sc=0):
        if min_sc > 0:
            itemcount = get_count(tp, "movieId")
            tp = tp[tp["movieId"].isin(itemcount["movieId"][itemcount["size"] >= min_sc])]
        if min_uc > 0:
            usercount = get_count(tp, "userId")
            tp = tp[tp["userId"].isin(usercount["userId"][usercount["size"] >= min_uc])]
        usercount, itemcount = get_count(tp, "userId"), get_count(tp, "movieId")
        return tp, usercount, itemcount

    raw_data, user_activity, item_popularity = filter_triplets(raw_data)
    unique_uid = pd.Index(user_activity["userId"])
    np.random.seed(98765)
    idx_perm = np.random.permutation(unique_uid.size)
    unique_uid = unique_uid[idx_perm]
    n_users = unique_uid.size
    n_heldout_users = int(spec["heldout"] if fraction >= 1.0 else round(spec["heldout"] * fraction))
    tr_users = unique_uid[:(n_users - n_heldout_users * 2)]
    vd_users = unique_uid[(n_users - n_heldout_users * 2): (n_users - n_heldout_users)]
    te_users = unique_uid[(n_users - n_heldout_users):]
    train_plays = raw_data.loc[raw_data["userId"].isin(tr_users)]
    unique_sid = pd.unique(train_plays["movieId"])
    show2id = dict((sid, i) for (i, sid) in enumerate(unique_sid))
    profile2id = dict((pid, i) for (i, pid) in enumerate(unique_uid))
    times["filter"] = time.perf_counter() - t
    t = time.perf_counter()

    def split_train_test_proportion(data, test_prop=0.2):
        data_grouped_by_user = data.groupby("userId")
        tr_list, te_list = list(), list()
        np.random.seed(98765)
        for _, group in data_grouped_by_user:
            n_items_u = len(group)
            if n_items_u >= 5:
                idx = np.zeros(n_items_u, dtype="bool")
                idx[np.random.choice(n_items_u, size=int(test_prop * n_items_u), replace=False).astype("int64")] = True
                tr_list.append(group[np.logical_not(idx)])
                te_list.append(group[idx])
            else:
                tr_list.append(group)
        return pd.concat(tr_list), pd.concat(te_list)

    vad_plays = raw_data.loc[raw_data["userId"].isin(vd_users)]
    vad_plays = vad_plays.loc[vad_plays["movieId"].isin(unique_sid)]
    vad_plays_tr, vad_plays_te = split_train_test_proportion(vad_plays)
    test_plays = raw_data.loc[raw_data["userId"].isin(te_users)]
    test_plays = test_plays.loc[test_plays["movieId"].isin(unique_sid)]
    test_plays_tr, test_plays_te = split_train_test_proportion(test_plays)
    times["split loop"] = time.perf_counter() - t
    t = time.perf_counter()

    def numerize(tp):
        uid = map(lambda x: profile2id[x], tp["userId"])
        sid = map(lambda x: show2id[x], tp["movieId"])
        return pd.DataFrame(data={"uid": list(uid), "sid": list(sid)}, columns=["uid", "sid"])

    frames = {"train": numerize(train_plays), "validation_tr": numerize(vad_plays_tr), "validation_te": numerize(vad_plays_te),
              "test_tr": numerize(test_plays_tr), "test_te": numerize(test_plays_te)}
    times["numerize"] = time.perf_counter() - t
    t = time.perf_counter()
    out_dir = Path(spec["cache_dir"]) / "pro_sg"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_csv(out_dir / f"{name}.csv", index=False)
    n_items = len(unique_sid)

    def load_train_data(csv_file):
        tp = pd.read_csv(csv_file)
        n_users = tp["uid"].max() + 1
        rows, cols = tp["uid"], tp["sid"]
        return sparse.csr_matrix((np.ones_like(rows), (rows, cols)), dtype="float64", shape=(n_users, n_items))

    def load_tr_te_data(csv_file_tr, csv_file_te):
        tp_tr, tp_te = pd.read_csv(csv_file_tr), pd.read_csv(csv_file_te)
        start_idx = min(tp_tr["uid"].min(), tp_te["uid"].min())
        end_idx = max(tp_tr["uid"].max(), tp_te["uid"].max())
        rows_tr, cols_tr = tp_tr["uid"] - start_idx, tp_tr["sid"]
        rows_te, cols_te = tp_te["uid"] - start_idx, tp_te["sid"]
        shape = (end_idx - start_idx + 1, n_items)
        data_tr = sparse.csr_matrix((np.ones_like(rows_tr), (rows_tr, cols_tr)), dtype="float64", shape=shape)
        data_te = sparse.csr_matrix((np.ones_like(rows_te), (rows_te, cols_te)), dtype="float64", shape=shape)
        return data_tr, data_te

    train = load_train_data(out_dir / "train.csv")
    vad_tr, vad_te = load_tr_te_data(out_dir / "validation_tr.csv", out_dir / "validation_te.csv")
    test_tr, test_te = load_tr_te_data(out_dir / "test_tr.csv", out_dir / "test_te.csv")
    times["csv round trip + csr"] = time.perf_counter() - t
    wall = sum(times.values())
    return {"wall_s": wall, "cpu_s": time.process_time() - c0, "phases_s": times, "fraction": fraction,
            "digest": _digest({"train": train, "val_fold_in": vad_tr, "val_target": vad_te, "test_fold_in": test_tr, "test_target": test_te})}


def _imports(spec: dict[str, Any]) -> dict[str, Any]:
    import pandas  # noqa: F401
    import scipy.sparse  # noqa: F401

    import multivae.data  # noqa: F401
    return {}


WORKERS = {"ours": _ours, "ours-phases": _ours_phases, "naive": _naive, "imports": _imports}


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM, the high-water mark of its own address space. (ru_maxrss
    would be wrong here: Linux carries the parent's RSS at fork into the child's ru_maxrss across exec.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # kB on Linux; an upper bound elsewhere


def worker_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    out = WORKERS[spec["kind"]](spec)
    out["max_rss_mb"] = peak_rss_mb()
    worker_result(out)


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    return common_run_worker("bench.preprocess", spec)


# --- main --------------------------------------------------------------------------------------------

def bench_dataset(name: str, spec: dict[str, Any], repeats: int, naive_fraction: float, tmp: Path, base_rss: float) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"ours cold": [], "ours cached": [], "naive": []}
    for r in range(repeats):
        cache = tmp / f"cache-{name}-{r}"
        runs["ours cold"].append(run_worker({**spec, "kind": "ours", "cache_dir": str(cache)}))
        runs["ours cached"].append(run_worker({**spec, "kind": "ours", "cache_dir": str(cache)}))
        runs["naive"].append(run_worker({**spec, "kind": "naive", "cache_dir": str(tmp / f"naive-{name}-{r}"), "fraction": naive_fraction}))
        shutil.rmtree(tmp / f"naive-{name}-{r}", ignore_errors=True)
    phases = run_worker({**spec, "kind": "ours-phases", "cache_dir": str(tmp / f"phases-{name}")})
    assert not any(x["cache_hit"] for x in runs["ours cold"]) and all(x["cache_hit"] for x in runs["ours cached"])
    same = naive_fraction >= 1.0 and runs["naive"][0]["digest"] == runs["ours cold"][0]["digest"]
    if naive_fraction >= 1.0 and not same:
        raise AssertionError(f"{name}: the naive pipeline and ours built different matrices:\n"
                             f"ours  {runs['ours cold'][0]['digest']}\nnaive {runs['naive'][0]['digest']}")
    cases = {}
    for case, rs in runs.items():
        scale = 1.0 / naive_fraction if case == "naive" else 1.0
        cases[case] = {"n": len(rs), "wall_median_s": float(np.median([x["wall_s"] for x in rs])) * scale,
                       "cpu_median_s": float(np.median([x["cpu_s"] for x in rs])) * scale,
                       "max_rss_mb": float(max(x["max_rss_mb"] for x in rs)),
                       "rss_over_imports_mb": float(max(x["max_rss_mb"] for x in rs)) - base_rss,
                       "extrapolated_from_fraction": naive_fraction if case == "naive" and naive_fraction < 1.0 else None}
        if case == "naive":
            cases[case]["phases_s"] = {k: float(np.median([x["phases_s"][k] for x in rs])) * scale for k in rs[0]["phases_s"]}
    for case in cases:
        for b in ("wall", "cpu"):
            cases[case][f"naive_over_this_{b}"] = cases["naive"][f"{b}_median_s"] / cases[case][f"{b}_median_s"]
        cases[case]["rss_over_naive"] = cases[case]["max_rss_mb"] / cases["naive"]["max_rss_mb"]
    return {"cases": cases, "ours_cold_phases_s": phases["phases_s"], "same_matrices_as_naive": same,
            "matrices": runs["ours cold"][0]["digest"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.preprocess", description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--tiny", action="store_true", help="a few seconds: a 60,000-row synthetic file, no MovieLens")
    p.add_argument("--rows", type=int, default=ML20M_LIKE["rows"], help="rows of the synthetic CSV")
    p.add_argument("--users", type=int, default=ML20M_LIKE["users"])
    p.add_argument("--items", type=int, default=ML20M_LIKE["items"])
    p.add_argument("--heldout", type=int, default=10_000, help="validation and test users each, synthetic file (ML-20M's)")
    p.add_argument("--repeats", type=int, default=1, help="repeats of every synthetic-file measurement (ML-1M: 3)")
    p.add_argument("--naive-fraction", type=float, default=1.0, help="run the naive pipeline on this share of the "
                   "synthetic file's users and extrapolate its time (labelled as such)")
    p.add_argument("--no-movielens", action="store_true", help="skip ML-1M")
    p.add_argument("--datasets-dir", default=str(DATASETS_DIR))
    p.add_argument("--out", default=None, help="folder for the JSON (default bench/results)")
    args = p.parse_args(argv)
    if args.tiny:
        args.rows, args.users, args.items, args.heldout, args.no_movielens = 60_000, 1_500, 800, 100, True
    if not 0.0 < args.naive_fraction <= 1.0:
        p.error(f"--naive-fraction must be in (0, 1], got {args.naive_fraction}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return {}
    tmp = Path(tempfile.mkdtemp(prefix="multivae-bench-preprocess-"))
    results: dict[str, Any] = {}
    skipped: list[str] = []
    try:
        base_rss = run_worker({"kind": "imports"})["max_rss_mb"]
        ml1m = Path(args.datasets_dir) / "ml-1m" / "ratings.dat"
        if args.no_movielens:
            skipped.append("ml-1m (--no-movielens)")
        elif not ml1m.is_file():
            skipped.append(f"ml-1m ({ml1m} not found)")
            print(f"skipping ML-1M: {ml1m} not found", file=sys.stderr)
        else:
            results["ml-1m"] = bench_dataset("ml-1m", {"dataset": "ml-1m", "path": str(Path(args.datasets_dir)), "heldout": 600},
                                             max(3, args.repeats), 1.0, tmp, base_rss)
        csv = tmp / "interactions.csv"
        t = time.perf_counter()
        info = write_synthetic_csv(csv, args.rows, args.users, args.items)
        print(f"synthetic CSV: {info['rows']:,} rows, {info['users']:,} users x {info['items']:,} items, "
              f"{info['bytes'] / 2**20:.0f} MiB, {100 * info['positive_share']:.0f}% ratings > 3.5 (written in {time.perf_counter() - t:.1f} s)")
        key = f"synthetic-{info['rows'] / 1e6:.3g}M"
        results[key] = bench_dataset("synthetic", {"dataset": "file", "path": str(csv), "heldout": args.heldout},
                                     args.repeats, args.naive_fraction, tmp, base_rss)
        results[key]["file"] = info
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    headers = ["dataset", "case", "s wall", "s cpu", "peak RSS MB", "RSS over imports MB", "naive / this (wall)", "RSS / naive"]
    rows = []
    for ds, res in results.items():
        for case, c in res["cases"].items():
            label = case + (f" (extrapolated from {100 * c['extrapolated_from_fraction']:.0f}% of users)" if c["extrapolated_from_fraction"] else "")
            rows.append([ds, label, c["wall_median_s"], c["cpu_median_s"], c["max_rss_mb"], c["rss_over_imports_mb"],
                         c["naive_over_this_wall"], c["rss_over_naive"]])
    print(f"imports alone: {base_rss:.0f} MB peak RSS")
    print_table(headers, rows)
    for ds, res in results.items():
        ph = ", ".join(f"{k} {v:.2f}" for k, v in res["ours_cold_phases_s"].items())
        nph = ", ".join(f"{k} {v:.2f}" for k, v in res["cases"]["naive"]["phases_s"].items())
        print(f"{ds}: ours cold phases (s): {ph}\n{' ' * len(ds)}  naive phases (s): {nph}\n"
              f"{' ' * len(ds)}  same matrices as naive: {res['same_matrices_as_naive']}")
    payload = {"machine": machine_info(), "config": {"rows": args.rows, "users": args.users, "items": args.items, "heldout": args.heldout,
                                                     "repeats": args.repeats, "naive_fraction": args.naive_fraction, "tiny": args.tiny},
               "imports_max_rss_mb": base_rss, "skipped": skipped, "results": results}
    path = write_result("preprocess", payload, argv, args.out)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
