"""Summarize a tuning experiment from its files: leaderboard, parameter importances, plots, report.md.

    python -m tuning.report ray_results/smoke-20260101-120000 [--out DIR] [--top 20]

Reads only what Ray Tune left on disk (each trial's params.json, result.json and error file, plus
`tuning_run.json`, `search_space.yaml` and `results.json` written by `tuning.run`), so it works while a
search runs, after an interruption, and without Ray. Writes into `<experiment>/report/` (or --out):
  leaderboard.csv, leaderboard.md   every trial: status (completed, stopped early, errored, unfinished),
                                    epochs run, best validation NDCG@100 and its epoch, beta there, params
  importances.csv                   Optuna's parameter importances (fANOVA) over the trials' best values
  history.png                       each trial's best value in start order, and the running best
  curves.png                        validation NDCG@100 per epoch of the top trials; x marks a stop by the scheduler (ASHA, HyperBand)
  ndcg_vs_anneal_cap.png            best value against the anneal cap (colour: beta at the best epoch)
  report.md                         all of the above, linked
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from multivae.errors import ArgParser, UserError, run_cli  # noqa: E402
from tuning import experiment, ray_compat  # noqa: E402
from tuning.experiment import RESULTS, RUN_META, SPACE_COPY, STATUS_LABEL, TrialRecord  # noqa: E402

Trial = TrialRecord   # what the plots and tables below take


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out |= _flatten(v, key)
        else:
            out[key] = v
    return out


def load_trials(exp: Path, max_t: int | None, rungs: Sequence[int] = ()) -> list[TrialRecord]:
    """The experiment's trials (`tuning.experiment.read_trials`), with Tune's recorded final states when its
    snapshot is there, and each config flattened for the tables."""
    trials = experiment.read_trials(str(exp), max_t=max_t, final_states=ray_compat.snapshot_trial_states(str(exp)),
                                    stop_epochs=rungs)
    for t in trials:
        t.config = _flatten(t.config)
    return trials


# --- what the run recorded about itself ---------------------------------------------------------------

@dataclass
class RunInfo:
    metric: str = "ndcg@100"
    mode: str = "max"
    max_t: int | None = None
    rungs: list[int] = field(default_factory=list)          # the epochs at which the scheduler may stop a trial
    params: list[str] = field(default_factory=list)         # the searched parameters, in the space's order
    distributions: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] | None = None
    space_name: str | None = None


def read_run_info(exp: Path) -> RunInfo:
    info = RunInfo()
    if (exp / RESULTS).exists():
        try:
            info.results = json.loads((exp / RESULTS).read_text())
        except (ValueError, UnicodeDecodeError):
            print(f"note: {exp / RESULTS} is not valid JSON; the report shows validation results only", file=sys.stderr)
            info.results = None
    if (exp / SPACE_COPY).exists():
        try:
            from tuning.space import load_space

            space = load_space(str(exp / SPACE_COPY))
            info.space_name = space.name
            if (exp / RUN_META).exists():   # the name it was started with (the copy's file name is not it)
                info.space_name = json.loads((exp / RUN_META).read_text()).get("space", space.name)
            info.metric, info.mode = space.search.metric, space.search.mode
            if space.scheduler.stops_early:
                sched = space.scheduler
                info.max_t, info.rungs = sched.max_t, sched.decision_epochs(sched.max_t)
            info.distributions = dict(space.params)
            info.params = list(info.distributions)
        except Exception as exc:  # noqa: BLE001 - the report still works from the trials alone
            print(f"note: {exp / SPACE_COPY} not used ({exc.__class__.__name__}: {exc}); parameters inferred from the trials",
                  file=sys.stderr)
    return info


def infer_distributions(trials: list[Trial], names: Sequence[str] | None = None) -> dict[str, Any]:
    """Distributions for the parameters that vary across trials (when the space file is not available)."""
    keys = list(names) if names else sorted({k for t in trials for k in t.config})
    out = {}
    for k in keys:
        values = [t.config[k] for t in trials if k in t.config]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) < 2:
            continue
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            lo, hi = min(values), max(values)
            log = lo > 0 and hi / lo >= 100
            if all(isinstance(v, int) for v in values):
                out[k] = optuna.distributions.IntDistribution(int(lo), int(hi), log=log)
            else:
                out[k] = optuna.distributions.FloatDistribution(float(lo), float(hi), log=log)
        else:
            out[k] = optuna.distributions.CategoricalDistribution(sorted({str(v) for v in values}))
    return out


def _within(dist: Any, v: Any) -> bool:
    """Whether `v` is a value of the Optuna distribution `dist`."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return v in dist.choices
    return isinstance(v, (int, float)) and not isinstance(v, bool) and dist.low <= v <= dist.high


