"""Mult-VAE and Mult-DAE (Liang et al., WWW 2018, section 2), read top to bottom.

q(z|x): x -> L2-normalize rows -> dropout -> [I -> 600 -> 2*200] with tanh between layers; the last layer
is split into mu and logvar. z = mu + eps * exp(0.5 * logvar) while training, z = mu when scoring.
p(x|z): [200 -> 600 -> I] with tanh between layers; the logits feed a multinomial likelihood (or the
Bernoulli / Gaussian ones the paper compares against). Mult-DAE drops the sampling and the KL term and
uses [I -> 200 -> I] in the reference notebook.

Weights are stored [d_in, d_out] as in the reference (h = h @ W + b), Xavier-uniform, with biases drawn
from a normal of std 0.001 truncated at 2 std (TensorFlow's truncated_normal_initializer).
The first layer reads the sparse batch directly (an embedding-bag sum over the user's items), which is the
same product as the dense `x @ W` without ever building the dense input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from multivae.batch import SparseBatch

Likelihood = Literal["multinomial", "bernoulli", "gaussian"]

# The reference architectures: Mult-VAE [I-600-200-600-I], Mult-DAE [I-200-I].
PAPER_HIDDEN_DIMS = {"vae": (600,), "dae": ()}


@dataclass(frozen=True)
class ModelConfig:
    model: Literal["vae", "dae"] = "vae"
    hidden_dims: tuple[int, ...] | None = None   # None: the paper's, (600,) for vae and () for dae
    latent_dim: int = 200
    dropout: float = 0.5                         # input dropout probability (keep_prob 0.5 in the reference)
    likelihood: Likelihood = "multinomial"
    normalize_input: bool = True                 # L2-normalize each user row (the paper); False is an ablation

    def __post_init__(self) -> None:
        from multivae.config import check_domains

        check_domains(self, {"latent_dim": ">= 1", "hidden_dims": ">= 1", "dropout": "in [0, 1)"})

    @property
    def hidden(self) -> tuple[int, ...]:
        return PAPER_HIDDEN_DIMS[self.model] if self.hidden_dims is None else tuple(self.hidden_dims)


def _init_linear(d_in: int, d_out: int) -> tuple[nn.Parameter, nn.Parameter]:
    w = torch.empty(d_in, d_out)
    nn.init.xavier_uniform_(w)
    b = torch.empty(d_out)
    nn.init.trunc_normal_(b, std=0.001, a=-0.002, b=0.002)
    return nn.Parameter(w), nn.Parameter(b)


class _Autoencoder(nn.Module):
    """Shared pieces: parameters as [d_in, d_out] lists, the sparse-aware first layer, the MLPs."""

    def __init__(self, n_items: int, config: ModelConfig, encoder_out: int, decoder_in: int) -> None:
        super().__init__()
        self.config = config
        self.n_items = n_items
        hidden = config.hidden
        enc_dims = [n_items, *hidden, encoder_out]
        dec_dims = [decoder_in, *reversed(hidden), n_items]
        self.enc_w, self.enc_b = nn.ParameterList(), nn.ParameterList()
        for d_in, d_out in zip(enc_dims[:-1], enc_dims[1:]):
            w, b = _init_linear(d_in, d_out)
            self.enc_w.append(w)
            self.enc_b.append(b)
        self.dec_w, self.dec_b = nn.ParameterList(), nn.ParameterList()
        for d_in, d_out in zip(dec_dims[:-1], dec_dims[1:]):
            w, b = _init_linear(d_in, d_out)
            self.dec_w.append(w)
            self.dec_b.append(b)

    def weights(self) -> list[torch.Tensor]:
        """The matrices the reference's L2 penalty applies to (not the biases)."""
        return [*self.enc_w, *self.dec_w]

    def _input_values(self, x: SparseBatch) -> torch.Tensor:
        """Per-entry input values after L2 normalization and dropout (zeros stay zero, so this is exact)."""
        vals = torch.ones(x.indices.numel(), device=x.device, dtype=self.enc_w[0].dtype)
        if self.config.normalize_input:
            norms = x.counts().clamp_min(1).to(vals.dtype).rsqrt()   # ||row||_2 of a binary row = sqrt(nnz)
            vals = vals * x.repeat_rows(norms)
        return F.dropout(vals, self.config.dropout, self.training)

    def _first_layer(self, x: SparseBatch | torch.Tensor) -> torch.Tensor:
        w, b = self.enc_w[0], self.enc_b[0]
        if isinstance(x, SparseBatch):
            h = F.embedding_bag(x.indices, w, x.offsets[:-1], mode="sum", per_sample_weights=self._input_values(x))
            return h + b
        if self.config.normalize_input:
            x = F.normalize(x, p=2, dim=1)
        x = F.dropout(x, self.config.dropout, self.training)
        return torch.addmm(b, x, w)

    def encode_raw(self, x: SparseBatch | torch.Tensor) -> torch.Tensor:
        h = self._first_layer(x)
        for w, b in zip(self.enc_w[1:], self.enc_b[1:]):
            h = torch.addmm(b, torch.tanh(h), w)
        return h

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        last = len(self.dec_w) - 1
        for i, (w, b) in enumerate(zip(self.dec_w, self.dec_b)):
            h = torch.addmm(b, h, w)
            if i != last:
                h = torch.tanh(h)
        return h


