"""Model folders and recommendations: self-contained, never a seen item (held-out ones included), labelled scores,
titles, every output format, batch scoring."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from multivae.artifact import MODEL_JSON, WEIGHTS, find_model_dir, known_from_split, load_model_dir, save_model_dir
from multivae.errors import UserError
from multivae.model import ModelConfig
from multivae.recommend import Recommender, load, main, render, top_k
from multivae.training import TrainConfig, best_model, fit

from .helpers import small_split

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "datasets"
SMALL = ModelConfig(hidden_dims=(32,), latent_dim=16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    split = small_split()
    split.item_ids = split.item_ids + 1000          # original ids differ from column indices
    state = fit(split, SMALL, TrainConfig(epochs=4, batch_size=100))
    model = best_model(state)
    d = tmp_path_factory.mktemp("models") / "model"
    save_model_dir(d, model, SMALL, split.item_ids, known_from_split(split), metrics={"test": {"ndcg@100": 0.5}},
                   command="a test", dataset={"name": "file", "path": "nowhere.csv"})
    return split, model, d


def heldout_share(idx: np.ndarray, target: sp.csr_matrix) -> float:
    """Share of the recommended slots that are held-out target items of their user (slow, by sets)."""
    hits = sum(len(set(idx[r]) & set(target[r].indices)) for r in range(target.shape[0]))
    return hits / idx.size


def test_test_users_never_get_their_heldout_items(trained):
    split, model, d = trained
    # Before: only the fold-in rows were masked, so the model recommends the very items held out from it.
    old_idx, _ = top_k(model, split.test_fold_in, k=10)
    assert heldout_share(old_idx, split.test_target) > 0.05
    # Now: everything the data has for the user is masked.
    rec = load(d)
    df = rec.recommend(users=split.test_user_ids.tolist(), k=10)
    cols = pd.Index(split.item_ids).get_indexer(df["item"])
    rows = pd.Index(split.test_user_ids).get_indexer(df["user"])
    idx = np.full((len(split.test_user_ids), 10), -1)
    idx[rows, df["rank"].to_numpy() - 1] = cols
    assert (idx >= 0).all()
    assert heldout_share(idx, split.test_target) == 0.0
    assert heldout_share(idx, split.test_fold_in) == 0.0


def test_every_known_user_row_is_everything_the_data_has(trained):
    split, _, d = trained
    md = load_model_dir(d)
    assert md.known.shape == (split.train.shape[0] + 2 * split.test_fold_in.shape[0], split.n_items)
    assert md.known.nnz == sum(m.nnz for m in (split.train, split.val_fold_in, split.val_target, split.test_fold_in, split.test_target))
    r = int(np.flatnonzero(md.user_ids == split.val_user_ids[3])[0])
    want = set(split.val_fold_in[3].indices) | set(split.val_target[3].indices)
    assert set(md.known[r].indices) == want
    np.testing.assert_array_equal(md.item_ids, split.item_ids)


def test_scores_are_softmax_probabilities_and_labelled(trained):
    split, model, d = trained
    rec = load(d)
    user = int(split.train_user_ids[0])
    df = rec.recommend(users=[user], k=5)
    assert list(df.columns) == ["user", "rank", "item", "score"] and df["rank"].tolist() == [1, 2, 3, 4, 5]
    assert "softmax" in df.attrs["score"] and "probability" in df.attrs["score"]
    with torch.no_grad():
        logits = model(torch.from_numpy(split.train[0].toarray()))[0][0].double()
    p = torch.softmax(logits, 0).numpy()                      # over the whole catalogue, before masking
    cols = pd.Index(split.item_ids).get_indexer(df["item"])
    np.testing.assert_allclose(df["score"].to_numpy(), p[cols], rtol=1e-5)
    unseen = np.setdiff1d(np.arange(split.n_items), split.train[0].indices)
    np.testing.assert_array_equal(np.sort(cols), np.sort(unseen[np.argsort(-p[unseen])[:5]]))


@pytest.mark.parametrize("likelihood,word", [("bernoulli", "sigmoid"), ("gaussian", "not a probability")])
def test_other_likelihoods_say_what_their_scores_are(tmp_path, likelihood, word):
    split = small_split()
    cfg = ModelConfig(hidden_dims=(8,), latent_dim=4, likelihood=likelihood)
    model = fit(split, cfg, TrainConfig(epochs=1, batch_size=200)).model.eval()
    save_model_dir(tmp_path / "m", model, cfg, split.item_ids, known_from_split(split))
    rec = load(tmp_path / "m")
    df = rec.recommend(users=[split.train_user_ids[0]], k=3)
    assert word in df.attrs["score"]
    with torch.no_grad():
        logits = model(torch.from_numpy(split.train[0].toarray()))[0][0]
    cols = pd.Index(split.item_ids).get_indexer(df["item"])
    want = torch.sigmoid(logits[cols]) if likelihood == "bernoulli" else logits[cols]
    np.testing.assert_allclose(df["score"].to_numpy(), want.numpy(), rtol=1e-5)


def test_fewer_than_k_when_the_catalogue_runs_out(trained, capsys):
    split, _, d = trained
    rec = load(d)
    all_but_three = [int(i) for i in split.item_ids[3:]]
    df = rec.recommend(items=[all_but_three, all_but_three[:5]], k=10)
    assert sorted(df.loc[df["user"] == 0, "item"]) == sorted(int(i) for i in split.item_ids[:3])
    assert (df["user"] == 1).sum() == 10 and np.isfinite(df["score"]).all()
    err = capsys.readouterr().err.splitlines()
    assert err == ["note: 1 user(s) have fewer than 10 items they do not already have; they get fewer than 10 "
                   "recommendations (catalogue of 200 items)"]                 # said once, for the one short user
    data = render(df, "json")
    json.loads(data, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_self_contained_and_safe_to_load(trained, tmp_path):
    _, _, d = trained
    moved = tmp_path / "elsewhere"
    shutil.copytree(d, moved)                         # no processed split, no checkpoint anywhere near it
    assert len(load(moved).recommend(users=[load(moved).user_ids[0]], k=3)) == 3
    torch.load(moved / WEIGHTS, weights_only=True)   # plain tensors only
    meta = json.loads((moved / MODEL_JSON).read_text())
    assert meta["format"] == "multivae-model" and meta["metrics"]["test"]["ndcg@100"] == 0.5 and meta["command"] == "a test"


def test_model_folder_is_found_in_runs_and_experiments(trained, tmp_path):
    _, _, d = trained
    for sub in ("model", "best_model"):
        shutil.copytree(d, tmp_path / sub / sub)
        assert find_model_dir(tmp_path / sub) == tmp_path / sub / sub
    assert find_model_dir(tmp_path / "nothing") is None
    with pytest.raises(UserError, match="no model folder there"):
        load_model_dir(tmp_path / "nothing")


def test_damaged_model_folders(trained, tmp_path):
    _, _, d = trained
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    (bad / WEIGHTS).write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"weights\.pt: not readable as plain weights"):
        load_model_dir(bad)
    shutil.rmtree(bad)
    shutil.copytree(d, bad)
    meta = json.loads((bad / MODEL_JSON).read_text())
    (bad / MODEL_JSON).write_text(json.dumps({**meta, "model_config": {**meta["model_config"], "latent_dim": 7}}))
    with pytest.raises(UserError, match="weights do not match the model config"):
        load_model_dir(bad)


def test_unknown_user_is_one_line(trained):
    _, _, d = trained
    with pytest.raises(UserError, match=r"user 'nobody' is not one of the"):
        load(d).recommend(users=["nobody"], k=3)


def test_saving_again_replaces_the_folder_whole(trained, tmp_path):
    split, model, _ = trained
    d = tmp_path / "m"
    save_model_dir(d, model, SMALL, split.item_ids, known_from_split(split), command="first")
    save_model_dir(d, model, SMALL, split.item_ids, known_from_split(split), command="second")
    assert json.loads((d / MODEL_JSON).read_text())["command"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]      # no temporary or old folder left


def test_titles_from_movielens_metadata_formats(tmp_path):
    from multivae.titles import read_titles

    (tmp_path / "u.item").write_bytes("1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
                                      "2|Caf\xe9 (1994)|01-Jan-1994||http://y|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n".encode("latin-1"))
    t = read_titles(tmp_path / "u.item")
    assert t.loc["1", "title"] == "Toy Story (1995)" and t.loc["1", "genres"] == "Animation|Children's|Comedy"
    assert t.loc["2", "title"] == "Caf\xe9 (1994)" and t.loc["2", "genres"] == "Action"
    (tmp_path / "movies.dat").write_bytes("1::Toy Story (1995)::Animation|Children's|Comedy\n3::Se\xf1or (1990)::Drama\n".encode("latin-1"))
    t = read_titles(tmp_path / "movies.dat")
    assert t.loc["3", "title"] == "Se\xf1or (1990)" and t.loc["1", "genres"] == "Animation|Children's|Comedy"
    (tmp_path / "movies.csv").write_text('movieId,title,genres\n1,"Toy Story (1995)",Adventure|Animation\n', encoding="utf-8")
    assert read_titles(tmp_path / "movies.csv").loc["1", "title"] == "Toy Story (1995)"
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match=r"bad\.csv: a titles table needs an item column"):
        read_titles(tmp_path / "bad.csv")


def test_cli_formats_and_titles(trained, tmp_path, capsys):
    split, _, d = trained
    titles = pd.DataFrame({"item": split.item_ids, "title": [f"film {i}" for i in split.item_ids]})
    titles.to_csv(tmp_path / "titles.csv", index=False)
    user = str(split.test_user_ids[0])
    argv = ["--checkpoint", str(d), "--user", user, "-k", "4", "--titles", str(tmp_path / "titles.csv")]
    assert main([*argv, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "probability" in doc["score"] and len(doc["recommendations"]) == 4
    assert all(r["title"] == f"film {r['item']}" for r in doc["recommendations"])
    assert main([*argv, "--format", "csv"]) == 0
    got = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert list(got.columns) == ["user", "rank", "item", "score", "title"] and len(got) == 4
    assert main([*argv]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# score = probability") and "film " in out
    assert main([*argv, "--out", str(tmp_path / "r.parquet")]) == 0
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "r.parquet")
    assert table.num_rows == 4 and b"probability" in table.schema.metadata[b"score"]


def test_cli_all_users_batch(trained, tmp_path):
    split, _, d = trained
    assert main(["--checkpoint", str(d), "--all-users", "-k", "3", "--out", str(tmp_path / "all.csv")]) == 0
    df = pd.read_csv(tmp_path / "all.csv")
    n_users = split.train.shape[0] + 2 * split.test_fold_in.shape[0]
    assert df["user"].nunique() == n_users and len(df) == 3 * n_users


def test_cli_parquet_needs_out(trained):
    _, _, d = trained
    with pytest.raises(UserError, match="--format parquet needs --out"):
        main(["--checkpoint", str(d), "--user", "1", "--format", "parquet"])


def test_train_writes_a_model_folder_that_survives_the_cache(tmp_path):
    """End to end through the CLIs: the cache deleted, --checkpoint <run dir> still recommends."""
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-m", "multivae.train", "--epochs", "1", "--hidden-dims", "8", "--latent-dim", "4",
                          "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--quiet"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr
    shutil.rmtree(tmp_path / "cache")
    rec = subprocess.run([sys.executable, "-m", "multivae.recommend", "--checkpoint", str(tmp_path / "run"), "--user", "1", "-k", "3",
                          "--format", "json"], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert rec.returncode == 0, rec.stderr
    assert len(json.loads(rec.stdout)["recommendations"]) == 3


@pytest.mark.movielens
@pytest.mark.skipif(not (SHARED / "ml-1m").is_dir(), reason=f"the staged MovieLens copies are not there ({SHARED})")
def test_ml1m_titles_and_no_heldout_items(tmp_path):
    """The issue's case: ML-1M test users, top-10. Fold-in-only masking returns held-out items; ours none."""
    from multivae.data import DatasetConfig, load_dataset

    split = load_dataset(DatasetConfig(name="ml-1m", data_dir=str(SHARED)), cache_dir=tmp_path / "cache", verbose=False)
    cfg = ModelConfig()
    model = best_model(fit(split, cfg, TrainConfig(epochs=2, threads=1)))
    save_model_dir(tmp_path / "m", model, cfg, split.item_ids, known_from_split(split), dataset={"name": "ml-1m"},
                   source_path=split.info["source_path"])
    old_idx, _ = top_k(model, split.test_fold_in, k=10)
    assert heldout_share(old_idx, split.test_target) > 0.05
    df = load(tmp_path / "m").recommend(users=split.test_user_ids.tolist(), k=10)
    assert len(df) == 6000
    index = pd.Index(split.item_ids)
    for u, g in df.groupby("user"):
        r = int(np.flatnonzero(split.test_user_ids == u)[0])
        assert not set(index.get_indexer(g["item"])) & (set(split.test_target[r].indices) | set(split.test_fold_in[r].indices))
    toy = load(tmp_path / "m").titles.loc["1"]
    assert toy["title"] == "Toy Story (1995)" and toy["genres"] == "Animation|Children's|Comedy"
    assert df["title"].notna().all()