def param_importances(trials: list[Trial], distributions: dict[str, Any], metric: str, mode: str) -> dict[str, float]:
    """Optuna's importances on a study rebuilt from the trials (value: each trial's best `metric`)."""
    from tuning.trial_config import encode_value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for t in trials:
        best = t.best(metric, mode)
        if best is None:
            continue
        params, dists = {}, {}
        for k, dist in distributions.items():
            if k not in t.config:
                continue
            v = t.config[k]
            if isinstance(dist, optuna.distributions.CategoricalDistribution) and v not in dist.choices:
                v = encode_value(v) if isinstance(v, (list, tuple)) else str(v)   # a list choice: the space's JSON text
            if not _within(dist, v):   # a value outside the distribution (the space changed): leave it out
                continue
            params[k], dists[k] = v, dist
        if params:
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(best[metric])))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return {}
    return optuna.importance.get_param_importances(study)


# --- outputs -------------------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)


def leaderboard(trials: list[Trial], params: Sequence[str], metric: str, mode: str) -> list[dict[str, Any]]:
    rows = []
    for t in trials:
        best = t.best(metric, mode) or {}
        rows.append({
            "trial_id": t.trial_id, "status": STATUS_LABEL[t.status], "epochs": t.epochs,
            f"best_{metric}": best.get(metric, math.nan), "best_epoch": best.get("epoch", ""),
            "beta_at_best": best.get("kl_weight", ""),
            **{m: best.get(m, "") for m in ("recall@20", "recall@50") if m != metric},
            **{p: t.config.get(p, "") for p in params},
        })
    sign = -1 if mode == "max" else 1
    rows.sort(key=lambda r: (math.isnan(r[f"best_{metric}"]), sign * (0 if math.isnan(r[f"best_{metric}"]) else r[f"best_{metric}"])))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return [{"rank": r.pop("rank"), **r} for r in rows]


def write_csv(rows: list[dict[str, Any]], path: Path, columns: Sequence[str] = ("trial_id",)) -> None:
    from multivae.files import atomic_write_text

    atomic_write_text(path, pd.DataFrame(rows, columns=list(rows[0]) if rows else list(columns)).to_csv(index=False))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)\n"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r[c]) if r[c] != "" else "" for c in cols) + " |")
    return "\n".join(out) + "\n"


