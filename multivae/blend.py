"""A Mult-VAE beside EASE: the blended scorer (train.ease_blend), one function for every place that scores a model.

    scores_u = (1 - w) * z(VAE logits_u) + w * z(x_u B),   z(s) = (s - mean_i s) / std_i s   (per user, over items)

B is EASE's item-item matrix (multivae.ease) fitted on the training users with `train.ease_lambda`. After
VASP (Vančura and Kordík, 2021), which trains a VAE and a shallow EASE-like path jointly; here the two are
fitted apart and their standardized scores mixed with a weight w that the search can choose on validation.
Standardizing makes the weight mean the same on every dataset: the VAE's logits (a log-softmax only shifts
them) and EASE's scores live on unrelated scales. w = 0 (the default) is the plain model, scored exactly
as before (the same function, no EASE fitted).
"""

from __future__ import annotations

import scipy.sparse as sp
import torch

from multivae.batch import SparseBatch
from multivae.evaluate import ScoreFn, model_scorer

STD_FLOOR = 1e-12   # a user row of equal scores (std 0) stays all zeros instead of nan


def standardize(scores: torch.Tensor) -> torch.Tensor:
    """Each row minus its mean, divided by its (population) standard deviation."""
    mean = scores.mean(dim=1, keepdim=True)
    std = scores.std(dim=1, unbiased=False, keepdim=True).clamp_min(STD_FLOOR)
    return (scores - mean) / std


def blend_scorer(model_score: ScoreFn, ease_score: ScoreFn, weight: float) -> ScoreFn:
    """(1 - weight) * z(model scores) + weight * z(EASE scores), per user."""
    def score(x: SparseBatch) -> torch.Tensor:
        return (1.0 - weight) * standardize(model_score(x).float()) + weight * standardize(ease_score(x).float())
    return score


def blend_ease_weights(train_config, train: sp.csr_matrix) -> torch.Tensor | None:
    """EASE's B for `train_config`'s blend, fitted on the training rows at `train_config.ease_lambda`; None
    without a blend (nothing is fitted)."""
    if not getattr(train_config, "ease_blend", 0.0):
        return None
    from multivae.ease import fit_ease

    return fit_ease(train, train_config.ease_lambda)


def trained_scorer(model: torch.nn.Module, train_config, *, ease_weights: torch.Tensor | None = None,
                   train: sp.csr_matrix | None = None) -> ScoreFn:
    """How a trained model scores users: its logits, or with `train_config.ease_blend` > 0 the blend with EASE
    (B = `ease_weights`, else fitted on the training rows `train`: `blend_ease_weights`)."""
    weight = getattr(train_config, "ease_blend", 0.0)
    if not weight:
        return model_scorer(model)
    from multivae.ease import ease_scorer

    if ease_weights is None:
        if train is None:
            raise ValueError("ease_blend > 0 needs the training rows to fit EASE on")
        ease_weights = blend_ease_weights(train_config, train)
    return blend_scorer(model_scorer(model), ease_scorer(ease_weights), weight)


__all__ = ["blend_ease_weights", "blend_scorer", "standardize", "trained_scorer"]
