"""Ablations: test every trial of an experiment and measure what answers a MultiVAE design question.

    python -m tuning.ablation runs/ablations/annealing runs/ablations/annealing_betastar --kind annealing --data-dir DIR
    python -m tuning.ablation runs/ablations/annealing --kind inference --data-dir DIR
    python -m tuning.ablation runs/ablations/likelihood --also runs/ablations/annealing --kind likelihood --data-dir DIR
    python -m tuning.ablation runs/ablations/budget_final --search runs/ablations/budget_vae runs/ablations/budget_dae \
        --kind budget --data-dir DIR

Per trial: the best-by-validation weights (`best_model`) of its last checkpoint, tested on the held-out test
users as `tuning.run` tests the best trial (z = mu), and
  kl_end            the KL term (unweighted; mean over the last epoch's training batches) at the end of training
  active units      per latent dimension, the variance over the test users of mu (fold-in input, eval mode);
                    a unit is active when that variance is > 0.01 (Burda et al., 2016); and the mean variance
  sampled z         the test metrics with z = mu + eps * sigma (one draw per user), and ranked by the mean over
                    10 draws of the likelihood's mean (softmax probabilities for the multinomial)
  activity quintile test NDCG@100 per fifth of the test users ranked by fold-in size
Trials are grouped into levels by their configuration without the seed; every measure is averaged over the
seeds of a level (mean and sample standard deviation). The experiments named first must differ only in the
kind's factors (and the seed); those given with --also contribute only the trials whose other settings are
those of the first experiment (the paper's configuration is trained once and shared that way). Each kind is an
`AblationKind` in `KINDS` (`tuning.ablation_kinds`): its factors, and how its levels are labelled, ordered,
tabulated and plotted.

Writes `ablation.json` (a section per kind run on that experiment) and `ablation.md` into the first experiment
directory, and `docs/ablations/<kind>.png`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from multivae.checkpoint import CHECKPOINT_NAME, load_checkpoint
from multivae.errors import ArgParser, UserError, run_cli
from multivae.evaluate import DEFAULT_METRICS, model_scorer, per_user_metrics, popularity_scorer, summarize
from multivae.files import atomic_write_text, dumps_json, jsonable
from multivae.latent import active_units, group_means, latent_params, sampled_scorer
from multivae.model import MultiVAE, build_model, kl_divergence
from multivae.training import configs_from_payload
from tuning.ablation_kinds import KINDS, AblationKind, fmt, plot, render  # noqa: F401 - fmt, AblationKind: the API
from tuning.experiment import RESULTS, RUN_META, SPACE_COPY

NOT_SETTINGS = ("seed", "device", "threads")   # never part of a level
N_SAMPLES = 10                                 # draws of z for the averaged ranking
DOCS_DIR = Path(__file__).resolve().parents[1] / "docs" / "ablations"
MEASURES = ("ndcg@100", "recall@20", "recall@50", "kl_end", "kl_weight_end", "kl_test", "active_units", "mean_variance",
            "best_epoch", "beta_at_best", "val_ndcg@100", "train_time_s")


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value) of the finite values."""
    values = list(values)
    v = pd.Series(values, dtype="float64")   # None: NaN
    v = v[np.isfinite(v)]
    if v.empty:
        return {"mean": None, "std": None, "n": 0, "values": values}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v), "values": v.tolist()}


def seed_stats(per_seed: pd.DataFrame) -> dict[Any, dict[str, Any]]:
    """`mean_std` of each column of a frame with one row per seed (dtype object: a missing value stays None)."""
    return {c: mean_std(per_seed[c]) for c in per_seed.columns}


# --- an experiment's trials ---------------------------------------------------------------------------

@dataclass
class TrialRun:
    experiment: Path
    path: Path
    checkpoint: Path
    payload: dict[str, Any]
    settings: dict[str, Any]                      # model + train config without seed, device, threads
    seed: int
    measures: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.experiment.name}/{self.path.name}"


