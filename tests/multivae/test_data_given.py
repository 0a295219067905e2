"""Fixed train/valid/test files (LightGCN, RecBole, CSV) as a weak-generalization split: ids, hold-out, masks,
metric variants against a slow reference written here, and one-line errors naming file and line."""

from __future__ import annotations

import math

from pathlib import Path

import numpy as np
import pytest
import torch

from multivae.config import from_dict
from multivae.data import DatasetConfig, load_dataset
from multivae.data.given import hold_out, metric_preset, read_lightgcn, read_recbole
from multivae.errors import UserError
from multivae.evaluate import evaluate_on_split, per_user_metrics

# user -> items, as the benchmark files hold them (ids as LightGCN writes them: integers)
TRAIN = {1: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 2: [2, 3], 3: [5], 7: [3, 4, 5, 6, 7]}
VALID = {1: [12], 2: [5, 2], 7: [8]}                  # (2, 2) is already a training pair
TEST = {1: [11, 3, 4], 2: [4, 12], 3: [1, 2], 4: [2]}  # 11: only in the test file; (1, 3) and (1, 4) already known; 4: new user


def write(tmp_path: Path, fmt: str, name: str, rows: dict[int, list[int]]) -> Path:
    if fmt == "lightgcn":
        path = tmp_path / f"{name}.txt"
        path.write_text("".join(f"{u} {' '.join(map(str, items))}\n" for u, items in rows.items()))
    elif fmt == "recbole":
        path = tmp_path / f"ml.{name}.inter"
        body = "".join(f"{u}\t{i}\t4.0\t97830000{n}\n" for u, items in rows.items() for n, i in enumerate(items))
        path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + body)
    else:
        path = tmp_path / f"{name}.csv"
        path.write_text("uid,sku,when\n" + "".join(f"{u},{i},0\n" for u, items in rows.items() for i in items))
    return path


def given(tmp_path: Path, fmt: str, valid: bool = False, **kw) -> DatasetConfig:
    files = {"train": write(tmp_path, fmt, "train", TRAIN), "test": write(tmp_path, fmt, "test", TEST)}
    if valid:
        files["valid"] = write(tmp_path, fmt, "valid", VALID)
    cols = {"user_col": "uid", "item_col": "sku"} if fmt == "csv" else {}
    return from_dict(DatasetConfig, {"name": "given", "format": fmt, **{k: str(v) for k, v in files.items()}, **cols, **kw}, where="test")


def as_sets(m, user_ids, item_ids) -> dict:
    """{original user: set of original items} of a CSR matrix (ids compared as text across formats)."""
    return {str(user_ids[r]): {str(item_ids[c]) for c in m.indices[m.indptr[r]:m.indptr[r + 1]]}
            for r in range(m.shape[0]) if m.indptr[r + 1] > m.indptr[r]}


def text(rows: dict) -> dict:
    return {str(u): {str(i) for i in items} for u, items in rows.items() if items}


@pytest.mark.parametrize("fmt", ["lightgcn", "recbole", "csv"])
def test_ids_over_the_union_and_the_matrices_with_a_valid_file(tmp_path, fmt):
    split = load_dataset(given(tmp_path, fmt, valid=True), verbose=False)
    users, items = split.train_user_ids, split.item_ids
    assert sorted(map(str, users)) == ["1", "2", "3", "4", "7"]
    assert sorted(map(str, items)) == sorted(str(i) for i in range(1, 13))         # 11 and 12 are columns too
    assert (split.val_user_ids == users).all() and (split.test_user_ids == users).all()
    assert as_sets(split.train, users, items) == text(TRAIN)                         # valid file: train = the train file
    assert (split.val_fold_in != split.train).nnz == 0
    assert as_sets(split.val_target, users, items) == {"1": {"12"}, "2": {"5"}, "7": {"8"}}   # (2, 2) is not a target
    known = {u: set(v) for u, v in text(TRAIN).items()}
    for u, v in text(VALID).items():
        known.setdefault(u, set()).update(v)
    assert as_sets(split.test_fold_in, users, items) == known                         # the test input and mask
    assert as_sets(split.test_target, users, items) == {"1": {"11"}, "2": {"4", "12"}, "3": {"1", "2"}, "4": {"2"}}
    s = split.stats()
    assert s["users"] == 5 and s["items"] == 12
    assert (s["test_only_items"], s["test_interactions_on_test_only_items"]) == (1, 1)   # item 11
    assert s["test_pairs_already_known"] == 2 and s["valid_pairs_already_in_train"] == 1
    assert s["test_users_without_known_items"] == 1                                    # user 4
    assert s["items_not_in_fit"] == 2                                                  # 11 (test only), 12 (valid and test)
    assert s["interactions"] == sum(map(len, known.values())) + 6


