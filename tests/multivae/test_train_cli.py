"""`python -m multivae.train`: --config, resume that keeps what was trained, implicit data, help (the beta* slope: test_beta_star.py)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from multivae import train
from multivae.errors import UserError, run_cli
from multivae.training import TrainConfig

from .helpers import clustered_interactions

REPO = Path(__file__).resolve().parents[2]
TINY = ["--hidden-dims", "8", "--latent-dim", "4", "--batch-size", "100", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_cli")
    df = clustered_interactions(300, 120, seed=1)
    df.assign(rating=5).to_csv(d / "ratings.csv", index=False)
    df.to_csv(d / "implicit.csv", index=False)
    # the same number of items under other ids: another catalogue
    df.assign(item=df["item"] + 1000, rating=5).to_csv(d / "other_items.csv", index=False)
    return d


def run(argv, tmp_path, name="run"):
    return train.main([*argv, "--out", str(tmp_path / name), "--cache-dir", str(tmp_path / "cache")])


def metrics(tmp_path, name="run"):
    return json.loads((tmp_path / name / "metrics.json").read_text())


def test_config_file_gives_the_same_numbers_as_the_flags(data, tmp_path):
    flags = ["--lr", "0.005", "--anneal-cap", "0.5", "--epochs", "2", "--seed", "3", "--dropout", "0.3"]
    run(["--data", str(data / "ratings.csv"), *TINY, *flags], tmp_path, "direct")
    cfg = {"model": {"hidden_dims": [8], "latent_dim": 4, "dropout": 0.3},
           "train": {"lr": 0.005, "anneal_cap": 0.5, "epochs": 2, "seed": 3, "batch_size": 100}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run(["--data", str(data / "ratings.csv"), "--config", str(tmp_path / "c.yaml"), "--quiet"], tmp_path, "from_config")
    a, b = metrics(tmp_path, "direct"), metrics(tmp_path, "from_config")
    assert a["train_config"] == b["train_config"] and a["model_config"] == b["model_config"]
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert a["test"] == b["test"]


def test_flags_override_the_config_file_and_a_search_best_config_is_accepted(data, tmp_path):
    best = {"space": "smoke", "trial_id": "abc", "best_ndcg@100": 0.3, "best_epoch": 2, "beta_at_best": 0.01,
            "config": {"lr": 0.01}, "model": {"model": "vae", "hidden_dims": [8], "latent_dim": 4, "dropout": 0.5,
                                              "likelihood": "multinomial", "normalize_input": True},
            "train": {**{k: v for k, v in TrainConfig().__dict__.items() if k != "metrics"}, "lr": 0.01, "epochs": 5, "batch_size": 100}}
    (tmp_path / "best_config.yaml").write_text(yaml.safe_dump(best))
    run(["--data", str(data / "ratings.csv"), "--config", str(tmp_path / "best_config.yaml"), "--epochs", "1", "--quiet"], tmp_path)
    m = metrics(tmp_path)
    assert m["train_config"]["lr"] == 0.01 and m["train_config"]["epochs"] == 1 and m["model_config"]["latent_dim"] == 4


@pytest.mark.parametrize("text,message", [
    ("model: {latent_dim: 4}\ntrainer: {lr: 1}\n", r"c\.yaml: unknown key 'trainer'"),
    ("train: {lr: -1}\n", r"c\.yaml: lr must be > 0, got -1"),
    ("model: {latnt_dim: 4}\n", r"c\.yaml: unknown key 'latnt_dim'"),
    ("config: {lr: 0.1}\n", r"c\.yaml: has only the flat trial parameters"),
])
def test_bad_config_files_are_one_line_errors(data, tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(UserError, match=message):
        run(["--data", str(data / "ratings.csv"), "--config", str(tmp_path / "c.yaml"), *TINY], tmp_path)
    assert not (tmp_path / "run").exists()


def test_resume_keeps_the_checkpoint_settings(data, tmp_path):
    base = ["--data", str(data / "ratings.csv"), *TINY]
    run([*base, "--lr", "5e-3", "--anneal-cap", "0.5", "--epochs", "2"], tmp_path)
    run([*base, "--resume", "--epochs", "3"], tmp_path)          # no --lr / --anneal-cap: the checkpoint's stay
    m = metrics(tmp_path)
    assert m["train_config"]["lr"] == 5e-3 and m["train_config"]["anneal_cap"] == 0.5 and m["epochs"] == 3 and m["resumed"]
    with pytest.raises(UserError, match=r"--anneal-cap 0\.2 contradicts the checkpoint's anneal_cap 0\.5"):
        run([*base, "--resume", "--anneal-cap", "0.2", "--epochs", "4"], tmp_path)
    with pytest.raises(UserError, match=r"--latent-dim 5 contradicts the checkpoint's latent_dim 4"):
        run([*base, "--resume", "--latent-dim", "5", "--epochs", "4"], tmp_path)
    run(["--resume", "--epochs", "4", "--quiet"], tmp_path)     # no data flag at all: the checkpoint's dataset
    assert metrics(tmp_path)["epochs"] == 4 and metrics(tmp_path)["dataset"]["path"] == str(data / "ratings.csv")


def test_resume_on_another_catalogue_of_the_same_size_is_refused(data, tmp_path):
    run(["--data", str(data / "ratings.csv"), *TINY, "--epochs", "1"], tmp_path)
    with pytest.raises(UserError, match=r"checkpoint was trained on another dataset or item catalogue \(column 0 is item"):
        run(["--data", str(data / "other_items.csv"), *TINY, "--epochs", "2", "--resume"], tmp_path)


def test_file_without_a_rating_column_is_implicit(data, tmp_path, capsys):
    run(["--data", str(data / "implicit.csv"), *TINY, "--epochs", "1"], tmp_path)
    err = capsys.readouterr().err
    assert err.count("no 'rating' column, so every row is read as a positive (implicit data)") == 1
    assert metrics(tmp_path)["dataset"]["rating_col"] is None
    with pytest.raises(UserError, match=r"implicit\.csv: no rating column 'stars'"):
        run(["--data", str(data / "implicit.csv"), "--rating-col", "stars", *TINY, "--epochs", "1", "--overwrite"], tmp_path)


def test_a_split_without_validation_targets_is_refused_before_training(tmp_path):
    # Every user has 3 shared items and 3 of their own: a held-out user's own items are seen by no training user,
    # so they are dropped and 3 < 5 items are left: no held-out user gets a target.
    rows = [(u, i) for u in range(40) for i in (0, 1, 2, 1000 + 3 * u, 1001 + 3 * u, 1002 + 3 * u)]
    pd.DataFrame(rows, columns=["user", "item"]).to_csv(tmp_path / "few.csv", index=False)
    with pytest.raises(UserError, match=r"few\.csv: none of the 5 validation users has a held-out target \(a user needs at least 5"):
        run(["--data", str(tmp_path / "few.csv"), *TINY, "--heldout-users", "5"], tmp_path)
    assert not (tmp_path / "run").exists()


def test_every_flag_has_help_and_version(capsys):
    for mod in ("multivae.train_cli", "multivae.recommend"):
        parser = __import__(mod, fromlist=["_parser"])._parser()
        missing = [a.option_strings for a in parser._actions if not a.help]
        assert missing == [], (mod, missing)
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(["--version"])
        assert exit_.value.code == 0
        assert re.search(r"\d+\.\d+\.\d+", capsys.readouterr().out)


def test_console_scripts_are_declared():
    tomllib = pytest.importorskip("tomllib")   # Python 3.11+

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["multivae-train"] == "multivae.train_cli:cli" and scripts["multivae-recommend"] == "multivae.recommend:cli"
    for target in (scripts["multivae-train"], scripts["multivae-recommend"]):
        mod, fn = target.split(":")
        assert callable(getattr(__import__(mod, fromlist=[fn]), fn))


def test_cli_version_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "multivae.train", "--version"], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("python -m multivae.train 0.")


def test_beta_star_resume_extends_the_retraining_not_the_sweep(data, tmp_path):
    base = ["--data", str(data / "ratings.csv"), *TINY, "--anneal-steps", "10"]
    run([*base, "--beta-star", "--epochs", "2"], tmp_path)
    first = metrics(tmp_path)
    assert first["beta_star"]["sweep_train_config"]["anneal_steps"] == 50     # 10 / 0.2: the same slope up to 1
    run(["--resume", "--epochs", "3", "--quiet"], tmp_path)                     # --beta-star comes from the checkpoint
    again = metrics(tmp_path)
    assert again["beta_star"]["value"] == first["beta_star"]["value"] and again["epochs"] == 3
    assert again["train_config"]["anneal_cap"] == first["train_config"]["anneal_cap"] == first["beta_star"]["value"]


def test_a_log_gets_one_plain_line_per_epoch_not_progress_bar_frames(data, tmp_path, capsys):
    assert not sys.stderr.isatty()   # captured: what a redirected log sees
    run(["--data", str(data / "ratings.csv"), *[a for a in TINY if a != "--quiet"], "--epochs", "2"], tmp_path)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"] and all(" best " in line for line in lines)


# --- one writer per run folder, and --overwrite as a whole --------------------------------------------------

def _train_cmd(data, out: Path, cache: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "multivae.train", "--data", str(data / "ratings.csv"), *TINY, "--threads", "1",
            "--out", str(out), "--cache-dir", str(cache), *flags]


def _seeds(out: Path) -> tuple:
    """The seed each file of the run folder says it was trained with: one run's files all say the same."""
    from multivae.checkpoint import load_checkpoint

    return (json.loads((out / "metrics.json").read_text())["train_config"]["seed"],
            load_checkpoint(out / "checkpoint.pt")["train_config"]["seed"],
            json.loads((out / "model" / "model.json").read_text())["train_config"]["seed"])


