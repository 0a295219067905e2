"""Ray overhead: what running the search's trials through Ray Tune costs per trial, in time and in memory.

    python -m bench.ray_overhead            # 8 trials of 2 epochs, twice; a 124 MB split shared vs copied (~4 min)
    python -m bench.ray_overhead --tiny     # about 40 s; what tests/bench/test_ray_overhead.py runs

One local Ray (2 CPUs, 127.0.0.1 only, no dashboard) serves both parts; it is shut down before the baseline.

time:   the smoke space (search_spaces/smoke.yaml) with FIFO instead of ASHA and `--epochs` epochs, so every
        trial trains to the end, run through the product's code path: `tuning.tuner.new_tuner` (OptunaSearch,
        the concurrency limit, `tune.with_parameters`, TensorBoard, checkpoints) and
        `tuning.trainable.train_multivae`, 1 CPU per trial, 2 at a time, twice in one run: BEFORE with a new
        worker process per trial (`resources.reuse_actors: false`, the default until 2026-12-07), AFTER with
        the space's defaults (reused worker processes).
        CPU overhead per trial = (all worker processes' CPU + the driver's - the direct runs') / trials. Per
        trial, from timestamps: the
        driver's clock when Tune creates the trial, when its actor has started and when Tune sees it
        complete (a `tune.Callback`); the worker's clock and CPU seconds when it enters and leaves the
        trainable (a wrapper, as tests/tuning/cluster_scripts/scenarios.py does); the time inside `fit`'s
        epochs (each epoch's reported `epoch_time_s` + `eval_time_s`). Overhead = trial lifetime - time in
        epochs; the physical limit is 0. Baseline: the same configs, one after the other, through
        `multivae.training.fit` in this process, no Ray. On a loaded machine the wall times stretch; the CPU
        seconds do not.
memory: a trivial trial that reads every byte of a synthetic split (124 MB of CSR arrays), reads its own
        /proc/self/smaps_rollup (Rss, Pss, USS = Private_Clean + Private_Dirty) and reports it. Three ways:
        no data (the empty worker), the split through `tune.with_parameters` (the product's way: one copy
        in the object store, mapped zero-copy by every worker) and the split inside the trial config.
        The driver's own memory, the object store's bytes and the experiment folder are measured around each.
"""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"   # before Ray is imported: every socket on 127.0.0.1 (RAY_NOTES.md)
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")          # as tuning.run: no Ray console header
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import ray  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from ray import tune  # noqa: E402

from bench.common import machine_info, print_table, write_result  # noqa: E402
from multivae.data import load_dataset  # noqa: E402
from multivae.data.split import SplitData  # noqa: E402
from multivae.training import fit, init_state  # noqa: E402
from tuning import trainable  # noqa: E402
from tuning import tuner as tuning_tuner  # noqa: E402
from tuning.space import load_space, parse_space, space_to_dict  # noqa: E402
from tuning.trial_config import split_trial_config  # noqa: E402

CONCURRENT = 2   # Ray's CPUs and trials at once: the machine has 2 cores
MB = 1e6
HOLD_S = 1.0     # how long a memory trial stays alive after measuring, so that concurrent trials overlap


# --- /proc -------------------------------------------------------------------------------------------

def smaps_rollup(pid: int | str = "self") -> dict[str, int]:
    """Rss, Pss and USS (Private_Clean + Private_Dirty) of a process in bytes, from /proc (psutil is not here)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:   # line 1: the address range
        key, value, *_ = line.split()
        fields[key.rstrip(":")] = int(value) * 1024
    return {"rss": fields["Rss"], "pss": fields["Pss"], "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


def process_cpu_s() -> float:
    """User + system CPU seconds of this whole process so far (all its threads), from /proc/self/stat."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()   # from field 3 (state) on
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # fields 14, 15: utime, stime


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def object_store_bytes() -> int | None:
    """Bytes held in the object store (Ray's internal API, which `ray memory` uses); None if it moved."""
    try:
        from ray._private import internal_api

        state = internal_api.get_state_from_address(ray.get_runtime_context().gcs_address)
        return int(internal_api.get_memory_info_reply(state).store_stats.object_store_bytes_used)
    except (ImportError, AttributeError):
        return None


# --- part 1: time ------------------------------------------------------------------------------------

