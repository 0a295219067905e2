"""The split against a literal transcription of the reference notebook (dawenl/vae_cf), and its edge cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from multivae.data.split import ProtocolConfig, SplitData, binary_csr, split_interactions
from multivae.errors import UserError


# --- the reference, as the notebook writes it (global RNG, pandas groupby, pd.unique) ---------------

def _get_count(tp, id):
    # The notebook's `tp[[id]].groupby(id, as_index=False).size()` was a Series indexed by id in the pandas
    # of 2017; `groupby(id).size()` is the same Series today.
    return tp[[id]].groupby(id).size()


def _filter_triplets(tp, min_uc=5, min_sc=0):
    if min_sc > 0:
        itemcount = _get_count(tp, "movieId")
        tp = tp[tp["movieId"].isin(itemcount.index[itemcount >= min_sc])]
    if min_uc > 0:
        usercount = _get_count(tp, "userId")
        tp = tp[tp["userId"].isin(usercount.index[usercount >= min_uc])]
    usercount, itemcount = _get_count(tp, "userId"), _get_count(tp, "movieId")
    return tp, usercount, itemcount


def _split_train_test_proportion(data, test_prop=0.2):
    data_grouped_by_user = data.groupby("userId")
    tr_list, te_list = list(), list()
    np.random.seed(98765)
    for i, (_, group) in enumerate(data_grouped_by_user):
        n_items_u = len(group)
        if n_items_u >= 5:
            idx = np.zeros(n_items_u, dtype="bool")
            idx[np.random.choice(n_items_u, size=int(test_prop * n_items_u), replace=False).astype("int64")] = True
            tr_list.append(group[np.logical_not(idx)])
            te_list.append(group[idx])
        else:
            tr_list.append(group)
    data_tr = pd.concat(tr_list)
    data_te = pd.concat(te_list) if te_list else data.iloc[:0]
    return data_tr, data_te


def reference_split(raw_data: pd.DataFrame, n_heldout_users: int, min_sc: int = 0) -> dict:
    raw_data = raw_data.rename(columns={"user": "userId", "item": "movieId"})
    raw_data = raw_data[raw_data["rating"] > 3.5]
    raw_data, user_activity, item_popularity = _filter_triplets(raw_data, min_uc=5, min_sc=min_sc)
    unique_uid = user_activity.index
    np.random.seed(98765)
    idx_perm = np.random.permutation(unique_uid.size)
    unique_uid = unique_uid[idx_perm]
    n_users = unique_uid.size
    tr_users = unique_uid[: (n_users - n_heldout_users * 2)]
    vd_users = unique_uid[(n_users - n_heldout_users * 2): (n_users - n_heldout_users)]
    te_users = unique_uid[(n_users - n_heldout_users):]
    train_plays = raw_data.loc[raw_data["userId"].isin(tr_users)]
    unique_sid = pd.unique(train_plays["movieId"])
    vad_plays = raw_data.loc[raw_data["userId"].isin(vd_users)]
    vad_plays = vad_plays.loc[vad_plays["movieId"].isin(unique_sid)]
    vad_plays_tr, vad_plays_te = _split_train_test_proportion(vad_plays)
    test_plays = raw_data.loc[raw_data["userId"].isin(te_users)]
    test_plays = test_plays.loc[test_plays["movieId"].isin(unique_sid)]
    test_plays_tr, test_plays_te = _split_train_test_proportion(test_plays)
    return {"tr_users": np.asarray(tr_users), "vd_users": np.asarray(vd_users), "te_users": np.asarray(te_users),
            "unique_sid": np.asarray(unique_sid), "train": train_plays, "vad_tr": vad_plays_tr, "vad_te": vad_plays_te,
            "test_tr": test_plays_tr, "test_te": test_plays_te}


def _matrix(plays: pd.DataFrame, users: np.ndarray, items: np.ndarray) -> sp.csr_matrix:
    """The notebook's numerize + csr_matrix, with rows in the order of `users` and columns of `items`."""
    r = pd.Index(users).get_indexer(plays["userId"])
    c = pd.Index(items).get_indexer(plays["movieId"])
    assert (r >= 0).all() and (c >= 0).all()
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(users), len(items)))


