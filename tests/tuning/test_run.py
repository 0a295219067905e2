"""`python -m tuning.run` end to end: the smoke search, its outputs, resume after an interruption, refusals."""

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from ray import tune
from tensorboard.plugins.hparams import plugin_data_pb2

from multivae.errors import run_cli
from tests.tuning.helpers import events, result_rows, trial_dirs
from tuning import experiment, run
from tuning.space import load_space
from tuning.tblog import SUBDIR, hparam_value

REPO = Path(__file__).absolute().parents[2]


def smoke_space():
    return load_space("smoke")


def test_smoke_search_end_to_end(smoke_experiment):
    assert smoke_experiment.rc == 0
    space = smoke_space()
    max_t = space.scheduler.max_t
    dirs = trial_dirs(smoke_experiment.path)
    assert len(dirs) == space.search.num_samples
    epochs = {d.name: max(r["epoch"] for r in result_rows(d)) for d in dirs}
    assert any(e < max_t for e in epochs.values()), f"ASHA stopped no trial: {epochs}"
    assert any(e == max_t for e in epochs.values())

    res = smoke_experiment.results
    assert res is not None and res["trials"]["total"] == space.search.num_samples
    assert res["trials"]["stopped_early"] == sum(e < max_t for e in epochs.values())
    assert res["trials"]["errored"] == 0
    for split in ("val", "test"):
        for m in ("ndcg@100", "recall@20", "recall@50"):
            assert 0.0 < res[split][m] <= 1.0 and res[split][f"{m}_se"] > 0.0, (split, m)
    # the validation score of the restored best weights is the one the trial reported at its best epoch
    best = res["best_trial"]
    assert math.isclose(res["val"]["ndcg@100"], best["best_ndcg@100"], rel_tol=1e-5)
    assert 1 <= best["best_epoch"] <= best["epochs_trained"] <= max_t and best["beta_at_best"] >= 0.0
    assert res["test"]["ndcg@100"] > res["popularity"]["test"]["ndcg@100"]   # the model beats popularity
    assert res["split"]["test_users_with_target"] > 0 and res["wall_time_s"]["search"] > 0

    best_config = yaml.safe_load((smoke_experiment.path / experiment.BEST_CONFIG).read_text())
    best_dir = next(d for d in dirs if d.name.endswith(best["trial_id"]))
    from multivae.config import to_dict
    from tuning.trial_config import split_trial_config

    model_cfg, train_cfg = split_trial_config(json.loads((best_dir / "params.json").read_text()), where="best trial")
    assert best_config["model"] == to_dict(model_cfg) and best_config["train"] == to_dict(train_cfg)   # each key once
    assert "config" not in best_config and res["best_trial"]["config"] == json.loads((best_dir / "params.json").read_text())
    assert best_config["trial_id"] == best["trial_id"] and best_config["best_epoch"] == best["best_epoch"]
    assert (smoke_experiment.path / experiment.RUN_META).exists() and (smoke_experiment.path / experiment.SPACE_COPY).exists()


def test_what_a_user_reads_holds_plain_values_not_the_searchers_json_text(smoke_experiment):
    """hidden_dims is a list choice, which Optuna sees as "[128]": params.json, results.json, best_config.yaml and
    the checkpoint's config hold the list."""
    import torch

    res = smoke_experiment.results
    assert isinstance(res["best_trial"]["config"]["hidden_dims"], list)
    assert all(isinstance(r["config"]["hidden_dims"], list) for r in res["trials_table"])
    best_config = yaml.safe_load((smoke_experiment.path / experiment.BEST_CONFIG).read_text())
    assert best_config["model"]["hidden_dims"] == res["best_trial"]["config"]["hidden_dims"]
    for d in trial_dirs(smoke_experiment.path):
        assert isinstance(json.loads((d / "params.json").read_text())["hidden_dims"], list), d.name
    ckpt = sorted(next(iter(trial_dirs(smoke_experiment.path))).glob("checkpoint_*/checkpoint.pt"))[-1]
    assert isinstance(torch.load(ckpt, weights_only=True)["extra"]["config"]["hidden_dims"], list)