def last_checkpoint(trial_dir: Path) -> Path | None:
    """`checkpoint_NNNNNN/checkpoint.pt` with the highest number (Tune keeps the latest ones)."""
    found = sorted((int(m.group(1)), p) for p in trial_dir.glob(f"checkpoint_*/{CHECKPOINT_NAME}")
                   if (m := re.fullmatch(r"checkpoint_(\d+)", p.parent.name)))
    return found[-1][1] if found else None


def settings_of(payload: dict[str, Any]) -> dict[str, Any]:
    model_cfg, train_cfg = payload["model_config"], payload["train_config"]
    return {k: v for k, v in {**model_cfg, **train_cfg}.items() if k not in NOT_SETTINGS}


def load_trials(exp: Path) -> tuple[list[TrialRun], list[str]]:
    """The trials of `exp` that finished training, and a line for each one that cannot be used."""
    if not exp.is_dir():
        raise UserError(f"{exp}: no such experiment directory")
    trials, skipped = [], []
    for d in sorted(p for p in exp.iterdir() if p.is_dir() and (p / "params.json").exists()):
        ckpt = last_checkpoint(d)
        if ckpt is None:
            skipped.append(f"{exp.name}/{d.name}: no checkpoint" + (" (errored)" if (d / "error.txt").exists() else ""))
            continue
        payload = load_checkpoint(ckpt)
        if payload.get("best_model") is None or int(payload["epoch"]) < int(payload["train_config"]["epochs"]):
            skipped.append(f"{exp.name}/{d.name}: trained {payload['epoch']} of {payload['train_config']['epochs']} epochs")
            continue
        trials.append(TrialRun(exp, d, ckpt, payload, settings_of(payload), int(payload["train_config"]["seed"])))
    if not trials:
        raise UserError(f"{exp}: no finished trial with a checkpoint ({'; '.join(skipped) or 'no trial directories'})")
    return trials, skipped


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def select_trials(main: list[TrialRun], also: list[TrialRun], kind: str) -> tuple[list[TrialRun], list[str]]:
    """`main` (which must differ only in the kind's factors) plus the trials of `also` that match it elsewhere."""
    factors = KINDS[kind].factors
    if factors is None:   # any settings may differ: `also` adds seeds to the levels of `main`
        levels = [t.settings for t in main]
        kept = [t for t in also if t.settings in levels]
        return main + kept, [f"{len(kept)} of {len(also)} trials of {', '.join(sorted({t.experiment.name for t in also}))} "
                             f"have the settings of a level of {', '.join(dict.fromkeys(t.experiment.name for t in main))} and are "
                             f"included"] if also else []
    ref = main[0]
    for t in main[1:]:
        extra = [k for k in differences(ref.settings, t.settings) if k not in factors]
        if extra:
            raise UserError(f"{t.name} differs from {ref.name} in {', '.join(extra)}, which the {kind} ablation does not "
                            f"vary (its factors: {', '.join(factors)}); give that experiment with --also instead")
    kept, notes = list(main), []
    for t in also:
        if any(k not in factors for k in differences(ref.settings, t.settings)):
            continue
        kept.append(t)
    n_also = len(kept) - len(main)
    if also:
        notes.append(f"{n_also} of {len(also)} trials of {', '.join(sorted({t.experiment.name for t in also}))} have every "
                     f"setting but {', '.join(factors)} equal to {ref.experiment.name}'s and are included")
    return kept, notes


def load_split(experiments: Sequence[Path], data_dir: str | None, cache_dir: str | None):
    """The dataset the experiments were run on (they must share it), from its processed cache."""
    from multivae.data import load_dataset
    from tuning.space import load_space

    datasets = []
    for exp in experiments:
        copy = exp / SPACE_COPY
        if not copy.exists():
            raise UserError(f"{exp}: no {SPACE_COPY} (not an experiment written by tuning.run)")
        datasets.append(load_space(str(copy)).dataset)
    if any(d != datasets[0] for d in datasets[1:]):
        raise UserError(f"the experiments were run on different datasets: {', '.join(str(e) for e in experiments)}")
    cfg = dataclasses.replace(datasets[0], data_dir=data_dir) if data_dir else datasets[0]
    return load_dataset(cfg, cache_dir=cache_dir, verbose=False)