def test_two_runs_into_one_out_started_together_one_is_refused_and_the_folder_holds_one_run(data, tmp_path):
    out = tmp_path / "shared"
    procs = {seed: subprocess.Popen(_train_cmd(data, out, tmp_path / f"cache{seed}", "--epochs", "20", "--seed", str(seed)),
                                    cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (11, 22)}
    done = {seed: (p.wait(timeout=600), *p.communicate()) for seed, p in procs.items()}
    assert sorted(rc for rc, _, _ in done.values()) == [0, 2], {s: (rc, err[-2000:]) for s, (rc, _, err) in done.items()}
    (winner,) = [s for s, (rc, _, _) in done.items() if rc == 0]
    (loser,) = [s for s, (rc, _, _) in done.items() if rc == 2]
    err = done[loser][2]   # the split's statistics, then one error line, no traceback
    assert "Traceback" not in err and err.count("error:") == 1, err
    assert re.fullmatch(rf"multivae\.train: error: {re.escape(str(out))}: another multivae\.train is writing this run folder "
                        rf"\(pid {procs[winner].pid} on .+\); wait for it to finish, or use another --out", err.splitlines()[-1]), err
    assert _seeds(out) == (winner, winner, winner)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.json", "model"]
    assert not list(tmp_path.glob(".shared.*-*"))   # no staging or aside folder left


def test_overwrite_replaces_the_run_as_a_whole(data, tmp_path):
    run(["--data", str(data / "ratings.csv"), *TINY, "--epochs", "1", "--seed", "1"], tmp_path)
    run(["--data", str(data / "ratings.csv"), *TINY, "--epochs", "1", "--seed", "2", "--latent-dim", "6", "--overwrite"], tmp_path)
    from multivae.recommend import load

    assert _seeds(tmp_path / "run") == (2, 2, 2)
    assert load(tmp_path / "run").model.config.latent_dim == 6   # recommend serves the new model
    # EASE has no checkpoint and no model folder: the old run's must not stay under the new metrics
    run(["--data", str(data / "ratings.csv"), "--model", "ease", "--ease-lambda", "100", "--overwrite", "--quiet"], tmp_path)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.json"]
    assert metrics(tmp_path)["model"] == "ease"
    with pytest.raises(UserError, match="no model folder|not a readable checkpoint|checkpoint not found|not found"):
        load(tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run.")) == [".run.lock"]


def test_overwrite_refuses_a_folder_with_files_that_are_not_a_run(data, tmp_path):
    run(["--data", str(data / "ratings.csv"), *TINY, "--epochs", "1"], tmp_path)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    before = (tmp_path / "run" / "metrics.json").read_bytes()
    with pytest.raises(UserError, match=r"run: holds notes\.txt, which are not part of a run; --overwrite replaces the run "
                                        r"folder as a whole"):
        run(["--data", str(data / "ratings.csv"), *TINY, "--epochs", "1", "--overwrite"], tmp_path)
    assert (tmp_path / "run" / "metrics.json").read_bytes() == before and (tmp_path / "run" / "notes.txt").exists()


def test_an_interrupted_overwrite_leaves_the_old_run_as_it_was(data, tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    run(["--data", str(data / "ratings.csv"), *TINY, "--epochs", "1", "--seed", "1"], tmp_path)
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    proc = subprocess.Popen(_train_cmd(data, out, tmp_path / "cache", "--epochs", "500", "--seed", "2", "--checkpoint-every", "1",
                                       "--overwrite"), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        # until the new run has checkpointed (wherever it writes it), as a Ctrl-C in the middle of training would find it
        while time.monotonic() < deadline and proc.poll() is None:
            written = list(tmp_path.glob(".run.new-*/checkpoint.pt")) + [out / "checkpoint.pt"]
            if any(p.exists() and p.stat().st_mtime_ns > (out / "metrics.json").stat().st_mtime_ns for p in written):
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 130, proc.stderr.read()[-2000:]
    assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run.")) == [".run.lock"]