def test_live_lines_number_each_trial_as_its_folder(smoke_experiment):
    shown: dict[str, set[int]] = {}
    for line in smoke_experiment.out.splitlines():
        m = re.match(r"trial (\d+)/\d+ (\S+) ", line)
        if m:
            shown.setdefault(m.group(2), set()).add(int(m.group(1)))
    folders = {d.name.split("_", 2)[2]: int(d.name.split("_", 2)[1]) for d in trial_dirs(smoke_experiment.path)}
    assert len(folders) == smoke_space().search.num_samples
    assert shown == {trial_id: {number} for trial_id, number in folders.items()}


def test_live_lines_and_results_show_wall_cpu_and_trials_per_hour_that_add_up(smoke_experiment):
    lines = [line for line in smoke_experiment.out.splitlines() if re.match(r"trial \d+/\d+ ", line)]
    shown = [re.search(r"(\d+):(\d\d) elapsed, CPU (\d+):(\d\d)", line) for line in lines]
    assert lines and all(shown), lines[:3]
    res = smoke_experiment.results
    cpu = res["cpu_time_s"]["trials"]
    # the trials' CPU from their own reports, counted again here from result.json: every report's growth
    by_hand = 0.0
    for d in trial_dirs(smoke_experiment.path):
        previous = None
        for r in result_rows(d):
            v = r["cpu_time_s"]
            by_hand += v if previous is None or r["iterations_since_restore"] == 1 else v - previous
            previous = v
    assert cpu == pytest.approx(by_hand) and cpu > 0
    assert cpu <= res["wall_time_s"]["search"] * 2 * 1.05   # 2 CPUs: the trials cannot have used more
    last_cpu = int(shown[-1].group(3)) * 60 + int(shown[-1].group(4))
    assert abs(last_cpu - cpu) <= 1 + 0.1 * cpu   # the live line's running total ends where results.json does
    n = res["trials"]["total"]
    assert res["trials_per_hour"] == pytest.approx(n / res["wall_time_s"]["search"] * 3600)
    assert re.search(r"search [\d.]+ s wall, [\d.]+ CPU s in the trials, [\d.]+ trials/h", smoke_experiment.out)


def test_results_put_the_best_trial_beside_ease_and_popularity_as_paired_differences(smoke_experiment):
    """results.json's vs_ease / vs_popularity are the mean per-user difference on the same users and its
    standard error, recomputed here from best_model/, EASE refitted at the chosen λ and a loop over users."""
    import numpy as np

    from multivae.artifact import load_model_dir
    from multivae.data import load_dataset
    from multivae.ease import ease_scorer, fit_ease
    from multivae.evaluate import model_scorer, per_user_metrics, popularity_scorer

    res = smoke_experiment.results
    split = load_dataset(smoke_space().dataset, cache_dir=smoke_experiment.cache, verbose=False)
    metrics = tuple(res["train_config"]["metrics"])
    model = load_model_dir(smoke_experiment.path).model
    others = {"vs_ease": ease_scorer(fit_ease(split.train, res["ease"]["lambda"])), "vs_popularity": popularity_scorer(split.train)}
    for phase, fold_in, target in (("val", split.val_fold_in, split.val_target), ("test", split.test_fold_in, split.test_target)):
        ours = per_user_metrics(model_scorer(model), fold_in, target, metrics)
        for key, scorer in others.items():
            theirs = per_user_metrics(scorer, fold_in, target, metrics)
            for m in metrics:
                d = [a - b for a, b in zip(ours[m], theirs[m]) if not (math.isnan(a) or math.isnan(b))]
                mean = sum(d) / len(d)
                se = math.sqrt(sum((x - mean) ** 2 for x in d) / len(d)) / math.sqrt(len(d))
                got = res[key][phase]
                assert got[m] == pytest.approx(mean, abs=1e-6) and got[f"{m}_se"] == pytest.approx(se, rel=1e-4, abs=1e-7), (key, phase, m)
    # the difference of the means is the mean of the differences; the paired error is below the unpaired one
    diff = res["vs_ease"]["test"]
    assert diff["ndcg@100"] == pytest.approx(res["test"]["ndcg@100"] - res["ease"]["test"]["ndcg@100"], abs=1e-9)
    assert diff["ndcg@100_se"] < math.hypot(res["test"]["ndcg@100_se"], res["ease"]["test"]["ndcg@100_se"])
    assert np.isfinite(res["vs_popularity"]["test"]["recall@20_se"])


