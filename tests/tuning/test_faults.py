"""Faults: nothing lost, every error clear (issue 7).

- A trial worker killed with SIGKILL in the middle of an epoch restarts from its last checkpoint and ends
  exactly where an uninterrupted twin ends; a trial whose loss becomes NaN fails alone, with a clear error,
  and `tuning.report` lists it as errored (one in-process Tuner run on the session's Ray).
- The driver killed with SIGKILL (its whole process group, as the OOM killer or a lost SSH session would):
  no process of it survives, `--resume` finishes the search without rerunning finished trials, the errored
  trial is rerun only with `--retry-errored`, the Optuna searcher goes on where it was (real
  `python -m tuning.run` processes with their own Ray). Ctrl-C + `--resume` is tested in test_run.py.
- ASHA's rung records, which Ray does not save, are rebuilt on `--resume` exactly as they were.
- An unwritable or full `--storage` and an unsafe `--overwrite` are refused at start, writing nothing.
"""

import csv
import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from ray import tune

from multivae.errors import run_cli
from tests.multivae.helpers import clustered_interactions
from tests.tuning.helpers import result_rows, trial_dirs
from tuning import experiment, ray_compat, report, run

REPO = Path(__file__).absolute().parents[2]
PROG = "python -m tuning.run"


# --- a trial worker killed mid-epoch; a NaN trial ---------------------------------------------------------

EPOCHS, BATCH, GOOD_LR, NAN_LR = 5, 50, 1e-3, 1e6


def trial_config(lr):
    return {"epochs": EPOCHS, "batch_size": BATCH, "lr": lr, "anneal_cap": 0.3, "anneal_steps": 12,
            "eval_batch_size": 100, "hidden_dims": "[40]", "latent_dim": 16}


@pytest.fixture(scope="module")
def killed_mid_epoch(ray_session, tmp_path_factory):
    """Two identical good trials and a NaN one; the first good trial to reach `kill_step`, in the middle of
    epoch 3, SIGKILLs its own worker right after that optimizer update (`max_failures=1`: Tune restarts it
    from its epoch-2 checkpoint)."""
    from multivae.data import DatasetConfig, ProtocolConfig, load_dataset
    from tuning.progress import trial_dirname
    from tuning.trainable import train_multivae

    tmp = tmp_path_factory.mktemp("faults_trial")
    source = tmp / "interactions.csv"
    clustered_interactions(n_users=400, n_items=150, seed=1).to_csv(source, index=False)
    split = load_dataset(DatasetConfig(name="file", path=str(source), rating_col=None, protocol=ProtocolConfig(heldout_users=40)),
                         cache_dir=str(tmp / "cache"), verbose=False)
    steps_per_epoch = math.ceil(split.train.shape[0] / BATCH)
    kill_step = 2 * steps_per_epoch + steps_per_epoch // 2          # epoch 3, half way through
    marker = str(tmp / "killed.json")

    def trainable(config, split=None):
        """train_multivae, with a worker that dies (SIGKILL, once per experiment) just after update `kill_step`."""
        import tuning.trainable as tr

        if config["lr"] == GOOD_LR and not getattr(tr.TuneReporter, "_fault_injected", False):
            on_step = tr.TuneReporter.on_step

            def dying_on_step(self, record):
                on_step(self, record)
                if record["global_step"] == kill_step:
                    try:
                        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                    except FileExistsError:
                        return   # already done once (this is the restarted trial, or the other one)
                    os.write(fd, json.dumps({"trial_id": tune.get_context().get_trial_id(), **record}).encode())
                    os.close(fd)
                    os.kill(os.getpid(), signal.SIGKILL)

            tr.TuneReporter.on_step, tr.TuneReporter._fault_injected = dying_on_step, True
        train_multivae(config, split=split, checkpoint_every=1)

    exp = tmp / "ray_results" / "faults_trial"
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, split=split), {"cpu": 1}),
        param_space={**trial_config(GOOD_LR), "lr": tune.grid_search([GOOD_LR, GOOD_LR, NAN_LR])},
        tune_config=tune.TuneConfig(trial_dirname_creator=trial_dirname),   # as tuning.run names them
        run_config=tune.RunConfig(name=exp.name, storage_path=str(exp.parent), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )
    results = tuner.fit()
    killed = json.loads(Path(marker).read_text())
    by_id = {r.metrics["trial_id"]: r for r in results}
    good = [r for r in results if r.config["lr"] == GOOD_LR]
    return SimpleNamespace(results=results, exp=exp, tmp=tmp, killed_at=killed, steps_per_epoch=steps_per_epoch,
                           killed=by_id[killed["trial_id"]],
                           intact=next(r for r in good if r.metrics["trial_id"] != killed["trial_id"]),
                           nan=next(r for r in results if r.config["lr"] == NAN_LR))


