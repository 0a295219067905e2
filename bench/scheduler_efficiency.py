"""Schedulers compared over searcher seeds: the compute each spends before it has a trial within 1 % of the
best validation NDCG@100 any of them found, and the test NDCG@100 of the model each picks.

    python -m bench.scheduler_efficiency                       # ML-1M, 3 seeds x 4 schedulers, 12 trials x 20 epochs
    python -m bench.scheduler_efficiency --seeds 0 1 2 --trials 20 --epochs 40     # the issue's full budget
    python -m bench.scheduler_efficiency --tiny                # synthetic, 1 seed, 4 trials x 6 epochs (the test)

Every search runs through the product's code path (`tuning.run.main`, 2 trials at a time on 2 CPUs) over
bench.asha_vs_fifo's space (parameters that leave an epoch's cost the same, so epochs are a fair unit of
compute), with the same trial budget for each scheduler:
  fifo  Optuna's TPE, every trial to max_t
  asha  Optuna's TPE, ASHA (grace max_t/8, reduction factor 3)
  bohb  TuneBOHB + HyperBandForBOHB (reduction factor 3)
  pbt   random population, PBT every max_t/5 epochs over lr, dropout and the anneal cap
Compute is counted in epochs (every reported epoch, also those a PBT trial retrains after copying another)
and in CPU seconds inside them (the epochs' `epoch_time_s` + `eval_time_s`, 1 thread each), in the order
the driver received them, up to the first epoch whose validation NDCG@100 >= 0.99 x the best any search of
that seed found. Median and range over the seeds per scheduler, each scheduler's compute as a share of
FIFO's (the goal: ASHA <= 40 %), and the test NDCG@100 (± standard error over the 600 test users) of the
model each search picks, beside EASE (the yardstick every search computes) and the paper configuration
(bench/results/reproduction.json when it is there). Writes bench/results/scheduler_efficiency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"   # before Ray is imported (RAY_NOTES.md)

from bench.asha_vs_fifo import FULL, GOAL, METRIC, SHARED_DATA, TINY, WITHIN, EpochLog, run_search  # noqa: E402
from bench.common import REPO_ROOT, fmt, machine_info, print_table, write_result  # noqa: E402

SCHEDULERS = ("fifo", "asha", "bohb", "pbt")


class TimedEpochLog(EpochLog):
    """EpochLog plus the seconds inside each epoch (training + validation)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.seconds: list[tuple[float, float, float]] = []   # (time, value, epoch seconds)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        super().on_trial_result(iteration, trials, trial, result, **info)
        self.seconds.append((time.time(), float(result[METRIC]), float(result["epoch_time_s"]) + float(result["eval_time_s"])))


def compute_to_reach(log: list[tuple[float, float, float]], target: float) -> tuple[int | None, float | None]:
    """(epochs, seconds) trained in all up to and including the first epoch >= target; (None, None) if never."""
    seconds = 0.0
    for n, (_, value, s) in enumerate(sorted(log), start=1):
        seconds += s
        if value >= target:
            return n, seconds
    return None, None


