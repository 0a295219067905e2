"""SIGTERM (what Kubernetes, Slurm and most schedulers send) stops a search like Ctrl-C: Tune saves the
experiment, the driver exits 143 with one line saying how to resume, and `--resume` finishes the search
without rerunning a finished trial (beyond, rarely, repeating its last epoch exactly: Ray's saved state can
lag). A real `python -m tuning.run` process with its own Ray."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from tests.tuning.helpers import result_rows, trial_dirs
from tuning import experiment, run
from tuning.trainable import REPORTED


def _numbers(row: dict) -> dict:
    """What an epoch computed (not when, or how long it took)."""
    return {k: row[k] for k in REPORTED if not k.endswith("_time_s")}

REPO = Path(__file__).absolute().parents[2]


def _env() -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MULTIVAE_", "RAY_ADDRESS"))}
    return {**e, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONUNBUFFERED": "1"}


def test_sigterm_saves_the_search_exits_143_and_resume_finishes_it(tmp_path):
    data = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    data["fixed"]["epochs"] = 40
    data["scheduler"] = {"type": "fifo"}
    data["search"]["num_samples"] = 4
    data["checkpoint"] = {"every": 1, "keep": 2}
    space = tmp_path / "sigterm.yaml"
    space.write_text(yaml.safe_dump(data))
    storage, cache = tmp_path / "rr", tmp_path / "cache"
    argv = [sys.executable, "-m", "tuning.run", "--space", str(space), "--storage", str(storage), "--name", "sig",
            "--cache-dir", str(cache), "--num-cpus", "2"]
    proc = subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        # once one trial has finished and another has trained a few epochs, as a scheduler's SIGTERM would find it
        while time.monotonic() < deadline and not (any("done" in ln for ln in lines)
                                                   and sum(" epoch " in ln and "done" not in ln for ln in lines) > 45):   # noqa: E501
            assert proc.poll() is None, "".join(lines) + proc.stderr.read()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)   # to the driver alone, as `kill PID` or Kubernetes does
        rc = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = proc.stderr.read()
    assert rc == run.EXIT_TERMINATED, (rc, err[-3000:])
    assert "Traceback" not in err and "SIGTERM received" not in err, err[-3000:]
    assert "stopped by SIGTERM" in err and "--resume --name sig" in err, err[-3000:]
    exp = storage / "sig"
    assert not (exp / experiment.RESULTS).exists()
    before = {d.name: result_rows(d) for d in trial_dirs(exp)}
    finished = {n for n, rows in before.items() if len(rows) >= 40}
    assert finished and len(finished) < 4, {n: len(rows) for n, rows in before.items()}

    resume = subprocess.run([sys.executable, "-m", "tuning.run", "--resume", "--name", "sig", "--storage", str(storage),
                             "--cache-dir", str(cache), "--num-cpus", "2", "--quiet"],
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert resume.returncode == 0, resume.stderr[-3000:]
    for d in trial_dirs(exp):
        rows = result_rows(d)
        assert rows[-1]["epoch"] == 40, d.name
        if d.name in finished:
            old = before[d.name]
            assert rows[:len(old)] == old, d.name          # nothing it wrote before SIGTERM is lost or changed
            # A trial that finished as SIGTERM came can be restored by Ray 2.60 from its previous checkpoint (the
            # saved state lagged its last report; seen once in CI): it trains that last epoch again and
            # must repeat it exactly (the checkpoint holds the RNG state). Nothing else is rerun.
            again = rows[len(old):]
            by_epoch = {r["epoch"]: r for r in old}
            assert len(again) <= 1 and all(_numbers(r) == _numbers(by_epoch[r["epoch"]]) for r in again), (d.name, again)
    read = {Path(t.path).name: t for t in experiment.read_trials(str(exp), max_t=40)}
    assert {n: [r["epoch"] for r in t.rows] for n, t in read.items()} == {n: list(range(1, 41)) for n in read}
    res = json.loads((exp / experiment.RESULTS).read_text())
    assert res["trials"]["completed"] == 4 and res["resumed"] is True


def test_a_sigterm_exit_inside_a_callback_is_silent_and_other_unraisable_errors_still_print():
    """The worker-side half: Ray's SIGTERM handler raises SystemExit; landing inside a weakref callback, Python
    would print it as an ignored exception with a traceback. The hook drops that case only."""
    code = """if True:
        import gc, weakref
        from tuning.ray_compat import quiet_worker_exit_on_sigterm
        class Obj: pass
        def boom(exc):
            def cb(_ref):
                raise exc
            return cb
        quiet_worker_exit_on_sigterm()
        quiet_worker_exit_on_sigterm()          # idempotent: a reused worker runs it once per trial
        a, b = Obj(), Obj()
        ra = weakref.ref(a, boom(SystemExit(1)))
        rb = weakref.ref(b, boom(ValueError("a real bug")))
        del a, b
        gc.collect()
        print("still alive")
    """
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "still alive" in out.stdout, out.stderr
    assert "SystemExit" not in out.stderr
    assert "ValueError: a real bug" in out.stderr and out.stderr.count("Traceback") == 1, out.stderr
