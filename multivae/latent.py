"""Measures of a trained Mult-VAE's latent space, pure torch: the posterior means of users, active units, users
grouped by activity, and scoring with a sampled z instead of z = mu. The ablations (`tuning.ablation`) use them.

Active units (Burda et al., 2016): a latent dimension is active when the variance over users of E_q[z_d]
exceeds 0.01.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from multivae.batch import SparseBatch
from multivae.evaluate import ScoreFn
from multivae.model import MultiVAE

ACTIVE_THRESHOLD = 0.01                        # Burda et al. (2016): Cov_x(E_q[z_d]) > 0.01
N_GROUPS = 5                                   # activity quintiles
SAMPLE_SEED = 0                                # the draws are reproducible


@torch.no_grad()
def latent_params(model: MultiVAE, fold_in, batch_size: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """mu and logvar of q(z | x) for every row of `fold_in`, in eval mode (no input dropout)."""
    model.eval()
    mus, logvars = [], []
    for start in range(0, fold_in.shape[0], batch_size):
        x = SparseBatch.from_csr(fold_in, slice(start, min(start + batch_size, fold_in.shape[0])))
        mu, logvar = model.encode(x.to(next(model.parameters()).device))
        mus.append(mu.cpu().numpy())
        logvars.append(logvar.cpu().numpy())
    return np.concatenate(mus), np.concatenate(logvars)


def active_units(mu: np.ndarray, threshold: float = ACTIVE_THRESHOLD) -> dict[str, Any]:
    """Per latent dimension the variance of mu over users (rows); active when > threshold (Burda et al.)."""
    var = np.asarray(mu, dtype=np.float64).var(axis=0)
    return {"active_units": int((var > threshold).sum()), "latent_dim": int(var.size),
            "mean_variance": float(var.mean()), "variances": var.tolist()}


def activity_groups(sizes: np.ndarray, n_groups: int = N_GROUPS) -> np.ndarray:
    """Group of each user (0 = lightest): users ranked by size, ties in row order, cut into `n_groups`
    groups whose sizes differ by at most one user."""
    sizes = np.asarray(sizes)
    if sizes.size < n_groups:
        raise ValueError(f"{sizes.size} users cannot be cut into {n_groups} groups")
    groups = np.empty(sizes.size, dtype=np.int64)
    for g, rows in enumerate(np.array_split(np.argsort(sizes, kind="stable"), n_groups)):
        groups[rows] = g
    return groups


def group_means(values: np.ndarray, sizes: np.ndarray, n_groups: int = N_GROUPS) -> list[dict[str, Any]]:
    """Mean of `values` per activity group of the users that have a value (NaN: no target, left out)."""
    values, sizes = np.asarray(values, dtype=np.float64), np.asarray(sizes)
    keep = ~np.isnan(values)
    values, sizes = values[keep], sizes[keep]
    groups = activity_groups(sizes, n_groups)
    return [{"group": g + 1, "users": int((groups == g).sum()), "min_size": int(sizes[groups == g].min()),
             "max_size": int(sizes[groups == g].max()), "mean": float(values[groups == g].mean())} for g in range(n_groups)]


LIKELIHOOD_MEAN: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "multinomial": lambda logits: F.softmax(logits, dim=1),   # item probabilities
    "bernoulli": torch.sigmoid,
    "gaussian": lambda logits: logits,
}


def sampled_scorer(model: MultiVAE, n_samples: int = 1, seed: int = SAMPLE_SEED) -> ScoreFn:
    """Scores with z drawn from q(z | x) (eval mode otherwise: no dropout). One draw: the logits of that z;
    several: the mean over the draws of the likelihood's mean (softmax probabilities for the multinomial)."""
    if not isinstance(model, MultiVAE):
        raise ValueError("sampled z needs a Mult-VAE (a Mult-DAE has no q(z | x))")
    mean_of = LIKELIHOOD_MEAN[model.config.likelihood]
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)

    def draw(mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        return model.decode(mu + std * torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype))

    def score(x: SparseBatch) -> torch.Tensor:
        model.eval()
        mu, logvar = model.encode(x)
        std = torch.exp(0.5 * logvar)
        if n_samples == 1:
            return draw(mu, std)
        return torch.stack([mean_of(draw(mu, std)) for _ in range(n_samples)]).mean(dim=0)
    return score


__all__ = ["ACTIVE_THRESHOLD", "LIKELIHOOD_MEAN", "N_GROUPS", "SAMPLE_SEED", "active_units", "activity_groups", "group_means",
           "latent_params", "sampled_scorer"]
