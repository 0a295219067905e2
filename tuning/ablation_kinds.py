"""The ablations' design questions: each kind's factors, level names, markdown table and plot (`KINDS`).

`tuning.ablation` measures the trials and aggregates them over seeds into a result; this module turns a result
into its markdown section (`render`) and its figure (`plot`).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from multivae.training import batches_per_epoch

INFERENCE_MODES = {"mu": "z = mu", "sample": "z sampled (1 draw)", "mean10": "mean of 10 draws"}


# --- shared helpers of the tables and plots -------------------------------------------------------------

def fmt(stat: dict[str, Any] | None, digits: int = 4) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    if stat["n"] < 2:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def table(frame: pd.DataFrame) -> str:
    """A markdown table of `frame`'s cells (already text) under its column names."""
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in frame.itertuples(index=False, name=None))])


def metric_header(metric: str) -> str:
    return metric.replace("ndcg", "NDCG").replace("recall", "Recall")


def level_frame(result: dict[str, Any], extra: Sequence[tuple[str, str, int]] = ()) -> pd.DataFrame:
    """One row per level: its label, seeds and test metrics, then each `extra` (header, measure, digits)."""
    metrics = result["metrics"]
    rows = [[lv["label"], str(s["ndcg@100"]["n"]), *(fmt(s[m]) for m in metrics), *(fmt(s.get(k), d) for _, k, d in extra)]
            for lv in result["levels"] for s in [lv["summary"]]]
    return pd.DataFrame(rows, columns=["level", "seeds", *map(metric_header, metrics), *(h for h, _, _ in extra)])


def bars(ax, series: list[tuple[str, list[dict]]], groups: list[str], title: str, ylabel: str) -> None:
    """Grouped bars: one group per entry of `groups`, one bar per series (mean ± std, seeds as dots)."""
    width = 0.8 / len(series)
    for i, (name, stats) in enumerate(series):
        x = np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width
        means = [s["mean"] if s and s.get("mean") is not None else np.nan for s in stats]
        stds = [s["std"] if s and s.get("std") is not None else 0 for s in stats]
        ax.bar(x, means, width, yerr=stds, capsize=3, label=name, color=f"C{i}", alpha=0.85)
        for xi, s in zip(x, stats):
            if s and s.get("values"):
                ax.plot([xi] * len(s["values"]), s["values"], "k.", ms=3)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def zoom(ax, values: list[float], pad: float = 0.15) -> None:
    lo, hi = min(values), max(values)
    ax.set_ylim(max(0.0, lo - pad * (hi - lo + 1e-3) - 0.02), hi + pad * (hi - lo + 1e-3) + 0.01)


# --- the kinds: each one's level names, table and plot ------------------------------------------------------

def metrics_plot(result: dict[str, Any], title: str) -> Figure:
    """Grouped bars of the test metrics, a bar per level (and the popularity baseline when there is one)."""
    fig = Figure(figsize=(9, 4.5))
    ax = fig.subplots()
    metrics = result["metrics"]
    series = [(lv["label"], [lv["summary"][m] for m in metrics]) for lv in result["levels"]]
    if result.get("popularity"):
        series.append(("popularity", [{"mean": result["popularity"][m], "std": 0.0, "values": []} for m in metrics]))
    bars(ax, series, [metric_header(m) for m in metrics], f"{title}: test metrics (mean ± std over seeds)", "test")
    ax.legend(fontsize=8)
    return fig


def likelihood_table(result: dict[str, Any]) -> str:
    return table(level_frame(result, [("val NDCG@100", "val_ndcg@100", 4), ("best epoch", "best_epoch", 1),
                                      ("KL at end (train)", "kl_end", 1)]))


def annealing_label(s: dict[str, Any], n_train_users: int, beta_star: float | None = None) -> str:
    cap, steps = s["anneal_cap"], s["anneal_steps"]
    if steps == 0:
        return f"β = {cap:g} fixed"
    if beta_star is not None and math.isclose(cap, beta_star):
        return f"annealed to β* = {cap:g}"
    total = s["epochs"] * batches_per_epoch(n_train_users, s["batch_size"])
    end = min(cap, cap * total / steps)
    return f"annealed to {cap:g}" if end >= cap else f"annealed toward {cap:g} (β reaches {end:.3f})"