@pytest.mark.parametrize("fmt", ["lightgcn", "recbole", "csv"])
def test_without_a_valid_file_a_seeded_tenth_of_each_users_training_rows_is_held_out(tmp_path, fmt):
    split = load_dataset(given(tmp_path, fmt), verbose=False)
    users, items = split.train_user_ids, split.item_ids
    fit, val = as_sets(split.train, users, items), as_sets(split.val_target, users, items)
    # round(0.1 n): user 1 (n = 10) gives 1 row, user 7 (n = 5) gives round(0.5) = 1 (half up), users 2, 3 none
    assert {u: len(v) for u, v in val.items()} == {"1": 1, "7": 1}
    for u, items_ in text(TRAIN).items():
        assert fit.get(u, set()) | val.get(u, set()) == items_ and not (fit.get(u, set()) & val.get(u, set()))
    assert as_sets(split.test_fold_in, users, items) == text(TRAIN)                   # the test sees every training item
    again = load_dataset(given(tmp_path, fmt), verbose=False)
    assert (again.val_target != split.val_target).nnz == 0                             # seeded


def test_hold_out_rounds_half_up_and_leaves_one_row():
    rows = np.repeat(np.arange(5), [1, 2, 5, 15, 40])
    held = hold_out(rows, 5, 0.1, seed=0)
    assert np.bincount(rows[held], minlength=5).tolist() == [0, 0, 1, 2, 4]
    assert np.bincount(rows[hold_out(rows, 5, 0.9, seed=0)], minlength=5).tolist() == [0, 1, 4, 14, 36]   # 13.5 rounds up; n = 2 keeps one
    assert not (hold_out(rows, 5, 0.1, seed=0) != held).any() and (hold_out(rows, 5, 0.1, seed=1) != held).any()


def slow_metric(kind: str, scores: np.ndarray, mask: set, target: set, k: int) -> float:
    """One user: masked items dropped from the ranking, then the metric as its source defines it."""
    if not target:
        return math.nan
    ranked = [i for i in np.argsort(-scores, kind="stable") if i not in mask][:k]
    hits = [i in target for i in ranked]
    n = len(target)
    if kind == "ndcg":
        return sum(h / math.log2(r + 2) for r, h in enumerate(hits)) / sum(1 / math.log2(r + 2) for r in range(min(n, k)))
    return {"recall": sum(hits) / min(k, n), "recall_n": sum(hits) / n, "precision": sum(hits) / k, "hit": float(any(hits))}[kind]


