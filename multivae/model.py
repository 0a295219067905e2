"""Mult-VAE and Mult-DAE (Liang et al., WWW 2018, section 2), read top to bottom.

q(z|x): x -> L2-normalize rows -> dropout -> [I -> 600 -> 2*200] with tanh between layers; the last layer
is split into mu and logvar. z = mu + eps * exp(0.5 * logvar) while training, z = mu when scoring.
p(x|z): [200 -> 600 -> I] with tanh between layers; the logits feed a multinomial likelihood (or the
Bernoulli / Gaussian ones the paper compares against). Mult-DAE drops the sampling and the KL term and
uses [I -> 200 -> I] in the reference notebook.

Options toward RecVAE (Shenbin et al., WSDM 2020), all off by default: `decoder_dims` (the decoder's own hidden
layers; () is RecVAE's single linear layer), `prior: composite` (a mixture of N(0, I), the posterior of a frozen
copy of the encoder and a wide N(0, e^10 I), with the KL term estimated by Monte Carlo at the sampled z) and
`kl_scale: interactions` (the KL weight of each user times the user's number of interactions). The alternating
encoder / decoder updates are a training option (multivae.training.TrainConfig.alternating).

Weights are stored [d_in, d_out] as in the reference (h = h @ W + b), Xavier-uniform, with biases drawn
from a normal of std 0.001 truncated at 2 std (TensorFlow's truncated_normal_initializer).
The first layer reads the sparse batch directly (an embedding-bag sum over the user's items), which is the
same product as the dense `x @ W` without ever building the dense input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import math

import torch
import torch.nn.functional as F
from torch import nn

from multivae.batch import SparseBatch

Likelihood = Literal["multinomial", "bernoulli", "gaussian"]
Prior = Literal["standard", "composite"]
KlScale = Literal["constant", "interactions"]

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
    decoder_dims: tuple[int, ...] | None = None  # the decoder's hidden layers; None: the encoder's reversed (the
                                                 # paper's mirror); (): one linear layer latent -> items (RecVAE)
    prior: Prior = "standard"                    # standard: N(0, I), exact KL; composite: RecVAE's mixture prior
                                                 # (composite_log_prior), KL by Monte Carlo at the sampled z (vae only)
    kl_scale: KlScale = "constant"               # constant: beta * KL; interactions: beta * n_u * KL_u per user,
                                                 # n_u the user's training interactions (RecVAE's gamma * |x_u|; vae only)

    def __post_init__(self) -> None:
        from multivae.config import check_domains

        check_domains(self, {"latent_dim": ">= 1", "hidden_dims": ">= 1", "dropout": "in [0, 1)", "decoder_dims": ">= 1"})
        if self.model != "vae":
            if self.prior != "standard":
                raise ValueError(f"prior {self.prior!r} needs model 'vae' (a {self.model} has no latent distribution)")
            if self.kl_scale != "constant":
                raise ValueError(f"kl_scale {self.kl_scale!r} needs model 'vae' (a {self.model} has no KL term)")

    @property
    def hidden(self) -> tuple[int, ...]:
        return PAPER_HIDDEN_DIMS[self.model] if self.hidden_dims is None else tuple(self.hidden_dims)

    @property
    def decoder_hidden(self) -> tuple[int, ...]:
        """The decoder's hidden layers, latent side first."""
        return tuple(reversed(self.hidden)) if self.decoder_dims is None else tuple(self.decoder_dims)


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
        dec_dims = [decoder_in, *config.decoder_hidden, n_items]
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

    def weights(self, part: str = "all") -> list[torch.Tensor]:
        """The matrices the reference's L2 penalty applies to (not the biases): all, or the encoder's or the
        decoder's alone (the half that an alternating phase updates)."""
        if part == "encoder":
            return [*self.enc_w]
        if part == "decoder":
            return [*self.dec_w]
        return [*self.enc_w, *self.dec_w]

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [*self.enc_w, *self.enc_b]

    def decoder_parameters(self) -> list[nn.Parameter]:
        return [*self.dec_w, *self.dec_b]

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """A detached copy of the encoder's parameters, named as in the state_dict ("enc_w.0", "enc_b.0", ...):
        what the composite prior's frozen encoder holds."""
        return {f"enc_{kind}.{i}": p.detach().clone()
                for kind, params in (("w", self.enc_w), ("b", self.enc_b)) for i, p in enumerate(params)}

    def _input_values(self, x: SparseBatch, dtype: torch.dtype | None = None, dropout: bool | None = None) -> torch.Tensor:
        """Per-entry input values after L2 normalization and dropout (zeros stay zero, so this is exact).
        dtype: the first layer's (default); dropout: whether to drop (default: while training)."""
        dtype = self.enc_w[0].dtype if dtype is None else dtype
        dropout = self.training if dropout is None else dropout
        vals = torch.ones(x.indices.numel(), device=x.device, dtype=dtype)
        if self.config.normalize_input:
            norms = x.counts().clamp_min(1).to(vals.dtype).rsqrt()   # ||row||_2 of a binary row = sqrt(nnz)
            vals = vals * x.repeat_rows(norms)
        return F.dropout(vals, self.config.dropout, dropout)

    def _first_layer(self, x: SparseBatch | torch.Tensor, w: torch.Tensor, b: torch.Tensor, dropout: bool) -> torch.Tensor:
        if isinstance(x, SparseBatch):
            h = F.embedding_bag(x.indices, w, x.offsets[:-1], mode="sum", per_sample_weights=self._input_values(x, w.dtype, dropout))
            return h + b
        if self.config.normalize_input:
            x = F.normalize(x, p=2, dim=1)
        x = F.dropout(x, self.config.dropout, dropout)
        return torch.addmm(b, x, w)

    def encode_with(self, ws: Sequence[torch.Tensor], bs: Sequence[torch.Tensor], x: SparseBatch | torch.Tensor,
                    dropout: bool) -> torch.Tensor:
        """The encoder's layers on weights `ws` and biases `bs` (the live ones, or a frozen copy's), with input
        dropout when `dropout`."""
        h = self._first_layer(x, ws[0], bs[0], dropout)
        for w, b in zip(ws[1:], bs[1:]):
            h = torch.addmm(b, torch.tanh(h), w)
        return h

    def encode_raw(self, x: SparseBatch | torch.Tensor, input_dropout: bool = True) -> torch.Tensor:
        """The encoder's output; input dropout while training unless `input_dropout` is False."""
        return self.encode_with(self.enc_w, self.enc_b, x, self.training and input_dropout)

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

    def encode(self, x: SparseBatch | torch.Tensor, input_dropout: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        return self._split(self.encode_raw(x, input_dropout))

    def _split(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.config.latent_dim
        return h[:, :d], h[:, d:]

    def encode_frozen(self, params: dict[str, torch.Tensor], x: SparseBatch | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu, logvar of a frozen encoder copy (`encoder_state()`'s dict) on `x`, without input dropout."""
        n = len(self.enc_w)
        return self._split(self.encode_with([params[f"enc_w.{i}"] for i in range(n)], [params[f"enc_b.{i}"] for i in range(n)],
                                            x, dropout=False))

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        if self.training:
            return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return mu

    def sample(self, x: SparseBatch | torch.Tensor, input_dropout: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """logits, mu, logvar and the z they were decoded from (the forward pass, z included)."""
        mu, logvar = self.encode(x, input_dropout)
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar, z

    def forward(self, x: SparseBatch | torch.Tensor, input_dropout: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, mu, logvar, _ = self.sample(x, input_dropout)
        return logits, mu, logvar


class MultiDAE(_Autoencoder):
    def __init__(self, n_items: int, config: ModelConfig = ModelConfig(model="dae")) -> None:
        super().__init__(n_items, config, encoder_out=config.latent_dim, decoder_in=config.latent_dim)

    def forward(self, x: SparseBatch | torch.Tensor, input_dropout: bool = True) -> tuple[torch.Tensor, None, None]:
        # tanh on the code layer too: the reference applies tanh after every layer but the last.
        return self.decode(torch.tanh(self.encode_raw(x, input_dropout))), None, None


def build_model(n_items: int, config: ModelConfig) -> MultiVAE | MultiDAE:
    return MultiVAE(n_items, config) if config.model == "vae" else MultiDAE(n_items, config)


def state_shapes(n_items: int, config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of the model's state_dict, found without allocating it (on torch's meta
    device), so that weights read from a file are checked against a config before anything is built."""
    with torch.device("meta"):
        model = build_model(n_items, config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --- losses: means over users of per-user sums, as the reference ------------------------------------

def kl_divergence_per_user(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dimensions: one value per user."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dimensions, averaged over users."""
    return kl_divergence_per_user(mu, logvar).mean()


LOG_2PI = math.log(2 * math.pi)
# RecVAE's composite prior: (weight, what the component is) in the order of composite_log_prior's mixture
COMPOSITE_WEIGHTS = (3 / 20, 3 / 4, 1 / 10)   # N(0, 1), the frozen encoder's posterior, N(0, e^10)
COMPOSITE_WIDE_LOGVAR = 10.0


def log_normal_pdf(z: torch.Tensor, mu: torch.Tensor | float, logvar: torch.Tensor | float) -> torch.Tensor:
    """log N(z; mu, exp(logvar)), elementwise: -0.5 * (log 2 pi + logvar + (z - mu)^2 / exp(logvar))."""
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar))


def composite_log_prior(z: torch.Tensor, mu_old: torch.Tensor, logvar_old: torch.Tensor) -> torch.Tensor:
    """log p(z) of RecVAE's composite prior, elementwise (per user and latent dimension; sum over dimensions
    for the joint, which factorizes): logsumexp of log w_k + log N(z; m_k, v_k) over the components
    N(0, 1) with w 3/20, N(mu_old, exp(logvar_old)) with w 3/4 (the frozen encoder's posterior for the same
    user) and N(0, e^10) with w 1/10."""
    w_standard, w_posterior, w_wide = COMPOSITE_WEIGHTS
    parts = [log_normal_pdf(z, 0.0, 0.0) + math.log(w_standard),
             log_normal_pdf(z, mu_old, logvar_old) + math.log(w_posterior),
             log_normal_pdf(z, 0.0, COMPOSITE_WIDE_LOGVAR) + math.log(w_wide)]
    return torch.logsumexp(torch.stack(parts, dim=-1), dim=-1)


def kl_monte_carlo(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """One-sample estimate of KL(q || p) at z ~ q = N(mu, exp(logvar)): sum over latent dimensions of
    log q(z) - log p(z), with `log_prior` the elementwise log p(z) (e.g. composite_log_prior). Per user."""
    return (log_normal_pdf(z, mu, logvar) - log_prior).sum(dim=1)


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


def l2_penalty(model: _Autoencoder, lam: float, part: str = "all") -> torch.Tensor | float:
    """lam * sum ||W||^2 over weight matrices: the reference's `2 * l2_regularizer(lam)` (TF halves it).
    `part` encoder or decoder: that half's matrices alone (the ones an alternating phase updates)."""
    if lam == 0:
        return 0.0
    return lam * sum(w.pow(2).sum() for w in model.weights(part))


def kl_weight(global_step: int, cap: float, anneal_steps: int) -> float:
    """beta = min(cap, cap * global_step / anneal_steps); anneal_steps = 0 means beta = cap from step 0.

    With anneal_steps = cap * total_anneal_steps this equals the reference's
    min(anneal_cap, update_count / total_anneal_steps).
    """
    if anneal_steps <= 0:
        return float(cap)
    return float(min(cap, cap * global_step / anneal_steps))