def annealing_table(result: dict[str, Any]) -> str:
    body = table(level_frame(result, [
        ("KL at end (train)", "kl_end", 1), ("β at end", "kl_weight_end", 3), ("active units (of 200)", "active_units", 1),
        ("mean var(mu)", "mean_variance", 4), ("best epoch", "best_epoch", 1), ("β at best", "beta_at_best", 3)]))
    bs = result.get("beta_star")
    if bs:
        body += (f"\n\nβ* (paper's recipe) from '{bs['level']}': the seed-averaged validation NDCG@100 peaks at epoch "
                 f"{bs['epoch']} ({bs['val_ndcg@100']:.4f}) where β = {bs['beta']:.4f} (per seed β at the best epoch: "
                 f"{', '.join(f'{b:.3f}' for b in bs['per_seed_beta_at_best'])}); stage 2 retrains with anneal_cap "
                 f"{bs['stage2']['anneal_cap']}, anneal_steps {bs['stage2']['anneal_steps']} (the same slope, rounded).")
    return body


def annealing_plot(result: dict[str, Any]) -> Figure:
    """Validation NDCG@100 and KL per epoch, and the active units, of each level."""
    levels = result["levels"]
    fig = Figure(figsize=(17, 5.2))
    axes = fig.subplots(1, 3)
    for i, lv in enumerate(levels):
        c = lv["summary"]["curves"]
        ep = np.arange(1, len(c["ndcg@100"]) + 1)
        style = dict(color=f"C{i}", ls=("-", "--", "-.", ":", (0, (6, 2, 1, 2, 1, 2)))[i % 5],
                     lw=max(0.8, 2.8 - 0.45 * i), label=lv["label"])
        axes[0].plot(ep, c["ndcg@100"], **style)   # dashes: the annealed runs coincide until one stops rising
        axes[1].plot(ep, c["kl"], **style)
    axes[0].set(title="validation NDCG@100 (mean over seeds)", xlabel="epoch", ylabel="NDCG@100")
    tails = [v for lv in levels for v in lv["summary"]["curves"]["ndcg@100"][len(ep) // 10:]]
    axes[0].set_ylim(min(tails) - 0.01, max(tails) + 0.005)   # the first epochs' climb would flatten the rest
    axes[1].set(title="KL term (training batches, unweighted)", xlabel="epoch", ylabel="KL", yscale="log")
    axes[0].legend(fontsize=7)
    x = np.arange(len(levels))
    au = [lv["summary"]["active_units"] for lv in levels]
    axes[2].bar(x, [a["mean"] for a in au], yerr=[a["std"] for a in au], capsize=3,
                color=[f"C{i}" for i in range(len(levels))])
    dims = levels[0]["per_seed"][0].get("latent_dim") or levels[0]["settings"]["latent_dim"]
    for xi, lv in zip(x, levels):
        axes[2].text(xi, 0.02 * dims, (f"test NDCG\n{lv['summary']['ndcg@100']['mean']:.3f}\nmean var\n"
                                       f"{lv['summary']['mean_variance']['mean']:.3f}"), ha="center", fontsize=8)
    axes[2].set_xticks(x, [textwrap.fill(lv["label"], 14) for lv in levels], fontsize=7)
    axes[2].set_ylim(0, dims)
    axes[2].set(title="active units (var of mu over test users > 0.01)", ylabel=f"of {dims}")
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig


def inference_table(result: dict[str, Any]) -> str:
    metrics = result["metrics"]
    rows = [[lv["label"], name, str(s["ndcg@100"]["n"]), *(fmt(src.get(m)) for m in metrics)]
            for lv in result["levels"] for s in [lv["summary"]]
            for mode, name in INFERENCE_MODES.items() for src in [s if mode == "mu" else s.get(mode, {})]]
    return table(pd.DataFrame(rows, columns=["level", "inference", "seeds", *map(metric_header, metrics)]))


def inference_plot(result: dict[str, Any]) -> Figure:
    """Test NDCG@100 of each level with z = mu, one sampled z and the mean of 10 draws."""
    levels = result["levels"]
    fig = Figure(figsize=(10, 4.5))
    ax = fig.subplots()
    series = [(name, [lv["summary"]["ndcg@100"] if mode == "mu" else lv["summary"].get(mode, {}).get("ndcg@100")
                      for lv in levels]) for mode, name in INFERENCE_MODES.items()]
    bars(ax, series, [lv["label"].replace(" (", "\n(") for lv in levels], "z = mu vs sampled z at inference",
         "test NDCG@100")
    zoom(ax, [s["mean"] for _, ss in series for s in ss if s and s.get("mean") is not None])
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=8)
    return fig


def input_table(result: dict[str, Any]) -> str:
    levels = result["levels"]
    q = next((lv["summary"]["quintiles"] for lv in levels if lv["summary"].get("quintiles")), None) or []
    frame = level_frame(result)
    for i, g in enumerate(q):
        frame[f"NDCG@100 Q{g['group']} ({g['min_size']}–{g['max_size']} items)"] = [
            fmt(lv["summary"]["quintiles"][i]["ndcg@100"]) for lv in levels]
    return table(frame) + ("\n\nQuintiles: the test users ranked by fold-in size (ties in user order), cut into 5 groups "
                           f"of {q[0]['users'] if q else '?'} users; NDCG@100 averaged inside each group, then over seeds.")


def input_plot(result: dict[str, Any]) -> Figure:
    """Test NDCG@100 per activity quintile with normalization on and off, and their difference, per dropout."""
    levels = result["levels"]
    fig = Figure(figsize=(16, 4.8))
    axes = fig.subplots(1, 3)
    q = levels[0]["summary"]["quintiles"]
    qx = np.arange(1, len(q) + 1)
    qlabels = [f"Q{g['group']}\n{g['min_size']}–{g['max_size']}" for g in q]
    dropouts = sorted({lv["settings"]["dropout"] for lv in levels})
    by = {(lv["settings"]["normalize_input"], lv["settings"]["dropout"]): lv for lv in levels}
    for ax, norm in zip(axes[:2], (True, False)):
        for i, d in enumerate(dropouts):
            lv = by.get((norm, d))
            if lv is None:
                continue
            m = [g["ndcg@100"]["mean"] for g in lv["summary"]["quintiles"]]
            s = [g["ndcg@100"]["std"] for g in lv["summary"]["quintiles"]]
            ax.errorbar(qx, m, yerr=s, capsize=3, marker="o", color=f"C{i}", label=f"dropout {d:g}")
        ax.set(title=f"L2 normalization {'on' if norm else 'off'}", xlabel="activity quintile (fold-in items)",
               ylabel="test NDCG@100")
        ax.set_xticks(qx, qlabels, fontsize=8)
    lo = min(min(ax.get_ylim()[0] for ax in axes[:2]), 1)
    hi = max(ax.get_ylim()[1] for ax in axes[:2])
    for ax in axes[:2]:
        ax.set_ylim(lo, hi)
        ax.legend(fontsize=8)
    for i, d in enumerate(dropouts):
        on, off = by.get((True, d)), by.get((False, d))
        if on and off:
            diff = [a["ndcg@100"]["mean"] - b["ndcg@100"]["mean"] for a, b in zip(on["summary"]["quintiles"],
                                                                               off["summary"]["quintiles"])]
            axes[2].plot(qx, diff, marker="o", color=f"C{i}", label=f"dropout {d:g}")
    axes[2].axhline(0, color="k", lw=0.8)
    axes[2].set(title="normalization on − off", xlabel="activity quintile", ylabel="Δ test NDCG@100")
    axes[2].set_xticks(qx, qlabels, fontsize=8)
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig


def budget_table(result: dict[str, Any]) -> str:
    frame = level_frame(result, [("val NDCG@100", "val_ndcg@100", 4), ("best epoch", "best_epoch", 1)])
    pop = result.get("popularity")
    if pop:
        frame.loc[len(frame)] = ["popularity (nothing to tune)", "—", *(f"{pop[m]:.4f}" for m in result["metrics"]), "—", "—"]
    body = table(frame)
    for name, search in result.get("searches", {}).items():
        s = pd.DataFrame(search, columns=["trial", "lr", "dropout", "val_ndcg@100", "best_epoch"])
        body += f"\n\nSearch `{name}` ({len(search)} trials, validation only):\n\n" + table(pd.DataFrame({
            "trial": s["trial"], "lr": s["lr"].map("{:.3g}".format), "dropout": s["dropout"].map("{:.3f}".format),
            "best val NDCG@100": s["val_ndcg@100"].map("{:.4f}".format), "best epoch": s["best_epoch"].map(str)}))
    return body


@dataclass(frozen=True)
class AblationKind:
    """One design question: the settings it varies, and how its levels are named, ordered, tabulated and plotted."""
    name: str
    factors: tuple[str, ...] | None               # varied besides the seed (None: any; the budget compares searched models)
    label: Callable[..., str]                     # (settings, n_train_users, β* or None) -> a level's name
    table: Callable[[dict[str, Any]], str]        # result -> the body of its markdown section
    plot: Callable[[dict[str, Any]], Figure]      # result -> a figure
    order: Callable[[dict[str, Any]], Any] | None = None   # settings -> the table's row order (None: first appearance)
    sampled: bool = False                         # also test with sampled z
    beta_star: bool = False                       # read β* off the annealed levels
    popularity: bool = False                      # add the popularity baseline and the searches' trials


KINDS: dict[str, AblationKind] = {k.name: k for k in (   # in the order of ablation.md's sections
    AblationKind("likelihood", ("likelihood",), lambda s, *_: s["likelihood"], likelihood_table,
                 partial(metrics_plot, title="Likelihood"),
                 order=lambda s: ("multinomial", "bernoulli", "gaussian").index(s["likelihood"])),
    AblationKind("annealing", ("anneal_cap", "anneal_steps"), annealing_label, annealing_table, annealing_plot,
                 beta_star=True),
    AblationKind("inference", ("anneal_cap", "anneal_steps"), annealing_label, inference_table, inference_plot,
                 sampled=True, beta_star=True),
    AblationKind("input", ("normalize_input", "dropout"),
                 lambda s, *_: f"L2 norm {'on' if s['normalize_input'] else 'off'}, dropout {s['dropout']:g}",
                 input_table, input_plot, order=lambda s: (not s["normalize_input"], s["dropout"])),
    AblationKind("budget", None, lambda s, *_: f"Mult-{s['model'].upper()} (lr {s['lr']:.2g}, dropout {s['dropout']:.2f})",
                 budget_table, partial(metrics_plot, title="Same search budget"),
                 order=lambda s: s["model"] != "vae", popularity=True),
)}


def render(kind: str, result: dict[str, Any]) -> str:
    """The markdown section of one kind."""
    cmds = "\n".join(f"    {c}" for c in [*result["run_commands"], result["command"]])
    walls = ", ".join(f"{k} {v / 60:.1f} min" if v is not None else f"{k} ?" for k, v in result["wall_time_s"].items())
    notes = "".join(f"\n- {n}" for n in result["notes"])
    return (f"## {kind}\n\n{KINDS[kind].table(result)}\n\nMean ± sample std over seeds; test users of the paper's split. "
            f"Wall time of the searches: {walls}. Plot: `{result['plot']}`.{notes}\n\nCommands:\n\n{cmds}\n")


def plot(kind: str, result: dict[str, Any], path: Path) -> None:
    fig = KINDS[kind].plot(result)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


__all__ = ["INFERENCE_MODES", "KINDS", "AblationKind", "fmt", "plot", "render"]
