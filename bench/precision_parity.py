"""Quality parity of the training precisions on ML-1M: Mult-VAE and Mult-DAE, 200 epochs, 3 seeds each.

    python -m bench.precision_parity --run --data-dir /work/shared/datasets    # train what is missing, then the table
    python -m bench.precision_parity                                           # only read runs/parity/*/metrics.json back
    python -m bench.precision_parity --run --models vae --epochs 30 --seeds 98765 --root runs/parity30   # the short table

Every run is `python -m multivae.train --dataset ml-1m --data-dir DATA --model M --precision P --seed S
--out <root>/<M>-<P>-<S> --quiet --threads 1` (niced, `--jobs` at a time; a run whose metrics.json exists is
read back, not retrained). P is every precision a user can select, run as the user runs it on the machine at
hand: fp32, bf16 (real autocast, also on a CPU without bf16 matmul units, where it is right but slow) and
bf16-sim. Prints test NDCG@100 / Recall@20 / Recall@50 (mean over seeds ± the per-user standard error, and the
std over seeds), s/epoch and its ratio to fp32's, popularity on the same users, and the gate for each precision
against fp32: |delta mean NDCG@100| <= 0.003 and no seed below fp32's worst seed by more than 0.005.
Writes bench/results/precision_parity.json (or precision_parity-<root name>.json for another --root).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import machine_info, print_table, write_result
from multivae.precision import PRECISIONS, cpu_has_bf16_matmul

SEEDS = (98765, 1, 2)
MODELS = ("vae", "dae")
METRICS = ("ndcg@100", "recall@20", "recall@50")
GATE_MEAN = 0.003        # |mean NDCG@100 - fp32's| at most this
GATE_WORST = 0.005       # no seed below fp32's worst seed by more than this


def run_dir(root: Path, model: str, precision: str, seed: int) -> Path:
    return root / f"{model}-{precision}-{seed}"


def command(model: str, precision: str, seed: int, data_dir: str, root: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "multivae.train", "--dataset", "ml-1m", "--data-dir", data_dir, "--model", model,
            "--precision", precision, "--seed", str(seed), "--epochs", str(epochs), "--out", str(run_dir(root, model, precision, seed)),
            "--quiet", "--threads", "1", "--overwrite"]


def run_missing(todo: list[list[str]], jobs: int, log_dir: Path) -> None:
    """At most `jobs` training processes at a time, each at nice 5; stops at the first failure."""
    log_dir.mkdir(parents=True, exist_ok=True)
    running: list[tuple[subprocess.Popen, list[str]]] = []
    queue = list(todo)
    while queue or running:
        while queue and len(running) < jobs:
            cmd = queue.pop(0)
            name = Path(cmd[cmd.index("--out") + 1]).name
            log = open(log_dir / f"{name}.log", "w")
            print(f"start {name}", flush=True)
            running.append((subprocess.Popen(["nice", "-n", "5", *cmd], stdout=log, stderr=subprocess.STDOUT), cmd))
        time.sleep(2)
        for proc, cmd in list(running):
            if proc.poll() is not None:
                running.remove((proc, cmd))
                name = Path(cmd[cmd.index("--out") + 1]).name
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed (exit {proc.returncode}); see {log_dir / name}.log")
                print(f"done  {name}", flush=True)


def aggregate(root: Path, precisions: list[str], seeds: tuple[int, ...] = SEEDS) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for model in MODELS:
        for precision in precisions:
            runs = {}
            for seed in seeds:
                path = run_dir(root, model, precision, seed) / "metrics.json"
                if path.exists():
                    runs[seed] = json.loads(path.read_text())
            if not runs:
                continue
            row: dict[str, Any] = {"model": model, "precision": precision, "seeds": list(runs)}
            for m in METRICS:
                vals = [r["test"][m] for r in runs.values()]
                ses = [r["test"].get(f"{m}_se", float("nan")) for r in runs.values()]
                row[m] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "values": vals,
                          "se": statistics.fmean(ses)}
            pops = [r["popularity"]["test"] for r in runs.values() if "popularity" in r]
            if pops:     # the same users for every run of the split: one popularity row per model
                row["popularity"] = {m: {"mean": pops[0][m], "se": pops[0].get(f"{m}_se", float("nan"))} for m in METRICS}
            row["best_epoch"] = [r["best"]["epoch"] for r in runs.values()]
            row["time_per_epoch_s"] = statistics.fmean(r["time_per_epoch_s"] for r in runs.values())
            row["eval_time_per_epoch_s"] = statistics.fmean(r["eval_time_per_epoch_s"] for r in runs.values())
            table[f"{model}/{precision}"] = row
    for key, row in table.items():
        ref = table.get(f"{row['model']}/fp32")
        if row["precision"] == "fp32" or ref is None:
            continue
        delta = row["ndcg@100"]["mean"] - ref["ndcg@100"]["mean"]
        worst_gap = min(row["ndcg@100"]["values"]) - min(ref["ndcg@100"]["values"])
        row["time_vs_fp32"] = row["time_per_epoch_s"] / ref["time_per_epoch_s"]
        complete = len(row["seeds"]) == len(ref["seeds"]) == len(seeds)
        row["gate"] = {"delta_mean_ndcg@100": delta, "worst_seed_minus_fp32_worst": worst_gap, "complete": complete,
                       "passes": complete and abs(delta) <= GATE_MEAN and worst_gap >= -GATE_WORST}
    return table


def print_parity(table: dict[str, Any]) -> None:
    headers = ["model", "precision", "seeds", "NDCG@100 ± SE", "std over seeds", "Recall@20", "Recall@50", "best epochs",
               "s/epoch train", "x fp32", "delta NDCG@100", "worst - fp32 worst", "gate"]
    rows = []
    for row in table.values():
        g = row.get("gate", {})
        rows.append([row["model"], row["precision"], len(row["seeds"]),
                     f"{row['ndcg@100']['mean']:.4f} ± {row['ndcg@100']['se']:.4f}", f"{row['ndcg@100']['std']:.4f}",
                     *(f"{row[m]['mean']:.4f} ± {row[m]['se']:.4f}" for m in METRICS[1:]), ",".join(map(str, row["best_epoch"])),
                     f"{row['time_per_epoch_s']:.2f}", f"{row['time_vs_fp32']:.2f}" if "time_vs_fp32" in row else "",
                     f"{g['delta_mean_ndcg@100']:+.4f}" if g else "", f"{g['worst_seed_minus_fp32_worst']:+.4f}" if g else "",
                     ("pass" if g["passes"] else ("fail" if g["complete"] else "incomplete")) if g else ""])
    for model in MODELS:
        pop = next((r["popularity"] for r in table.values() if r["model"] == model and "popularity" in r), None)
        if pop:
            rows.append([model, "popularity", "", f"{pop['ndcg@100']['mean']:.4f} ± {pop['ndcg@100']['se']:.4f}", "",
                         *(f"{pop[m]['mean']:.4f} ± {pop[m]['se']:.4f}" for m in METRICS[1:]), "", "", "", "", "", ""])
    print_table(headers, rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m bench.precision_parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="store_true", help="train the runs that have no metrics.json yet")
    p.add_argument("--data-dir", default=os.environ.get("MULTIVAE_DATA_DIR", "../shared/datasets"))
    p.add_argument("--root", default="runs/parity")
    p.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS),
                   help="default: all three, bf16 as users run it here (slow but right where the CPU has no bf16 units)")
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--jobs", type=int, default=2, help="training processes at a time (default 2)")
    p.add_argument("--out", default=None, help="folder for the JSON (default bench/results)")
    args = p.parse_args(argv)
    root, seeds = Path(args.root), tuple(args.seeds)
    if args.run:
        # seed by seed, so that a partial run still gives complete fp32 / bf16 pairs
        todo = [command(m, pr, s, args.data_dir, root, args.epochs) for s in seeds for m in args.models for pr in args.precisions
                if not (run_dir(root, m, pr, s) / "metrics.json").exists()]
        run_missing(todo, args.jobs, root / "logs")
    table = aggregate(root, args.precisions, seeds)
    print_parity(table)
    payload = {"machine": machine_info() | {"cpu_has_bf16_matmul": cpu_has_bf16_matmul()},
               "config": {"dataset": "ml-1m (paper protocol, 600/600 held-out users)", "epochs": args.epochs,
               "seeds": list(seeds), "precisions": args.precisions, "gate": {"mean": GATE_MEAN, "worst_seed": GATE_WORST},
               "command": "python -m multivae.train --dataset ml-1m --data-dir DATA --model M --precision P --seed S --quiet --threads 1"},
               "rows": table}
    name = "precision_parity" if root.name == "parity" else f"precision_parity-{root.name}"
    path = write_result(name, payload, argv, args.out, module="precision_parity")
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