def overhead_space(trials: int, epochs: int, reuse_actors: bool | None = None):
    """The smoke space, FIFO instead of ASHA and `epochs` epochs: every trial does the work its direct twin does.
    `reuse_actors` None: the default (`tuning.space.reuse_default`)."""
    smoke = load_space("smoke")
    data = space_to_dict(smoke)
    data["fixed"]["epochs"] = epochs
    data["scheduler"] = {"type": "fifo"}
    data["search"].update(num_samples=trials, max_concurrent=CONCURRENT)
    data["resources"].update(cpus_per_trial=1, gpus_per_trial=0)
    if reuse_actors is None:
        data["resources"].pop("reuse_actors", None)
    else:
        data["resources"]["reuse_actors"] = reuse_actors
    return parse_space(data, smoke.source, name="smoke")


class TrialClock(tune.Callback):
    """The driver's clock per trial: when Tune creates it (the concurrency limit lets the searcher suggest one
    only when a slot is free), when its actor has started, and when Tune sees it complete."""

    def __init__(self) -> None:
        self.times: dict[str, dict[str, float]] = {}
        self.step_begin = 0.0

    def on_step_begin(self, iteration, trials, **info) -> None:
        self.step_begin = time.time()

    def on_step_end(self, iteration, trials, **info) -> None:
        # Tune has no trial-added callback; a step asks the searcher for trials after on_step_begin, so a
        # new trial's creation (its suggestion included) began at this step's start.
        for trial in trials:
            self.times.setdefault(trial.trial_id, {}).setdefault("add", self.step_begin)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.times.setdefault(trial.trial_id, {})["start"] = time.time()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.times.setdefault(trial.trial_id, {})["complete"] = time.time()


def timed(original, events_path: str):
    """`original` (train_multivae) that appends, per trial, when its worker entered and left the trainable
    and the worker process's CPU seconds then (CPU time, unlike wall time, does not grow when other
    processes take the cores)."""

    def train_multivae(config, split=None, **options):   # options: what tuning.tuner passes on (checkpoints, searched)
        enter, cpu_enter = time.time(), process_cpu_s()
        try:
            original(config, split=split, **options)
        finally:
            with open(events_path, "a") as f:
                f.write(json.dumps({"trial_id": tune.get_context().get_trial_id(), "pid": os.getpid(), "enter": enter,
                                    "exit": time.time(), "cpu_enter": cpu_enter, "cpu_exit": process_cpu_s()}) + "\n")

    return train_multivae


def ray_search(space, split, tmp: Path, name: str = "overhead") -> dict[str, Any]:
    """The search through tuning.tuner.new_tuner; per trial its timestamps and its time in epochs. With reused
    actors a worker process runs several trials: a trial's CPU before the trainable is then what its process
    spent since its previous trial returned."""
    events, clock = tmp / f"events-{name}.jsonl", TrialClock()
    original = trainable.train_multivae
    trainable.train_multivae = timed(original, str(events))   # build_tuner imports it from there when called
    try:
        t = time.perf_counter()
        tuner = tuning_tuner.new_tuner(space, split, name=name, root=str(tmp), max_failures=0, quiet=True, callbacks=[clock])
        setup_s = time.perf_counter() - t
        fit_start, cpu0 = time.time(), time.process_time()
        results = tuner.fit()
        fit_end, driver_cpu = time.time(), time.process_time() - cpu0
    finally:
        trainable.train_multivae = original
    worker_events = sorted(map(json.loads, events.read_text().splitlines()), key=lambda e: (e["pid"], e["enter"]))
    previous_exit: dict[int, float] = {}
    for e in worker_events:   # the process's CPU since its previous trial (0 for its first)
        e["cpu_before"] = e["cpu_enter"] - previous_exit.get(e["pid"], 0.0)
        previous_exit[e["pid"]] = e["cpu_exit"]
    worker = {e["trial_id"]: e for e in worker_events}
    trials = []
    for r in results:
        if r.error is not None:
            raise RuntimeError(f"trial failed: {r.error}")
        tid, df = r.metrics["trial_id"], r.metrics_dataframe
        w, d = worker[tid], clock.times[tid]
        in_epochs = float((df["epoch_time_s"] + df["eval_time_s"]).sum())
        lifetime = d["complete"] - d["add"]
        trials.append({"trial_id": tid, "pid": w["pid"], "config": r.config, "epochs": int(df["epoch"].max()),
                       "lifetime_s": lifetime, "in_epochs_s": in_epochs, "overhead_s": lifetime - in_epochs,
                       "add_to_start_s": d["start"] - d["add"], "start_to_trainable_s": w["enter"] - d["start"],
                       "trainable_outside_epochs_s": w["exit"] - w["enter"] - in_epochs,
                       "trainable_return_to_complete_s": d["complete"] - w["exit"],
                       "worker_cpu_s": w["cpu_before"] + w["cpu_exit"] - w["cpu_enter"], "worker_cpu_before_trainable_s": w["cpu_before"],
                       "worker_cpu_in_trainable_s": w["cpu_exit"] - w["cpu_enter"]})
    return {"tuner_setup_s": setup_s, "fit_s": fit_end - fit_start, "driver_cpu_s": driver_cpu, "trials": trials,
            "worker_processes": len(previous_exit), "workers_cpu_s": sum(previous_exit.values()),
            "fit_start_to_first_trial_s": min(d["add"] for d in clock.times.values()) - fit_start,
            "last_trial_to_fit_end_s": fit_end - max(d["complete"] for d in clock.times.values())}