def test_worker_killed_mid_epoch_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_run(killed_mid_epoch):
    k = killed_mid_epoch
    assert k.killed_at["epoch"] == 3 and k.killed_at["global_step"] % k.steps_per_epoch != 0   # mid-epoch
    rows = result_rows(k.killed.path)
    restarts = [i for i, r in enumerate(rows) if r["iterations_since_restore"] == 1]
    assert len(restarts) == 2, "Tune should have restarted the killed trial once"
    assert [r["epoch"] for r in rows[:restarts[1]]] == [1, 2]      # died in epoch 3, before reporting it
    resumed = rows[restarts[1]:]
    assert [r["epoch"] for r in resumed] == [3, 4, 5]               # from the epoch-2 checkpoint, not from 0
    intact = {r["epoch"]: r for r in result_rows(k.intact.path)}
    for r in resumed:
        ref = intact[r["epoch"]]
        assert r["global_step"] == ref["global_step"] == r["epoch"] * k.steps_per_epoch
        assert r["kl_weight"] == ref["kl_weight"] > 0
        assert math.isclose(r["loss"], ref["loss"], rel_tol=1e-5), (r["epoch"], r["loss"], ref["loss"])
    # the final metrics are the uninterrupted run's
    for m in ("ndcg@100", "recall@20", "recall@50", "best_ndcg@100", "beta_at_best"):
        assert math.isclose(k.killed.metrics[m], k.intact.metrics[m], rel_tol=1e-5, abs_tol=1e-9), m
    assert k.killed.metrics["best_epoch"] == k.intact.metrics["best_epoch"]
    assert k.killed.error is None and k.killed.metrics["epoch"] == EPOCHS


def test_nan_trial_fails_alone_with_a_clear_error_and_the_report_lists_it_as_errored(killed_mid_epoch):
    k = killed_mid_epoch
    assert k.results.num_errors == 1 and k.nan.error is not None
    error_txt = (Path(k.nan.path) / "error.txt").read_text()
    assert "diverged" in error_txt and "loss became nan" in error_txt.lower() and "lower the learning rate" in error_txt
    assert k.intact.error is None and k.killed.error is None and k.intact.metrics["epoch"] == EPOCHS

    board = _report_statuses(k)
    assert board[k.nan.metrics["trial_id"]] == "errored"


def _report_statuses(k) -> dict[str, str]:
    out = k.tmp / "report"
    if not (out / "leaderboard.csv").exists():
        assert report.main([str(k.exp), "--out", str(out)]) == 0
    with (out / "leaderboard.csv").open() as f:
        return {r["trial_id"]: r["status"] for r in csv.DictReader(f)}


def test_report_lists_fifo_trials_that_finished_as_completed(killed_mid_epoch):
    k = killed_mid_epoch   # no scheduler: FIFO, as in search_spaces/paper.yaml and the ablations
    board = _report_statuses(k)
    assert board[k.killed.metrics["trial_id"]] == "completed"   # restarted after the crash, then trained to the end
    assert board[k.intact.metrics["trial_id"]] == "completed"


# --- ASHA's rungs after --resume ---------------------------------------------------------------------------

