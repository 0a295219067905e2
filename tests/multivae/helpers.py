"""Small shared builders for the core tests (no MovieLens data: everything is generated here)."""

import numpy as np
import pandas as pd

from multivae.data.split import ProtocolConfig, SplitData, split_interactions


def clustered_interactions(n_users=600, n_items=200, n_topics=8, seed=0) -> pd.DataFrame:
    """Users who mostly pick items of their own topic: structure a model can learn and popularity cannot."""
    rng = np.random.default_rng(seed)
    topic_of_item = rng.integers(0, n_topics, n_items)
    rows = []
    for u in range(n_users):
        topic = rng.integers(0, n_topics)
        pool = np.flatnonzero(topic_of_item == topic)
        k = int(rng.integers(5, min(30, len(pool)) + 1))
        rows += [(u, int(i)) for i in rng.choice(pool, size=k, replace=False)]
        rows += [(u, int(i)) for i in rng.choice(n_items, size=2, replace=False)]
    df = pd.DataFrame(rows, columns=["user", "item"]).drop_duplicates()
    return df.reset_index(drop=True)


def small_split(n_users=600, n_items=200, heldout=60, seed=0) -> SplitData:
    return split_interactions(clustered_interactions(n_users, n_items, seed=seed), ProtocolConfig(heldout_users=heldout), source="test")