class MultiVAE(_Autoencoder):
    def __init__(self, n_items: int, config: ModelConfig = ModelConfig()) -> None:
        super().__init__(n_items, config, encoder_out=2 * config.latent_dim, decoder_in=config.latent_dim)

    def encode(self, x: SparseBatch | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encode_raw(x)
        d = self.config.latent_dim
        return h[:, :d], h[:, d:]

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        if self.training:
            return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return mu

    def forward(self, x: SparseBatch | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


class MultiDAE(_Autoencoder):
    def __init__(self, n_items: int, config: ModelConfig = ModelConfig(model="dae")) -> None:
        super().__init__(n_items, config, encoder_out=config.latent_dim, decoder_in=config.latent_dim)

    def forward(self, x: SparseBatch | torch.Tensor) -> tuple[torch.Tensor, None, None]:
        # tanh on the code layer too: the reference applies tanh after every layer but the last.
        return self.decode(torch.tanh(self.encode_raw(x))), None, None


def build_model(n_items: int, config: ModelConfig) -> MultiVAE | MultiDAE:
    return MultiVAE(n_items, config) if config.model == "vae" else MultiDAE(n_items, config)


def state_shapes(n_items: int, config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of the model's state_dict, found without allocating it (on torch's meta
    device), so that weights read from a file are checked against a config before anything is built."""
    with torch.device("meta"):
        model = build_model(n_items, config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --- losses: means over users of per-user sums, as the reference ------------------------------------

def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dimensions, averaged over users."""
    return (-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)).mean()


def _target_sum(values: torch.Tensor, x: SparseBatch | torch.Tensor) -> torch.Tensor:
    """sum_i values_ui * x_ui per user, without a dense x when x is sparse."""
    if isinstance(x, SparseBatch):
        picked = values[x.row_of_each(), x.indices]
        return torch.zeros(values.shape[0], dtype=values.dtype, device=values.device).index_add_(0, x.row_of_each(), picked)
    return (values * x).sum(dim=1)


def reconstruction_loss(logits: torch.Tensor, x: SparseBatch | torch.Tensor, likelihood: Likelihood = "multinomial") -> torch.Tensor:
    """Negative log-likelihood of the binary rows `x`, summed over items, averaged over users."""
    if likelihood == "multinomial":
        return -_target_sum(F.log_softmax(logits, dim=1), x).mean()
    if likelihood == "bernoulli":
        # BCE with logits summed over items: sum softplus(l) - sum_{x=1} l
        return (F.softplus(logits).sum(dim=1) - _target_sum(logits, x)).mean()
    if likelihood == "gaussian":
        # The paper's -log p(x|z) = sum c/2 (x - l)^2 with c = 1 (up to a constant):
        # 1/2 sum (x - l)^2 = 1/2 (sum l^2 - 2 sum_{x=1} l + n_x)
        n_x = x.counts().to(logits.dtype) if isinstance(x, SparseBatch) else x.sum(dim=1)
        return (0.5 * (logits.pow(2).sum(dim=1) - 2 * _target_sum(logits, x) + n_x)).mean()
    raise ValueError(f"unknown likelihood {likelihood!r}")


def l2_penalty(model: _Autoencoder, lam: float) -> torch.Tensor | float:
    """lam * sum ||W||^2 over weight matrices: the reference's `2 * l2_regularizer(lam)` (TF halves it)."""
    if lam == 0:
        return 0.0
    return lam * sum(w.pow(2).sum() for w in model.weights())


def kl_weight(global_step: int, cap: float, anneal_steps: int) -> float:
    """beta = min(cap, cap * global_step / anneal_steps); anneal_steps = 0 means beta = cap from step 0.

    With anneal_steps = cap * total_anneal_steps this equals the reference's
    min(anneal_cap, update_count / total_anneal_steps).
    """
    if anneal_steps <= 0:
        return float(cap)
    return float(min(cap, cap * global_step / anneal_steps))