def test_resume_rebuilds_ashas_rungs_as_they_were():
    """Ray saves ASHA only inside tuner.pkl, written before the search starts: a restored ASHA has empty
    rungs. `refill_asha_rungs` replays the trials' result rows; the rungs then equal the live scheduler's."""
    from ray.tune.schedulers import ASHAScheduler

    def asha():
        return ASHAScheduler(time_attr="epoch", metric="ndcg@100", mode="max", max_t=9, grace_period=1, reduction_factor=2)

    rng = np.random.default_rng(0)
    live, rows, running = asha(), {}, []
    for n in range(10):                                   # trials join over time, 3 run at once, in a random order
        t = SimpleNamespace(trial_id=f"t{n}")
        live.on_trial_add(None, t)
        running.append([t, 0, rng.uniform(0.1, 0.3), rng.uniform(0.0, 0.05)])
        while len(running) >= 3 or (n == 9 and running):
            state = running[int(rng.integers(len(running)))]
            t, epoch, base, slope = state
            epoch = state[1] = epoch + 1
            result = {"trial_id": t.trial_id, "epoch": epoch, "ndcg@100": base + slope * epoch}
            stop = live.on_trial_result(None, t, result) == "STOP" or epoch == 9
            rows.setdefault(t.trial_id, []).append({**result, "done": stop})
            if stop:
                live.on_trial_complete(None, t, result)
                running.remove(state)
    for tid in ("t0", "t5"):   # restarted from a checkpoint: an epoch reported twice in result.json
        rows[tid].insert(1, dict(rows[tid][0]))
    assert sum(len(r) for _, r in live._brackets[0]._rungs) > 10 and live._num_stopped > 0

    restored = asha()
    assert all(not r for _, r in restored._brackets[0]._rungs)
    assert ray_compat.refill_asha_rungs(restored, rows, "ndcg@100", "max", 9) == sum(len(r) for _, r in live._brackets[0]._rungs)
    assert restored._brackets[0]._rungs == live._brackets[0]._rungs


# --- the driver killed with SIGKILL, then --resume, then --resume --retry-errored ------------------------

