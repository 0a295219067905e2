"""The trainable under a real Tuner: per-epoch reports, checkpoints, resume after a crash, NaN isolation.

One Tuner run (module fixture) of three trials on a file-based dataset whose files are deleted before
`fit`: two identical trials, one of which has its worker process killed (SIGKILL, a real crash) right
after epoch 2 and is restarted by Tune from its last checkpoint, and one whose learning rate makes the
loss NaN.
"""

import json
import math
import os
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray import tune

from multivae.checkpoint import CHECKPOINT_NAME
from multivae.training import restore_state
from tests.multivae.helpers import clustered_interactions
from tests.tuning.helpers import events, result_rows, trial_dirs
from tuning.tblog import SUBDIR
from tuning.trainable import REPORTED, newest_own_checkpoint, train_multivae

EPOCHS, KILL_AT = 5, 2
GOOD_LR, NAN_LR = 1e-3, 1e6


class KillOnce(tune.Callback):
    """Fault injection from the driver: SIGKILL the worker of the first good trial that reports epoch KILL_AT."""

    def __init__(self) -> None:
        self.killed: str | None = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.killed is None and result["epoch"] == KILL_AT and trial.config["lr"] == GOOD_LR:
            self.killed = trial.trial_id
            os.kill(result["pid"], signal.SIGKILL)


def trial_config(lr):
    """A trial's config as Tune passes it (the flat keys `tuning.trial_config.split_trial_config` decodes)."""
    return {"epochs": EPOCHS, "batch_size": 50, "lr": lr, "anneal_cap": 0.3, "anneal_steps": 12,
            "eval_batch_size": 100, "hidden_dims": "[40]", "latent_dim": 16}


@pytest.fixture(scope="module")
def tuned(ray_session, tmp_path_factory):
    from multivae.data import DatasetConfig, ProtocolConfig, load_dataset

    tmp = tmp_path_factory.mktemp("trainable")
    source, cache = tmp / "interactions.csv", tmp / "cache"
    clustered_interactions(n_users=400, n_items=150, seed=1).to_csv(source, index=False)
    split = load_dataset(DatasetConfig(name="file", path=str(source), rating_col=None,
                                       protocol=ProtocolConfig(heldout_users=40)), cache_dir=str(cache), verbose=False)
    source.unlink()                 # the trials must live on the object-store copy alone
    shutil.rmtree(cache, ignore_errors=True)

    killer = KillOnce()
    lrs = [GOOD_LR, GOOD_LR, NAN_LR]
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(train_multivae, split=split, checkpoint_every=1), {"cpu": 1}),
        param_space={**trial_config(GOOD_LR), "lr": tune.grid_search(lrs)},
        run_config=tune.RunConfig(name="trainable", storage_path=str(tmp / "ray_results"), verbose=0, callbacks=[killer],
                                  failure_config=tune.FailureConfig(max_failures=1),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                  sync_config=tune.SyncConfig(sync_artifacts=True)),
    )
    results = tuner.fit()
    by_id = {r.metrics["trial_id"]: r for r in results}
    good = [r for r in results if r.config["lr"] == GOOD_LR]
    return SimpleNamespace(
        results=results, split=split, source=source, cache=cache, exp=tmp / "ray_results" / "trainable",
        killed=by_id[killer.killed], intact=next(r for r in good if r.metrics["trial_id"] != killer.killed),
        nan=next(r for r in results if r.config["lr"] == NAN_LR))


def rows_by_epoch(result):
    return {int(r["epoch"]): r for r in result_rows(result.path)}


def test_reports_every_epoch_with_all_keys(tuned):
    rows = result_rows(tuned.intact.path)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    for r in rows:
        missing = [k for k in REPORTED if k not in r or r[k] is None]
        assert not missing, f"epoch {r['epoch']} lacks {missing}"
        assert 0.0 < r["ndcg@100"] <= 1.0 and 0.0 <= r["recall@20"] <= 1.0
        assert r["best_ndcg@100"] == max(x["ndcg@100"] for x in rows if x["epoch"] <= r["epoch"])
    steps_per_epoch = rows[0]["global_step"]
    assert [r["global_step"] for r in rows] == [steps_per_epoch * e for e in range(1, EPOCHS + 1)]
    # a checkpoint every epoch (num_to_keep=2): the last one restores the whole training state
    ckpt = tuned.intact.checkpoint
    assert ckpt is not None and sorted(p.name for p in Path(tuned.intact.path).iterdir() if p.name.startswith("checkpoint_")) == [
        "checkpoint_000003", "checkpoint_000004"]
    state = restore_state(f"{ckpt.path}/{CHECKPOINT_NAME}", n_items=tuned.split.n_items)
    assert (state.epoch, state.global_step) == (EPOCHS, steps_per_epoch * EPOCHS)
    assert (state.train_config.threads, state.train_config.device) == (1, "cpu")   # the trial's 1 CPU, no GPU
    assert state.best["epoch"] == rows[-1]["best_epoch"] and state.best_model is not None


