"""`python -m multivae.train`: train one Mult-VAE / Mult-DAE (or score popularity) and test the best model.

    python -m multivae.train --dataset ml-1m --data-dir ../shared/datasets --out runs/ml1m-vae
    python -m multivae.train --dataset synthetic --epochs 20 --out runs/synthetic
    python -m multivae.train --data ratings.csv --user-col uid --item-col sid --out runs/mine

Writes `<out>/checkpoint.pt` (latest state + best-by-validation weights) and `<out>/metrics.json`
(configs, split statistics, validation curve, test metrics of the best model, time per epoch).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from multivae.allocator import MALLOC_MODES
from multivae.checkpoint import CHECKPOINT_NAME
from multivae.config import from_dict, to_dict
from multivae.errors import ArgParser, UserError
from multivae.files import atomic_write_json, check_writable_dir
from multivae.evaluate import evaluate, model_scorer, popularity_scorer
from multivae.model import ModelConfig
from multivae.training import (ADAM_KERNELS, Callback, TrainConfig, TrainState, best_model, fit, init_state, resolve_device, restore_state,
                            save_state)


def _parser() -> ArgParser:
    from multivae.data import DATASET_NAMES

    p = ArgParser(prog="python -m multivae.train", description=__doc__.split("\n\n")[0])
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="synthetic", help=f"one of {', '.join(n for n in DATASET_NAMES if n != 'file')} (default synthetic)")
    d.add_argument("--data", metavar="PATH", help="a CSV/TSV/Parquet file of user-item interactions instead of --dataset")
    d.add_argument("--user-col", default="user")
    d.add_argument("--item-col", default="item")
    d.add_argument("--rating-col", default="rating", help="rating column, or none for implicit data (default rating)")
    d.add_argument("--data-dir", help="folder with an extracted MovieLens copy (else $MULTIVAE_DATA_DIR, else download)")
    d.add_argument("--cache-dir", help="where downloads and processed splits are cached (default $MULTIVAE_DATA_DIR or ~/.cache/multivae)")
    d.add_argument("--heldout-users", type=float, help="validation (and test) users: a count, or a fraction < 0.5 (default: the dataset's preset)")
    d.add_argument("--min-rating", type=float, help="keep ratings > this (default 3.5, the paper)")
    m = p.add_argument_group("model")
    m.add_argument("--model", choices=["vae", "dae", "popularity"], default="vae")
    m.add_argument("--likelihood", choices=["multinomial", "bernoulli", "gaussian"], default="multinomial")
    m.add_argument("--hidden-dims", type=int, nargs="*", help="hidden layer sizes (default: 600 for vae, none for dae)")
    m.add_argument("--latent-dim", type=int, default=200)
    m.add_argument("--dropout", type=float, default=0.5)
    m.add_argument("--no-normalize", action="store_true", help="skip the L2 normalization of input rows (ablation)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=200)
    t.add_argument("--batch-size", type=int, default=500)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, help="lam in lam*sum||W||^2 (default 0 for vae, 0.01/batch_size for dae)")
    t.add_argument("--anneal-cap", type=float, default=0.2)
    t.add_argument("--anneal-steps", type=int, help="updates until beta reaches the cap (default: the reference schedule)")
    t.add_argument("--beta-star", action="store_true", help="the paper's recipe: anneal to 1, take the beta of the best "
                   "validation epoch (beta*), then retrain with that cap")
    t.add_argument("--seed", type=int, default=98765)
    t.add_argument("--device", default="auto")
    t.add_argument("--threads", type=int)
    t.add_argument("--adam", choices=list(ADAM_KERNELS), default=TrainConfig.adam,
                   help="Adam kernel (one algorithm; fused is fastest, foreach/single_tensor match each other bit for bit)")
    t.add_argument("--malloc", choices=list(MALLOC_MODES), default=TrainConfig.malloc,
                   help="keep: glibc keeps freed memory for reuse (faster, same numbers); default: leave it alone")
    t.add_argument("--checkpoint-every", type=int, default=10, help="epochs between checkpoints (always at the end)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default="runs/train", help="output directory (default runs/train)")
    o.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    o.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def dataset_config_from_args(args: Any):
    from multivae.data import DatasetConfig, ProtocolConfig

    protocol: dict[str, Any] = {}
    if args.heldout_users is not None:
        h = args.heldout_users
        protocol["heldout_users"] = int(h) if h >= 1 and float(h).is_integer() else h
    if args.min_rating is not None:
        protocol["min_rating"] = args.min_rating
    fields: dict[str, Any] = {"name": "file", "path": args.data} if args.data else {"name": args.dataset}
    if args.data:
        fields |= {"user_col": args.user_col, "item_col": args.item_col,
                   "rating_col": None if args.rating_col.lower() == "none" else args.rating_col}
    if args.data_dir:
        fields["data_dir"] = args.data_dir
    fields["protocol"] = from_dict(ProtocolConfig, protocol, where="command line")
    return from_dict(DatasetConfig, fields, where="command line")


class ProgressBar(Callback):
    def __init__(self, total: int, start: int, quiet: bool) -> None:
        from tqdm import tqdm

        self.bar = None if quiet else tqdm(total=total, initial=start, desc="epochs", unit="ep", file=sys.stderr)

    def on_epoch(self, record: dict, state: TrainState) -> None:
        if self.bar is not None:
            self.bar.set_postfix(ndcg=f"{record['ndcg@100']:.4f}", best=f"{record['best_ndcg@100']:.4f}", beta=f"{record['kl_weight']:.3f}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class PeriodicCheckpoint(Callback):
    def __init__(self, path: Path, every: int, item_ids, extra: dict) -> None:
        self.path, self.every, self.item_ids, self.extra = path, every, item_ids, extra

    def on_epoch(self, record: dict, state: TrainState) -> None:
        if state.epoch % self.every == 0:
            save_state(state, self.path, self.item_ids, self.extra)


class Both(Callback):
    def __init__(self, *cbs: Callback) -> None:
        self.cbs = cbs

    def on_step(self, record: dict) -> None:
        for cb in self.cbs:
            cb.on_step(record)

    def on_epoch(self, record: dict, state: TrainState) -> bool:
        return any([bool(cb.on_epoch(record, state)) for cb in self.cbs])


def train_one(split, model_cfg: ModelConfig, cfg: TrainConfig, out: Path, resume: bool, quiet: bool, every: int, extra: dict) -> TrainState:
    ckpt = out / CHECKPOINT_NAME
    if resume:
        state = restore_state(ckpt, n_items=split.n_items, train_config=cfg)
        print(f"resumed from {ckpt} at epoch {state.epoch}, global step {state.global_step}", file=sys.stderr)
    else:
        state = init_state(split.n_items, model_cfg, cfg)
    bar = ProgressBar(cfg.epochs, state.epoch, quiet)
    try:
        fit(split, state=state, callback=Both(bar, PeriodicCheckpoint(ckpt, every, split.item_ids, extra)))
    finally:
        bar.close()
    save_state(state, ckpt, split.item_ids, extra)
    return state


def main(argv: Sequence[str] | None = None) -> int:
    from multivae.data import load_dataset

    args = _parser().parse_args(argv)
    for flag, value, low in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1), ("--checkpoint-every", args.checkpoint_every, 1)):
        if value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}")
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    out = Path(args.out)
    metrics_path = out / "metrics.json"
    check_writable_dir(out, "--out")
    if (out / CHECKPOINT_NAME).exists() or metrics_path.exists():
        if not (args.resume or args.overwrite):
            raise UserError(f"{out}: a run already exists there; pass --resume to continue it or --overwrite to replace it")
    elif args.resume:
        raise UserError(f"{out / CHECKPOINT_NAME}: checkpoint not found, nothing to resume")

    # Every flag is checked before the data is read and before --out is created: a bad value writes nothing.
    data_cfg = dataset_config_from_args(args)
    model_cfg = cfg = None
    if args.model != "popularity":
        model_cfg = from_dict(ModelConfig, {
            "model": args.model, "likelihood": args.likelihood, "latent_dim": args.latent_dim, "dropout": args.dropout,
            "hidden_dims": args.hidden_dims, "normalize_input": not args.no_normalize}, where="command line")
        cfg = from_dict(TrainConfig, {
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
            "anneal_cap": args.anneal_cap, "anneal_steps": args.anneal_steps, "seed": args.seed, "device": args.device,
            "threads": args.threads, "adam": args.adam, "malloc": args.malloc}, where="command line")
        resolve_device(cfg.device)
    split = load_dataset(data_cfg, cache_dir=args.cache_dir, verbose=True)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"dataset": to_dict(data_cfg), "split": split.stats(), "command": " ".join(sys.argv)}
    extra = {"split_path": split.info.get("cache_path"), "dataset": to_dict(data_cfg)}

    if args.model == "popularity":
        score = popularity_scorer(split.train)
        report |= {"model": "popularity", "val": evaluate(score, split.val_fold_in, split.val_target),
                   "test": evaluate(score, split.test_fold_in, split.test_target)}
    else:
        assert model_cfg is not None and cfg is not None
        t0 = time.perf_counter()
        if args.beta_star:
            sweep = train_one(split, model_cfg, dataclasses.replace(cfg, anneal_cap=1.0), out / "beta_sweep",
                              args.resume and (out / "beta_sweep" / CHECKPOINT_NAME).exists(), args.quiet, args.checkpoint_every, extra)
            beta_star = float(sweep.best["kl_weight"])
            print(f"beta* = {beta_star:.4f} (best validation epoch {sweep.best['epoch']} of the anneal-to-1 run)", file=sys.stderr)
            report["beta_star"] = {"value": beta_star, "sweep_best": sweep.best}
            cfg = dataclasses.replace(cfg, anneal_cap=beta_star)
            resume = args.resume and (out / CHECKPOINT_NAME).exists()
        else:
            resume = args.resume
        state = train_one(split, model_cfg, cfg, out, resume, args.quiet, args.checkpoint_every, extra)
        wall = time.perf_counter() - t0
        model = best_model(state)
        device = next(model.parameters()).device
        epoch_times = [h["epoch_time_s"] for h in state.history]
        report |= {
            "model": args.model, "model_config": to_dict(model_cfg), "train_config": to_dict(cfg),
            "best": state.best, "epochs": state.epoch, "global_step": state.global_step,
            "anneal_steps": state.history[-1]["anneal_steps"] if state.history else None,
            "time_per_epoch_s": sum(epoch_times) / max(1, len(epoch_times)),
            "eval_time_per_epoch_s": sum(h["eval_time_s"] for h in state.history) / max(1, len(state.history)),
            "wall_s": wall,
            "test": evaluate(model_scorer(model), split.test_fold_in, split.test_target, cfg.metrics, cfg.eval_batch_size, device),
            "history": state.history,
        }
        report["val"] = state.best.get("val", {})
    try:
        atomic_write_json(metrics_path, report)
    except OSError as exc:
        raise UserError(f"{metrics_path}: cannot write ({exc.strerror or exc})") from None
    val, test = report["val"], report["test"]
    print(f"{'':>6} {'NDCG@100':>9} {'Recall@20':>10} {'Recall@50':>10}")
    for name, r in (("val", val), ("test", test)):
        print(f"{name:>6} {r.get('ndcg@100', float('nan')):9.4f} {r.get('recall@20', float('nan')):10.4f} {r.get('recall@50', float('nan')):10.4f}")
    if args.model != "popularity":
        print(f"best epoch {report['best']['epoch']} (beta {report['best']['kl_weight']:.4f}), "
              f"{report['time_per_epoch_s']:.3f} s/epoch train, {report['eval_time_per_epoch_s']:.3f} s/epoch validation")
    print(f"wrote {metrics_path}")
    return 0


if __name__ == "__main__":
    from multivae.errors import run_cli

    sys.exit(run_cli(main, prog="multivae.train"))