# --- --out: one writer, never over an existing file unasked, never inside a model folder or a run ----------

def _out_argv(trained, out: Path) -> list[str]:
    split, _, d = trained
    return ["--checkpoint", str(d), "--user", str(split.test_user_ids[0]), "-k", "3", "--out", str(out)]


def test_cli_out_refuses_an_existing_file_unless_overwrite(trained, tmp_path):
    target = tmp_path / "recs.csv"
    target.write_text("mine")
    with pytest.raises(UserError, match=r"^--out .*recs\.csv: the file exists; pass --overwrite to replace it$"):
        main(_out_argv(trained, target))
    assert target.read_text() == "mine"
    assert main([*_out_argv(trained, target), "--overwrite"]) == 0
    assert len(pd.read_csv(target)) == 3


def _files(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("inside", [WEIGHTS, MODEL_JSON, "recs.csv", "sub/recs.csv", "model/recs.csv", "model/weights.pt"])
def test_cli_out_never_writes_inside_a_model_folder_or_a_run(trained, tmp_path, inside):
    _, _, d = trained
    shutil.copytree(d, tmp_path / "m")                      # a model folder
    shutil.copytree(d, tmp_path / "run" / "model")          # a train run: model/ beside its metrics.json
    (tmp_path / "run" / "metrics.json").write_text("{}")
    (tmp_path / "m" / "sub").mkdir()
    (tmp_path / "run" / "sub").mkdir()
    owner = "run" if inside.startswith("model/") else "m"
    out = tmp_path / owner / inside
    before = _files(tmp_path)
    with pytest.raises(UserError, match=rf"^--out .*: is inside the model folder or run {tmp_path}/(m|run)(/model)?; "
                                        "write recommendations somewhere else$"):
        main([*_out_argv(trained, out), "--overwrite"])
    assert _files(tmp_path) == before


def test_cli_out_with_a_live_writer_is_refused_naming_it(trained, tmp_path):
    import os

    from multivae.files import WriterLock, lock_beside

    out = tmp_path / "recs.csv"
    with WriterLock(lock_beside(out), out, "another multivae.recommend is writing this file", "wait"):
        with pytest.raises(UserError, match=rf"recs\.csv: another multivae\.recommend is writing this file \(pid {os.getpid()} on "):
            main(_out_argv(trained, out))
    assert not out.exists()
    assert main(_out_argv(trained, out)) == 0   # once the holder is gone


# --- issue 27: a damaged model folder is checked field by field before anything is allocated ----------

def _damaged(d: Path, tmp_path: Path, meta: dict | None = None, arrays: dict | None = None) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    if meta is not None:
        (bad / MODEL_JSON).write_text(json.dumps({**json.loads((bad / MODEL_JSON).read_text()), **meta}))
    if arrays is not None:
        with np.load(bad / "interactions.npz") as z:
            np.savez(bad / "interactions.npz", **{**dict(z), **arrays})
    return bad


@pytest.mark.parametrize("meta, message", [
    ({"n_items": "50"}, r"model\.json: n_items must be an integer >= 1, got '50'$"),          # was a ValueError/TypeError
    ({"n_items": [50]}, r"model\.json: n_items must be an integer >= 1, got \[50\]$"),
    ({"n_users": None}, r"model\.json: n_users must be an integer >= 0, got None$"),
    ({"n_items": 10**12}, r"weights\.pt: weights do not match the model config \(enc_w\.0 is torch\.float32 \[\d+, 32\], "
                          r"the config needs floats of shape \[1000000000000, 32\]\)$"),
])
def test_a_wrong_field_in_model_json_is_one_line(trained, tmp_path, meta, message):
    _, _, d = trained
    with pytest.raises(UserError, match=message):
        load_model_dir(_damaged(d, tmp_path, meta=meta))


def test_an_absurd_architecture_is_refused_before_it_is_allocated(trained, tmp_path):
    """hidden_dims [2**36]: building the model first tried a dense n_items x 2**36 allocation (terabytes)."""
    _, _, d = trained
    meta = json.loads((d / MODEL_JSON).read_text())
    bad = _damaged(d, tmp_path, meta={"model_config": {**meta["model_config"], "hidden_dims": [2**36]}})
    with pytest.raises(UserError, match=r"weights\.pt: weights do not match the model config \(enc_w\.0 is torch\.float32 \[\d+, 32\], "
                                        r"the config needs floats of shape \[\d+, 68719476736\]\)$"):
        load_model_dir(bad)


@pytest.mark.parametrize("arrays, message", [
    ({"indices": np.array([-1] + [0] * 10, dtype=np.int32)}, r"item index -1 is outside the \d+ items of model\.json$"),
    ({"indptr": np.array([0, 5, 3], dtype=np.int64)}, r"indptr is not the row index of \d+ users' \d+ interactions$"),
    ({"item_ids": np.zeros((2, 2))}, r"item_ids must be \d+ integer or text ids \(as model\.json says\), got float64 of shape \[2, 2\]$"),
])
def test_damaged_interactions_are_one_line(trained, tmp_path, arrays, message):
    _, _, d = trained
    if "indices" in arrays:   # as many entries as the real file, one of them negative
        with np.load(d / "interactions.npz") as z:
            arrays = {"indices": np.where(np.arange(len(z["indices"])) == 0, -1, z["indices"]).astype(np.int32)}
    with pytest.raises(UserError, match=r"interactions\.npz: " + message):
        load_model_dir(_damaged(d, tmp_path, arrays=arrays))


def test_a_text_file_as_a_checkpoint_gets_our_message_not_torchs_advice(tmp_path):
    (tmp_path / "notes.pt").write_text("these are my notes, not a checkpoint\n")
    with pytest.raises(UserError) as err:
        load(tmp_path / "notes.pt")
    assert str(err.value) == f"{tmp_path / 'notes.pt'}: not a readable checkpoint (not a file that torch.save writes)"
    assert "weights_only=False" not in str(err.value)


@pytest.mark.parametrize("kw, message", [
    ({"k": "10"}, r"^k must be an integer >= 1, got '10'$"),     # was a TypeError from "10" < 1
    ({"k": True}, r"^k must be an integer >= 1, got True$"),
    ({"k": 2.5}, r"^k must be an integer >= 1, got 2\.5$"),
    ({"batch_size": 0}, r"^batch_size must be an integer >= 1, got 0$"),
])
def test_recommend_keywords_are_checked_as_the_api_promises(trained, kw, message):
    split, _, d = trained
    with pytest.raises(UserError, match=message):
        load(d).recommend(users=[split.train_user_ids[0]], **kw)
    with pytest.raises(UserError, match=r"^users must be a list of user ids, got '42'$"):
        load(d).recommend(users="42")