def direct_runs(split, configs: list[dict]) -> dict[str, Any]:
    """The same trainings in this process, one after the other, 1 thread each: `init_state` + `fit`."""
    runs = []
    t_all = time.perf_counter()
    for config in configs:
        model_cfg, cfg = split_trial_config(config, where="direct run")
        cfg = dataclasses.replace(cfg, threads=1, device="cpu")   # what the trainable sets for 1 CPU, no GPU
        t, cpu = time.perf_counter(), time.process_time()
        state = fit(split, state=init_state(split.n_items, model_cfg, cfg))
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        in_epochs = sum(h["epoch_time_s"] + h["eval_time_s"] for h in state.history)
        runs.append({"wall_s": wall, "in_epochs_s": in_epochs, "outside_epochs_s": wall - in_epochs, "cpu_s": cpu})
    return {"wall_s": time.perf_counter() - t_all, "runs": runs}


# --- part 2: memory ----------------------------------------------------------------------------------

def split_arrays(split: SplitData) -> list[np.ndarray]:
    arrays = [split.item_ids, split.train_user_ids, split.val_user_ids, split.test_user_ids]
    for m in (split.train, split.val_fold_in, split.val_target, split.test_fold_in, split.test_target):
        arrays += [m.data, m.indices, m.indptr]
    return arrays


def big_split(nnz: int, n_items: int = 20_108, per_user: int = 85, heldout: int = 1000) -> SplitData:
    """A SplitData of about 8 bytes per interaction (float32 data + int32 indices): random rows of `per_user`
    items. Only its size matters here: the memory trials read it, nobody trains on it."""
    rng = np.random.default_rng(0)
    n_users = max(nnz // per_user, 3 * heldout)

    def rows(n: int) -> sp.csr_matrix:
        indptr = np.arange(0, n * per_user + 1, per_user, dtype=np.int64)
        indices = rng.integers(0, n_items, n * per_user, dtype=np.int32)
        return sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(n, n_items))

    return SplitData(rows(n_users - 2 * heldout), rows(heldout), rows(heldout), rows(heldout), rows(heldout), np.arange(n_items),
                     np.arange(n_users - 2 * heldout), np.arange(heldout), np.arange(heldout))


def memory_probe(config: dict, split: SplitData | None = None) -> None:
    """One memory trial: read every byte of the split (from with_parameters or the config), then report
    this process's memory. It stays alive a moment so that concurrent trials overlap."""
    # What unpickling a SplitData imports (scipy, pandas), in every case: the cases then differ by the data only.
    import multivae.data.split  # noqa: F401

    split = split if split is not None else config.get("split")
    for a in split_arrays(split) if split is not None else ():
        a.sum()
    mem = smaps_rollup()
    time.sleep(HOLD_S)
    tune.report(mem)