def test_resume_after_a_crash_continues_the_kl_schedule_exactly(tuned):
    rows = result_rows(tuned.killed.path)
    restarts = [i for i, r in enumerate(rows) if r["iterations_since_restore"] == 1]
    assert len(restarts) == 2, "the killed trial should have been restarted once by Tune"
    first_resumed = rows[restarts[1]]
    assert first_resumed["epoch"] > 1, "the restarted trial began again at epoch 1 instead of its checkpoint"
    assert first_resumed["epoch"] <= KILL_AT + 1
    assert first_resumed["kl_weight"] > 0

    intact = rows_by_epoch(tuned.intact)
    resumed = rows[restarts[1]:]
    assert [r["epoch"] for r in resumed] == list(range(first_resumed["epoch"], EPOCHS + 1))
    for r in resumed:
        ref = intact[r["epoch"]]
        assert r["global_step"] == ref["global_step"]
        assert r["kl_weight"] == ref["kl_weight"]       # beta = min(cap, cap * step / anneal_steps): same step, same beta
        # model, optimizer and RNG states are restored too, so the run is the uninterrupted one
        assert math.isclose(r["loss"], ref["loss"], rel_tol=1e-4), (r["epoch"], r["loss"], ref["loss"])
        assert math.isclose(r["ndcg@100"], ref["ndcg@100"], rel_tol=1e-4)
    assert tuned.killed.error is None and tuned.killed.metrics["epoch"] == EPOCHS


def test_nan_loss_fails_that_trial_only(tuned):
    assert tuned.nan.error is not None
    message = str(tuned.nan.error)
    assert "FloatingPointError" in message and "diverged" in message and "lower the learning rate" in message
    assert tuned.intact.error is None and tuned.killed.error is None
    assert len(tuned.results) == 3 and tuned.results.num_errors == 1


def test_trials_never_touch_the_data_files(tuned):
    # The source file and the processed-split cache were deleted before Tuner.fit; both good trials
    # still trained to the end on the dataset that tune.with_parameters put in the object store.
    assert not tuned.source.exists() and not tuned.cache.exists()
    for r in (tuned.intact, tuned.killed):
        assert r.error is None and r.metrics["epoch"] == EPOCHS


def test_tensorboard_per_step_per_epoch_and_hparams(tuned):
    acc = events(Path(tuned.killed.path) / SUBDIR)
    rows = result_rows(tuned.intact.path)
    total_steps = rows[-1]["global_step"]
    for tag in ("train/loss", "train/recon", "train/kl", "train/kl_weight"):
        assert {e.step for e in acc.Scalars(tag)} == set(range(1, total_steps + 1)), tag
    kl = {e.step: e.value for e in acc.Scalars("train/kl_weight")}
    assert kl[1] == 0.0 and math.isclose(kl[total_steps], 0.3, rel_tol=1e-6)   # annealed to the cap over 12 steps
    assert sorted({e.step for e in acc.Scalars("val/ndcg@100")}) == list(range(1, EPOCHS + 1))
    hparams = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)


def test_trial_dirs_hold_tunes_own_files(tuned):
    assert len(trial_dirs(tuned.exp)) == 3
    for r in (tuned.intact, tuned.killed):
        d = Path(r.path)
        assert (d / "progress.csv").exists() and (d / SUBDIR).is_dir()
        assert any(p.name.startswith("events.out.tfevents") for p in d.iterdir())   # Tune's own TensorBoard logger
    assert (Path(tuned.nan.path) / "error.txt").exists()


def _trial_folder(tmp_path, rows, present):
    """A trial folder as Tune leaves it: result.json rows and the checkpoint folders in `present`."""
    folder = tmp_path / "trial_0001_aaaa"
    folder.mkdir()
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 9, "cut sh')
    for name in present:
        (folder / name).mkdir()
        (folder / name / CHECKPOINT_NAME).write_bytes(b"x")
    return folder


def row(epoch, ckpt=None, trial="aaaa"):
    return {"epoch": epoch, "trial_id": trial, "checkpoint_dir_name": ckpt}


@pytest.mark.parametrize("case, rows, present, given, expected", [
    # the snapshot lag: restored at epoch 2's checkpoint though epoch 3's row and checkpoint are there
    ("newer own checkpoint", [row(1, "checkpoint_000000"), row(2, "checkpoint_000001"), row(3, "checkpoint_000002")],
     ["checkpoint_000001", "checkpoint_000002"], "checkpoint_000001", "checkpoint_000002"),
    # the newest row has no checkpoint (a crash mid-way): training again from the last checkpoint is right
    ("newer row without a checkpoint", [row(1, "checkpoint_000000"), row(2)], ["checkpoint_000000"],
     "checkpoint_000000", "checkpoint_000000"),
    # the newer checkpoint was removed (keep: N): the given one stays
    ("newer checkpoint gone", [row(1, "checkpoint_000000"), row(2, "checkpoint_000001")], ["checkpoint_000000"],
     "checkpoint_000000", "checkpoint_000000"),
    # PBT copying another trial's checkpoint: that trial's newer rows are not this trial's
    ("another trial's folder", [row(1, "checkpoint_000000", "bbbb"), row(2, "checkpoint_000001", "bbbb")],
     ["checkpoint_000000", "checkpoint_000001"], "checkpoint_000000", "checkpoint_000000"),
    # a checkpoint no row names (its row was cut off): as given
    ("unnamed checkpoint", [row(1, "checkpoint_000000"), row(2, "checkpoint_000001")],
     ["checkpoint_000000", "checkpoint_000001", "checkpoint_000007"], "checkpoint_000007", "checkpoint_000007"),
])
def test_a_restored_trial_goes_on_from_its_newest_checkpoint_with_a_row(tmp_path, case, rows, present, given, expected):
    folder = _trial_folder(tmp_path, rows, present)
    got = newest_own_checkpoint(tune.Checkpoint(str(folder / given)), "aaaa")
    assert Path(got.path).name == expected, case