# --- measuring a trial ----------------------------------------------------------------------------------

def measure(trial: TrialRun, split, metrics: Sequence[str] = DEFAULT_METRICS, sampled: bool = False) -> dict[str, Any]:
    """Every measure of one trial (see the module doc); `sampled` adds the sampled-z evaluations."""
    p = trial.payload
    if p.get("item_ids") is not None and list(p["item_ids"]) != split.item_ids.tolist():
        raise UserError(f"{trial.checkpoint}: its item ids are not the dataset's (another split?)")
    model_cfg, train_cfg = configs_from_payload(p, str(trial.checkpoint))
    model = build_model(int(p["n_items"]), model_cfg)
    model.load_state_dict(p["best_model"])
    model.eval()
    fold_in, target = split.test_fold_in, split.test_target
    per_user = per_user_metrics(model_scorer(model), fold_in, target, metrics, train_cfg.eval_batch_size)
    last, best = p["history"][-1], p["best"]
    out: dict[str, Any] = {
        **{m: v for m, v in summarize(per_user).items() if not m.endswith("_se")},
        "kl_end": float(last["kl"]), "kl_weight_end": float(last["kl_weight"]),
        "best_epoch": int(best["epoch"]), "beta_at_best": float(best["kl_weight"]),
        "val_ndcg@100": float(best["val"]["ndcg@100"]) if "ndcg@100" in best.get("val", {}) else float(best["value"]),
        "train_time_s": float(sum(r["epoch_time_s"] + r["eval_time_s"] for r in p["history"])),
        "quintiles": group_means(per_user["ndcg@100"], np.diff(fold_in.indptr)) if "ndcg@100" in per_user else None,
        "curves": {k: [r[k] for r in p["history"]] for k in ("ndcg@100", "kl", "kl_weight")},
    }
    if isinstance(model, MultiVAE):
        mu, logvar = latent_params(model, fold_in, train_cfg.eval_batch_size)
        units = active_units(mu)
        out |= {"active_units": units["active_units"], "mean_variance": units["mean_variance"],
                "unit_variances": units["variances"],
                "kl_test": float(kl_divergence(torch.from_numpy(mu), torch.from_numpy(logvar)))}
        if sampled:
            for mode, scorer in (("sample", sampled_scorer(model, 1)), ("mean10", sampled_scorer(model, N_SAMPLES))):
                res = summarize(per_user_metrics(scorer, fold_in, target, metrics, train_cfg.eval_batch_size))
                out[mode] = {m: res[m] for m in metrics}
    return out


# --- levels: trials grouped by settings, aggregated over seeds ---------------------------------------------

def group_levels(trials: list[TrialRun], kind: str | None = None) -> list[list[TrialRun]]:
    """Trials with equal settings, each level sorted by seed; levels in the kind's order, else as they come."""
    levels: dict[str, list[TrialRun]] = {}
    for t in trials:
        levels.setdefault(json.dumps(t.settings, sort_keys=True), []).append(t)
    out = [sorted(ts, key=lambda t: t.seed) for ts in levels.values()]
    order = KINDS[kind].order if kind in KINDS else None
    return sorted(out, key=lambda ts: order(ts[0].settings)) if order else out


def aggregate(level: list[TrialRun], metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, Any]:
    """Mean and sample std over the seeds of a level, of every measure the trials have."""
    ms = [t.measures for t in level]
    shared = [k for k in MEASURES if all(k in m for m in ms)]
    out: dict[str, Any] = seed_stats(pd.DataFrame([{k: m[k] for k in shared} for m in ms], columns=shared, dtype=object))
    for mode in ("sample", "mean10"):
        if all(mode in m for m in ms):
            out[mode] = seed_stats(pd.DataFrame([m[mode] for m in ms], columns=list(metrics), dtype=object))
    if all(m.get("quintiles") for m in ms):
        q0 = ms[0]["quintiles"]
        by_group = seed_stats(pd.DataFrame([[g["mean"] for g in m["quintiles"]] for m in ms], dtype=object))
        out["quintiles"] = [{**{k: q0[g][k] for k in ("group", "users", "min_size", "max_size")},
                             "ndcg@100": by_group[g]} for g in range(len(q0))]
    curves = [m["curves"] for m in ms]
    n = min(len(c["ndcg@100"]) for c in curves)
    out["curves"] = {k: np.mean([c[k][:n] for c in curves], axis=0).tolist() for k in curves[0]}
    return out