def memory_case(case: str, split: SplitData, trials: int, tmp: Path) -> dict[str, Any]:
    """`trials` memory trials, 2 at a time, with the split shared (with_parameters), copied (config) or absent."""
    gc.collect()
    driver0, store0 = smaps_rollup(), object_store_bytes()
    t = time.perf_counter()
    fn = tune.with_parameters(memory_probe, split=split) if case == "with_parameters" else memory_probe   # puts it now
    space = {"i": tune.grid_search(list(range(trials))), **({"split": split} if case == "config" else {})}
    tuner = tune.Tuner(tune.with_resources(fn, {"cpu": 1}), param_space=space,
                       tune_config=tune.TuneConfig(max_concurrent_trials=CONCURRENT),
                       run_config=tune.RunConfig(name=case, storage_path=str(tmp), verbose=0))
    results = tuner.fit()
    wall = time.perf_counter() - t
    driver1, store1 = smaps_rollup(), object_store_bytes()
    per_trial = []
    for r in results:
        if r.error is not None:
            raise RuntimeError(f"{case} trial failed: {r.error}")
        per_trial.append({k: r.metrics[k] for k in ("rss", "pss", "uss", "pid")})
    out = {"trials": per_trial, "search_wall_s": wall, "experiment_dir_bytes": dir_bytes(tmp / case),
           "driver_rss_delta_bytes": driver1["rss"] - driver0["rss"], "driver_uss_delta_bytes": driver1["uss"] - driver0["uss"],
           "object_store_delta_bytes": None if store0 is None or store1 is None else store1 - store0,
           **{f"trial_{k}_median_bytes": statistics.median(p[k] for p in per_trial) for k in ("rss", "pss", "uss")}}
    del tuner, results, fn
    shutil.rmtree(tmp / case, ignore_errors=True)
    return out


# --- main --------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ray_overhead", description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="about 40 s: 2 trials of 1 epoch, a 10 MB split, 2 trials per memory case")
    p.add_argument("--trials", type=int, default=8, help="trials of the timed search (and direct runs)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each timed trial")
    p.add_argument("--memory-trials", type=int, default=4, help="trials per memory case")
    p.add_argument("--memory-nnz", type=int, default=15_000_000, help="interactions of the memory split (8 bytes each)")
    p.add_argument("--out", default=None, help="folder for the JSON (default bench/results)")
    args = p.parse_args(argv)
    if args.tiny:
        args.trials, args.epochs, args.memory_trials, args.memory_nnz = 2, 1, 2, 1_000_000
    if min(args.trials, args.epochs, args.memory_trials, args.memory_nnz) < 1:
        p.error("--trials, --epochs, --memory-trials and --memory-nnz must be >= 1")
    return args


RAY_PARTS = ("lifetime_s", "add_to_start_s", "start_to_trainable_s", "trainable_outside_epochs_s", "in_epochs_s",
             "trainable_return_to_complete_s", "overhead_s", "worker_cpu_s", "worker_cpu_before_trainable_s",
             "worker_cpu_in_trainable_s")
DIRECT_PARTS = ("wall_s", "outside_epochs_s", "in_epochs_s", "cpu_s")


def mean_median(xs) -> dict[str, float]:
    xs = list(xs)
    return {"mean": float(statistics.fmean(xs)), "median": float(statistics.median(xs))}


def summarize(search: dict, direct: dict, init_s: float) -> dict[str, Any]:
    trials, n = search["trials"], len(search["trials"])
    in_epochs = sum(t["in_epochs_s"] for t in trials)
    return {
        "ray_init_s": init_s, "tuner_setup_s": search["tuner_setup_s"], "search_wall_s": search["fit_s"],
        "fit_start_to_first_trial_s": search["fit_start_to_first_trial_s"], "last_trial_to_fit_end_s": search["last_trial_to_fit_end_s"],
        "direct_wall_s": direct["wall_s"],
        "ray_over_direct_wall": search["fit_s"] / direct["wall_s"],
        "ray_core_s_over_direct_wall": search["fit_s"] * CONCURRENT / direct["wall_s"],
        "ray_end_to_end_over_direct_wall": (init_s + search["tuner_setup_s"] + search["fit_s"]) / direct["wall_s"],
        # two estimates of the overhead per trial; the physical limit is 0 (a trial costs only its epochs)
        "overhead_per_trial_s_from_timestamps": mean_median(t["overhead_s"] for t in trials)["mean"],
        "overhead_per_trial_s_from_wall": (search["fit_s"] * CONCURRENT - in_epochs) / n,
        "overhead_physical_limit_s": 0.0,
        # CPU seconds: a trial's worker process over its life, and the driver's share, against a direct run
        # (every worker process's CPU over its life + the driver's - the direct runs') / trials
        "cpu_overhead_per_trial_s": (search["workers_cpu_s"] + search["driver_cpu_s"] - sum(r["cpu_s"] for r in direct["runs"])) / n,
        "worker_processes": search["worker_processes"],
        "driver_cpu_per_trial_s": search["driver_cpu_s"] / n,
        "ray_per_trial_s": {k: mean_median(t[k] for t in trials) for k in RAY_PARTS},
        "direct_per_run_s": {k: mean_median(r[k] for r in direct["runs"]) for k in DIRECT_PARTS},
    }