def test_the_pick_is_the_best_mean_of_the_top_trials_retrained_with_more_seeds(smoke_experiment):
    """search.reevaluate_top_k (3) x reevaluate_seeds (2): the three best single runs are trained again with
    seeds seed+1 and seed+2 for the epochs they ran; the pick is the best mean, reported with its SE across
    seeds beside the single run, and its own checkpoint is tested. One retraining is redone here with
    multivae.training.fit and must give the recorded value exactly."""
    import statistics
    from dataclasses import replace

    from multivae.data import load_dataset
    from multivae.training import fit
    from tuning.trial_config import split_trial_config

    res = smoke_experiment.results
    space = smoke_space()
    reeval = res["reevaluation"]
    assert (reeval["top_k"], reeval["seeds"]) == (space.search.reevaluate_top_k, space.search.reevaluate_seeds) == (3, 2)
    table = sorted(res["trials_table"], key=lambda r: -r["best_ndcg@100"])
    cands = reeval["candidates"]
    assert [c["trial_id"] for c in cands] == [r["trial_id"] for r in table[:3]]
    assert reeval["single_run_best"] == table[0]["trial_id"]
    for c, row in zip(cands, table):
        values = [c["single_run"]] + [r["ndcg@100"] for r in c["runs"]]
        assert c["single_run"] == row["best_ndcg@100"] and c["epochs"] == row["epochs"] and c["n"] == 3
        assert [r["seed"] for r in c["runs"]] == [c["seed"] + 1, c["seed"] + 2]
        assert c["mean"] == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert c["se"] == pytest.approx(statistics.stdev(values) / math.sqrt(3), rel=1e-9)
        assert all(1 <= r["best_epoch"] <= c["epochs"] for r in c["runs"])
    chosen = max(cands, key=lambda c: c["mean"])
    assert reeval["chosen"] == chosen["trial_id"] == res["best_trial"]["trial_id"]
    assert reeval["changed_pick"] == (chosen["trial_id"] != table[0]["trial_id"])
    assert math.isclose(res["val"]["ndcg@100"], chosen["single_run"], rel_tol=1e-5)   # the chosen trial's own weights
    assert reeval["epochs_trained"] == 2 * sum(c["epochs"] for c in cands)
    assert reeval["wall_time_s"] > 0 and reeval["cpu_time_s"] > 0
    assert "re-evaluated the top 3 trials" in smoke_experiment.out and "<- picked" in smoke_experiment.out

    # one retraining, redone: the trial's own config with the recorded seed, for the epochs it ran
    cand = cands[-1]
    trial_cfg = next(r["config"] for r in res["trials_table"] if r["trial_id"] == cand["trial_id"])
    model_cfg, train_cfg = split_trial_config(trial_cfg, where="test")
    split = load_dataset(space.dataset, cache_dir=smoke_experiment.cache, verbose=False)
    state = fit(split, model_cfg, replace(train_cfg, seed=cand["runs"][0]["seed"], epochs=cand["epochs"], device="cpu"))
    assert state.best_value == cand["runs"][0]["ndcg@100"] and state.best["epoch"] == cand["runs"][0]["best_epoch"]


