"""The experiment folder as untrusted input (issues 27 and 23).

- A pickle planted in the experiment (tuner.pkl, the searcher's state, a cloudpickle field of the experiment
  state, a trial's error.pkl) is refused on `--resume` with one line naming it, before anything is unpickled:
  its code never runs, and nothing is written.
- A damaged Tune state is refused too, even with `--trust-storage`: never half restored.
- An experiment written by an older layout (no format version, a pickle of a class that is gone) is refused with
  one line naming both versions, before Ray's unpickling.
- An untouched experiment resumes, and the trials made after the resume carry the space's fixed settings.
- `tuning.search()` returns the experiment it created, not the one whose folder name sorts last.

One tiny search, interrupted after its first trial, is made once; each test works on a copy of it.
"""

import json
import os
import pickle
import shutil
import signal
from pathlib import Path

import pytest
import yaml
from ray import tune

from multivae.errors import run_cli
from multivae.version import __version__
from tests.tuning.helpers import trial_dirs
from tuning import experiment, run, signing

NAME, EPOCHS, SAMPLES = "tiny", 2, 3
PROG = "python -m tuning.run"
TINY_SPACE = {
    "dataset": {"name": "synthetic", "synthetic": {"n_users": 300, "n_items": 120, "n_topics": 6, "seed": 0},
                "protocol": {"heldout_users": 40}, "cache": False},
    "fixed": {"epochs": EPOCHS, "batch_size": 100, "anneal_steps": 4, "eval_batch_size": 200, "latent_dim": 8,
              "hidden_dims": [32]},
    "params": {"lr": {"type": "loguniform", "low": 1.0e-3, "high": 1.0e-2}},
    "search": {"num_samples": SAMPLES, "max_concurrent": 1, "seed": 0, "metric": "ndcg@100", "mode": "max"},
    "scheduler": {"type": "fifo"},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    "checkpoint": {"every": 1, "keep": 1},
}


class InterruptAfterFirstTrial(tune.Callback):
    """Ctrl-C (Tune's SIGUSR1 handler) once the first trial has completed; a marker keeps it from firing again
    when Tune brings it back with the experiment on --resume."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if os.path.exists(self.marker):
            return
        Path(self.marker).write_text(trial.trial_id)
        if signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            os.kill(os.getpid(), signal.SIGUSR1)


def tiny_space_file(folder: Path) -> Path:
    path = folder / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(TINY_SPACE))
    return path


@pytest.fixture(scope="module")
def interrupted(ray_session, tmp_path_factory):
    """The tiny search, interrupted after its first trial: its folder, to be copied."""
    tmp = tmp_path_factory.mktemp("storage")
    space = tiny_space_file(tmp)
    rc = run.main(["--space", str(space), "--storage", str(tmp / "rr"), "--name", NAME, "--quiet"],
                  callbacks=[InterruptAfterFirstTrial(tmp / "interrupted")])
    assert rc == run.EXIT_INTERRUPTED
    exp = tmp / "rr" / NAME
    assert (exp / signing.MANIFEST).exists() and len(trial_dirs(exp)) < SAMPLES
    return exp


def copy_of(exp: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "rr" / NAME
    shutil.copytree(exp, dest)
    return dest


def listing(storage: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the storage (the lock beside the experiment included): its bytes and mtime."""
    return {str(p.relative_to(storage)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(storage.rglob("*")) if p.is_file()}


def resume(exp: Path, capsys, *flags: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = run_cli(run.main, ["--resume", "--name", exp.name, "--storage", str(exp.parent), "--quiet", *flags], prog=PROG)
    return rc, capsys.readouterr().err.strip().splitlines()


def refused(exp: Path, capsys, *flags: str) -> str:
    """--resume is refused with exit 2 and one line, and nothing in the storage changed."""
    before = listing(exp.parent)
    rc, lines = resume(exp, capsys, *flags)
    assert rc == 2 and len(lines) == 1, (rc, lines)
    assert listing(exp.parent) == before
    return lines[0]


class Payload:
    """A pickle that runs code when it is loaded: it writes `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def plant(exp: Path, where: str, payload: bytes) -> Path:
    """Put `payload` where Ray unpickles it on --resume."""
    if where == "experiment_state":   # a cloudpickle fallback field, which Ray's decoder expands
        path = sorted(exp.glob("experiment_state-*.json"))[-1]
        state = json.loads(path.read_text())
        state["runner_data"]["_planted"] = {"_type": "CLOUDPICKLE_FALLBACK", "value": payload.hex()}
        path.write_text(json.dumps(state))
        return path
    if where == "error.pkl":          # a new file in a trial folder
        path = trial_dirs(exp)[0] / "error.pkl"
    elif where == "newer searcher-state":   # a new file that sorts last: what Ray would load
        path = exp / "searcher-state-9999-12-31_23-59-59.pkl"
    else:
        path = sorted(exp.glob(where))[-1]
    path.write_bytes(payload)
    return path


@pytest.mark.parametrize("where", ["tuner.pkl", "searcher-state-*.pkl", "search_gen_state-*.json", "experiment_state",
                                   "error.pkl", "newer searcher-state"])
def test_resume_refuses_a_planted_pickle_without_loading_it(interrupted, tmp_path, capsys, where):
    exp = copy_of(interrupted, tmp_path)
    marker = tmp_path / "payload_ran"
    path = plant(exp, where, pickle.dumps(Payload(marker)))
    line = refused(exp, capsys)
    assert not marker.exists(), "the planted pickle was loaded"
    assert line.startswith(f"{PROG}: error: {path}: ") and ("does not match its signature" in line or "has no signature" in line)
    assert "nothing was loaded" in line and "--trust-storage" in line


def test_resume_of_a_folder_signed_with_another_key_is_refused_until_trusted(interrupted, tmp_path, capsys, monkeypatch):
    exp = copy_of(interrupted, tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "colleague"))   # another user: no key, or another one
    assert "no signing key at" in refused(exp, capsys)
    signing.load_key(create=True)
    assert "does not match its signature" in refused(exp, capsys)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_searcher_state_is_refused_never_half_restored(interrupted, tmp_path, capsys, damage):
    """Ray 2.60 logs "Failed to restore the run state" and starts the search again beside the old trials."""
    exp = copy_of(interrupted, tmp_path)
    path = sorted(exp.glob("searcher-state-*.pkl"))[-1]
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:50])
    else:
        path.unlink()
    line = refused(exp, capsys)
    assert f"{path}: " in line
    line = refused(exp, capsys, "--trust-storage")   # trusted, and still not readable: refused as well
    if damage == "truncate":
        assert line.startswith(f"{PROG}: error: {path}: Tune's saved state of the searcher cannot be read (")
    else:
        assert line.startswith(f"{PROG}: error: {exp}/searcher-state-*.pkl: no such file") and "half restored" in line


def test_resume_across_versions_is_refused_before_ray_unpickles(interrupted, tmp_path, capsys):
    """An experiment of the layout before format versions: no version in tuning_run.json, and a tuner.pkl that
    refers to a class the package no longer has (Ray's restore would end in an AttributeError traceback)."""
    exp = copy_of(interrupted, tmp_path)
    meta_path = exp / experiment.RUN_META
    meta = json.loads(meta_path.read_text())
    assert meta["package_version"] == __version__ and meta["format_version"] == experiment.FORMAT_VERSION
    old_class = b"ctuning.progress\nTuneScalars\n)\x81."   # a pickle of tuning.progress.TuneScalars()
    with pytest.raises(AttributeError, match="TuneScalars"):
        pickle.loads(old_class)
    (exp / "tuner.pkl").write_bytes(old_class)
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("package_version", "format_version")}))
    line = refused(exp, capsys, "--retry-errored")
    assert line == (f"{PROG}: error: {exp}: written by an earlier multivae-tune (no version recorded), experiment format 1; "
                    f"this is multivae-tune {__version__}, format {experiment.FORMAT_VERSION}, which cannot resume it. "
                    f"Finish it with the version that wrote it, or start a new search here: from its best trial (`python -m "
                    f"multivae.train --config {exp}/{experiment.BEST_CONFIG}`, once it has one) or with `python -m "
                    f"tuning.run --space {exp}/{experiment.SPACE_COPY} --name <new name>`")
    # the same pickle in an experiment of this format, trusted: one line, not Ray's traceback
    meta_path.write_text(json.dumps(meta))
    line = refused(exp, capsys, "--trust-storage")
    assert line.startswith(f"{PROG}: error: {exp}/tuner.pkl: Tune's saved state of the Tuner cannot be read (AttributeError: ")
    assert "TuneScalars" in line


