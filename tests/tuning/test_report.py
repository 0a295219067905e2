"""`python -m tuning.report` on the smoke experiment: leaderboard, importances, plots, report.md."""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image

from multivae.errors import run_cli
from tests.tuning.helpers import trial_dirs
from tuning import experiment, report, run

REPO = Path(__file__).absolute().parents[2]
PLOTS = ("history.png", "curves.png", "ndcg_vs_anneal_cap.png")


def read_board(out: Path) -> list[dict]:
    with (out / "leaderboard.csv").open() as f:
        return list(csv.DictReader(f))


def test_report_of_the_smoke_experiment(smoke_experiment, tmp_path):
    out = tmp_path / "report"
    # a separate process that never starts Ray: the report reads files only
    proc = subprocess.run([sys.executable, "-m", "tuning.report", str(smoke_experiment.path), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in ("leaderboard.csv", "leaderboard.md", "importances.csv", "report.md", *PLOTS):
        assert (out / name).stat().st_size > 0, name
    for name in PLOTS:
        img = matplotlib.image.imread(out / name)
        assert img.shape[0] > 200 and img.shape[1] > 300 and img.std() > 0.01, name   # a real picture, not blank

    rows = read_board(out)
    res = smoke_experiment.results
    assert len(rows) == len(trial_dirs(smoke_experiment.path)) == res["trials"]["total"]
    # the leaderboard ranks single runs; its top is the best single run, where the re-evaluation began
    single_best = next(r for r in res["trials_table"] if r["trial_id"] == res["reevaluation"]["single_run_best"])
    assert rows[0]["trial_id"] == single_best["trial_id"]
    assert abs(float(rows[0]["best_ndcg@100"]) - single_best["best_ndcg@100"]) < 1e-9
    statuses = [r["status"] for r in rows]
    assert statuses.count("stopped early") == res["trials"]["stopped_early"]
    assert statuses.count("completed") == res["trials"]["completed"]
    values = [float(r["best_ndcg@100"]) for r in rows]
    assert values == sorted(values, reverse=True)

    from tuning.space import load_space

    searched = set(load_space("smoke").params)
    with (out / "importances.csv").open() as f:
        importances = {r["parameter"]: float(r["importance"]) for r in csv.DictReader(f)}
    assert importances and set(importances) <= searched and abs(sum(importances.values()) - 1.0) < 1e-3
    assert searched <= set(rows[0])   # the searched parameters are leaderboard columns

    md = (out / "report.md").read_text()
    for link in re.findall(r"\]\(([^)]+)\)", md):
        assert (out / link).exists(), link
    assert set(PLOTS) <= set(re.findall(r"\]\(([^)]+\.png)\)", md))
    assert "test" in md and f"{res['test']['ndcg@100']:.4f}" in md


def test_report_without_the_runs_own_files(smoke_experiment, tmp_path):
    # Only Ray's files (as left by a run that never reached its end, or by another tool): parameters
    # and their ranges are inferred from the trials.
    exp = tmp_path / "bare"
    shutil.copytree(smoke_experiment.path, exp, ignore=shutil.ignore_patterns("checkpoint_*", "report"))
    for name in (experiment.RESULTS, experiment.RUN_META, experiment.SPACE_COPY, experiment.BEST_CONFIG):
        (exp / name).unlink()
    assert report.main([str(exp)]) == 0
    out = exp / "report"
    assert "No `results.json` yet" in (out / "report.md").read_text()
    rows = read_board(out)
    assert len(rows) == smoke_experiment.results["trials"]["total"]
    # without the space's max_t, a trial stopped early is one that ran fewer epochs than its config asked for
    assert [r["status"] for r in rows].count("stopped early") == smoke_experiment.results["trials"]["stopped_early"]
    assert all((out / p).stat().st_size > 0 for p in PLOTS)
    params = json.loads((trial_dirs(exp)[0] / "params.json").read_text())
    varying = {k for k in params if len({r.get(k) for r in rows}) > 1}
    assert varying and varying <= set(rows[0])


def test_bad_experiment_dir_is_a_one_line_error(tmp_path, capsys):
    assert run_cli(report.main, [str(tmp_path / "missing")], prog="python -m tuning.report") == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert run_cli(report.main, [str(tmp_path)], prog="python -m tuning.report") == 2
    assert "no trials found" in capsys.readouterr().err