def plot_history(trials: list[Trial], metric: str, mode: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs, ys, running, run_best = [], [], [], None
    markers = {"completed": ("o", "C0"), "stopped_early": ("x", "C3"), "errored": ("s", "0.5"), "unfinished": ("^", "C2")}
    for t in trials:
        best = t.best(metric, mode)
        if best is None:
            continue
        v = float(best[metric])
        run_best = v if run_best is None else (max if mode == "max" else min)(run_best, v)
        xs.append(t.number)
        ys.append(v)
        running.append(run_best)
    for status, (marker, color) in markers.items():
        pts = [(t.number, float(t.best(metric, mode)[metric])) for t in trials if t.status == status and t.best(metric, mode)]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, color=color, s=40, label=STATUS_LABEL[status], zorder=3)
    if xs:
        ax.step(xs, running, where="post", color="k", lw=1.2, label="best so far")
    ax.set_xlabel("trial (in the order started)")
    ax.set_ylabel(f"validation {metric} (best epoch)")
    ax.set_title("Optimization history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=5, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(trials: list[Trial], metric: str, mode: str, top: int, max_t: int | None, rungs: Sequence[int],
                path: Path) -> None:
    from matplotlib.lines import Line2D

    ranked = sorted((t for t in trials if t.best(metric, mode)), key=lambda t: t.best(metric, mode)[metric], reverse=(mode == "max"))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for r in rungs:
        ax.axvline(r, color="C3", ls=":", lw=0.8, alpha=0.6, zorder=0)
    if max_t:
        ax.axvline(max_t, color="0.5", ls=":", lw=0.8, zorder=0)
    for t in ranked[top:]:
        ax.plot([r["epoch"] for r in t.rows], [r[metric] for r in t.rows], color="0.8", lw=0.8, zorder=1)
    cmap = plt.get_cmap("tab10")
    handles = []
    for i, t in enumerate(ranked[:top]):
        ep, val = [r["epoch"] for r in t.rows], [r[metric] for r in t.rows]
        color = cmap(i % 10)
        (line,) = ax.plot(ep, val, color=color, lw=1.6, marker="." if len(ep) < 40 else None, zorder=2,
                          label=f"{t.trial_id} ({t.best(metric, mode)[metric]:.4f})")
        handles.append(line)
        if t.status in ("stopped_early", "errored"):
            ax.scatter([ep[-1]], [val[-1]], marker="x" if t.status == "stopped_early" else "s", s=80, color=color, zorder=4)
    handles.append(Line2D([], [], color="k", marker="x", ls="", markersize=8, label="stopped early"))
    if any(t.status == "errored" for t in ranked[:top]):
        handles.append(Line2D([], [], color="k", marker="s", ls="", label="errored"))
    if rungs:
        handles.append(Line2D([], [], color="C3", ls=":", label="scheduler rungs"))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(f"Learning curves of the top {min(top, len(ranked))} trials" + (" (grey: the others)" if len(ranked) > top else ""))
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="lower right", ncol=1 if len(handles) <= 10 else 2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cap_key(trials: list[Trial]) -> str | None:
    keys = {k for t in trials for k in t.config if k.split("/")[-1] == "anneal_cap"}
    return sorted(keys)[0] if keys else None