def beta_star(levels: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The paper's β*: in the run annealed toward the largest cap (a cap that training never reaches), the β at
    the best epoch of the seed-averaged validation NDCG@100 curve (and each seed's own `beta_at_best`); None
    without such a run."""
    annealed = [lv for lv in levels if lv["settings"]["anneal_steps"] > 0   # annealed, and the cap never reached
                and lv["summary"]["curves"]["kl_weight"][-1] < lv["settings"]["anneal_cap"]]
    if not annealed:
        return None
    lv = max(annealed, key=lambda lv: lv["settings"]["anneal_cap"])
    s, curves = lv["settings"], lv["summary"]["curves"]
    epoch = int(np.argmax(curves["ndcg@100"]))
    beta = float(curves["kl_weight"][epoch])
    slope = s["anneal_cap"] / s["anneal_steps"]   # β per update
    cap = round(beta, 3)
    return {"level": levels.index(lv), "epoch": epoch + 1, "beta": beta, "val_ndcg@100": float(curves["ndcg@100"][epoch]),
            "per_seed_beta_at_best": lv["summary"]["beta_at_best"]["values"],
            "stage2": {"anneal_cap": cap, "anneal_steps": round(cap / slope)}}


# --- the command ----------------------------------------------------------------------------------------

def run_command(exp: Path) -> tuple[str, float | None]:
    """How tuning.run was started for `exp` (tuning_run.json), and its total wall time (results.json)."""
    cmd = f"python -m tuning.run (see {exp / RUN_META})"
    if (exp / RUN_META).exists():
        argv = json.loads((exp / RUN_META).read_text()).get("argv")
        if argv:
            cmd = "python -m tuning.run " + " ".join(argv)
    wall = None
    if (exp / RESULTS).exists():
        wall = json.loads((exp / RESULTS).read_text()).get("wall_time_s", {}).get("total")
    return cmd, wall


def search_summary(exp: Path) -> list[dict[str, Any]]:
    trials, _ = load_trials(exp)
    return [{"trial": t.path.name, "lr": t.settings["lr"], "dropout": t.settings["dropout"],
             "val_ndcg@100": float(t.payload["best"]["value"]), "best_epoch": int(t.payload["best"]["epoch"])}
            for t in trials]


def analyse(kind: str, experiments: Sequence[Path], also: Sequence[Path] = (), searches: Sequence[Path] = (),
            seeds: Sequence[int] = (), split=None, data_dir: str | None = None, cache_dir: str | None = None, command: str = "",
            plot_path: Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure, aggregate, plot and write the ablation of `experiments`; returns what goes into ablation.json."""
    if kind not in KINDS:
        raise UserError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    spec = KINDS[kind]
    main, skipped = [], []
    for exp in experiments:
        t, s = load_trials(Path(exp))
        main += t
        skipped += s
    extra = []
    for exp in also:
        t, s = load_trials(Path(exp))
        extra += t
    trials, notes = select_trials(main, extra, kind)
    if seeds:
        notes.append(f"only seeds {', '.join(map(str, seeds))}: {sum(t.seed not in seeds for t in trials)} trials left out")
        trials = [t for t in trials if t.seed in seeds]
    notes += [f"skipped {s}" for s in skipped]
    if split is None:
        split = load_split([*experiments, *also], data_dir, cache_dir)
    metrics = list(trials[0].payload["train_config"]["metrics"])
    for i, t in enumerate(trials):
        t0 = time.perf_counter()
        t.measures = measure(t, split, metrics, sampled=spec.sampled)
        log(f"[{i + 1}/{len(trials)}] {t.name} seed {t.seed}: test NDCG@100 {t.measures['ndcg@100']:.4f} "
            f"({time.perf_counter() - t0:.1f} s)")

    n_train = split.train.shape[0]
    levels = [{"settings": lv[0].settings, "seeds": [t.seed for t in lv], "trials": [t.name for t in lv],
               "per_seed": [{k: v for k, v in t.measures.items() if k not in ("curves", "unit_variances")} for t in lv],
               "summary": aggregate(lv, metrics)} for lv in group_levels(trials, kind)]
    result: dict[str, Any] = {"kind": kind, "metrics": metrics, "levels": levels, "notes": notes}
    bs = beta_star(levels) if spec.beta_star else None
    for lv in levels:
        lv["label"] = spec.label(lv["settings"], n_train, bs["stage2"]["anneal_cap"] if bs else None)
    if bs:
        result["beta_star"] = bs | {"level": levels[bs["level"]]["label"]}
    if spec.popularity:
        pop = summarize(per_user_metrics(popularity_scorer(split.train), split.test_fold_in, split.test_target, metrics))
        result["popularity"] = {m: pop[m] for m in metrics}
        result["searches"] = {Path(s).name: search_summary(Path(s)) for s in searches}
    used = list(dict.fromkeys(Path(e) for e in [*experiments, *also, *searches]))
    runs = [run_command(e) for e in used]
    result["run_commands"] = [c for c, _ in runs]
    result["wall_time_s"] = {e.name: w for e, (_, w) in zip(used, runs)}
    result["command"] = command or f"python -m tuning.ablation {' '.join(map(str, experiments))} --kind {kind}"
    plot_path = plot_path or DOCS_DIR / f"{kind}.png"
    result["plot"] = _display(plot_path)
    plot(kind, result, plot_path)
    write(Path(experiments[0]), kind, result)
    return result


def _display(path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(__file__).resolve().parents[1]).as_posix()
    except ValueError:
        return str(path)


def write(exp: Path, kind: str, result: dict[str, Any]) -> None:
    """Add this kind's section to `<exp>/ablation.json` and re-render `<exp>/ablation.md` from it."""
    path = exp / "ablation.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[kind] = jsonable(result)
    atomic_write_text(path, dumps_json(data, indent=1))
    md = [f"# Ablations of `{exp.name}`\n", *(render(k, data[k]) for k in KINDS if k in data)]
    atomic_write_text(exp / "ablation.md", "\n".join(md))


def _parser() -> ArgParser:
    p = ArgParser(prog="python -m tuning.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("experiments", nargs="+", type=Path, help="experiment directories (tuning.run's <storage>/<name>)")
    p.add_argument("--kind", required=True, choices=KINDS, help="which design question")
    p.add_argument("--also", nargs="+", type=Path, default=[], help="experiments whose trials with the same other "
                   "settings join the comparison (e.g. the shared paper-config runs)")
    p.add_argument("--search", nargs="+", type=Path, default=[], help="--kind budget: the search experiments the "
                   "retrained configurations came from (their trials are listed with their validation NDCG)")
    p.add_argument("--seeds", nargs="+", type=int, default=[], help="use only the trials of these seeds")
    p.add_argument("--data-dir", help="folder with the extracted dataset (else $MULTIVAE_DATA_DIR, else download)")
    p.add_argument("--cache-dir", help="where processed splits are cached")
    p.add_argument("--plot", type=Path, help=f"the PNG to write (default {_display(DOCS_DIR)}/<kind>.png)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    shown = list(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    result = analyse(args.kind, args.experiments, args.also, args.search, args.seeds, data_dir=args.data_dir,
                     cache_dir=args.cache_dir, command="python -m tuning.ablation " + " ".join(shown), plot_path=args.plot,
                     log=lambda s: print(s, file=sys.stderr, flush=True))
    print(render(args.kind, result))
    print(f"wrote {Path(args.experiments[0]) / 'ablation.json'}, ablation.md and {result['plot']} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m tuning.ablation"))