@pytest.mark.parametrize("fmt", ["lightgcn", "recbole", "csv"])
@pytest.mark.parametrize("valid", [False, True])
def test_masks_and_every_metric_variant_against_the_slow_reference(tmp_path, fmt, valid):
    split = load_dataset(given(tmp_path, fmt, valid=valid), verbose=False)
    users, items = [str(u) for u in split.train_user_ids], [str(i) for i in split.item_ids]
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(len(users), len(items)))   # one fixed score row per user: no ties

    def score(x):
        return torch.tensor(scores)                       # one batch holds every user
    metrics = ["recall@3", "recall_n@3", "precision@3", "hit@3", "ndcg@3", "ndcg@5"]
    col = {i: c for c, i in enumerate(items)}
    # The masks from the raw rows, not from the split: validation hides the fit rows, the test every known row.
    train_rows = {str(u): {str(i) for i in v} for u, v in TRAIN.items()}
    val_rows = as_sets(split.val_target, split.train_user_ids, split.item_ids)
    valid_rows = {str(u): {str(i) for i in v} for u, v in VALID.items()} if valid else {}
    for phase, fold_in, target in (("val", split.val_fold_in, split.val_target), ("test", split.test_fold_in, split.test_target)):
        got = per_user_metrics(score, fold_in, target, metrics, batch_size=100)
        for r, u in enumerate(users):
            if phase == "val":
                mask, tgt = train_rows.get(u, set()) - val_rows.get(u, set()), val_rows.get(u, set())
            else:
                mask = train_rows.get(u, set()) | valid_rows.get(u, set())
                tgt = {str(i) for i in TEST.get(int(u), [])} - mask
            for m in metrics:
                kind, k = m.split("@")
                want = slow_metric(kind, scores[r], {col[i] for i in mask}, {col[i] for i in tgt}, int(k))
                np.testing.assert_allclose(got[m][r], want, rtol=1e-12, equal_nan=True, err_msg=f"{phase} {m} user {u}")
    out = evaluate_on_split(score, split, metrics, batch_size=100)
    assert set(out) == {"val", "test", "popularity"} and out["test"]["hit@3_se"] >= 0


def test_metric_presets_follow_each_source():
    assert metric_preset("ml-1m") == (("ndcg@100", "recall@20", "recall@50"), "ndcg@100")
    lightgcn, select = metric_preset("given", "lightgcn")
    assert {"recall_n@20", "ndcg@20"} <= set(lightgcn) and select == "recall_n@20" and "recall@20" not in lightgcn
    assert metric_preset("given", None, "x/ml-1m.train.inter")[1] == "ndcg@10"      # recbole, from the name


def test_retrain_option_and_bad_configs_are_one_line_errors(tmp_path):
    cfg = given(tmp_path, "lightgcn", retrain="train+valid")
    assert load_dataset(cfg, verbose=False).info["retrain"] == "train+valid"
    bad = [({"name": "given", "train": "a.txt"}, "needs train and test files"),
           ({"name": "given", "train": "a.txt", "test": "b.txt", "format": "libsvm"}, "format must be one of lightgcn, csv, recbole, got 'libsvm'"),
           ({"name": "given", "train": "a.txt", "test": "b.txt", "retrain": "all"}, "retrain must be one of none, train\\+valid"),
           ({"name": "given", "train": "a.txt", "test": "b.txt", "valid_fraction": 1.0}, "valid_fraction must be in \\(0, 1\\)"),
           ({"name": "ml-1m", "train": "a.txt"}, "train only apply to name='given'")]
    for fields, message in bad:
        with pytest.raises(UserError, match=message):
            from_dict(DatasetConfig, fields, where="space.yaml:dataset")
    with pytest.raises(UserError, match=f"{tmp_path / 'nope.txt'}: file not found"):
        load_dataset(from_dict(DatasetConfig, {"name": "given", "train": str(tmp_path / "nope.txt"), "test": str(tmp_path / "nope.txt")}), verbose=False)