def plot_vs_anneal_cap(trials: list[Trial], metric: str, mode: str, path: Path) -> str:
    key = _cap_key(trials)
    pts = []
    for t in trials:
        best = t.best(metric, mode)
        if best is None:
            continue
        x = t.config.get(key) if key else best.get("kl_weight")
        if isinstance(x, (int, float)):
            pts.append((float(x), float(best[metric]), float(best.get("kl_weight", math.nan)), t.status))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    if pts:
        xs, ys, cs, st = zip(*pts)
        sc = ax.scatter(xs, ys, c=cs, cmap="viridis", s=45, edgecolors=["C3" if s == "stopped_early" else "k" for s in st], linewidths=1.8, zorder=3)
        fig.colorbar(sc, ax=ax, label="beta at the best epoch")
    xlabel = "anneal cap" if key else "beta at the best epoch (anneal_cap is not a trial parameter)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"validation {metric} (best epoch)")
    ax.set_title(f"{metric} vs anneal cap (red edge: stopped early)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return xlabel


def build_report(exp: Path, out: Path, top: int = 20) -> dict[str, Any]:
    info = read_run_info(exp)
    trials = load_trials(exp, info.max_t, info.rungs)
    if not trials:
        raise UserError(f"{exp}: no trials found (expected trial folders with params.json)")
    results = [Path(t.path) / experiment.TRIAL_RESULTS for t in trials]
    if all(not t.rows for t in trials) and any(r.exists() and r.stat().st_size for r in results):
        raise UserError(f"{exp}: no trial has a readable result (result.json holds no JSON rows of epochs); "
                        f"not an experiment of tuning.run, or its files are damaged")
    distributions = info.distributions or infer_distributions(trials)
    params = list(distributions) or sorted({k for t in trials for k in t.config})
    out.mkdir(parents=True, exist_ok=True)

    rows = leaderboard(trials, params, info.metric, info.mode)
    write_csv(rows, out / "leaderboard.csv")
    (out / "leaderboard.md").write_text(markdown_table(rows[:top]))
    try:
        importances = param_importances(trials, distributions, info.metric, info.mode)
        importance_note = "" if importances else "fewer than two trials with a result: no importances"
    except Exception as exc:  # noqa: BLE001 - e.g. no parameter varies
        importances, importance_note = {}, f"not computed ({exc.__class__.__name__}: {exc})"
    write_csv([{"parameter": k, "importance": f"{v:.6f}"} for k, v in importances.items()], out / "importances.csv",
              columns=("parameter", "importance"))

    plot_history(trials, info.metric, info.mode, out / "history.png")
    plot_curves(trials, info.metric, info.mode, min(top, 10), info.max_t, info.rungs, out / "curves.png")
    cap_label = plot_vs_anneal_cap(trials, info.metric, info.mode, out / "ndcg_vs_anneal_cap.png")

    counts = {s: sum(t.status == s for t in trials) for s in STATUS_LABEL}
    lines = [f"# Tuning report: {exp.name}", ""]
    lines.append(f"Experiment `{exp}`" + (f", space `{info.space_name}`" if info.space_name else "") +
                 f"; search metric validation `{info.metric}` ({info.mode}).")
    lines.append("Trials: " + ", ".join(f"{n} {STATUS_LABEL[s]}" for s, n in counts.items() if n) + f" ({len(trials)} in all).")
    if info.results:
        r = info.results
        metrics = list((r.get("train_config") or {}).get("metrics") or ("ndcg@100", "recall@20", "recall@50"))
        lines += ["", "## Best trial, tested once on the held-out test users", "",
                  f"Trial `{r['best_trial']['trial_id']}`: best validation epoch {r['best_trial']['best_epoch']} of "
                  f"{r['best_trial']['epochs_trained']}, beta there {_fmt(r['best_trial']['beta_at_best'])}.", "",
                  "| | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
        compared = [("validation", r["val"]), ("test", r["test"]), ("popularity (test)", r["popularity"]["test"])]
        ease = r.get("ease") or {}
        if "test" in ease:
            compared.append((f"EASE, λ = {ease['lambda']:g} chosen on validation (test)", ease["test"]))
        for label, m in compared:
            lines.append(f"| {label} | " + " | ".join(f"{m[k]:.4f} ± {m[k + '_se']:.4f}" if k in m else "—" for k in metrics) + " |")
        if "skipped" in ease:
            lines += ["", f"EASE not computed: {ease['skipped']}"]
    else:
        lines += ["", "No `results.json` yet (the search is running, was interrupted, or `tuning.run` did not finish): "
                  "validation results only."]
    lines += ["", f"## Leaderboard (top {min(top, len(rows))} of {len(rows)}; all in [leaderboard.csv](leaderboard.csv))", "",
              markdown_table(rows[:top]),
              "## Parameter importances", "",
              "Optuna's fANOVA importances on a study rebuilt from the trials, each valued by its best validation "
              f"`{info.metric}` (trials stopped early count with their best before the stop). [importances.csv](importances.csv)", ""]
    if importances:
        lines += ["| parameter | importance |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in importances.items()]
    else:
        lines.append(importance_note)
    lines += ["", "## Plots", "",
              "Optimization history: each trial's best validation value in the order the trials started, and the best so far.", "",
              "![optimization history](history.png)", "",
              "Validation curves of the top trials; an x marks a trial that the scheduler stopped at that epoch.", "",
              "![learning curves](curves.png)", "",
              f"Best validation value against the {cap_label}.", "",
              "![NDCG vs anneal cap](ndcg_vs_anneal_cap.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    return {"trials": len(trials), "counts": counts, "importances": importances, "out": str(out)}


def _parser() -> ArgParser:
    p = ArgParser(prog="python -m tuning.report", description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", help="the experiment directory (<storage>/<name>)")
    p.add_argument("--out", help="where to write (default <experiment>/report)")
    p.add_argument("--top", type=int, default=20, help="trials in the Markdown leaderboard (default 20)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    exp = Path(args.experiment)
    if not exp.is_dir():
        raise UserError(f"{exp}: not a directory")
    if args.top < 1:
        raise UserError(f"--top must be >= 1, got {args.top}")
    summary = build_report(exp, Path(args.out) if args.out else exp / "report", args.top)
    print(f"{summary['trials']} trials; wrote {summary['out']}/report.md")
    return 0


def cli() -> int:
    """The `multivae-report` console script."""
    return run_cli(main, prog="multivae-report")


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m tuning.report"))