def _env() -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MULTIVAE_", "RAY_ADDRESS"))}
    e["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return e


def _processes() -> dict[int, tuple[int, str]]:
    """Live (not zombie) processes: pid -> (parent pid, command line)."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] != "Z":
                out[int(p.name)] = (int(fields[1]), (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200])
        except (OSError, ValueError, IndexError):
            continue   # gone meanwhile
    return out


def _tree(root: int) -> dict[int, str]:
    """The live processes started by `root`, at any depth, and `root` itself: pid -> command line. Ray's own
    processes run in a session of their own (tuning.ray_compat), so the driver's session is not enough."""
    procs = _processes()
    tree, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        if pid in procs and pid not in tree:
            tree[pid] = procs[pid][1]
            frontier.extend(c for c, (ppid, _) in procs.items() if ppid == pid)
    return tree


def _snapshot_statuses(exp: Path) -> dict[str, str]:
    """Trial id -> status in Tune's latest experiment snapshot (what --resume restores)."""
    files = sorted(exp.glob("experiment_state-*.json"))
    if not files:
        return {}
    try:
        data = json.loads(files[-1].read_text())
    except ValueError:
        return {}   # being replaced right now
    out = {}
    for trial_json, _meta in data["trial_data"]:
        t = json.loads(trial_json)
        out[t["trial_id"]] = t["status"]
    return out


def _rows(d: Path) -> list[dict]:
    text = (d / "result.json").read_text() if (d / "result.json").exists() else ""
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tuning.run", *argv], cwd=REPO, env=_env(), start_new_session=True,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def _kill_group_and_wait_until_gone(proc: subprocess.Popen) -> None:
    """SIGKILL the driver's process group (its own session: never anything else), then wait until none of the
    processes it had started is left, killing (and reporting) any survivor. The kernel ends the raylet and GCS
    with the driver; Ray's dashboard and runtime-env agents see their raylet gone and first try to tell the
    (dead) GCS, which Ray 2.60 gives 60 s (`publish_error_to_driver`), so they go about a minute later."""
    started = _tree(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass   # the driver and its group are gone already
    proc.wait(timeout=30)
    deadline = time.monotonic() + 120
    while (left := _processes_now(started)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:   # ours (started by the driver) only: never a broad kill
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"processes of the killed driver survived: {left}"


def _processes_now(known: dict[int, str]) -> dict[int, str]:
    """Those of `known` still alive with the same command line (not a reused pid)."""
    now = _processes()
    return {p: c for p, c in known.items() if p in now and now[p][1] == c}


def test_driver_sigkill_then_resume_then_retry_errored(tmp_path):
    N = 3
    data = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    data["search"]["num_samples"] = N
    data["checkpoint"] = {"every": 1, "keep": 2}
    # 60 epochs, not smoke's 6: a smoke trial can end within 2 s, and the polling below
    # can stall for seconds while Ray starts its processes (reading /proc of a process that is mapping memory)
    # FIFO: every trial trains all its epochs, so each step below has a fixed outcome (ASHA's rungs after
    # --resume have a test of their own)
    data["fixed"]["epochs"] = 60
    data["scheduler"] = {"type": "fifo"}
    space_file = tmp_path / "faults.yaml"
    space_file.write_text(yaml.safe_dump(data))
    storage, name = tmp_path / "rr", "driver_killed"
    exp = storage / name
    common = ["--name", name, "--storage", str(storage), "--cache-dir", str(tmp_path / "cache"), "--num-cpus", "2"]

    # an earlier experiment of that name, replaced with --overwrite (and nothing of it may survive)
    (exp / "trial_9999_stale").mkdir(parents=True)
    (exp / "trial_9999_stale" / "params.json").write_text("{}")
    (exp / experiment.RUN_META).write_text(json.dumps({"space": "old"}))

    # 1. the first run: one trial's worker dies (max_failures 0: the trial errors); once Tune's snapshot has a
    #    finished trial and the errored one, the driver and everything it started are SIGKILLed
    proc = _start(["--space", str(space_file), "--overwrite", *common], tmp_path / "run1.log")
    killed = victim = None
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
            if killed is None:
                for d in trial_dirs(exp) if exp.exists() else []:
                    rows = _rows(d)
                    if rows and not rows[-1].get("done") and any(r.get("checkpoint_dir_name") for r in rows):
                        if rows[-1]["pid"] not in _tree(proc.pid):
                            continue   # that worker is gone already (its trial ended meanwhile)
                        killed = rows[-1]["pid"]
                        os.kill(killed, signal.SIGKILL)
                        break
            else:
                # the victim is the trial that worker was running: with reused workers (the default) it may
                # have moved on from the trial whose row named it to the next one
                statuses = _snapshot_statuses(exp)
                errored = [t for t, status in statuses.items() if status == "ERROR"]
                if errored and "TERMINATED" in statuses.values():
                    assert len(errored) == 1, statuses
                    victim = SimpleNamespace(id=errored[0], dir=next(d for d in trial_dirs(exp) if d.name.endswith(f"_{errored[0]}")))
                    break
            time.sleep(0.1)
        else:
            pytest.fail(f"the first run made no progress in time: {(tmp_path / 'run1.log').read_text()[-3000:]}")
    finally:
        _kill_group_and_wait_until_gone(proc)
    statuses = _snapshot_statuses(exp)
    finished = {d.name: (d / "result.json").read_text() for d in trial_dirs(exp)
                if _rows(d) and statuses.get(_rows(d)[-1]["trial_id"]) == "TERMINATED"}
    victim_text = (victim.dir / "result.json").read_text()
    assert finished and not (exp / experiment.RESULTS).exists() and not (exp / "trial_9999_stale").exists()
    assert json.loads((exp / experiment.RUN_META).read_text())["space"] == "faults"
    assert (victim.dir / "error.txt").exists()

    # 2. --resume: the search finishes; finished trials are not rerun, the errored one is not retried
    r2 = subprocess.run([sys.executable, "-m", "tuning.run", "--resume", *common], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=400)
    assert r2.returncode == 0, r2.stdout[-2000:] + r2.stderr[-3000:]
    res = json.loads((exp / experiment.RESULTS).read_text())
    errors = {d.name: (d / "error.txt").read_text()[-1500:] for d in trial_dirs(exp) if (d / "error.txt").exists()}
    if res["trials"]["errored"] != 1:   # the whole story, on stdout (pytest shows it in full; an assertion is cut short)
        print(json.dumps({"trials": res["trials"], "victim": victim.dir.name, "errors": errors, "statuses_before": statuses,
                          "rows": {d.name: [(r["epoch"], r.get("checkpoint_dir_name"), r.get("pid")) for r in _rows(d)]
                                   for d in trial_dirs(exp)}}, indent=1))
        print(r2.stdout[-6000:], r2.stderr[-6000:])
    assert res["resumed"] and res["trials"]["total"] == N and res["trials"]["errored"] == 1 and res["trials"]["unfinished"] == 0, (
        res["trials"], victim.dir.name, errors, r2.stdout[-3000:], r2.stderr[-3000:])
    assert (victim.dir / "result.json").read_text() == victim_text and (victim.dir / "error.txt").exists()
    for d, text in finished.items():
        assert (exp / d / "result.json").read_text() == text, d
    after_resume = {d.name: (d / "result.json").read_text() for d in trial_dirs(exp)}

    # 3. --resume --retry-errored: only the errored trial runs again, from its last checkpoint
    r3 = subprocess.run([sys.executable, "-m", "tuning.run", "--resume", "--retry-errored", *common], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=400)
    assert r3.returncode == 0, r3.stdout[-2000:] + r3.stderr[-3000:]
    res = json.loads((exp / experiment.RESULTS).read_text())
    assert res["trials"]["total"] == N and res["trials"]["errored"] == 0 and res["trials"]["unfinished"] == 0
    for d, text in after_resume.items():
        if d != victim.dir.name:
            assert (exp / d / "result.json").read_text() == text, d
    rows = _rows(victim.dir)
    restarts = [i for i, r in enumerate(rows) if r["iterations_since_restore"] == 1]
    before, again = rows[:restarts[-1]], rows[restarts[-1]:]
    last_ckpt_epoch = max(r["epoch"] for r in before if r.get("checkpoint_dir_name"))
    assert len(restarts) == 2 and again[0]["epoch"] == last_ckpt_epoch + 1 and again[-1]["epoch"] == 60
    steps = rows[0]["global_step"]   # updates per epoch
    assert all(r["global_step"] == steps * r["epoch"] for r in again) and again[0]["kl_weight"] > 0

    # the Optuna searcher went on where it was: N trials in all, N different configs, the space's first
    # point evaluated once (a searcher started afresh would propose it again, and N more trials)
    configs = [json.loads((d / "params.json").read_text()) for d in trial_dirs(exp)]
    assert len(configs) == N and len({json.dumps(c, sort_keys=True) for c in configs}) == N
    first = data["search"]["points_to_evaluate"][0]
    assert sum(all(c[k] == v if isinstance(v, list) else math.isclose(c[k], v) for k, v in first.items())
               for c in configs) == 1   # params.json holds plain values


# --- storage and --overwrite refusals: before the data is read and before Ray starts -------------------

def _refused(argv, capsys) -> str:
    assert run_cli(run.main, argv, prog=PROG) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_storage_below_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    err = _refused(["--space", "smoke", "--storage", str(tmp_path / "afile" / "sub"), "--name", "x"], capsys)
    assert "--storage" in err and "afile is not a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and (tmp_path / "afile").read_text() == "x"


def test_unwritable_storage_is_refused(capsys):
    # /proc takes no new files, even for root (a chmod 0o555 folder would not stop root)
    err = _refused(["--space", "smoke", "--storage", "/proc/multivae-storage", "--name", "x"], capsys)
    assert "--storage /proc/multivae-storage: cannot write in /proc" in err
    assert not Path("/proc/multivae-storage").exists()


def test_full_disk_is_refused_at_start(tmp_path, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)   # the probe's sync is where a full disk shows
    err = _refused(["--space", "smoke", "--storage", str(tmp_path / "rr"), "--name", "x"], capsys)
    assert f"--storage {tmp_path / 'rr'}: cannot write in {tmp_path} (No space left on device)" in err
    assert list(tmp_path.iterdir()) == []   # the probe is gone, nothing created


@pytest.mark.parametrize("what", ["plain_dir", "file", "symlink"])
def test_overwrite_refuses_what_is_not_an_experiment(tmp_path, capsys, what):
    storage = tmp_path / "rr"
    storage.mkdir()
    target = storage / "x"
    if what == "plain_dir":
        target.mkdir()
        (target / "thesis.tex").write_text("precious")
    elif what == "file":
        target.write_text("precious")
    else:
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / experiment.RUN_META).write_text("{}")
        target.symlink_to(tmp_path / "elsewhere")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    err = _refused(["--space", "smoke", "--storage", str(storage), "--name", "x", "--overwrite"], capsys)
    assert "refusing to delete it with --overwrite" in err and str(target) in err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_overwrite_deletes_nothing_when_the_new_run_fails_before_starting(tmp_path, capsys):
    """The old experiment goes only once the new one really starts: a bad dataset leaves it whole."""
    exp = tmp_path / "rr" / "x"
    (exp / "trial_0001_old").mkdir(parents=True)
    (exp / experiment.RUN_META).write_text("{}")
    (exp / "trial_0001_old" / "result.json").write_text("{}\n")
    space = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    space["dataset"] = {"name": "file", "path": str(tmp_path / "gone.csv"), "rating_col": None}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(space))
    err = _refused(["--space", str(tmp_path / "s.yaml"), "--storage", str(tmp_path / "rr"), "--name", "x", "--overwrite",
                    "--cache-dir", str(tmp_path / "cache")], capsys)
    assert "gone.csv: file not found" in err
    assert (exp / "trial_0001_old" / "result.json").read_text() == "{}\n" and (exp / experiment.RUN_META).exists()