@pytest.mark.parametrize("content, message", [
    ("0 1 2\n1 3 x4\n", ":2: 'x4' is not an integer id"),
    ("0 1 2\n\n1 -3\n", ":3: negative id -3"),
    ("\n\n", "no interactions"),
])
def test_lightgcn_reader_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "train.txt"
    path.write_text(content)
    with pytest.raises(UserError, match=f"^{path}{message}" if message.startswith(":") else message) as err:
        read_lightgcn(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content, message", [
    ("user_id:token\titem_id:token\n1\t2\n1\t3\t5\n", ":3: 3 tab-separated fields, the header has 2"),
    ("uid:token\titem_id:token\n1\t2\n", ":1: no 'user_id' field in the header"),
    ("user_id:token\titem_id:token\n1\t\n", ":2: empty item_id"),
    ("user_id:token\titem_id:token\n", ": no rows"),
])
def test_recbole_reader_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "ml.train.inter"
    path.write_text(content)
    with pytest.raises(UserError, match=f"^{path}{message}"):
        read_recbole(path)


def test_lightgcn_reader_keeps_users_without_items_out_and_reads_ids(tmp_path):
    path = tmp_path / "test.txt"
    path.write_text("0 5 6\n1\n2 7\n")
    df = read_lightgcn(path)
    assert df["user"].tolist() == [0, 0, 2] and df["item"].tolist() == [5, 6, 7]


def test_bench_lightgcn_writer_round_trips_through_the_reader(tmp_path):
    """bench/write_lightgcn_split.py: ratings > 3.5, users >= 5, a seeded 80/20 per user, renumbered ids; the
    files it writes read back as the same split."""
    import pandas as pd

    from bench.write_lightgcn_split import lightgcn_split, lines

    from tests.multivae.conftest import fake_ratings

    df = fake_ratings(n_users=60, n_items=40, seed=1)
    train, test, stats = lightgcn_split(df, seed=7)
    kept = df[df["rating"] > 3.5]
    per_user = kept.groupby("user")["item"].apply(set)
    per_user = per_user[per_user.apply(len) >= 5]
    assert stats["users"] == len(per_user) == len(train) == len(test)
    items = np.sort(kept[kept["user"].isin(per_user.index)]["item"].unique())
    for row, (user, original) in enumerate(per_user.items()):
        got = {int(items[i]) for i in np.r_[train[row], test[row]]}
        assert got == original and not set(train[row]) & set(test[row])
        assert len(train[row]) == min(max(round(0.8 * len(original)), 1), len(original) - 1)
    again = lightgcn_split(df.sample(frac=1.0, random_state=3), seed=7)     # another row order, the same split
    assert all((a == b).all() for a, b in zip(train, again[0]))
    (tmp_path / "train.txt").write_text(lines(train))
    (tmp_path / "test.txt").write_text(lines(test))
    split = load_dataset(DatasetConfig(name="given", train=str(tmp_path / "train.txt"), test=str(tmp_path / "test.txt")), verbose=False)
    assert split.stats()["train_file_interactions"] == stats["train_interactions"]
    assert split.test_target.nnz == stats["test_interactions"]
    assert isinstance(read_lightgcn(tmp_path / "test.txt"), pd.DataFrame)


# --- issue 27: ids read exactly, files that leave nothing to test on, BOMs ---------------------------

@pytest.mark.parametrize("token, message", [
    ("7_5", "'7_5' is not an integer id"),                 # int() reads 75
    ("\uff17\uff15", "'７５' is not an integer id"),         # full-width digits: int() reads 75
    ("--5", "'--5' is not an integer id"),                 # was a StopIteration traceback
    ("\u00b2", "'²' is not an integer id"),                # isdigit() but not int(): was a StopIteration
    ("+5", "'\\+5' is not an integer id"),
    ("012", "'012' is not an integer id"),                  # "012" and "12" would become one id
    ("9" * 25, "id 9{25} does not fit in 64 bits"),        # was an OverflowError from numpy
])
def test_lightgcn_ids_are_plain_integers_or_one_line_errors(tmp_path, token, message):
    path = tmp_path / "train.txt"
    path.write_text(f"0 1 2\n1 3 {token}\n")
    with pytest.raises(UserError, match=f"^{path}:2: {message}") as err:
        read_lightgcn(path)
    assert "\n" not in str(err.value)