def print_time_table(s: dict, n: int, epochs: int, title: str = "") -> None:
    print(f"\n{title}time per trial ({n} trials of {epochs} epoch(s); Ray: {CONCURRENT} at a time, 1 CPU each, "
          f"{s['worker_processes']} worker processes; direct: one after the other)")
    labels = {
        "lifetime_s": "Ray: trial lifetime (Tune creates it -> Tune sees it complete)",
        "add_to_start_s": "  created -> actor started (worker process, imports, trainable setup)",
        "start_to_trainable_s": "  actor started -> trainable entered",
        "trainable_outside_epochs_s": "  in the trainable, outside epochs (torch start, model, TensorBoard, checkpoint, report)",
        "in_epochs_s": "  epochs (train + validate)",
        "trainable_return_to_complete_s": "  trainable returned -> Tune sees it complete",
        "overhead_s": "  overhead: lifetime - epochs",
        "worker_cpu_s": "Ray: worker process CPU s per trial",
        "worker_cpu_before_trainable_s": "  before the trainable (process start and imports, or since its previous trial)",
        "worker_cpu_in_trainable_s": "  in the trainable",
    }
    rows = [[label, s["ray_per_trial_s"][k]["mean"], s["ray_per_trial_s"][k]["median"]] for k, label in labels.items()]
    direct = {"wall_s": "direct: init_state + fit", "outside_epochs_s": "  outside epochs (torch start, model)",
              "in_epochs_s": "  epochs (train + validate)", "cpu_s": "direct: CPU s (init_state + fit)"}
    rows += [[label, s["direct_per_run_s"][k]["mean"], s["direct_per_run_s"][k]["median"]] for k, label in direct.items()]
    print_table(["s per trial", "mean", "median"], rows)
    print(f"ray.init {s['ray_init_s']:.2f} s; Tuner setup (build_tuner, split into the object store) {s['tuner_setup_s']:.2f} s; "
          f"search {s['search_wall_s']:.2f} s wall (start -> first trial {s['fit_start_to_first_trial_s']:.2f} s, last trial -> "
          f"end {s['last_trial_to_fit_end_s']:.2f} s); direct {s['direct_wall_s']:.2f} s wall")
    print(f"Ray / direct wall: {s['ray_over_direct_wall']:.2f} (search only), {s['ray_core_s_over_direct_wall']:.2f} "
          f"(search wall x {CONCURRENT} CPUs), {s['ray_end_to_end_over_direct_wall']:.2f} (with ray.init and setup)")
    print(f"overhead per trial: {s['overhead_per_trial_s_from_timestamps']:.2f} s (lifetime - epochs), "
          f"{s['overhead_per_trial_s_from_wall']:.2f} s ((search wall x {CONCURRENT} - epochs) / trials); "
          f"{s['cpu_overhead_per_trial_s']:.2f} CPU s (worker + driver's share {s['driver_cpu_per_trial_s']:.2f} - direct); physical limit 0 s")


def memory_verdict(cases: dict, dataset_bytes: int) -> dict[str, Any]:
    """Private memory per trial above the empty trial's, as a multiple of the dataset's size."""
    base = cases["none"]["trial_uss_median_bytes"]
    extra = {c: cases[c]["trial_uss_median_bytes"] - base for c in ("with_parameters", "config")}
    share = {c: v / dataset_bytes for c, v in extra.items()}
    return {"extra_uss_per_trial_bytes": extra, "extra_uss_per_trial_over_dataset": share,
            "with_parameters_shares": share["with_parameters"] < 0.1, "config_copies": share["config"] > 0.5}