def random_interactions(seed: int, n_users: int = 400, n_items: int = 1000, string_ids: bool = False) -> pd.DataFrame:
    """Ratings in half stars, skewed item popularity (rare items end up only with held-out users), a spread of
    user activity (some users just at the thresholds), no duplicated pairs, rows in random order."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    per_user = rng.integers(2, 40, n_users)
    user = np.repeat(rng.permutation(n_users) * 3 + 7, per_user)
    item = np.concatenate([rng.choice(n_items, k, replace=False, p=pop / pop.sum()) for k in per_user]) * 5 + 11
    df = pd.DataFrame({"user": user, "item": item, "rating": rng.integers(1, 11, len(user)) / 2.0})
    df = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    if string_ids:
        df["user"] = "u" + df["user"].astype(str)
        df["item"] = "movie-" + df["item"].astype(str)
    return df


CASES = [
    pytest.param(dict(seed=1), 40, 0, id="int-ids"),
    pytest.param(dict(seed=2, string_ids=True), 40, 0, id="string-ids"),
    pytest.param(dict(seed=3), 25, 3, id="item-filter"),
    pytest.param(dict(seed=4, n_users=900, n_items=2000), 150, 0, id="larger"),
]


@pytest.mark.parametrize("data_kw, n_heldout, min_sc", CASES)
def test_split_equals_the_reference_notebook(data_kw, n_heldout, min_sc, keep_global_rng):
    df = random_interactions(**data_kw)
    assert not df.duplicated(["user", "item"]).any()
    ref = reference_split(df, n_heldout, min_sc=min_sc)
    ours = split_interactions(df, ProtocolConfig(heldout_users=n_heldout, min_item_count=min_sc), source="test")

    assert list(ours.train_user_ids) == list(ref["tr_users"])
    assert list(ours.val_user_ids) == list(ref["vd_users"])
    assert list(ours.test_user_ids) == list(ref["te_users"])
    assert list(ours.item_ids) == list(ref["unique_sid"])
    items = ref["unique_sid"]
    pairs = [("train", ref["train"], ref["tr_users"]), ("val_fold_in", ref["vad_tr"], ref["vd_users"]),
             ("val_target", ref["vad_te"], ref["vd_users"]), ("test_fold_in", ref["test_tr"], ref["te_users"]),
             ("test_target", ref["test_te"], ref["te_users"])]
    for name, plays, users in pairs:
        expected = _matrix(plays, users, items)
        got = getattr(ours, name)
        assert got.shape == expected.shape, name
        assert (got != expected).nnz == 0, name
    # The data exercise the interesting branches: held-out users who lost items to the train-item filter,
    # some of them below 5 items and so without a target.
    n_val = np.diff(ours.val_fold_in.indptr) + np.diff(ours.val_target.indptr)
    n_test = np.diff(ours.test_fold_in.indptr) + np.diff(ours.test_target.indptr)
    assert (n_val < 5).any() or (n_test < 5).any()


def test_string_ids_stay_strings_and_survive_save_load(tmp_path):
    df = random_interactions(2, string_ids=True)
    split = split_interactions(df, ProtocolConfig(heldout_users=30))
    split.save(tmp_path / "s.npz")
    back = SplitData.load(tmp_path / "s.npz")
    assert list(back.item_ids) == [str(x) for x in split.item_ids]
    assert list(back.test_user_ids) == [str(x) for x in split.test_user_ids]
    assert back.item_ids[0].startswith("movie-")


# --- the protocol's steps one at a time -------------------------------------------------------------

def users_with(n_items_each: dict[int, int], first_item: int = 0, rating: float = 5.0) -> pd.DataFrame:
    rows = [(u, first_item + i, rating) for u, n in n_items_each.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["user", "item", "rating"])


def base_users(n: int = 30, k: int = 10) -> pd.DataFrame:
    return users_with({u: k for u in range(n)})


def test_rating_filter_is_strictly_above_3_5():
    df = base_users()
    extra = pd.DataFrame({"user": [0, 0], "item": [100, 101], "rating": [3.5, 4.0]})
    split = split_interactions(pd.concat([df, extra], ignore_index=True), ProtocolConfig(heldout_users=2))
    assert 101 in set(split.item_ids) and 100 not in set(split.item_ids)
    assert split.info["rows_after_rating_filter"] == len(df) + 1


def test_no_rating_column_keeps_every_row():
    df = base_users().drop(columns="rating")
    split = split_interactions(df, ProtocolConfig(heldout_users=2))
    assert split.stats()["interactions"] == len(df)


def test_user_filter_drops_users_below_five():
    df = pd.concat([base_users(), users_with({500: 4, 501: 5}, first_item=0)], ignore_index=True)
    split = split_interactions(df, ProtocolConfig(heldout_users=2))
    everyone = set(split.train_user_ids) | set(split.val_user_ids) | set(split.test_user_ids)
    assert 500 not in everyone and 501 in everyone


def test_item_filter_runs_before_the_user_filter():
    # User 900 has 5 rows, one on item 77 that has only 2 rows in all: the item filter removes it first,
    # which leaves the user with 4 rows, and the user filter then removes the user.
    df = pd.concat([base_users(), users_with({900: 4}, first_item=0),
                    pd.DataFrame({"user": [900, 0], "item": [77, 77], "rating": [5.0, 5.0]})], ignore_index=True)
    split = split_interactions(df, ProtocolConfig(heldout_users=2, min_item_count=3))
    everyone = set(split.train_user_ids) | set(split.val_user_ids) | set(split.test_user_ids)
    assert 900 not in everyone and 77 not in set(split.item_ids)
    kept = split_interactions(df, ProtocolConfig(heldout_users=2, min_item_count=0))
    assert 900 in set(kept.train_user_ids) | set(kept.val_user_ids) | set(kept.test_user_ids)


def test_target_sizes_are_int_of_a_fifth():
    # Users with 5..14 items (targets of 1 or 2 items), all on items that training users have too.
    df = pd.concat([users_with({u: 20 for u in range(60)}), users_with({1000 + n: n for n in range(5, 15)})], ignore_index=True)
    split = split_interactions(df, ProtocolConfig(heldout_users=0.4))
    seen = set()
    for fold_in, target in ((split.val_fold_in, split.val_target), (split.test_fold_in, split.test_target)):
        for n_f, n_t in zip(np.diff(fold_in.indptr), np.diff(target.indptr)):
            assert n_t == int(0.2 * (n_f + n_t))
            seen.add(int(n_f + n_t))
        assert fold_in.multiply(target).nnz == 0
    assert seen & {5, 6, 7, 8, 9} and seen & {10, 11, 12, 13, 14}   # int() rounds 1.8 down to 1, 2.8 to 2


def test_heldout_user_below_five_after_the_item_filter_gets_no_target():
    # User 7000 has 6 rows, 3 on items nobody in training has: after dropping them 3 remain, all fold-in.
    df = pd.concat([users_with({u: 10 for u in range(40)}), users_with({7000: 3}),
                    pd.DataFrame({"user": [7000] * 3, "item": [500, 501, 502], "rating": [5.0] * 3})], ignore_index=True)
    for seed in range(20):   # find a seed that puts user 7000 among the held-out users
        split = split_interactions(df, ProtocolConfig(heldout_users=5, seed=seed))
        if 7000 in set(split.test_user_ids) or 7000 in set(split.val_user_ids):
            break
    else:
        pytest.fail("user 7000 was never held out")
    in_val = 7000 in set(split.val_user_ids)
    ids, fold_in, target = ((split.val_user_ids, split.val_fold_in, split.val_target) if in_val
                            else (split.test_user_ids, split.test_fold_in, split.test_target))
    row = list(ids).index(7000)
    assert fold_in[row].nnz == 3 and target[row].nnz == 0


def test_heldout_count_and_fraction():
    df = base_users(n=100)
    assert split_interactions(df, ProtocolConfig(heldout_users=7)).val_fold_in.shape[0] == 7
    split = split_interactions(df, ProtocolConfig(heldout_users=0.1))
    assert split.val_fold_in.shape[0] == split.test_fold_in.shape[0] == 10
    assert split.train.shape[0] == 80


def test_too_few_users_is_a_user_error():
    with pytest.raises(UserError, match=r"heldout_users=15 asks for 15 validation \+ 15 test users but only 30 users"):
        split_interactions(base_users(n=30), ProtocolConfig(heldout_users=15), source="mydata")


def test_everything_filtered_out_is_a_user_error():
    df = base_users().assign(rating=3.0)
    with pytest.raises(UserError, match=r"mydata: every user was filtered out \(min_rating=3.5"):
        split_interactions(df, ProtocolConfig(heldout_users=2), source="mydata")


def test_empty_input_is_a_user_error():
    with pytest.raises(UserError, match="mydata: no interactions"):
        split_interactions(base_users().iloc[:0], ProtocolConfig(heldout_users=2), source="mydata")


def test_duplicates_collapse_to_one_and_are_counted():
    df = base_users()
    dup = df.iloc[[0, 0, 5]]
    split = split_interactions(pd.concat([df, dup], ignore_index=True), ProtocolConfig(heldout_users=2))
    assert split.info["duplicate_rows_dropped"] == 3
    for m in (split.train, split.val_fold_in, split.val_target, split.test_fold_in, split.test_target):
        assert m.data.size == 0 or m.data.max() == 1.0
    assert split.stats()["interactions"] == len(df)


def test_binary_csr_collapses_duplicates():
    m = binary_csr(np.array([0, 0, 1]), np.array([2, 2, 0]), (2, 3))
    assert m.nnz == 2 and m.data.tolist() == [1.0, 1.0]


def test_save_load_round_trip(tmp_path):
    split = split_interactions(random_interactions(5), ProtocolConfig(heldout_users=30), source="round-trip")
    split.save(tmp_path / "x.npz")
    back = SplitData.load(tmp_path / "x.npz")
    for name in ("train", "val_fold_in", "val_target", "test_fold_in", "test_target"):
        a, b = getattr(split, name), getattr(back, name)
        assert a.shape == b.shape and (a != b).nnz == 0 and b.dtype == np.float32
    for name in ("item_ids", "train_user_ids", "val_user_ids", "test_user_ids"):
        assert np.array_equal(getattr(split, name), getattr(back, name))
    assert back.info == split.info and back.stats() == split.stats()


def test_load_of_a_damaged_file_is_a_user_error(tmp_path):
    split = split_interactions(random_interactions(5), ProtocolConfig(heldout_users=30))
    split.save(tmp_path / "x.npz")
    data = (tmp_path / "x.npz").read_bytes()
    (tmp_path / "x.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="x.npz: not a readable processed split"):
        SplitData.load(tmp_path / "x.npz")


@pytest.mark.parametrize("kw, msg", [
    (dict(heldout_users=0.5), r"heldout_users must be in \(0, 0.5\), got 0.5"),
    (dict(heldout_users=float("nan")), r"heldout_users must be finite and in \(0, 0.5\), got nan"),
    (dict(min_rating=float("-inf")), r"min_rating must be finite, got -inf"),
    (dict(seed=-1), r"seed must be in \[0, 2\*\*32\), got -1"),
    (dict(seed=2**32), r"seed must be in \[0, 2\*\*32\), got 4294967296"),
    (dict(heldout_users=0), "heldout_users must be >= 1"),
    (dict(target_fraction=1.0), r"target_fraction must be in \(0, 1\)"),
    (dict(min_items_for_target=0), "min_items_for_target must be >= 1"),
    (dict(min_user_count=-1), "must be >= 0"),
])
def test_protocol_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ProtocolConfig(**kw)