def space(base: dict[str, Any], scheduler: str, seed: int, trials: int, epochs: int,
          asha: tuple[int | None, float] = (None, 3)) -> dict[str, Any]:
    """`asha`: (grace period, reduction factor); grace None = max_t / 8."""
    sched: dict[str, Any] = {"type": scheduler}
    checkpoint = {"every": epochs, "keep": 1}   # the last epoch (and the rungs): enough to test the best trial
    if scheduler == "asha":
        grace, rf = asha
        sched |= {"max_t": epochs, "grace_period": grace or max(1, epochs // 8), "reduction_factor": rf}
    elif scheduler == "bohb":
        sched |= {"max_t": epochs, "reduction_factor": 3}
    elif scheduler == "pbt":
        interval = max(1, epochs // 5)
        sched |= {"perturbation_interval": interval, "mutations": ["lr", "dropout", "anneal_cap"]}
        checkpoint = {"every": interval, "keep": 4}
    return {
        "description": f"bench.scheduler_efficiency: {scheduler}, seed {seed}",
        "dataset": base["dataset"], "fixed": {**base["fixed"], "epochs": epochs}, "params": base["params"],
        "search": {"num_samples": trials, "max_concurrent": 2, "seed": seed, "metric": METRIC, "mode": "max"},
        "scheduler": sched, "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0}, "checkpoint": checkpoint,
    }


def one_search(name: str, data: dict, work: Path, data_dir: str | None) -> dict[str, Any]:
    """One search's summary; kept in `work` so that a rerun with the same --work skips the searches that
    finished with the same space."""
    done = work / f"{name}.summary.json"
    if done.exists():
        kept = json.loads(done.read_text())
        if kept.get("space") == json.loads(json.dumps(data)):
            return kept
    log = TimedEpochLog(name)
    summary, _ = run_search(name, data, work, data_dir, log=log)
    res = json.loads((Path(summary["experiment"]) / "results.json").read_text())
    summary |= {"log": log.seconds, "test_se": res["test"][f"{METRIC}_se"], "val": res["val"][METRIC],
                "ease_test": res["ease"]["test"][METRIC] if res.get("ease") else None,
                "ease_test_se": res["ease"]["test"][f"{METRIC}_se"] if res.get("ease") else None,
                "ease_val": res["ease"]["val"][METRIC] if res.get("ease") else None}
    done.write_text(json.dumps(summary | {"space": data}, default=str))
    return summary


def spread(xs: list[float | None]) -> dict[str, Any]:
    got = [x for x in xs if x is not None]
    if not got:
        return {"median": None, "min": None, "max": None, "n": 0, "reached": 0}
    return {"median": statistics.median(got), "min": min(got), "max": max(got), "n": len(xs), "reached": len(got)}


def mr(d: dict, digits: int = 0) -> str:
    """'median [min, max]' of a spread, '(reached/n)' when some seeds never got there, 'never' if none did."""
    if d["median"] is None:
        return "never"
    f = (lambda x: f"{x:.{digits}f}")
    return f"{f(d['median'])} [{f(d['min'])}, {f(d['max'])}]" + ("" if d["reached"] == d["n"] else f" ({d['reached']}/{d['n']})")


def pairwise_share(run: dict, fifo: dict) -> float | None:
    """Epochs `run` spends to come within 1 % of the better of itself and FIFO (same seed), over FIFO's epochs to
    the same target (asha_vs_fifo's measure): defined even when a third scheduler found a far better trial."""
    target = WITHIN * max(run[f"best_val_{METRIC}"], fifo[f"best_val_{METRIC}"])
    mine, theirs = compute_to_reach(run["log"], target)[0], compute_to_reach(fifo["log"], target)[0]
    return mine / theirs if mine and theirs else None


def aggregate(runs: dict[str, dict[int, dict]], seeds: list[int], schedulers: list[str]
              ) -> tuple[dict[str, Any], dict[int, dict], list[list[str]]]:
    """Per seed, the target (WITHIN x the best validation value any scheduler found) and each search's compute
    to reach it (added to `runs`); per scheduler, median and range over seeds; the printed table's rows."""
    per_seed = {}
    for seed in seeds:
        best = max(runs[s][seed][f"best_val_{METRIC}"] for s in schedulers)
        per_seed[seed] = {"best_val": best, "target": WITHIN * best}
        for s in schedulers:
            e, sec = compute_to_reach(runs[s][seed]["log"], WITHIN * best)
            runs[s][seed] |= {"epochs_to_target": e, "seconds_to_target": sec}
    table, summary = [], {}
    for s in schedulers:
        share = [(runs[s][k]["epochs_to_target"] / runs["fifo"][k]["epochs_to_target"])
                 if "fifo" in runs and runs[s][k]["epochs_to_target"] and runs["fifo"][k]["epochs_to_target"] else None
                 for k in seeds]
        pairwise = [pairwise_share(runs[s][k], runs["fifo"][k]) if "fifo" in runs else None for k in seeds]
        summary[s] = {"epochs_to_target": spread([runs[s][k]["epochs_to_target"] for k in seeds]),
                      "seconds_to_target": spread([runs[s][k]["seconds_to_target"] for k in seeds]),
                      "share_of_fifo_epochs": spread(share),
                      "share_of_fifo_epochs_pairwise": spread(pairwise),
                      "epochs_trained": spread([runs[s][k]["epochs_trained"] for k in seeds]),
                      "best_val": spread([runs[s][k][f"best_val_{METRIC}"] for k in seeds]),
                      "picked_test": spread([runs[s][k]["best_trial"][f"test_{METRIC}"] for k in seeds]),
                      "picked_test_se": spread([runs[s][k]["test_se"] for k in seeds]),
                      "wall_s": spread([runs[s][k]["wall_s"]["total"] for k in seeds])}
        m = summary[s]
        table.append([s, mr(m["epochs_to_target"]), mr(m["seconds_to_target"]), mr(m["share_of_fifo_epochs"], 2),
                      mr(m["share_of_fifo_epochs_pairwise"], 2),
                      mr(m["epochs_trained"]), mr(m["best_val"], 4), mr(m["picked_test"], 4) + f" ± {m['picked_test_se']['median']:.4f}",
                      mr(m["wall_s"])])
    return summary, per_seed, table


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scheduler_efficiency", description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="synthetic data, 1 seed, 4 trials x 6 epochs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="searcher seeds (default 0 1 2)")
    p.add_argument("--trials", type=int, default=12, help="trials per search (default 12)")
    p.add_argument("--epochs", type=int, default=20, help="max_t, the epochs of a full trial (default 20)")
    p.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS), choices=SCHEDULERS)
    p.add_argument("--data-dir", default=str(SHARED_DATA) if SHARED_DATA.is_dir() else None)
    p.add_argument("--work", help="folder for the spaces and experiments (default: a new folder in /tmp); "
                                  "rerun with the same folder to skip the searches that finished")
    p.add_argument("--asha-grace", type=int, default=None, help="ASHA's grace period (default max_t / 8)")
    p.add_argument("--asha-rf", type=float, default=3, help="ASHA's reduction factor (default 3)")
    p.add_argument("--tag", default="", help="a suffix for the JSON's name and the searches' names (other settings)")
    p.add_argument("--out", default=None, help="folder for the JSON (default bench/results)")
    args = p.parse_args(argv)
    if args.tiny:
        args.seeds, args.trials, args.epochs = args.seeds[:1], 4, 6
    if args.trials < 1 or args.epochs < 5:
        p.error("--trials must be >= 1 and --epochs >= 5")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    base = TINY if args.tiny else FULL
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="sched-eff-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    data_dir = None if args.tiny else args.data_dir
    t0 = time.perf_counter()
    runs: dict[str, dict[int, dict]] = {s: {} for s in args.schedulers}
    for seed in args.seeds:
        for sched in args.schedulers:
            name = f"{sched}{'-' + args.tag if args.tag and sched == 'asha' else ''}-seed{seed}"
            runs[sched][seed] = one_search(name, space(base, sched, seed, args.trials, args.epochs,
                                                       (args.asha_grace, args.asha_rf)), work, data_dir)
    summary, per_seed, table = aggregate(runs, args.seeds, args.schedulers)
    any_run = runs[args.schedulers[0]][args.seeds[0]]
    ease = {"test": any_run["ease_test"], "test_se": any_run["ease_test_se"], "val": any_run["ease_val"]}
    paper = None
    repro = REPO_ROOT / "bench" / "results" / "reproduction.json"
    if repro.exists() and not args.tiny:
        paper = {"source": str(repro.relative_to(REPO_ROOT)), "note": "the paper configuration's row of bench/results/reproduction.json"}
    wall = time.perf_counter() - t0
    print(f"\n{len(args.seeds)} seeds x {len(args.schedulers)} schedulers, {args.trials} trials x {args.epochs} epochs each; "
          f"median [min, max] over seeds; target = {WITHIN:.2f} x the best validation {METRIC} of the seed's searches")
    print_table(["scheduler", "epochs to target", "CPU s to target", "share of FIFO's epochs",
                 "share of FIFO's epochs, pairwise", "epochs trained",
                 f"best val {METRIC}", f"test {METRIC} of the pick", "wall s"], table)
    if ease["test"] is not None:
        print(f"EASE (λ chosen on validation, same users): val {fmt(ease['val'])}, test {fmt(ease['test'])} ± {fmt(ease['test_se'])}")
    for key, label in (("share_of_fifo_epochs", "to the target"), ("share_of_fifo_epochs_pairwise", "to the better of the two")):
        share = summary.get("asha", {}).get(key, {}).get("median")
        if share is not None:
            print(f"ASHA / FIFO epochs {label} (median over the seeds where both got there): {share:.2f}; "
                  f"goal <= {GOAL}: {'met' if share <= GOAL else 'not met'}")
    print(f"wall time {wall / 60:.1f} min; command: python -m bench.scheduler_efficiency {' '.join(argv)}")
    for s in runs.values():
        for r in s.values():
            r.pop("log", None)
    payload = {"machine": machine_info(),
               "config": {"tiny": args.tiny, "seeds": args.seeds, "trials": args.trials, "epochs": args.epochs,
                          "schedulers": args.schedulers, "asha_grace": args.asha_grace, "asha_rf": args.asha_rf, "within": WITHIN, "goal_asha_over_fifo": GOAL,
                          "work_dir": str(work), "data_dir": data_dir},
               "results": {"summary": summary, "per_seed": per_seed, "runs": runs, "ease": ease, "paper": paper,
                           "wall_s": wall}}
    path = write_result("scheduler_efficiency" + (f"-{args.tag}" if args.tag else ""), payload, argv, args.out,
                        module="scheduler_efficiency")
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
