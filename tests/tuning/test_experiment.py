"""The experiment model (`tuning.experiment`): one trial-status rule over a table of cases, the trials read
back from real folders, the lock that keeps one live run per experiment, and the stale-STOP fix
(`tuning.ray_compat`) shown on a snapshot built deterministically, with ASHA and with FIFO."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray import tune

from multivae.errors import run_cli
from tests.tuning.helpers import result_rows, trial_dirs
from tuning import experiment, ray_compat, run, signing
from tuning.experiment import ExperimentLock, read_trials, trial_status

REPO = Path(__file__).absolute().parents[2]


# --- one rule for a trial's status -------------------------------------------------------------------------

@pytest.mark.parametrize("case,kwargs,expected", [
    ("finished all epochs", dict(epochs=6, planned=6, stopped=True, errored=False, checkpoint_epoch=6), "completed"),
    ("finished, `done` lost on resume", dict(epochs=6, planned=6, stopped=False, errored=False, checkpoint_epoch=6), "completed"),
    ("stopped at the first rung", dict(epochs=2, planned=6, stopped=True, errored=False, checkpoint_epoch=2), "stopped_early"),
    ("stopped at the second rung", dict(epochs=4, planned=6, stopped=True, errored=False, checkpoint_epoch=4), "stopped_early"),
    ("errored before its last epoch", dict(epochs=3, planned=6, stopped=False, errored=True, checkpoint_epoch=2), "errored"),
    ("errored after its last epoch, checkpointed", dict(epochs=6, planned=6, stopped=False, errored=True, checkpoint_epoch=6), "completed"),
    ("errored after its last epoch, last checkpoint missing", dict(epochs=6, planned=6, stopped=False, errored=True, checkpoint_epoch=4), "errored"),
    ("errored before any result", dict(epochs=0, planned=6, stopped=False, errored=True, checkpoint_epoch=None), "errored"),
    ("recovered crash, then finished", dict(epochs=6, planned=6, stopped=True, errored=False, checkpoint_epoch=6), "completed"),
    ("interrupted mid-run", dict(epochs=3, planned=6, stopped=False, errored=False, checkpoint_epoch=3), "unfinished"),
    ("ended without done (stale STOP)", dict(epochs=3, planned=6, stopped=False, errored=False, checkpoint_epoch=3), "unfinished"),
    ("started, no result yet", dict(epochs=0, planned=6, stopped=False, errored=False, checkpoint_epoch=None), "pending"),
    ("FIFO, planned unknown, done", dict(epochs=4, planned=None, stopped=True, errored=False, checkpoint_epoch=4), "completed"),
])
def test_trial_status_table(case, kwargs, expected):
    assert trial_status(**kwargs) == expected, case


def _trial_folder(exp: Path, number: int, tid: str, epochs: list[int], *, done=False, error=False, checkpoints=(), config=None):
    d = exp / f"trial_{number:04d}_{tid}"
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(config or {"epochs": 6, "lr": 0.01}))
    rows = []
    for i, e in enumerate(epochs):
        row = {"trial_id": tid, "epoch": e, "ndcg@100": 0.1 + 0.01 * e + 0.001 * i}
        if e in checkpoints:
            row["checkpoint_dir_name"] = f"checkpoint_{e:06d}"
            (d / row["checkpoint_dir_name"]).mkdir(exist_ok=True)
        rows.append(row)
    if rows:
        rows[-1]["done"] = done
    (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 9, "ndcg')   # a cut line
    if error:
        (d / "error.txt").write_text("boom")
    return d


def test_read_trials_parses_rows_once_and_classifies_with_tunes_final_states(tmp_path):
    exp = tmp_path / "exp"
    _trial_folder(exp, 1, "aaaa0001", [1, 2, 3, 4, 5, 6], done=True, checkpoints=(6,))
    _trial_folder(exp, 2, "aaaa0002", [1, 2], done=True, checkpoints=(2,))
    _trial_folder(exp, 3, "aaaa0003", [1, 2, 3, 2, 3, 4], checkpoints=(2, 4))          # restored from epoch 2
    _trial_folder(exp, 4, "aaaa0004", [1, 2, 3], error=True, checkpoints=(2,))
    _trial_folder(exp, 5, "aaaa0005", [1, 2, 3, 4, 5, 6], error=True, checkpoints=(6,))  # a crash it recovered from
    (exp / "not_a_trial").mkdir()
    trials = read_trials(str(exp), max_t=6)
    assert [t.number for t in trials] == [1, 2, 3, 4, 5]
    by_id = {t.trial_id: t for t in trials}
    assert [r["epoch"] for r in by_id["aaaa0003"].rows] == [1, 2, 3, 4]
    assert by_id["aaaa0003"].rows[1]["ndcg@100"] == pytest.approx(0.1 + 0.02 + 0.003)   # the later report of epoch 2
    assert by_id["aaaa0003"].checkpoint_epoch == 4 and by_id["aaaa0004"].checkpoint_epoch == 2
    assert {t.trial_id: t.status for t in trials} == {"aaaa0001": "completed", "aaaa0002": "stopped_early",
                                                      "aaaa0003": "unfinished", "aaaa0004": "errored", "aaaa0005": "completed"}
    # Tune's snapshot knows better than the error files: trial 4 was retried and is running again
    states = {"aaaa0004": "RUNNING", "aaaa0005": "TERMINATED"}
    assert {t.trial_id: t.status for t in read_trials(str(exp), max_t=6, final_states=states)}["aaaa0004"] == "unfinished"
    assert experiment.status_counts(trials) == {"completed": 2, "stopped_early": 1, "errored": 1, "unfinished": 1,
                                                "pending": 0, "total": 5}


# --- one live run per experiment -------------------------------------------------------------------------

def test_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    first = ExperimentLock(str(tmp_path), "x")
    assert first.acquire() is None
    with pytest.raises(Exception) as err:
        ExperimentLock(str(tmp_path), "x").acquire()
    assert f"pid {os.getpid()}" in str(err.value) and "another tuning.run" in str(err.value)
    first.release()
    second = ExperimentLock(str(tmp_path), "x")
    assert second.acquire() is None
    second.release()


def test_lock_of_a_dead_driver_is_taken_over(tmp_path):
    code = ("import sys, time; from tuning.experiment import ExperimentLock; "
            f"lock = ExperimentLock({str(tmp_path)!r}, 'x'); lock.acquire(); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(Exception, match=f"pid {proc.pid}"):
            ExperimentLock(str(tmp_path), "x").acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    lock = ExperimentLock(str(tmp_path), "x")
    note = lock.acquire()
    assert note is not None and f"pid {proc.pid}" in note
    lock.release()


@pytest.mark.parametrize("extra", [[], ["--overwrite"], ["--resume"]])
def test_a_second_run_or_overwrite_of_a_live_experiment_is_refused_and_touches_nothing(tmp_path, capsys, extra):
    exp = tmp_path / "live"
    if extra:   # what a live run has written so far: its metadata, its space, Tune's first snapshot
        exp.mkdir()
        (exp / experiment.RUN_META).write_text(json.dumps({"space": "smoke", "overrides": {}, **experiment.versions()}))
        (exp / experiment.SPACE_COPY).write_text((REPO / "search_spaces" / "smoke.yaml").read_text())
        (exp / "tuner.pkl").write_bytes(b"")
        (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": [], "runner_data": {}}))
    # (a plain second run: the live one holds the lock but has not made its folder yet)
    holder = ExperimentLock(str(tmp_path), "live")
    holder.acquire()
    try:
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}   # the lock files are the holder's
        argv = (["--space", "smoke"] if "--resume" not in extra else []) + ["--storage", str(tmp_path), "--name", "live", *extra]
        assert run_cli(run.main, argv, prog="python -m tuning.run") == 2
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    finally:
        holder.release()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another tuning.run is using this experiment" in err, err


# --- the stale STOP of an interrupted run never acts on the resumed trial --------------------------------

EPOCHS = 8


class InterruptAtFirstCheckpoint(tune.Callback):
    """Stop the driver (Tune's SIGUSR1 handler, as Ctrl-C) right after the trial's first checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if os.path.exists(self.marker):
            return
        Path(self.marker).write_text(json.dumps({"trial_id": trial.trial_id, "epoch": trial.last_result["epoch"]}))
        os.kill(os.getpid(), signal.SIGUSR1)


def _one_trial_space(tmp_path: Path, scheduler: str) -> Path:
    data = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    data["fixed"]["epochs"] = EPOCHS
    data["params"] = {"lr": {"type": "loguniform", "low": 1.0e-3, "high": 1.0e-2}}
    data["search"].update(num_samples=1, max_concurrent=1, points_to_evaluate=[{"lr": 3.0e-3}])
    data["scheduler"] = ({"type": "asha", "max_t": EPOCHS, "grace_period": 2, "reduction_factor": 2} if scheduler == "asha"
                         else {"type": "fifo"})
    data["checkpoint"] = {"every": 1, "keep": 2}
    path = tmp_path / f"one_{scheduler}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _interrupted_with_stale_stop(tmp_path: Path, scheduler: str) -> tuple[list[str], Path, str]:
    """An experiment whose only trial is mid-run, with Ray's cached STOP for it in the snapshot: exactly the
    state Ray 2.60 writes when the driver dies while that trial's checkpoint save is in flight."""
    storage, cache = tmp_path / "rr", tmp_path / "cache"
    argv = ["--space", str(_one_trial_space(tmp_path, scheduler)), "--storage", str(storage), "--name", "stale",
            "--cache-dir", str(cache), "--quiet"]
    assert run.main(argv, callbacks=[InterruptAtFirstCheckpoint(tmp_path / "marker.json")]) == run.EXIT_INTERRUPTED
    trial_id = json.loads((tmp_path / "marker.json").read_text())["trial_id"]
    exp = storage / "stale"
    assert max(r["epoch"] for r in result_rows(trial_dirs(exp)[0])) < EPOCHS
    ray_compat.set_stale_decision_in_snapshot(exp, trial_id, "STOP")
    signing.sign(str(exp), everything=True)   # as Ray's own snapshot with that decision would be signed
    return ["--resume", "--retry-errored", "--name", "stale", "--storage", str(storage), "--cache-dir", str(cache), "--quiet"], exp, trial_id


@pytest.mark.parametrize("scheduler", ["asha", "fifo"])
def test_resume_with_a_stale_stop_in_the_snapshot_trains_the_trial_to_its_last_epoch(ray_session, tmp_path, scheduler):
    resume_argv, exp, trial_id = _interrupted_with_stale_stop(tmp_path, scheduler)
    assert run.main(resume_argv) == 0
    rows = result_rows(trial_dirs(exp)[0])
    assert rows[-1]["epoch"] == EPOCHS and rows[-1]["trial_id"] == trial_id
    res = json.loads((exp / experiment.RESULTS).read_text())
    assert res["trials"]["completed"] == 1 and res["trials"]["unfinished"] == 0 and res["best_trial"]["epochs_trained"] == EPOCHS


def test_without_the_fix_the_stale_stop_leaves_the_trial_unfinished(ray_session, tmp_path, monkeypatch):
    """The test above can fail: with Ray's own `resume` the stale STOP ends the restored trial after one epoch."""
    from ray.tune.execution.tune_controller import TuneController

    resume_argv, exp, _ = _interrupted_with_stale_stop(tmp_path, "fifo")
    monkeypatch.setattr(TuneController, "resume", getattr(TuneController.resume, "__wrapped__", TuneController.resume))
    monkeypatch.setattr(ray_compat, "drop_stale_trial_decisions_on_resume", lambda: None)
    assert run.main(resume_argv) == run.EXIT_INTERRUPTED
    assert max(r["epoch"] for r in result_rows(trial_dirs(exp)[0])) < EPOCHS


def test_the_installed_ray_is_the_one_the_workarounds_were_tested_with():
    import ray

    assert ray.__version__ in ray_compat.TESTED_RAY_VERSIONS, (
        f"ray {ray.__version__} is installed; tuning/ray_compat.py was written for {ray_compat.TESTED_RAY_VERSIONS}: "
        "check each workaround there against this Ray, then add the version")
