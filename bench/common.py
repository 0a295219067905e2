"""What every bench shares: machine info, interleaved timing, ML-20M-shaped synthetic rows, tables, JSON.

Timing on a shared machine: the cases being compared run round-robin in the same process (one call of
each per round), and we report medians. Every sample records wall time and the process's CPU time; with
one thread, CPU time is what the work costs even when other processes take the cores away, so it is the
steadier of the two for ratios (both are written to the JSON).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from multivae.allocator import MALLOC_MODES, keep_freed_memory

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]

# ML-20M after the paper's filters: 136,677 users, 20,108 items (after keeping training items),
# 9,990,682 positive interactions; 116,677 training users -> 234 batches of 500 per epoch.
ML20M_ITEMS = 20_108
ML20M_TRAIN_USERS = 116_677
ML20M_BATCHES_PER_EPOCH = 234
ML20M_HELDOUT_USERS = 10_000
ML20M_MEAN_ACTIVITY = 85.6   # interactions per user over the training users (9.99M / 116,677)


# --- machine -----------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"})
    except OSError:
        pass
    return []


def _git_state() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, library versions and the load on the machine when the bench ran."""
    import pandas as pd
    import scipy
    import torch

    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cores": os.cpu_count(),
        "cores_available": affinity,
        "memory_gib": mem_gib,
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_blas": "mkl" if torch.backends.mkl.is_available() else "other",
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pandas": pd.__version__,
        "git": _git_state(),
    }


def set_threads(n: int | None) -> int:
    """torch intra-op threads (None leaves torch's default); returns the number in use."""
    import torch

    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


# --- timing ------------------------------------------------------------------------------------------

@dataclass
class Sample:
    wall_s: float
    cpu_s: float


def measure(fn: Callable[[], Any]) -> Sample:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return Sample(time.perf_counter() - w, time.process_time() - c)


def interleave(cases: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, list[Sample]]:
    """Call every case once per round, round-robin (warm-up rounds are not kept)."""
    out: dict[str, list[Sample]] = {name: [] for name in cases}
    for r in range(warmup + rounds):
        for name, fn in cases.items():
            s = measure(fn)
            if r >= warmup:
                out[name].append(s)
    return out


def stats(samples: list[Sample], per: float = 1.0) -> dict[str, float]:
    """Median / min / max of wall and CPU seconds, each divided by `per` (e.g. batches per call)."""
    wall = np.array([s.wall_s for s in samples]) / per
    cpu = np.array([s.cpu_s for s in samples]) / per
    return {"n": len(samples), "wall_median_s": float(np.median(wall)), "wall_min_s": float(wall.min()),
            "wall_max_s": float(wall.max()), "cpu_median_s": float(np.median(cpu))}


# --- data --------------------------------------------------------------------------------------------

def ml20m_like_rows(n_users: int, n_items: int = ML20M_ITEMS, mean_activity: float = ML20M_MEAN_ACTIVITY,
                    sigma: float = 1.0, popularity_exponent: float = 1.0, seed: int = 0, chunk: int = 500) -> sp.csr_matrix:
    """Binary user x item rows shaped like ML-20M: a log-normal number of items per user (mean
    `mean_activity`, heavy right tail, at least 5), items drawn without replacement with Zipf popularity
    (rank ** -exponent). float32 CSR with sorted indices, as `SplitData` holds them."""
    rng = np.random.default_rng(seed)
    mu = np.log(mean_activity) - sigma ** 2 / 2
    activity = np.clip(np.rint(rng.lognormal(mu, sigma, n_users)), 5, n_items // 2).astype(np.int64)
    # Weighted draws without replacement by an exponential race: item i "arrives" at E_i / w_i with
    # E_i ~ Exp(1); the k earliest are a draw of k distinct items with probabilities proportional to w.
    inv_w = np.power(1.0 + rng.permutation(n_items), popularity_exponent).astype(np.float32)   # 1 / w_i
    indptr = np.r_[0, np.cumsum(activity)].astype(np.int64)
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    for s in range(0, n_users, chunk):
        e = min(s + chunk, n_users)
        k = int(activity[s:e].max())
        keys = rng.standard_exponential((e - s, n_items), dtype=np.float32) * inv_w
        top = np.argpartition(keys, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(keys, top, axis=1), axis=1)
        ranked = np.take_along_axis(top, order, axis=1)
        for r in range(e - s):
            n = activity[s + r]
            indices[indptr[s + r]:indptr[s + r] + n] = np.sort(ranked[r, :n])
    return sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(n_users, n_items))


# --- output ------------------------------------------------------------------------------------------

def fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        if x != x:
            return "nan"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def print_table(headers: list[str], rows: list[list[Any]], file=None) -> None:
    file = file or sys.stdout       # looked up at call time (a default bound at import misses redirection)
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"   # noqa: E731
    print(line(headers), file=file)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=file)
    for r in cells:
        print(line(r), file=file)


def write_result(name: str, payload: dict[str, Any], argv: list[str], out_dir: str | Path | None = None,
                 module: str | None = None) -> Path:
    """`<out_dir>/<name>.json` (default bench/results), written to a temporary name and renamed; `argv` are
    the bench's arguments, recorded as the command that produced the numbers (less `--out`, which only
    says where the file goes); `module` is the bench's module where it is not `name`."""
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    doc = {"bench": name, "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join(["python -m bench." + (module or name), *_without_out(argv)]),
           **payload}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def _without_out(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out="):
            out.append(a)
    return out


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


# --- the glibc allocator -----------------------------------------------------------------------------
# Why "keep" helps: multivae/allocator.py. It is a property of the process: set it before the big allocations.


def set_malloc(mode: str) -> bool:
    """'keep': glibc's malloc stops using mmap and never trims the heap; 'default': leave glibc alone.
    Returns False where there is no glibc to tell."""
    if mode not in MALLOC_MODES:
        raise ValueError(f"malloc mode must be one of {list(MALLOC_MODES)}, got {mode!r}")
    return True if mode == "default" else keep_freed_memory()


# --- fresh processes ---------------------------------------------------------------------------------

def run_worker(module: str, spec: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    """Run `python -m <module> --worker <spec as JSON>` from the repository root; the worker prints one
    line `RESULT <json>` (see `worker_result`), which is returned."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run([sys.executable, "-m", module, "--worker", json.dumps(spec)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{module} worker {spec.get('kind', '')} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def worker_result(result: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(result, default=_json_default), flush=True)