def test_reevaluation_is_off_with_top_k_0_and_its_settings_are_checked(tiny_split):
    from multivae.errors import UserError
    from tuning.reevaluate import mean_and_se, reevaluate

    assert reevaluate([], tiny_split, metric="ndcg@100", mode="max", top_k=0, seeds=2) is None
    assert reevaluate([], tiny_split, metric="ndcg@100", mode="max", top_k=3, seeds=0) is None
    mean, se = mean_and_se([0.1, 0.2, 0.6])
    assert mean == pytest.approx(0.3) and se == pytest.approx(math.sqrt(((0.2**2 + 0.1**2 + 0.3**2) / 2) / 3))
    assert math.isnan(mean_and_se([0.5])[1])
    from tuning.space import parse_space

    def space(**search):
        return parse_space({"fixed": {"epochs": 10}, "params": {"lr": {"type": "uniform", "low": 0.001, "high": 0.01}},
                            "search": search}, "inline.yaml")

    assert space(reevaluate_top_k=0).search.reevaluate_top_k == 0 and space().search.reevaluate_seeds == 2
    for key, value, msg in (("reevaluate_top_k", -1, "must be >= 0, got -1"), ("reevaluate_seeds", 1.5, "must be an integer, got 1.5")):
        with pytest.raises(UserError, match=rf"^inline\.yaml: search\.{key} {re.escape(msg)}$"):
            space(**{key: value})


def test_tensorboard_has_step_and_epoch_curves_and_hparams(smoke_experiment):
    for d in trial_dirs(smoke_experiment.path):
        rows = result_rows(d)
        acc = events(d / SUBDIR)
        last_step, n_epochs = rows[-1]["global_step"], rows[-1]["epoch"]
        assert last_step > n_epochs, "expected several updates per epoch"
        for tag in ("train/loss", "train/kl_weight"):
            assert [e.step for e in acc.Scalars(tag)] == list(range(1, last_step + 1)), (d.name, tag)
        for tag in ("val/ndcg@100", "val/recall@20", "val/recall@50", "best/ndcg@100", "epoch/kl_weight"):
            assert [e.step for e in acc.Scalars(tag)] == list(range(1, n_epochs + 1)), (d.name, tag)
        reported = {r["epoch"]: r["ndcg@100"] for r in rows}
        assert all(math.isclose(e.value, reported[e.step], rel_tol=1e-6) for e in acc.Scalars("val/ndcg@100"))
        # HParams: this trial's parameters, and the metrics the HParams tab will show as columns
        content = acc.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
        params = json.loads((d / "params.json").read_text())
        searched = smoke_space().params
        assert set(start.hparams) == set(searched), d.name   # the searched parameters only: the fixed ones never vary
        for k in searched:
            v, hp = params[k], start.hparams[k]
            got = hp.number_value if isinstance(v, (int, float)) and not isinstance(v, bool) else hp.string_value
            assert got == hparam_value(v), (d.name, k)
        assert "config/fixed" in acc.Tags()["tensors"] or "config/fixed/text_summary" in acc.Tags()["tensors"]
        hp_experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
        assert "val/ndcg@100" in {m.name.tag for m in hp_experiment.metric_infos}
        # one TensorBoard run per trial: no event file of Tune's own logger beside the trial's run
        assert [p for p in d.rglob("events.out.tfevents*") if p.parent != d / SUBDIR] == []


def test_optuna_study_results_json_and_report_agree_on_every_trial(smoke_experiment, tmp_path):
    """Optuna is told each trial's best epoch (search.objective: best), trials ASHA stopped are PRUNED with
    their per-epoch values, each Optuna trial names its Tune trial; the study, results.json and the report agree."""
    import optuna

    from tuning import report

    study = optuna.load_study(study_name=smoke_experiment.path.name, storage=smoke_experiment.optuna_db)
    res = smoke_experiment.results
    table = {r["trial_id"]: r for r in res["trials_table"]}
    assert len(study.trials) == res["trials"]["total"] == len(table)
    first = smoke_space().search.points_to_evaluate[0]
    assert study.trials[0].params == first                     # the space's first point is the first trial
    assert report.main([str(smoke_experiment.path), "--out", str(tmp_path / "report")]) == 0
    board = {r["trial_id"]: r for r in pd.read_csv(tmp_path / "report" / "leaderboard.csv").to_dict("records")}
    pruned = 0
    for t in study.trials:
        tid = t.user_attrs["tune_trial_id"]
        row = table[tid]
        assert t.intermediate_values and max(t.intermediate_values) == row["epochs"]   # one value per epoch
        assert max(t.intermediate_values.values()) == pytest.approx(row["best_ndcg@100"], abs=0)
        assert board[tid]["best_ndcg@100"] == pytest.approx(row["best_ndcg@100"], rel=1e-12)
        if row["status"] == "stopped_early":
            # Optuna values a pruned trial by its last intermediate value: the epoch where ASHA stopped it
            assert t.state == optuna.trial.TrialState.PRUNED, tid
            assert t.value == t.intermediate_values[max(t.intermediate_values)], tid
            pruned += 1
        else:
            assert row["status"] == "completed" and t.state == optuna.trial.TrialState.COMPLETE, tid
            assert t.value == row["best_ndcg@100"], tid             # the best epoch's value, not the last
    assert pruned == res["trials"]["stopped_early"] > 0
    single_best = next(r for r in res["trials_table"] if r["trial_id"] == res["reevaluation"]["single_run_best"])
    assert study.best_value == single_best["best_ndcg@100"] == max(r["best_ndcg@100"] for r in res["trials_table"])


