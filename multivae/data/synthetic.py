"""A synthetic implicit-feedback dataset with structure a collaborative-filtering model can learn.

Items belong to topics and have a power-law popularity; each user leans towards a few topics. In a
`latent_dim`-dimensional space, topic centres are random unit vectors, an item sits near its topic's centre
and a user near a mixture of the centres of the topics they like. User u picks `n_u` distinct items (a
log-normal activity, at least `min_activity`) by sampling without replacement with probability proportional
to `popularity_i * exp(affinity * <u, v_i>)`, done for all users at once with the Gumbel-top-k trick.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from multivae.config import check_domains

# Bumped whenever `generate` changes its output for the same config (it is part of the processed-cache key).
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = 5000
    n_items: int = 2000
    n_topics: int = 20                 # clusters of items (and of users' tastes)
    latent_dim: int = 16
    topics_per_user: float = 0.3       # Dirichlet concentration of a user's topic mixture: small = few topics
    item_spread: float = 0.5           # how far items sit from their topic centre (0: on it)
    affinity: float = 10.0             # strength of taste against popularity (0: popularity only)
    popularity_exponent: float = 1.0   # popularity of the item of rank r is r ** -exponent
    mean_activity: float = 30.0        # mean items per user before clipping
    activity_sigma: float = 0.8        # sigma of the log-normal activity
    min_activity: int = 5              # every user has at least this many items (the protocol keeps users >= 5)
    max_activity_fraction: float = 0.5 # and at most this share of the catalogue
    seed: int = 0

    def __post_init__(self) -> None:
        check_domains(self, {"n_users": ">= 1", "n_items": ">= 1", "n_topics": ">= 1", "latent_dim": ">= 1",
                             "topics_per_user": "> 0", "item_spread": ">= 0", "affinity": ">= 0", "popularity_exponent": ">= 0",
                             "mean_activity": "> 0", "activity_sigma": ">= 0", "min_activity": ">= 1",
                             "max_activity_fraction": "in (0, 1]", "seed": "in [0, 2**32)"})
        if self.min_activity > self.max_activity:
            raise ValueError(f"min_activity={self.min_activity} exceeds the most items a user may have "
                             f"({self.max_activity} = max_activity_fraction * n_items)")

    @property
    def max_activity(self) -> int:
        return int(self.max_activity_fraction * self.n_items)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def generate(cfg: SyntheticConfig) -> pd.DataFrame:
    """Columns user, item (int64 ids from 0), sorted by user then item; no duplicated pairs."""
    rng = np.random.default_rng(cfg.seed)
    d = cfg.latent_dim
    centres = _unit(rng.standard_normal((cfg.n_topics, d)))
    item_topic = rng.integers(0, cfg.n_topics, cfg.n_items)
    item_vec = _unit(centres[item_topic] + cfg.item_spread * rng.standard_normal((cfg.n_items, d)) / np.sqrt(d))
    taste = rng.dirichlet(np.full(cfg.n_topics, cfg.topics_per_user), size=cfg.n_users)
    user_vec = _unit(taste @ centres)
    # Popularity rank is independent of topic, so every topic has its hits and its long tail.
    log_pop = -cfg.popularity_exponent * np.log1p(rng.permutation(cfg.n_items)).astype(np.float32)

    mu = np.log(cfg.mean_activity) - cfg.activity_sigma ** 2 / 2     # so that the mean is mean_activity
    activity = np.rint(rng.lognormal(mu, cfg.activity_sigma, cfg.n_users)).astype(np.int64)
    activity = np.clip(activity, cfg.min_activity, cfg.max_activity)

    # Gumbel-top-k: the k largest of log-weight + Gumbel noise are a draw of k distinct items.
    keys = (cfg.affinity * (user_vec.astype(np.float32) @ item_vec.T.astype(np.float32)) + log_pop
            + rng.gumbel(size=(cfg.n_users, cfg.n_items)).astype(np.float32))
    k_max = int(activity.max())
    if k_max < cfg.n_items:
        top = np.argpartition(-keys, k_max - 1, axis=1)[:, :k_max]   # each user's k_max best, unordered
    else:
        top = np.broadcast_to(np.arange(cfg.n_items), keys.shape)
    order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
    ranked = np.take_along_axis(top, order, axis=1)
    keep = np.arange(k_max)[None, :] < activity[:, None]
    user = np.broadcast_to(np.arange(cfg.n_users)[:, None], ranked.shape)[keep]
    item = ranked[keep]
    sort = np.lexsort((item, user))
    return pd.DataFrame({"user": user[sort].astype(np.int64), "item": item[sort].astype(np.int64)})
