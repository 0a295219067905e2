"""The ML-1M reproduction table: popularity, Mult-DAE, Mult-VAE (paper config), Mult-VAE at beta*, 3 seeds.

    python -m bench.reproduction --run --data-dir ../shared/datasets     # train everything (about 1 h on 2 CPUs)
    python -m bench.reproduction                                          # only aggregate runs/repro/*/metrics.json

Each row is `python -m multivae.train` with the flags printed in the table; test metrics of the
best-by-validation epoch, mean +- std over the seeds. Writes bench/results/reproduction.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SEEDS = (98765, 1, 2)
ROWS = {   # row label -> (output prefix, extra flags)
    "Popularity": ("pop", ["--model", "popularity"]),
    "Mult-DAE (paper config)": ("dae", ["--model", "dae"]),
    "Mult-VAE (paper config, beta annealed to 0.2)": ("vae", []),
    "Mult-VAE at beta* (anneal to 1, retrain at beta*)": ("betastar", ["--beta-star"]),
}
METRICS = ("ndcg@100", "recall@20", "recall@50")


def command(prefix: str, flags: list[str], seed: int | None, data_dir: str, root: Path) -> list[str]:
    out = root / (prefix if seed is None else f"{prefix}-{seed}")
    seed_flags = [] if seed is None else ["--seed", str(seed)]
    return [sys.executable, "-m", "multivae.train", "--dataset", "ml-1m", "--data-dir", data_dir, "--quiet", "--threads", "1",
            *flags, *seed_flags, "--out", str(out), "--overwrite"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="store_true", help="train the runs first (else only aggregate)")
    p.add_argument("--data-dir", default="../shared/datasets")
    p.add_argument("--root", default="runs/repro")
    p.add_argument("--out", default="bench/results/reproduction.json")
    args = p.parse_args(argv)
    root = Path(args.root)
    table = {}
    for label, (prefix, flags) in ROWS.items():
        seeds = [None] if prefix == "pop" else list(SEEDS)
        runs = []
        for seed in seeds:
            if args.run:
                subprocess.run(command(prefix, flags, seed, args.data_dir, root), check=True)
            path = root / (prefix if seed is None else f"{prefix}-{seed}") / "metrics.json"
            if path.exists():
                runs.append(json.loads(path.read_text()))
        if not runs:
            continue
        row = {"runs": len(runs), "command": " ".join(["python -m multivae.train --dataset ml-1m --data-dir DATA", *flags] +
                                                      ([] if prefix == "pop" else ["--seed S"]))}
        for m in METRICS:
            vals = [r["test"][m] for r in runs]
            row[m] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "values": vals}
        if prefix != "pop":
            row["best_epoch"] = [r["best"]["epoch"] for r in runs]
            row["beta_at_best"] = [r["best"]["kl_weight"] for r in runs]
            row["time_per_epoch_s"] = statistics.fmean(r["time_per_epoch_s"] for r in runs)
            if prefix == "betastar":
                row["beta_star"] = [r["beta_star"]["value"] for r in runs]
        table[label] = row
    print(f"{'model':<52} {'n':>2} " + " ".join(f"{m:>17}" for m in METRICS) + "  s/epoch")
    for label, row in table.items():
        cells = " ".join(f"{row[m]['mean']:.4f} ± {row[m]['std']:.4f}" for m in METRICS)
        print(f"{label:<52} {row['runs']:>2} {cells}  {row.get('time_per_epoch_s', float('nan')):.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
