"""ASHA settings replayed on FIFO searches: the epochs each (grace period, reduction factor) would train over
FIFO's own trials, and whether it keeps FIFO's winner.

    python -m bench.asha_replay --work /work/runs/sched20x40           # the FIFO searches of bench.scheduler_efficiency
    python -m bench.asha_replay --curves bench/results/asha_replay.json  # again, from the curves this bench saved

Every trial of a search trains with the same seed, so a configuration's validation curve is the same under
any scheduler (bench.asha_vs_fifo's `asha_on_fifo_configs` relies on the same fact): ASHA over FIFO's
configurations, in FIFO's order, would have seen exactly FIFO's curves, cut short. The replay runs them two
at a time, as the searches do, each epoch taking the seconds it took in FIFO's run, and applies Ray's
asynchronous successive halving as `ray.tune.schedulers.AsyncHyperBandScheduler` does (one bracket): at each
rung (grace x rf^k < max_t, `tuning.hyperband.asha_rungs`), a trial goes on only if its value there is at least
the (1 - 1/rf) quantile of the values recorded at that rung so far (the first trial at a rung always goes
on). It does not replay the searcher: under ASHA, TPE sees shorter curves and proposes other points, which
the real runs of bench.scheduler_efficiency measure. Writes bench/results/asha_replay.json (with the curves).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import fmt, machine_info, print_table, write_result
from tuning import experiment
from tuning.hyperband import asha_rungs

METRIC = "ndcg@100"
GRACE = (2, 3, 4, 5, 8)
RF = (2, 3, 4, 5)
CONCURRENT = 2


def read_curves(exp: Path) -> list[dict[str, Any]]:
    """Each trial of a FIFO experiment, in creation order: its validation values and epoch seconds."""
    out = []
    for t in experiment.read_trials(str(exp)):
        rows = [r for r in t.rows if isinstance(r.get(METRIC), (int, float))]
        out.append({"trial_id": t.trial_id, "values": [float(r[METRIC]) for r in rows],
                    "seconds": [float(r.get("epoch_time_s", 1.0)) + float(r.get("eval_time_s", 0.0)) for r in rows]})
    return out


def replay(curves: list[dict[str, Any]], grace: int, rf: float, max_t: int, concurrent: int = CONCURRENT) -> dict[str, Any]:
    """ASHA over `curves` (see the module docstring), `concurrent` trials at a time: the epochs each trains."""
    rungs = asha_rungs(grace, max_t, rf)
    recorded: dict[int, list[float]] = {r: [] for r in rungs}
    trained = {}
    queue = list(range(len(curves)))
    running: list[tuple[float, int, int]] = []   # (time its next epoch ends, trial, that epoch)

    def start(i: int, at: float) -> None:
        running.append((at + curves[i]["seconds"][0], i, 1))

    for _ in range(min(concurrent, len(queue))):   # a trial holds its slot until it stops; FIFO's order
        start(queue.pop(0), 0.0)
    while running:
        running.sort()
        now, i, epoch = running.pop(0)
        value = curves[i]["values"][epoch - 1]
        stop = epoch >= min(max_t, len(curves[i]["values"]))
        if epoch in recorded:
            seen = recorded[epoch]
            if seen and value < float(np.nanpercentile(seen, (1 - 1 / rf) * 100)):
                stop = True
            seen.append(value)
        if stop:
            trained[i] = epoch
            if queue:
                start(queue.pop(0), now)
        else:
            running.append((now + curves[i]["seconds"][epoch], i, epoch + 1))
    return {"rungs": rungs, "epochs": [trained[i] for i in range(len(curves))]}


def summarize(curves: list[dict[str, Any]], epochs: list[int]) -> dict[str, Any]:
    fifo_best = max(range(len(curves)), key=lambda i: max(curves[i]["values"]))
    best_of = [max(c["values"][:e]) for c, e in zip(curves, epochs)]
    pick = max(range(len(curves)), key=lambda i: best_of[i])
    return {"epochs_trained": sum(epochs), "share_of_fifo": sum(epochs) / sum(len(c["values"]) for c in curves),
            "pick": curves[pick]["trial_id"], "pick_is_fifos_winner": pick == fifo_best,
            "pick_val": best_of[pick], "fifo_best_val": max(curves[fifo_best]["values"]),
            "winner_epochs": epochs[fifo_best]}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.asha_replay", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--work", help="bench.scheduler_efficiency's --work folder (reads ray_results/fifo-seed<N>)")
    src.add_argument("--curves", help="a JSON this bench wrote (its `curves`)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--grace", type=int, nargs="+", default=list(GRACE))
    p.add_argument("--rf", type=float, nargs="+", default=list(RF))
    p.add_argument("--out", default=None, help="folder for the JSON (default bench/results)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.work:
        curves = {s: read_curves(Path(args.work) / "ray_results" / f"fifo-seed{s}") for s in args.seeds}
        curves = {s: c for s, c in curves.items() if c}
    else:
        curves = {int(s): c for s, c in json.loads(Path(args.curves).read_text())["results"]["curves"].items()}
    if not curves:
        sys.exit("no FIFO search found")
    max_t = max(len(c["values"]) for cs in curves.values() for c in cs)
    rows, results = [], []
    for grace, rf in itertools.product(args.grace, args.rf):
        if grace >= max_t or not asha_rungs(grace, max_t, rf):
            continue
        per_seed = {s: summarize(cs, replay(cs, grace, rf, max_t)["epochs"]) for s, cs in curves.items()}
        shares = [r["share_of_fifo"] for r in per_seed.values()]
        gaps = [r["fifo_best_val"] - r["pick_val"] for r in per_seed.values()]
        kept = sum(r["pick_is_fifos_winner"] for r in per_seed.values())
        results.append({"grace": grace, "rf": rf, "rungs": asha_rungs(grace, max_t, rf), "per_seed": per_seed,
                        "median_share": float(np.median(shares)), "median_val_gap": float(np.median(gaps))})
        rows.append([grace, fmt(rf), " ".join(map(str, asha_rungs(grace, max_t, rf))), f"{np.median(shares):.2f}",
                     " ".join(f"{x:.2f}" for x in shares), f"{kept}/{len(per_seed)}", " ".join(f"{g:.4f}" for g in gaps)])
    print(f"ASHA replayed over FIFO's trials ({', '.join(f'seed {s}: {len(c)} trials' for s, c in curves.items())}, "
          f"max_t {max_t}); share = ASHA's epochs / FIFO's")
    print_table(["grace", "rf", "rungs", "median share", "share per seed", "keeps FIFO's winner",
                 f"FIFO's best val {METRIC} - the pick's, per seed"], rows)
    payload = {"machine": machine_info(), "config": {"seeds": sorted(curves), "max_t": max_t, "concurrent": CONCURRENT},
               "results": {"settings": results, "curves": {str(s): c for s, c in curves.items()}}}
    path = write_result("asha_replay", payload, argv, args.out)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