def test_refuses_an_existing_experiment_without_resume(smoke_experiment, capsys):
    argv = ["--space", "smoke", "--storage", str(smoke_experiment.storage), "--name", smoke_experiment.path.name]
    assert run_cli(run.main, argv, prog="python -m tuning.run") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exists" in err and "--resume" in err and "--overwrite" in err


@pytest.mark.parametrize("argv,needle", [
    (["--resume"], "--resume needs --name"),
    (["--resume", "--name", "nothing-here"], "no experiment to resume"),
    (["--resume", "--name", "x", "--num-samples", "3"], "--num-samples cannot change on --resume"),
    (["--resume", "--overwrite", "--name", "x"], "exclude each other"),
    (["--trust-storage", "--name", "x"], "--trust-storage only applies with --resume"),
    (["--num-samples", "0"], "--num-samples must be >= 1"),
])
def test_bad_combinations_are_one_line_errors(tmp_path, capsys, argv, needle):
    assert run_cli(run.main, [*argv, "--storage", str(tmp_path)], prog="python -m tuning.run") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_bad_flag_exits_2_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "tuning.run", "--bogus"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["python -m tuning.run: error: unrecognized arguments: --bogus"]
    assert proc.stdout == ""


class InterruptMidTrial(tune.Callback):
    """Ctrl-C, as a user would press it, once a trial has finished and another, still running, has just
    checkpointed. Tune's handler for it (SIGINT, or SIGUSR1 used here) ends the loop and saves the
    experiment for Tuner.restore. `on_checkpoint` runs just before Tune registers the checkpoint in the
    same loop step, so the resumed trial must go on from exactly there. A marker file makes it fire once:
    Tune pickles callbacks with the experiment and brings them back on --resume."""

    def __init__(self, marker: Path) -> None:
        self.marker, self.completed = str(marker), 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.completed += 1

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if not self.completed or trial.last_result.get("done") or os.path.exists(self.marker):
            return
        Path(self.marker).write_text(json.dumps({"trial_id": trial.trial_id, "epoch": trial.last_result["epoch"]}))
        if signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None):   # Tune's handler is there
            os.kill(os.getpid(), signal.SIGUSR1)