def print_memory_table(cases: dict, verdict: dict, dataset_bytes: int, n: int) -> None:
    print(f"\nmemory per trial worker (median of {n} trials; split {dataset_bytes / MB:.0f} MB of CSR arrays, read in full by each trial)")
    rows = []
    for c, r in cases.items():
        extra = verdict["extra_uss_per_trial_bytes"].get(c)
        store = r["object_store_delta_bytes"]
        rows.append([c, r["trial_rss_median_bytes"] / MB, r["trial_pss_median_bytes"] / MB, r["trial_uss_median_bytes"] / MB,
                     "" if extra is None else extra / MB, "" if extra is None else extra / dataset_bytes,
                     r["driver_uss_delta_bytes"] / MB, "n/a" if store is None else store / MB,
                     r["experiment_dir_bytes"] / MB, r["search_wall_s"]])
    print_table(["split passed by", "Rss MB", "Pss MB", "USS MB", "USS - empty MB", "x dataset", "driver USS +MB",
                 "object store +MB", "experiment dir MB", "search s"], rows)
    ok = verdict["with_parameters_shares"] and verdict["config_copies"]
    print(f"verdict: {'as expected' if ok else 'UNEXPECTED'}: with_parameters adds "
          f"{verdict['extra_uss_per_trial_over_dataset']['with_parameters']:.3f}x the dataset of private memory per trial "
          f"(shared, not copied); config adds {verdict['extra_uss_per_trial_over_dataset']['config']:.2f}x (a private copy per trial)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    space = overhead_space(args.trials, args.epochs)
    split = load_dataset(space.dataset, verbose=False)
    mem_split = big_split(args.memory_nnz)
    dataset_bytes = sum(a.nbytes for a in split_arrays(mem_split))
    tmp = Path(tempfile.mkdtemp(prefix="multivae-bench-ray-"))
    try:
        t = time.perf_counter()
        ray.init(address="local", num_cpus=CONCURRENT, include_dashboard=False, log_to_driver=False)   # ours, never a `ray start` one
        init_s = time.perf_counter() - t
        try:
            node_ip = ray.util.get_node_ip_address()
            if node_ip != "127.0.0.1":
                raise RuntimeError(f"Ray's node address is {node_ip}, not 127.0.0.1: Ray was imported before "
                                   "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set")
            print(f"search: {args.trials} trials of {args.epochs} epoch(s), smoke space ({split.format_stats()})", flush=True)
            # before / after in one run, on one Ray: a new worker process per trial (the old default), then the defaults
            fresh = ray_search(overhead_space(args.trials, args.epochs, reuse_actors=False), split, tmp, name="fresh")
            assert space.resources.reuse_actors, "the defaults reuse worker processes"
            search = ray_search(space, split, tmp, name="defaults")
            print(f"memory: split of {dataset_bytes / MB:.0f} MB, {args.memory_trials} trials per case", flush=True)
            cases = {c: memory_case(c, mem_split, args.memory_trials, tmp) for c in ("none", "with_parameters", "config")}
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    direct = direct_runs(split, [t["config"] for t in search["trials"]])   # Ray is down: nothing else runs here

    summary = summarize(search, direct, init_s)
    before = summarize(fresh, direct, init_s)
    verdict = memory_verdict(cases, dataset_bytes)
    print_time_table(before, args.trials, args.epochs, "BEFORE (a process per trial: reuse_actors false, the old default) ")
    print_time_table(summary, args.trials, args.epochs, "AFTER (the defaults: reused worker processes) ")
    reuse = {"cpu_overhead_per_trial_s_before": before["cpu_overhead_per_trial_s"],
             "cpu_overhead_per_trial_s_after": summary["cpu_overhead_per_trial_s"],
             "after_over_before": summary["cpu_overhead_per_trial_s"] / before["cpu_overhead_per_trial_s"],
             "search_wall_s_before": before["search_wall_s"], "search_wall_s_after": summary["search_wall_s"],
             "goal_cpu_s_per_trial": 1.0, "physical_limit_s": 0.0}
    print(f"\nCPU overhead per trial: {reuse['cpu_overhead_per_trial_s_before']:.2f} s with a process per trial -> "
          f"{reuse['cpu_overhead_per_trial_s_after']:.2f} s with reused actors ({reuse['after_over_before']:.2f}x; goal <= 1 s, "
          f"physical limit 0); search wall {reuse['search_wall_s_before']:.1f} s -> {reuse['search_wall_s_after']:.1f} s")
    print_memory_table(cases, verdict, dataset_bytes, args.memory_trials)
    payload = {
        "machine": {**machine_info(), "ray": ray.__version__},
        "config": {"trials": args.trials, "epochs": args.epochs, "concurrent": CONCURRENT, "cpus_per_trial": 1,
                   "ray_num_cpus": CONCURRENT, "ray_node_ip": node_ip, "space": "smoke (scheduler FIFO, epochs overridden)",
                   "dataset": split.stats(), "memory_trials": args.memory_trials, "memory_nnz": args.memory_nnz,
                   "memory_dataset_bytes": dataset_bytes, "tiny": args.tiny},
        "results": {"time": before, "time_with_reuse": summary, "reuse_actors": reuse, "ray_trials": fresh["trials"],
                    "ray_trials_with_reuse": search["trials"], "direct_runs": direct["runs"],
                    "memory": {"dataset_bytes": dataset_bytes, "cases": cases, "verdict": verdict}},
    }
    path = write_result("ray_overhead", payload, argv, args.out)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
