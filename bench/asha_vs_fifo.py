"""ASHA vs FIFO: the epochs a search trains before it has a trial within 1 % of the best validation NDCG@100.

    python -m bench.asha_vs_fifo                  # ML-1M from ../shared/datasets: 3 searches of 20 trials x 40 epochs, ~25 min
    python -m bench.asha_vs_fifo --tiny           # synthetic data, 4 trials x 6 epochs; about a minute

The product's search (`tuning.run.main`, what `python -m tuning.run` runs, with --num-cpus 2 and 2 trials at
a time) runs three times over one space that this bench writes into its work dir:
  fifo                  Optuna's TPE (seed 0); every trial trains max_t epochs
  asha                  the same space and seed; ASHA stops trials at its rungs
  asha_on_fifo_configs  ASHA over exactly FIFO's configurations, in FIFO's order (as points_to_evaluate)
The first two are the issue's "same space and seed", which need not give the same configurations: TPE
proposes from the results it has seen, and ASHA's stopped trials and earlier completions change those (the
JSON's `configurations_in_common` says how many were alike). The third isolates the scheduler: its comparison
with `fifo` differs only in which epochs get trained (every trial has the same training seed, so a
configuration trains the same way under both).

Compute is counted in epochs (one epoch = training + validation), so the space holds only parameters that
leave an epoch's cost about the same (no batch size, hidden width or likelihood). Every reported epoch is
logged with the driver's clock as it arrives (Ray's own `timestamp` has whole seconds, too coarse for 1-2 s
epochs of 2 trials at once); in that order, the epochs trained so far are added up until the first epoch
whose validation NDCG@100 is >= 0.99 x the best that either search of a comparison found (and >= 0.99 x the
search's own best). Writes bench/results/asha_vs_fifo.json; the experiments stay in the work dir (see
`python -m tuning.report <work>/ray_results/<search>`; on ML-1M about 4 GB, mostly the trials' last checkpoints).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

# A local Ray must read this when it is imported: every connection then stays on 127.0.0.1 (RAY_NOTES.md).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import yaml  # noqa: E402
from ray import tune  # noqa: E402

from bench.common import REPO_ROOT, fmt, machine_info, print_table, write_result  # noqa: E402
from tuning import experiment, run  # noqa: E402
from tuning.report import load_trials  # noqa: E402
from tuning.hyperband import asha_rungs  # noqa: E402

METRIC = "ndcg@100"
WITHIN = 0.99          # "within 1 % of the best"
GOAL = 0.40            # ASHA's epochs to that point, as a share of FIFO's
NUM_CPUS = 2
SHARED_DATA = REPO_ROOT.parent / "shared" / "datasets"

# default.yaml's ranges for the parameters that do not change an epoch's cost. anneal_steps is fixed so the KL
# weight is at its cap by epoch 10 (about 10 updates of 500 users per epoch): default.yaml's comment explains
# how a slower schedule misleads ASHA's early comparisons; here every trial is at the same annealing stage.
FULL = {
    "dataset": {"name": "ml-1m", "protocol": {"heldout_users": 600}},
    "fixed": {"epochs": 40, "batch_size": 500, "anneal_steps": 100},
    "params": {
        "lr": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-2},
        "anneal_cap": {"type": "uniform", "low": 0.0, "high": 1.0},
        "dropout": {"type": "uniform", "low": 0.0, "high": 0.8},
        "latent_dim": {"type": "choice", "values": [64, 100, 200, 300]},   # 3-11 % of the weights; 3,497 x 600 x 2 dominate
        "weight_decay": {"type": "choice", "values": [0.0, 1.0e-6, 1.0e-5, 1.0e-4]},
    },
    "search": {"num_samples": 20, "max_concurrent": 2},
    # rungs at epochs 5 and 15: 1/3 of the trials pass each, so ideally 28 % of FIFO's epochs
    "asha": {"grace_period": 5, "reduction_factor": 3},
}
TINY = {   # smoke.yaml's synthetic set
    "dataset": {"name": "synthetic", "synthetic": {"n_users": 1500, "n_items": 600, "n_topics": 12, "seed": 0},
                "protocol": {"heldout_users": 150}, "cache": False},
    "fixed": {"epochs": 6, "batch_size": 100, "anneal_steps": 36, "eval_batch_size": 500, "hidden_dims": [64]},
    "params": {
        "lr": {"type": "loguniform", "low": 1.0e-3, "high": 1.0e-2},
        "anneal_cap": {"type": "uniform", "low": 0.0, "high": 0.5},
        "dropout": {"type": "uniform", "low": 0.2, "high": 0.6},
        "latent_dim": {"type": "choice", "values": [16, 32]},
    },
    "search": {"num_samples": 4, "max_concurrent": 2},
    "asha": {"grace_period": 2, "reduction_factor": 2},
}


def epochs_to_reach(epochs: Iterable[tuple[float, float]], target: float) -> int | None:
    """The epochs trained in all (every trial's, counted in completion order) up to and including the first
    one whose value is >= `target`; None if none is. `epochs`: (completion time, value), one per epoch."""
    for n, (_, value) in enumerate(sorted(epochs, key=lambda e: e[0]), start=1):
        if value >= target:
            return n
    return None


class EpochLog(tune.Callback):
    """Every result a trial reports (one per epoch), timed with the driver's clock when it arrives."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.epochs: list[tuple[float, float]] = []              # (time, validation NDCG@100)
        self.trials: dict[str, dict[str, Any]] = {}
        self.ended = 0

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.epochs.append((time.time(), float(result[METRIC])))
        t = self.trials.setdefault(trial.trial_id, {"trial_id": trial.trial_id, "config": dict(trial.config), "epochs": 0,
                                                    f"best_{METRIC}": float("-inf")})
        t["epochs"] = int(result["epoch"])
        t[f"best_{METRIC}"] = max(t[f"best_{METRIC}"], float(result[METRIC]))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        t, self.ended = self.trials.get(trial.trial_id, {}), self.ended + 1
        print(f"  {self.name}: {self.ended} trials ended; {trial.trial_id} at epoch {t.get('epochs')}, best "
              f"{t.get(f'best_{METRIC}', float('nan')):.4f}; {len(self.epochs)} epochs trained so far", flush=True)


def space_yaml(base: dict[str, Any], scheduler: str, seed: int, points: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    epochs = base["fixed"]["epochs"]
    search = {**base["search"], "seed": seed, "metric": METRIC, "mode": "max"}
    if points:
        search |= {"num_samples": len(points), "points_to_evaluate": points}
    return {
        "description": f"bench.asha_vs_fifo: {scheduler}" + (", FIFO's configurations" if points else ""),
        "dataset": base["dataset"], "fixed": base["fixed"], "params": base["params"], "search": search,
        "scheduler": {"type": "asha", "max_t": epochs, **base["asha"]} if scheduler == "asha" else {"type": "fifo"},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
        "checkpoint": {"every": epochs, "keep": 1},   # the last epoch and ASHA's rungs: enough to test the best trial
    }


def run_search(name: str, space: dict[str, Any], work: Path, data_dir: str | None,
               log: "EpochLog | None" = None) -> tuple[dict[str, Any], list[tuple[float, float]]]:
    """One search through the product's CLI code path; its summary and its epoch log (`log`: a subclass's)."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    argv = ["--space", str(path), "--storage", str(work / "ray_results"), "--name", name, "--num-cpus", str(NUM_CPUS),
            "--cache-dir", str(work / "cache"), "--quiet", "--overwrite", *(["--data-dir", data_dir] if data_dir else [])]
    print(f"\n{name}: python -m tuning.run {' '.join(argv)}", flush=True)
    log = log or EpochLog(name)
    t0 = time.perf_counter()
    rc = run.main(argv, callbacks=[log])
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"the {name} search ended with exit status {rc}")
    exp = work / "ray_results" / name
    res = json.loads((exp / experiment.RESULTS).read_text())
    summary = {
        "experiment": str(exp), "space_file": str(path), "scheduler": res["scheduler"], "trials": res["trials"],
        "epochs_trained": len(log.epochs), f"best_val_{METRIC}": max(v for _, v in log.epochs),
        "best_trial": {"trial_id": res["best_trial"]["trial_id"], "config": res["best_trial"]["config"],
                       f"test_{METRIC}": res["test"][METRIC]},
        "wall_s": {"search": res["wall_time_s"]["search"], "total": wall},
        "per_trial": list(log.trials.values()),
    }
    return summary, log.epochs


def compare(fifo: tuple[dict, list], asha: tuple[dict, list]) -> dict[str, Any]:
    """Epochs each needs to come within 1 % of the best of both (and of its own best); ASHA / FIFO ratios."""
    best = max(fifo[0][f"best_val_{METRIC}"], asha[0][f"best_val_{METRIC}"])
    out: dict[str, Any] = {f"best_val_{METRIC}": best, "target": WITHIN * best}
    for label, (s, epochs) in (("fifo", fifo), ("asha", asha)):
        out[label] = {"epochs_to_target": epochs_to_reach(epochs, WITHIN * best),
                      "epochs_to_own_target": epochs_to_reach(epochs, WITHIN * s[f"best_val_{METRIC}"]),
                      "epochs_trained": s["epochs_trained"]}

    def ratio(key: str) -> float | None:
        a, f = out["asha"][key], out["fifo"][key]
        return None if a is None or f is None else a / f
    out["ratio_asha_over_fifo"] = {k: ratio(k) for k in ("epochs_to_target", "epochs_to_own_target", "epochs_trained")}
    r = out["ratio_asha_over_fifo"]["epochs_to_target"]
    out["goal_met"] = r is not None and r <= GOAL
    configs = [Counter(json.dumps(t["config"], sort_keys=True) for t in s["per_trial"]) for s in (fifo[0], asha[0])]
    out["configurations_in_common"] = sum((configs[0] & configs[1]).values())
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.asha_vs_fifo", description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="synthetic data, 4 trials x 6 epochs (what the test runs)")
    p.add_argument("--data-dir", default=str(SHARED_DATA) if SHARED_DATA.is_dir() else None,
                   help="folder holding ml-1m/ (default ../shared/datasets when there, else the product's default)")
    p.add_argument("--seed", type=int, default=0, help="the TPE sampler's seed, the same for both searches")
    p.add_argument("--work", help="folder for the spaces, experiments and data cache (default: a new folder in /tmp)")
    p.add_argument("--out", default=None, help="folder for the JSON (default bench/results)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    base = TINY if args.tiny else FULL
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="asha_vs_fifo-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    data_dir = None if args.tiny else args.data_dir
    max_t = base["fixed"]["epochs"]
    rungs = asha_rungs(base["asha"]["grace_period"], max_t, base["asha"]["reduction_factor"])
    print(f"work dir {work}; {base['search']['num_samples']} trials x {max_t} epochs per search, "
          f"{base['search']['max_concurrent']} at a time on {NUM_CPUS} CPUs; ASHA rungs at epochs {rungs}")

    fifo = run_search("fifo", space_yaml(base, "fifo", args.seed), work, data_dir)
    asha = run_search("asha", space_yaml(base, "asha", args.seed), work, data_dir)
    # FIFO's trials in their order, each with the searched parameters only (points_to_evaluate needs exactly those)
    points = [{k: t.config[k] for k in base["params"]} for t in load_trials(Path(fifo[0]["experiment"]), max_t)]
    replay = run_search("asha_on_fifo_configs", space_yaml(base, "asha", args.seed, points), work, data_dir)

    searches = {"fifo": fifo, "asha": asha, "asha_on_fifo_configs": replay}
    comparisons = {"tpe_same_space_and_seed": compare(fifo, asha), "identical_configs": compare(fifo, replay)}

    print()
    print_table(["search", "trials", "stopped by ASHA", "epochs trained", "best val NDCG@100", "test NDCG@100 (its best trial)",
                 "search wall s"],
                [[k, s["trials"]["total"], s["trials"]["stopped_early"], s["epochs_trained"], f"{s[f'best_val_{METRIC}']:.4f}",
                  f"{s['best_trial'][f'test_{METRIC}']:.4f}", round(s["wall_s"]["search"])] for k, (s, _) in searches.items()])
    print()
    rows = []
    for label, c in comparisons.items():
        r = c["ratio_asha_over_fifo"]
        pct = lambda x: "not reached" if x is None else f"{100 * x:.0f} %"   # noqa: E731
        rows.append([label, f"{c['target']:.4f}", fmt(c["fifo"]["epochs_to_target"]), fmt(c["asha"]["epochs_to_target"]),
                     pct(r["epochs_to_target"]), pct(r["epochs_to_own_target"]), pct(r["epochs_trained"]),
                     "met" if c["goal_met"] else "NOT met"])
    print_table(["comparison (ASHA vs fifo)", "target: 0.99 x best", "FIFO epochs to target", "ASHA epochs to target",
                 "ASHA / FIFO", "ASHA / FIFO, each to 0.99 x own best", "ASHA / FIFO, epochs trained", f"goal ASHA <= {GOAL:.0%}"], rows)
    n = len(fifo[0]["per_trial"])
    notes = [
        f"tpe_same_space_and_seed: the same space and TPE seed; TPE proposes from the results it has seen, which differ "
        f"between the schedulers, and here it proposed {comparisons['tpe_same_space_and_seed']['configurations_in_common']} "
        f"of {n} configurations alike under both",
        "identical_configs: ASHA over FIFO's configurations in FIFO's order (points_to_evaluate): only the scheduler differs",
        "one seed per search: the epoch counts to the target depend on when the search happens to propose a good configuration",
    ]
    print("\n".join(f"note: {n}" for n in notes))

    payload = {
        "machine": machine_info(),
        "config": {"tiny": args.tiny, "seed": args.seed, "data_dir": data_dir, "work_dir": str(work), "num_cpus": NUM_CPUS,
                   "within": WITHIN, "goal_asha_over_fifo": GOAL, "max_t": max_t, "asha_rungs": rungs,
                   "space": space_yaml(base, "asha", args.seed)},
        "searches": {k: s for k, (s, _) in searches.items()},
        "comparisons": comparisons,
        "goal_met": comparisons["tpe_same_space_and_seed"]["goal_met"],
        "notes": notes,
    }
    path = write_result("asha_vs_fifo", payload, argv, args.out)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
