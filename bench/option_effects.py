"""What each Mult-VAE option buys on ML-1M: one option at a time on top of a fixed base, paired on the same users.

    python -m bench.option_effects                       # ML-1M from ../shared/datasets, 1 seed; about 40 min on 2 cores
    python -m bench.option_effects --seeds 0 1 2         # more seeds (a finished case and seed is kept and skipped)
    python -m bench.option_effects --tiny                # the synthetic smoke data, 3 epochs: a minute

The base is the best trial of the 40-trial default search of 2026-12-07 (docs/default-search): shallow
[I-100-I] Mult-VAE with the Gaussian likelihood. Each case changes one named option (or, "recvae", the three
RecVAE ones together), is trained with the product's `multivae.training.fit` for the same epochs, keeps its
best validation epoch, and is tested once with the scorer every command uses (`multivae.blend.trained_scorer`).
Reported: validation and test NDCG@100, Recall@20, Recall@50, and the test difference to the base (same seed)
and to EASE (λ chosen on validation) on the same 600 test users, each with its paired standard error.
Writes bench/results/option_effects.json after every run, so a stopped bench resumes where it was.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, RESULTS_DIR, machine_info, print_table, write_result

SHARED_DATA = REPO_ROOT.parent / "shared" / "datasets"
METRICS = ("ndcg@100", "recall@20", "recall@50")

# the best trial of the default search (docs/default-search/results-2026-12-07.json), rounded
BASE_MODEL = {"hidden_dims": [], "latent_dim": 100, "dropout": 0.515, "likelihood": "gaussian"}
BASE_TRAIN = {"epochs": 100, "batch_size": 500, "lr": 8.47e-3, "anneal_cap": 0.501, "anneal_steps": 17008,
              "weight_decay": 1e-4}
MEAN_TRAIN_ITEMS = 95.7   # ML-1M: 462,827 training interactions / 4,834 training users

# case -> (model overrides, train overrides). kl_scale "interactions" multiplies β by the user's count, so its
# cap is the base cap over the mean count (the same β for an average user); RecVAE's paper uses γ = 0.005.
CASES: dict[str, tuple[dict, dict]] = {
    "base": ({}, {}),
    "wider_decoder": ({"decoder_dims": [600]}, {}),
    "input_dropout_0.3": ({"dropout": 0.3}, {}),
    "composite_prior": ({"prior": "composite"}, {}),
    "kl_per_interaction": ({"kl_scale": "interactions"}, {"anneal_cap": round(0.501 / MEAN_TRAIN_ITEMS, 5)}),
    "alternating": ({}, {"alternating": True}),
    "recvae": ({"prior": "composite", "kl_scale": "interactions"},
               {"alternating": True, "anneal_cap": round(0.501 / MEAN_TRAIN_ITEMS, 5)}),
    "ease_blend_0.3": ({}, {"ease_blend": 0.3, "ease_lambda": 500.0}),
}


def load_split(tiny: bool):
    """ML-1M with the paper's protocol (600 validation + 600 test users) from ../shared/datasets, or the smoke data."""
    from multivae.data import DatasetConfig, load_dataset
    from multivae.data.split import ProtocolConfig

    if tiny:
        from tuning.space import load_space

        return load_dataset(load_space("smoke").dataset, verbose=False)
    return load_dataset(DatasetConfig(name="ml-1m", data_dir=str(SHARED_DATA), protocol=ProtocolConfig(heldout_users=600)),
                        verbose=False)