def test_resume_finishes_an_interrupted_search_without_rerunning_finished_trials(ray_session, tmp_path, capsys):
    from tuning import report

    # The smoke space with a checkpoint every epoch: the epoch-1 checkpoint of a trial that starts after the
    # first one finished comes before any ASHA decision, so the interruption always finds a trial mid-run.
    data = yaml.safe_load(Path(smoke_space().source).read_text())
    data["checkpoint"]["every"] = 1
    space_file = tmp_path / "smoke_every_epoch.yaml"
    space_file.write_text(yaml.safe_dump(data))
    space = load_space(str(space_file))
    storage, cache, marker = tmp_path / "rr", tmp_path / "cache", tmp_path / "interrupt.json"
    exp = storage / "interrupted"
    argv = ["--space", str(space_file), "--storage", str(storage), "--name", "interrupted", "--cache-dir", str(cache)]
    assert run.main(argv, callbacks=[InterruptMidTrial(marker)]) == run.EXIT_INTERRUPTED
    assert "--resume --name interrupted" in capsys.readouterr().err
    assert not (exp / experiment.RESULTS).exists()
    interrupted = json.loads(marker.read_text())   # the trial that had just checkpointed, and its epoch

    before = {d.name: (d / "result.json").read_text() for d in trial_dirs(exp)}
    finished = {n for n, text in before.items() if text and json.loads(text.splitlines()[-1]).get("done")}
    assert finished and len(before) - len(finished) >= 1 and len(before) <= space.search.num_samples

    # the report reads an interrupted experiment, without Ray
    assert report.main([str(exp), "--out", str(tmp_path / "report_interrupted")]) == 0
    assert "unfinished" in (tmp_path / "report_interrupted" / "leaderboard.csv").read_text()

    # --finalize tests the best trial so far and runs nothing more
    assert run.main(["--resume", "--finalize", "--name", "interrupted", "--storage", str(storage), "--cache-dir", str(cache)]) == 0
    early = json.loads((exp / experiment.RESULTS).read_text())
    assert early["finalized_early"] is True and early["test"]["ndcg@100"] > 0
    assert {d.name: (d / "result.json").read_text() for d in trial_dirs(exp)} == before

    assert run.main(["--resume", "--name", "interrupted", "--storage", str(storage), "--cache-dir", str(cache)]) == 0
    after = trial_dirs(exp)
    assert len(after) == space.search.num_samples
    for d in after:
        rows = result_rows(d)
        assert rows[-1].get("done"), d.name
        if d.name in finished:   # finished trials did not run again: their results are untouched
            assert (d / "result.json").read_text() == before[d.name], d.name
            continue
        restarts = [i for i, r in enumerate(rows) if r["iterations_since_restore"] == 1]
        resumed = rows[restarts[-1]:]
        assert [r["epoch"] for r in resumed] == list(range(resumed[0]["epoch"], resumed[-1]["epoch"] + 1)), d.name
        if d.name.endswith(interrupted["trial_id"]):   # went on right after the checkpoint it had just made
            assert len(restarts) == 2 and resumed[0]["epoch"] == interrupted["epoch"] + 1, (d.name, interrupted)
            steps = rows[0]["global_step"]   # updates per epoch
            assert resumed[0]["global_step"] == steps * resumed[0]["epoch"] and resumed[0]["kl_weight"] > 0
    res = json.loads((exp / experiment.RESULTS).read_text())
    assert res["resumed"] is True and res["space"] == "smoke_every_epoch" and res["trials"]["total"] == space.search.num_samples
    assert res["trials"]["unfinished"] == 0 and 0.0 < res["test"]["ndcg@100"] <= 1.0


def test_a_search_that_may_train_in_bf16_on_cpu_warns_in_one_line_where_bf16_has_no_units(tmp_path):
    from multivae.precision import cpu_has_bf16_matmul
    from tuning.space import with_overrides

    def space(fixed: str, params: str = ""):
        path = tmp_path / "s.yaml"
        path.write_text(f"fixed: {{epochs: 1{fixed}}}\nparams:\n  lr: {{type: loguniform, low: 1.0e-4, high: 1.0e-2}}\n{params}")
        return load_space(str(path))

    chosen = space("", "  precision: {type: choice, values: [fp32, bf16]}\n")
    assert run.bf16_trial_warning(space("")) is None                                   # fp32 by default
    assert run.bf16_trial_warning(space(", precision: bf16-sim")) is None
    assert run.bf16_trial_warning(with_overrides(chosen, gpus_per_trial=1)) is None    # trials on a GPU
    for s in (chosen, space(", precision: bf16")):
        line = run.bf16_trial_warning(s)
        if cpu_has_bf16_matmul():
            assert line is None
        else:
            assert line.startswith("warning: precision bf16: this CPU has no bf16 matmul units") and "\n" not in line