def test_a_utf8_bom_is_read_past_in_recbole_and_lightgcn_files(tmp_path):
    rec = tmp_path / "ml.train.inter"
    rec.write_text("\ufeffuser_id:token\titem_id:token\n1\t2\n", encoding="utf-8")
    assert read_recbole(rec).to_dict("list") == {"user": ["1"], "item": ["2"]}
    lg = tmp_path / "train.txt"
    lg.write_text("\ufeff0 5 6\n", encoding="utf-8")
    assert read_lightgcn(lg)["item"].tolist() == [5, 6]


def _csv(path: Path, rows: list[tuple[str, str]]) -> str:
    path.write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in rows))
    return str(path)


def test_ids_follow_one_rule_across_the_files_of_a_split(tmp_path):
    """Canonical integers in every file: int64, in numeric order. One "5.0" or "012" anywhere: text throughout,
    so "5" and "5.0", "12" and "012" are different items, and nothing is ever read as a float."""
    train = _csv(tmp_path / "train.csv", [("1", "5"), ("1", "12"), ("2", "5"), ("2", "30")])
    ints = load_dataset(DatasetConfig(name="given", train=train, test=_csv(tmp_path / "t1.csv", [("1", "30")]), valid_fraction=0.5),
                        verbose=False)
    assert ints.item_ids.dtype == np.int64 and ints.item_ids.tolist() == [5, 12, 30]
    odd = load_dataset(DatasetConfig(name="given", train=train, test=_csv(tmp_path / "t2.csv", [("1", "5.0"), ("2", "012")]),
                                     valid_fraction=0.5), verbose=False)
    assert sorted(odd.item_ids.tolist()) == ["012", "12", "30", "5", "5.0"]
    assert odd.test_target.nnz == 2 and odd.stats()["test_only_items"] == 2   # neither is taken for a training item
    assert odd.stats()["ids_read_as_text_because_of"] == {"item": "5.0"} and ints.stats()["ids_read_as_text_because_of"] == {}


def test_a_test_file_with_nothing_left_to_test_on_is_refused(tmp_path):
    """The test (or valid) file equal to the train file used to give exit 0 with null test metrics."""
    pairs = [(str(u), str(i)) for u in range(1, 6) for i in range(1, 6)]
    train = _csv(tmp_path / "train.csv", pairs)
    with pytest.raises(UserError, match=r"test\.csv: every one of its 25 pairs is already in the train file, so nothing is "
                                        r"left to test on \(the same file twice\?\)$"):
        load_dataset(DatasetConfig(name="given", train=train, test=_csv(tmp_path / "test.csv", pairs)), verbose=False)
    test = _csv(tmp_path / "t.csv", [("1", "9")])
    with pytest.raises(UserError, match=r"t\.csv: every one of its 1 pairs is already in the train or valid file"):   # valid = test
        load_dataset(DatasetConfig(name="given", train=train, test=test, valid=test), verbose=False)
    with pytest.raises(UserError, match=r"valid\.csv: every pair of the valid file is already in the train file"):
        load_dataset(DatasetConfig(name="given", train=train, test=test,
                                   valid=_csv(tmp_path / "valid.csv", [("1", "1"), ("2", "2")])), verbose=False)


def test_a_held_out_validation_that_is_empty_is_refused_with_advice_that_fits(tmp_path):
    """One training row per user: nothing can be held out. The advice is about the valid file or fraction,
    not --heldout-users (which a fixed split does not have)."""
    train = _csv(tmp_path / "train.csv", [(str(u), str(u)) for u in range(1, 6)])
    with pytest.raises(UserError) as err:
        load_dataset(DatasetConfig(name="given", train=train, test=_csv(tmp_path / "test.csv", [("1", "2")])), verbose=False)
    assert "leaves nothing to validate on" in str(err.value) and "valid_fraction" in str(err.value)
    assert "heldout" not in str(err.value)