def run_case(split, name: str, seed: int, tiny: bool) -> tuple[dict[str, Any], dict]:
    import torch

    from multivae.blend import trained_scorer
    from multivae.config import from_dict
    from multivae.evaluate import evaluate_on_split
    from multivae.model import ModelConfig
    from multivae.training import TrainConfig, best_model, fit

    model_over, train_over = CASES[name]
    model_cfg = from_dict(ModelConfig, {**BASE_MODEL, **model_over}, where=f"case {name}")
    train_cfg = from_dict(TrainConfig, {**BASE_TRAIN, **train_over, "seed": seed, "metrics": list(METRICS)}, where=f"case {name}")
    if tiny:
        train_cfg = replace(train_cfg, epochs=3, batch_size=100)
    t0, c0 = time.perf_counter(), time.process_time()
    state = fit(split, model_cfg, train_cfg)
    train_s = time.perf_counter() - t0
    scores = evaluate_on_split(trained_scorer(best_model(state), train_cfg, train=split.train), split, METRICS, 2000, "cpu",
                               baselines=False, per_user=True)
    per_user = scores.pop("per_user")
    row = {"case": name, "seed": seed, "val": scores["val"], "test": scores["test"], "best_epoch": state.best["epoch"],
           "epochs": state.epoch, "global_step": state.global_step, "train_wall_s": train_s,
           "cpu_s": time.process_time() - c0, "threads": torch.get_num_threads()}
    return row, per_user


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from multivae.ease import ease_yardstick
    from multivae.evaluate import paired_difference

    p = argparse.ArgumentParser(prog="python -m bench.option_effects", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--tiny", action="store_true", help="the smoke space's synthetic data, 3 epochs")
    p.add_argument("--out", help="folder for the JSON (default bench/results)")
    args = p.parse_args(argv)
    name = "option_effects" + ("-tiny" if args.tiny else "")
    path = Path(args.out or RESULTS_DIR) / f"{name}.json"
    done: list[dict] = json.loads(path.read_text())["runs"] if path.exists() else []
    per_user_dir = path.with_suffix("")
    per_user_dir.mkdir(parents=True, exist_ok=True)

    split = load_split(args.tiny)
    ease = ease_yardstick(split, METRICS, "ndcg@100")
    ease_pu = ease.pop("per_user")
    runs = {(r["case"], r["seed"]): r for r in done}
    for seed in args.seeds:
        for case in ["base"] + [c for c in args.cases if c != "base"]:
            if (case, seed) in runs:
                continue
            row, pu = run_case(split, case, seed, args.tiny)
            np.savez(per_user_dir / f"{case}-{seed}.npz", **{f"{k}.{m}": v for k, d in pu.items() for m, v in d.items()})
            row["vs_ease"] = paired_difference(pu["test"], ease_pu["test"])
            runs[(case, seed)] = row
            print(f"{case} seed {seed}: test ndcg@100 {row['test']['ndcg@100']:.4f}, best epoch {row['best_epoch']}, "
                  f"{row['train_wall_s']:.0f} s", file=sys.stderr, flush=True)
            write_result(name, {"machine": machine_info(), "base": {"model": BASE_MODEL, "train": BASE_TRAIN},
                                "cases": {k: {"model": v[0], "train": v[1]} for k, v in CASES.items()},
                                "ease": ease, "runs": list(runs.values())}, sys.argv[1:] if argv is None else argv,
                         out_dir=args.out, module="option_effects")

    def load_pu(case: str, seed: int) -> dict[str, np.ndarray]:
        with np.load(per_user_dir / f"{case}-{seed}.npz") as z:
            return {k.split(".", 1)[1]: z[k] for k in z.files if k.startswith("test.")}

    table = []
    for (case, seed), r in sorted(runs.items(), key=lambda kv: (kv[0][1], list(CASES).index(kv[0][0]))):
        vs_base = paired_difference(load_pu(case, seed), load_pu("base", seed)) if (case != "base" and ("base", seed) in runs) else {}
        r["vs_base"] = vs_base
        d = r["vs_ease"]
        table.append([case, seed, r["val"]["ndcg@100"], r["test"]["ndcg@100"], r["test"]["recall@20"], r["test"]["recall@50"],
                      f"{vs_base['ndcg@100']:+.4f} ± {vs_base['ndcg@100_se']:.4f}" if vs_base else "—",
                      f"{d['ndcg@100']:+.4f} ± {d['ndcg@100_se']:.4f}", r["best_epoch"], round(r["train_wall_s"])])
    print(f"EASE λ={ease.get('lambda')}: test NDCG@100 {ease['test']['ndcg@100']:.4f} ± {ease['test']['ndcg@100_se']:.4f}")
    print_table(["case", "seed", "val NDCG@100", "test NDCG@100", "R@20", "R@50", "− base (paired)", "− EASE (paired)",
                 "best epoch", "train s"], table)
    write_result(name, {"machine": machine_info(), "base": {"model": BASE_MODEL, "train": BASE_TRAIN},
                        "cases": {k: {"model": v[0], "train": v[1]} for k, v in CASES.items()},
                        "ease": ease, "runs": list(runs.values())}, sys.argv[1:] if argv is None else argv,
                 out_dir=args.out, module="option_effects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