def global_names(data: bytes) -> set[str]:
    """`module.name` of every class or function a pickle refers to by name (read, never loaded)."""
    import pickletools

    memo, stack, names = {}, [], set()
    for op, arg, _ in pickletools.genops(data):
        if isinstance(arg, str) and "UNICODE" in op.name or op.name.endswith("STRING"):
            stack.append(arg)
        elif op.name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else None
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1] if stack else None
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg))
        elif op.name == "STACK_GLOBAL":
            names.add(f"{stack[-2]}.{stack[-1]}")
            stack.append(None)
        elif op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
        else:
            stack.append(None)
    return names


def test_tune_state_refers_to_no_project_class_by_its_name(interrupted):
    """What Tune pickled of the project (callbacks, the trial names, the searcher) refers only to the stable
    factories, so a class renamed in a later version cannot break a resume."""
    names = set()
    for path in [interrupted / "tuner.pkl", *interrupted.glob("searcher-state-*.pkl"), *interrupted.glob("search_gen_state-*.json")]:
        names |= global_names(path.read_bytes())
    project = {n for n in names if n.startswith(("tuning.", "multivae."))}
    assert project == {"tuning.progress.rebuild", "tuning.ray_compat.rebuild_optuna_search", "tuning.tuner.rebuild_search_alg"}, project


def test_an_untouched_experiment_resumes_and_new_trials_carry_the_fixed_settings(interrupted, tmp_path, capsys):
    exp = copy_of(interrupted, tmp_path)
    started = {d.name for d in trial_dirs(exp)}
    rc, lines = resume(exp, capsys)
    assert rc == 0, lines
    trials = trial_dirs(exp)
    assert len(trials) == SAMPLES and {d.name for d in trials} > started
    for d in trials:   # the trials made after the resume too: the space's fixed values, not the code's defaults
        params = json.loads((d / "params.json").read_text())
        assert {k: params[k] for k in ("epochs", "batch_size", "latent_dim")} == {"epochs": EPOCHS, "batch_size": 100, "latent_dim": 8}
    assert json.loads((exp / experiment.RESULTS).read_text())["trials"]["total"] == SAMPLES
    signing.verify(str(exp))   # what the resumed run saved is signed in turn


def test_search_returns_the_experiment_it_created(ray_session, interrupted, tmp_path):
    import tuning

    storage = tmp_path / "rr"
    older = storage / f"{NAME}-99991231-235959"   # sorts after any name made today
    shutil.copytree(interrupted, older)
    (older / experiment.RESULTS).write_text(json.dumps({"not": "this experiment"}))
    found = tuning.search(str(tiny_space_file(tmp_path)), storage=str(storage), quiet=True)
    assert found.experiment != str(older) and Path(found.experiment).parent == storage
    assert Path(found.experiment).name.startswith(f"{NAME}-") and len(found.trials) == SAMPLES
