"""Checkpoints (weights_only loading, clear errors) and top-K recommendation with seen items masked."""

import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from multivae.checkpoint import load_checkpoint, save_checkpoint
from multivae.errors import UserError
from multivae.model import ModelConfig
from multivae.recommend import load_model_for_inference, rows_from_items, top_k
from multivae.training import TrainConfig, fit, restore_state, save_state

from .helpers import small_split


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    split = small_split()
    state = fit(split, ModelConfig(hidden_dims=(32,), latent_dim=16), TrainConfig(epochs=3, batch_size=100))
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    save_state(state, path, item_ids=np.arange(split.n_items) + 1000)   # original ids differ from indices
    return split, state, path


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_round_trip_keeps_everything(trained):
    split, state, path = trained
    payload = load_checkpoint(path)
    assert payload["global_step"] == state.global_step and payload["epoch"] == 3
    assert payload["best"]["epoch"] == state.best["epoch"]
    assert payload["item_ids"][:3] == [1000, 1001, 1002]
    restored = restore_state(path, n_items=split.n_items)
    for k, v in state.model.state_dict().items():
        assert torch.equal(v, restored.model.state_dict()[k])


def test_truncated_checkpoint(trained, tmp_path):
    _, _, path = trained
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match=r"truncated\.pt: not a readable checkpoint"):
        load_checkpoint(bad)


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, p)
    with pytest.raises(UserError, match=r"other\.pt: not a multivae checkpoint"):
        load_checkpoint(p)
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(UserError, match=r"notes\.txt"):
        load_checkpoint(txt)


def test_untrusted_pickle_is_refused(tmp_path, capsys):
    p = tmp_path / "evil.pt"
    torch.save({"format": "multivae-checkpoint", "version": 1, "x": Evil()}, p)
    with pytest.raises(UserError, match=r"evil\.pt: refused to load"):
        load_checkpoint(p)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UserError, match=r"raw\.pkl"):
        load_checkpoint(raw)
    assert "must never run" not in capsys.readouterr().out


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope")


def test_checkpoint_for_another_item_count(trained):
    _, _, path = trained
    with pytest.raises(UserError, match="checkpoint is for 200 items but the dataset has 999"):
        restore_state(path, n_items=999)


def test_save_is_atomic(tmp_path):
    p = tmp_path / "c.pt"
    save_checkpoint({"a": 1}, p)
    assert [f.name for f in tmp_path.iterdir()] == ["c.pt"]   # no temporary left behind


def test_top_k_masks_seen_items_and_maps_ids(trained):
    split, _, path = trained
    model, item_ids, _ = load_model_for_inference(path)
    rows = split.test_fold_in[:20]
    idx, scores = top_k(model, rows, k=10)
    assert idx.shape == (20, 10)
    for r in range(20):
        assert not set(idx[r]) & set(rows[r].indices)                 # nothing the user already has
        assert np.all(np.diff(scores[r]) <= 0)                        # best first
    # the same ranking as scoring everything and masking by hand
    with torch.no_grad():
        full = model(torch.from_numpy(rows.toarray()))[0].numpy()
    full[rows.nonzero()] = -np.inf
    np.testing.assert_array_equal(np.sort(idx, axis=1), np.sort(np.argsort(-full, axis=1)[:, :10], axis=1))


def test_new_users_from_item_lists(trained):
    split, _, path = trained
    model, item_ids, _ = load_model_for_inference(path)
    rows, _ = rows_from_items([[1000, 1001, 1001, 99999], []], item_ids, "test")
    assert rows.shape == (2, split.n_items) and rows[0].indices.tolist() == [0, 1] and rows[1].nnz == 0
    idx, _ = top_k(model, rows, k=5)
    assert 0 not in idx[0] and 1 not in idx[0]
    assert item_ids[idx[0]].min() >= 1000


def test_k_must_be_positive(trained):
    split, _, path = trained
    model, _, _ = load_model_for_inference(path)
    with pytest.raises(UserError, match="k must be >= 1"):
        top_k(model, sp.csr_matrix((1, split.n_items), dtype=np.float32), k=0)


def test_an_older_run_without_a_model_folder_masks_heldout_items_too(tmp_path):
    """A checkpoint file from before model folders: its cached split supplies the users, fold-in and target masked."""
    from multivae.recommend import load

    split = small_split()
    split.save(tmp_path / "split.npz")
    state = fit(split, ModelConfig(hidden_dims=(16,), latent_dim=8), TrainConfig(epochs=2, batch_size=100))
    save_state(state, tmp_path / "checkpoint.pt", split.item_ids, extra={"split_path": str(tmp_path / "split.npz")})
    df = load(tmp_path / "checkpoint.pt").recommend(users=split.test_user_ids.tolist(), k=10)
    assert len(df) == 10 * len(split.test_user_ids)
    for u, g in df.groupby("user"):
        r = int(np.flatnonzero(split.test_user_ids == u)[0])
        cols = set(np.flatnonzero(np.isin(split.item_ids, g["item"].to_numpy())))
        assert not cols & (set(split.test_target[r].indices) | set(split.test_fold_in[r].indices))
