"""Training throughput (users/s) of Mult-VAE [I-600-200-600-I] on ML-20M-shaped rows, batch 500, Adam.

    python -m bench.train_throughput                    # 20 batches of 500 users x 20,108 items, torch's threads
    python -m bench.train_throughput --threads 1 2      # one sweep per thread count
    python -m bench.train_throughput --amp none         # without the bf16-autocast case
    python -m bench.train_throughput --tiny             # seconds, in this process; what the smoke test runs

Cases, timed round-robin in one process (each call = `--batches-per-call` optimizer steps on its own users):
  naive            the reference code's way, written here: per batch `csr[rows].toarray()` as a dense float32
                   tensor, `nn.Linear` layers, F.normalize, dropout, `log_softmax * x`; Adam.
  ours             `multivae.training.train_epoch` itself (SparseBatch, embedding-bag first layer, gathered loss),
                   with the optimizer `init_state` builds by default: `adam: fused`.
  ours+foreach     the same with `adam: foreach` (the earlier default): the same algorithm, bit-identical to
                   torch's single-tensor Adam; fused differs from both in the last bits.
  ours+bf16        (--amp bf16, the default) train_epoch with `precision: bf16`: the model's matmuls under CPU
                   bf16 autocast on fp32 master weights, the losses in fp32 (changes the numerics).
Allocator: the glibc malloc mode is a property of a process (`bench.common.set_malloc`), so with
`--malloc both` fresh processes of each mode ("default": glibc untouched; "keep": no mmap, no trim,
bit-identical results) alternate, `--processes` of each, and every ratio to naive is within one mode.
The matmul limit: the time of the matmuls the step must do, each timed alone with `torch.mm(out=...)` at the
step's exact shapes and layouts, in the same rounds. "naive FLOPs" counts the dense first layer as the naive
step does it (forward and weight gradient; no input gradient), "dense in ours" only the layers ours keeps dense;
"dense in ours, bf16" the same matmuls in bf16 (bf16 operands and results), the limit of `precision: bf16`.
CUDA (--cuda auto, the default, when a GPU is present): train_epoch and validation's scoring in fp32, TF32 and
bf16, users/s, next to the same matmuls alone in each (timed between torch.cuda.synchronize calls).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from torch import nn

from bench.common import (
    ML20M_BATCHES_PER_EPOCH, ML20M_ITEMS, ML20M_TRAIN_USERS, Sample, interleave, machine_info,
    ml20m_like_rows, print_table, run_worker, set_malloc, set_threads, stats, worker_result, write_result,
)
from multivae.allocator import KEEP_FREED_MEMORY_TUNABLES
from multivae.batch import SparseBatch
from multivae.data.split import SplitData
from multivae.model import ModelConfig, kl_divergence, kl_weight, reconstruction_loss
from multivae.precision import forward_precision, training_precision
from multivae.training import Callback, TrainConfig, TrainState, init_state, train_epoch

ANNEAL_STEPS = 40_000   # the reference schedule on ML-20M (cap 0.2)


@dataclass(frozen=True)
class Shape:
    n_items: int
    batch: int
    hidden: int = 600
    latent: int = 200

    def layers(self) -> list[tuple[int, int]]:
        """(d_in, d_out) of every layer: q [I-600-2*200], p [200-600-I]."""
        h, d, i = self.hidden, self.latent, self.n_items
        return [(i, h), (h, 2 * d), (d, h), (h, i)]

    def flops_naive(self) -> float:
        """Dense matmul FLOPs of one naive training step: 2*B*in*out per product; the first layer does
        the forward and the weight gradient (x needs no gradient), every other layer also its input gradient."""
        prods = [2] + [3] * (len(self.layers()) - 1)
        return float(sum(2 * self.batch * a * b * n for (a, b), n in zip(self.layers(), prods)))

    def flops_dense_in_ours(self) -> float:
        """The same for the layers ours keeps dense (all but the first, which is an embedding bag)."""
        return float(sum(2 * self.batch * a * b * 3 for a, b in self.layers()[1:]))


# --- the naive implementation: the reference code's way ------------------------------------------------

class NaiveMultVAE(nn.Module):
    """The reference's Mult-VAE as its common PyTorch port writes it: nn.Linear layers on a dense input."""

    def __init__(self, n_items: int, hidden: int = 600, latent: int = 200, dropout: float = 0.5) -> None:
        super().__init__()
        self.latent = latent
        self.q_layers = nn.ModuleList([nn.Linear(n_items, hidden), nn.Linear(hidden, 2 * latent)])
        self.p_layers = nn.ModuleList([nn.Linear(latent, hidden), nn.Linear(hidden, n_items)])
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.drop(F.normalize(x))
        for i, layer in enumerate(self.q_layers):
            h = layer(h)
            if i != len(self.q_layers) - 1:
                h = torch.tanh(h)
        mu, logvar = h[:, :self.latent], h[:, self.latent:]
        z = torch.randn_like(mu).mul(torch.exp(0.5 * logvar)).add_(mu) if self.training else mu
        h = z
        for i, layer in enumerate(self.p_layers):
            h = layer(h)
            if i != len(self.p_layers) - 1:
                h = torch.tanh(h)
        return h, mu, logvar


def naive_loss(logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float) -> torch.Tensor:
    neg_ll = -torch.mean(torch.sum(F.log_softmax(logits, 1) * x, -1))
    kld = -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1))
    return neg_ll + beta * kld


class NaiveTrainer:
    def __init__(self, n_items: int, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = NaiveMultVAE(n_items)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.rng = np.random.default_rng(seed)
        self.step = 0

    def epoch(self, data: sp.csr_matrix, batch_size: int) -> None:
        self.model.train()
        order = self.rng.permutation(data.shape[0])
        for start in range(0, len(order), batch_size):
            x = torch.from_numpy(data[order[start:start + batch_size]].toarray()).float()
            logits, mu, logvar = self.model(x)
            loss = naive_loss(logits, x, mu, logvar, kl_weight(self.step, 0.2, ANNEAL_STEPS))
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.step += 1
            loss.item()


# --- ours ----------------------------------------------------------------------------------------------

def as_split(train: sp.csr_matrix) -> SplitData:
    """A SplitData holding only training rows (train_epoch reads nothing else)."""
    empty = sp.csr_matrix((0, train.shape[1]), dtype=np.float32)
    no_ids = np.zeros(0, dtype=np.int64)
    return SplitData(train, empty, empty, empty, empty, np.arange(train.shape[1]), np.arange(train.shape[0]), no_ids, no_ids)


def ours_state(n_items: int, batch_size: int, seed: int, adam: str = TrainConfig.adam, precision: str = "fp32",
               device: str = "cpu", tf32: bool = False) -> TrainState:
    return init_state(n_items, ModelConfig(), TrainConfig(batch_size=batch_size, seed=seed, device=device, adam=adam,
                                                          precision=precision, tf32=tf32))


def ours_epoch(state: TrainState, split: SplitData) -> None:
    train_epoch(state, split, ANNEAL_STEPS, 0.0, Callback())


# --- the matmul limit --------------------------------------------------------------------------------

def matmul_cases(shape: Shape, dtype: torch.dtype = torch.float32, device: str = "cpu"
                 ) -> tuple[dict[str, Callable[[], Any]], list[str], list[str]]:
    """One closure per matmul of a training step, with preallocated outputs; the names that make up the
    naive step and the ones that make up the dense part of ours. In bf16 the names start with "bf16 " (what
    autocast runs: bf16 operands and results, fp32 accumulation)."""
    B = shape.batch
    g = torch.Generator().manual_seed(0)
    tag = "" if dtype == torch.float32 else f"{str(dtype).removeprefix('torch.').replace('bfloat16', 'bf16')} "

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=g).to(device=device, dtype=dtype)

    def empty(*size: int) -> torch.Tensor:
        return torch.empty(*size, device=device, dtype=dtype)

    cases: dict[str, Callable[[], Any]] = {}
    naive, ours = [], []
    for li, (a, b) in enumerate(shape.layers()):
        x = randn(B, a)
        gy = randn(B, b)
        y = empty(B, b)
        gx = empty(B, a)
        bias = randn(b)
        # naive: nn.Linear stores W as [out, in]; y = x @ W.T + b, dx = gy @ W, dW = gy.T @ x
        w_oi = randn(b, a)
        gw_oi = empty(b, a)
        cases[f"{tag}naive L{li} fwd"] = lambda y=y, x=x, w=w_oi, bias=bias: torch.addmm(bias, x, w.t(), out=y)
        cases[f"{tag}naive L{li} dW"] = lambda gw=gw_oi, gy=gy, x=x: torch.mm(gy.t(), x, out=gw)
        naive += [f"{tag}naive L{li} fwd", f"{tag}naive L{li} dW"]
        if li > 0:
            cases[f"{tag}naive L{li} dx"] = lambda gx=gx, gy=gy, w=w_oi: torch.mm(gy, w, out=gx)
            naive.append(f"{tag}naive L{li} dx")
            # ours stores W as [in, out]; y = x @ W + b, dx = gy @ W.T, dW = x.T @ gy
            w_io = randn(a, b)
            gw_io = empty(a, b)
            cases[f"{tag}ours L{li} fwd"] = lambda y=y, x=x, w=w_io, bias=bias: torch.addmm(bias, x, w, out=y)
            cases[f"{tag}ours L{li} dx"] = lambda gx=gx, gy=gy, w=w_io: torch.mm(gy, w.t(), out=gx)
            cases[f"{tag}ours L{li} dW"] = lambda gw=gw_io, gy=gy, x=x: torch.mm(x.t(), gy, out=gw)
            ours += [f"{tag}ours L{li} fwd", f"{tag}ours L{li} dx", f"{tag}ours L{li} dW"]
    return cases, naive, ours


# --- profile -----------------------------------------------------------------------------------------

def profile_ours(train: sp.csr_matrix, batch_size: int, seed: int, steps: int, precision: str = "fp32") -> dict[str, Any]:
    """Where a step of ours goes: phases timed by hand (train_epoch's body, CPU seconds) and the top
    operators by self CPU time from torch.profiler."""
    state = ours_state(train.shape[1], batch_size, seed, precision=precision)
    model, opt = state.model, state.optimizer
    model.train()
    n_batches = max(1, train.shape[0] // batch_size)
    phases = {"batch": [], "forward": [], "loss": [], "backward": [], "optimizer": []}

    def step(i: int, record: bool) -> None:
        t = [time.process_time()]
        x = SparseBatch.from_csr(train, slice((i % n_batches) * batch_size, (i % n_batches + 1) * batch_size))
        t.append(time.process_time())
        with training_precision(torch.device("cpu"), state.train_config), forward_precision(torch.device("cpu"), state.train_config):
            logits, mu, logvar = model(x)
        t.append(time.process_time())
        loss = reconstruction_loss(logits.float(), x) + 0.1 * kl_divergence(mu.float(), logvar.float())
        t.append(time.process_time())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.process_time())
        opt.step()
        loss.item()
        t.append(time.process_time())
        if record:
            for k, a, b in zip(phases, t[:-1], t[1:]):
                phases[k].append(b - a)

    step(0, False)
    for i in range(steps):
        step(i + 1, True)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(i, False)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops) or 1.0
    top = [{"op": e.key, "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
            "share": e.self_cpu_time_total / total, "calls_per_step": e.count / steps} for e in ops[:12]]
    med = {k: float(np.median(v)) for k, v in phases.items()}
    return {"steps": steps, "precision": precision, "phase_cpu_s_median": med, "phase_share": {k: v / sum(med.values()) for k, v in med.items()},
            "top_ops": top}


# --- measuring: one process, one allocator mode ------------------------------------------------------

CASES = ("naive", "ours", "ours+foreach", "ours+bf16")


def measure(train: sp.csr_matrix, batch_size: int, batches_per_call: int, rounds: int, warmup: int, amp: str,
            seed: int) -> dict[str, list[Sample]]:
    """Training cases and the step's matmuls, round-robin in this process: each round runs every training
    case once (`batches_per_call` steps on its own slice of users), then every matmul once."""
    B, k, n_items = batch_size, batches_per_call, train.shape[1]
    n_calls = max(1, train.shape[0] // (B * k))
    slices = [train[i * B * k:(i + 1) * B * k] for i in range(n_calls)]
    splits = [as_split(s) for s in slices]
    naive = NaiveTrainer(n_items, seed)
    ours = ours_state(n_items, B, seed)
    foreach = ours_state(n_items, B, seed, adam="foreach")
    bf16 = ours_state(n_items, B, seed, precision="bf16") if amp == "bf16" else None
    j = {"i": 0}
    cases: dict[str, Callable[[], Any]] = {
        "naive": lambda: naive.epoch(slices[j["i"] % n_calls], B),
        "ours": lambda: ours_epoch(ours, splits[j["i"] % n_calls]),
        "ours+foreach": lambda: ours_epoch(foreach, splits[j["i"] % n_calls]),
    }
    if bf16 is not None:
        cases["ours+bf16"] = lambda: ours_epoch(bf16, splits[j["i"] % n_calls])
    mm_cases, _, _ = matmul_cases(Shape(n_items, B))
    if amp == "bf16":
        bf16_cases, _, bf16_ours = matmul_cases(Shape(n_items, B), torch.bfloat16)
        mm_cases |= {n: bf16_cases[n] for n in bf16_ours}
    samples: dict[str, list[Sample]] = {n: [] for n in [*cases, *mm_cases]}
    for r in range(warmup + rounds):
        got = interleave(cases, rounds=1, warmup=0) | interleave(mm_cases, rounds=1, warmup=0)
        if r >= warmup:
            for n, v in got.items():
                samples[n] += v
        j["i"] += 1
    return samples


def worker_main(spec_json: str) -> None:
    """A fresh process: set the allocator mode first, then load the rows and measure (or profile)."""
    spec = json.loads(spec_json)
    set_malloc(spec["malloc"])
    set_threads(spec["threads"])
    with np.load(spec["data"]) as z:
        train = sp.csr_matrix((np.ones(len(z["indices"]), dtype=np.float32), z["indices"], z["indptr"]), shape=tuple(z["shape"]))
    if spec.get("profile_steps"):
        worker_result(profile_ours(train, spec["batch_size"], spec["seed"], spec["profile_steps"], spec.get("precision", "fp32")))
        return
    samples = measure(train, spec["batch_size"], spec["batches_per_call"], spec["rounds"], spec["warmup"], spec["amp"], spec["seed"])
    worker_result({n: [[x.wall_s, x.cpu_s] for x in v] for n, v in samples.items()})


# --- ML-1M epochs: fp32, bf16 and bf16-sim round-robin in one process -------------------------------

def ml1m_epochs(data_dir: str, threads: int, epochs: int, precisions: tuple[str, ...] = ("fp32", "bf16", "bf16-sim")) -> dict[str, Any]:
    """Seconds of training per ML-1M epoch (Mult-VAE, the paper's protocol) under each precision, the
    precisions taking turns epoch by epoch after one untimed epoch each; medians, wall and CPU."""
    from multivae.config import from_dict
    from multivae.data import DatasetConfig, load_dataset

    split = load_dataset(from_dict(DatasetConfig, {"name": "ml-1m", "data_dir": data_dir}, where="--ml1m"), verbose=False)
    set_threads(threads)
    states = {p: init_state(split.n_items, ModelConfig(), TrainConfig(precision=p, device="cpu")) for p in precisions}
    cases = {p: (lambda st=st: train_epoch(st, split, 1709, 0.0, Callback())) for p, st in states.items()}
    got = interleave(cases, rounds=epochs, warmup=1)
    res = {p: stats(v) for p, v in got.items()}
    for p, r in res.items():
        for basis in ("wall", "cpu"):
            r[f"vs_fp32_{basis}"] = res["fp32"][f"{basis}_median_s"] / r[f"{basis}_median_s"]
    return {"threads": threads, "epochs_timed": epochs, "train_users": int(split.train.shape[0]), "items": int(split.n_items),
            "precisions": res, "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


def print_ml1m(res: dict[str, Any]) -> None:
    print(f"\nML-1M Mult-VAE epoch ({res['train_users']:,} users x {res['items']:,} items), threads={res['threads']}, "
          f"median of {res['epochs_timed']} (load average after: {res['loadavg_after']})")
    print_table(["precision", "s/epoch wall", "s/epoch cpu", "x fp32 (wall)", "x fp32 (cpu)"],
                [[p, r["wall_median_s"], r["cpu_median_s"], r["vs_fp32_wall"], r["vs_fp32_cpu"]] for p, r in res["precisions"].items()])


# --- CUDA: fp32, TF32 and bf16 (runs only where a GPU is present) ------------------------------------

CUDA_SETTINGS = {"fp32": {"precision": "fp32", "tf32": False}, "tf32": {"precision": "fp32", "tf32": True},
                 "bf16": {"precision": "bf16", "tf32": False}}


def _cuda_timed(fn: Callable[[], Any], repeat: int) -> float:
    """Seconds per call of `fn` on the GPU: one warm-up call, then `repeat` calls between two synchronizations."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat


def cuda_bench(n_items: int, batch_size: int, n_batches: int, seed: int) -> dict[str, Any]:
    """Users/s of training (`train_epoch` as `fit` runs it: no host sync inside the epoch) and of inference
    (validation's scoring + top-100 ranking through `per_user_metrics`) under each setting, and the step's
    matmuls alone in fp32, TF32 and bf16 (the limits), on ML-20M-shaped rows."""
    from multivae.evaluate import model_scorer, per_user_metrics

    device = torch.device("cuda")
    activity = 85.6 if n_items == ML20M_ITEMS else max(6.0, 85.6 * n_items / ML20M_ITEMS)
    rows = ml20m_like_rows(n_batches * batch_size, n_items, mean_activity=activity, seed=seed)
    split = as_split(rows)
    # inference: 80 % of each row as fold-in, 20 % as the target (the protocol's shape)
    rng = np.random.default_rng(seed)
    coo = rows.tocoo()
    held = rng.random(coo.nnz) < 0.2
    fold_in = sp.csr_matrix((coo.data[~held], (coo.row[~held], coo.col[~held])), shape=rows.shape)
    target = sp.csr_matrix((coo.data[held], (coo.row[held], coo.col[held])), shape=rows.shape)
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(device), "items": n_items, "users": int(rows.shape[0]),
                           "batch_size": batch_size, "train": {}, "inference": {}, "matmul_limit": {}}
    for name, setting in CUDA_SETTINGS.items():
        state = ours_state(n_items, batch_size, seed, device="cuda", **setting)
        s = _cuda_timed(lambda: ours_epoch(state, split), repeat=3)
        out["train"][name] = {"s_per_epoch": s, "users_per_s": rows.shape[0] / s}
        score = model_scorer(state.model)
        with training_precision(device, state.train_config), forward_precision(device, state.train_config):   # as in training
            s = _cuda_timed(lambda: per_user_metrics(score, fold_in, target, ("ndcg@100",), 2000, device), repeat=3)
        out["inference"][name] = {"s": s, "users_per_s": rows.shape[0] / s}
        del state
        torch.cuda.empty_cache()
    shape = Shape(n_items, batch_size)
    before = torch.backends.cuda.matmul.fp32_precision
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False)):
        torch.backends.cuda.matmul.fp32_precision = "tf32" if tf32 else "ieee"
        cases, _, ours = matmul_cases(shape, dtype, device="cuda")
        s = sum(_cuda_timed(cases[n], repeat=20) for n in ours)
        out["matmul_limit"][name] = {"s_per_batch": s, "users_per_s": batch_size / s,
                                     "tflops": shape.flops_dense_in_ours() / s / 1e12}
    torch.backends.cuda.matmul.fp32_precision = before
    for name in CUDA_SETTINGS:
        out["train"][name]["pct_of_limit_dense_in_ours"] = 100 * out["train"][name]["users_per_s"] / out["matmul_limit"][name]["users_per_s"]
    return out


def print_cuda(res: dict[str, Any]) -> None:
    print(f"\nCUDA ({res['device']}): {res['users']:,} users x {res['items']:,} items, batch {res['batch_size']}")
    print_table(["setting", "train users/s", "train ML-20M epoch s", "% of the matmul limit (dense in ours)", "inference users/s",
                 "matmul limit users/s", "matmul TFLOP/s"],
                [[n, res["train"][n]["users_per_s"], ML20M_TRAIN_USERS / res["train"][n]["users_per_s"],
                  res["train"][n]["pct_of_limit_dense_in_ours"], res["inference"][n]["users_per_s"],
                  res["matmul_limit"][n]["users_per_s"], res["matmul_limit"][n]["tflops"]] for n in CUDA_SETTINGS])


# --- summaries ---------------------------------------------------------------------------------------

def summarize(samples: dict[str, dict[str, list[Sample]]], shape: Shape, users_per_call: float, threads: int) -> dict[str, Any]:
    """samples[mode][name]: training cases per allocator mode, and the matmuls (pooled over modes)."""
    B = shape.batch
    _, naive_mm, ours_mm = matmul_cases(Shape(8, 8))   # just the names
    _, _, ours_mm_bf16 = matmul_cases(Shape(8, 8), torch.bfloat16)
    mm_pool: dict[str, list[Sample]] = {}
    for per_mode in samples.values():
        for n in (*naive_mm, *ours_mm, *ours_mm_bf16):
            if per_mode.get(n):
                mm_pool.setdefault(n, []).extend(per_mode[n])
    mm = {n: stats(v) for n, v in mm_pool.items()}
    limits = {}
    for label, names, flops in (("naive_flops", naive_mm, shape.flops_naive()), ("dense_in_ours", ours_mm, shape.flops_dense_in_ours()),
                                ("dense_in_ours_bf16", ours_mm_bf16, shape.flops_dense_in_ours())):
        if not all(n in mm for n in names):
            continue            # --amp none: no bf16 matmuls timed
        wall = sum(mm[n]["wall_median_s"] for n in names)
        cpu = sum(mm[n]["cpu_median_s"] for n in names)
        limits[label] = {"gflop_per_batch": flops / 1e9, "matmul_s_per_batch_wall": wall, "matmul_s_per_batch_cpu": cpu,
                         "gflops_wall": flops / wall / 1e9, "gflops_cpu": flops / cpu / 1e9,
                         "users_per_s_wall": B / wall, "users_per_s_cpu": B / cpu}
    rows: dict[str, Any] = {}
    per = users_per_call / B
    for mode, per_mode in samples.items():
        for name in CASES:
            if name not in per_mode:
                continue
            st = stats(per_mode[name], per=per)
            rows[f"{mode}/{name}"] = {"malloc": mode, "case": name, **st,
                                      "users_per_s_wall": B / st["wall_median_s"], "users_per_s_cpu": B / st["cpu_median_s"]}
    for key, row in rows.items():
        for basis in ("wall", "cpu"):
            naive = rows[f"{row['malloc']}/naive"][f"users_per_s_{basis}"]
            row[f"vs_naive_{basis}"] = row[f"users_per_s_{basis}"] / naive        # naive under the same allocator mode
            if "default/ours" in rows:
                row[f"vs_ours_default_{basis}"] = row[f"users_per_s_{basis}"] / rows["default/ours"][f"users_per_s_{basis}"]
            for label in limits:
                row[f"pct_of_limit_{label}_{basis}"] = 100 * row[f"users_per_s_{basis}"] / limits[label][f"users_per_s_{basis}"]
            row[f"epoch_s_ml20m_{basis}"] = ML20M_TRAIN_USERS / row[f"users_per_s_{basis}"]
    return {"threads": threads, "cases": rows, "limits": limits, "matmuls": mm, "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


def print_run(res: dict[str, Any]) -> None:
    print(f"\nthreads={res['threads']}  (load average after: {res['loadavg_after']}); medians per batch of {res.get('batch', 500)}")
    bf16 = "dense_in_ours_bf16" in res["limits"]
    headers = ["malloc", "case", "ms wall", "ms cpu", "users/s wall", "users/s cpu", "x naive (cpu)", "x naive (wall)",
               "% limit naive-FLOPs (cpu)", "% limit dense-in-ours (cpu)", *(["% bf16 limit dense-in-ours (cpu)"] if bf16 else []),
               "ML-20M epoch s (cpu)"]
    rows = []
    for r in res["cases"].values():
        rows.append([r["malloc"], r["case"], 1e3 * r["wall_median_s"], 1e3 * r["cpu_median_s"], r["users_per_s_wall"], r["users_per_s_cpu"],
                     r["vs_naive_cpu"], r["vs_naive_wall"], r["pct_of_limit_naive_flops_cpu"], r["pct_of_limit_dense_in_ours_cpu"],
                     *([r["pct_of_limit_dense_in_ours_bf16_cpu"]] if bf16 else []), r["epoch_s_ml20m_cpu"]])
    for label, lim in res["limits"].items():
        rows.append(["", f"limit: matmuls ({label})", 1e3 * lim["matmul_s_per_batch_wall"], 1e3 * lim["matmul_s_per_batch_cpu"],
                     lim["users_per_s_wall"], lim["users_per_s_cpu"], "", "", "", "", *([""] if bf16 else []),
                     ML20M_TRAIN_USERS / lim["users_per_s_cpu"]])
    print_table(headers, rows)
    for label, lim in res["limits"].items():
        print(f"  {label}: {lim['gflop_per_batch']:.1f} GFLOP/batch at {lim['gflops_cpu']:.0f} GFLOP/s (cpu time), "
              f"{lim['gflops_wall']:.0f} GFLOP/s (wall)")


def print_profile(mode: str, p: dict[str, Any]) -> None:
    print(f"\nprofile of ours, malloc/precision={mode}, threads={p['threads']} (CPU time per step):")
    print("  phases: " + ", ".join(f"{k} {1e3 * v:.0f} ms ({100 * p['phase_share'][k]:.0f}%)" for k, v in p["phase_cpu_s_median"].items()))
    print_table(["op", "self ms/step (profiler, wall clock)", "share", "calls/step"],
                [[o["op"], o["self_cpu_ms_per_step"], f"{100 * o['share']:.1f}%", o["calls_per_step"]] for o in p["top_ops"]])


# --- main --------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.train_throughput", description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--tiny", action="store_true", help="seconds: 1,000 items, batch 64, 2 batches, 1 round, in this process")
    p.add_argument("--items", type=int, default=ML20M_ITEMS)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--batches", type=int, default=20, help="batches generated (users = batches x batch size)")
    p.add_argument("--batches-per-call", type=int, default=2, help="optimizer steps per timed call")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per process (each case runs once per round)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first, per process")
    p.add_argument("--processes", type=int, default=2, help="with --malloc both: processes per allocator mode, alternated")
    p.add_argument("--threads", type=int, nargs="+", default=None, help="torch threads to sweep (0: torch's default; "
                   "default: 0, and 1 with --tiny)")
    p.add_argument("--malloc", choices=["default", "keep", "both"], default=None,
                   help="glibc allocator mode (bench.common.set_malloc); both: alternate fresh processes of each "
                        "(default: both, and default with --tiny)")
    p.add_argument("--amp", choices=["none", "bf16"], default="bf16", help="bf16: add the bf16 CPU autocast case")
    p.add_argument("--profile-steps", type=int, default=4, help="steps profiled per allocator mode (0: no profile)")
    p.add_argument("--ml1m", metavar="DATA_DIR", help="also time ML-1M epochs in fp32, bf16 and bf16-sim (a folder with ml-1m/)")
    p.add_argument("--ml1m-threads", type=int, default=2)
    p.add_argument("--ml1m-epochs", type=int, default=3, help="timed epochs per precision (default 3)")
    p.add_argument("--cuda", choices=["auto", "off"], default="auto", help="auto: also measure fp32, TF32 and bf16 on CUDA "
                   "when a GPU is present")
    p.add_argument("--cuda-items", type=int, default=ML20M_ITEMS, help="items for the CUDA part (default ML-20M's)")
    p.add_argument("--cuda-batches", type=int, default=40, help="batches of users for the CUDA part (default 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for the JSON (default bench/results)")
    args = p.parse_args(argv)
    if args.tiny:
        args.items, args.batch_size, args.batches, args.batches_per_call, args.rounds, args.warmup = 1000, 64, 2, 1, 1, 1
        args.cuda_items, args.cuda_batches = 1000, 2
        args.profile_steps = min(args.profile_steps, 1)
    args.threads = args.threads or ([1] if args.tiny else [0])
    args.malloc = args.malloc or ("default" if args.tiny else "both")
    if min(args.items, args.batch_size, args.batches, args.batches_per_call, args.rounds, args.processes) < 1:
        p.error("--items, --batch-size, --batches, --batches-per-call, --rounds and --processes must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return {}
    if args.malloc == "keep":
        set_malloc("keep")          # this process runs the cases: before the big allocations
    shape = Shape(args.items, args.batch_size)
    activity = 85.6 if args.items == ML20M_ITEMS else max(6.0, 85.6 * args.items / ML20M_ITEMS)
    train = ml20m_like_rows(args.batches * args.batch_size, args.items, mean_activity=activity, seed=args.seed)
    users_per_call = float(args.batches_per_call * args.batch_size)
    print(f"data: {train.shape[0]:,} users x {train.shape[1]:,} items, {train.nnz:,} interactions "
          f"({train.nnz / train.shape[0]:.1f} per user, max {np.diff(train.indptr).max()}); batch {args.batch_size}; "
          f"model [I-600-200-600-I]; {shape.flops_naive() / 1e9:.1f} GFLOP/batch naive, "
          f"{shape.flops_dense_in_ours() / 1e9:.1f} dense in ours")
    default_threads = torch.get_num_threads()
    modes = ["default", "keep"] if args.malloc == "both" else [args.malloc]
    runs, profiles = [], {}
    with tempfile.TemporaryDirectory(prefix="multivae-bench-train-") as tmp:
        data = Path(tmp) / "rows.npz"
        np.savez(data, indptr=train.indptr, indices=train.indices, shape=np.asarray(train.shape))
        base = {"data": str(data), "batch_size": args.batch_size, "batches_per_call": args.batches_per_call, "rounds": args.rounds,
                "warmup": args.warmup, "amp": args.amp, "seed": args.seed}
        for t in args.threads:
            threads = t or default_threads
            samples: dict[str, dict[str, list[Sample]]] = {m: {} for m in modes}
            if args.malloc == "both":
                for _ in range(args.processes):
                    for mode in modes:
                        got = run_worker("bench.train_throughput", {**base, "malloc": mode, "threads": threads})
                        for n, v in got.items():
                            samples[mode].setdefault(n, []).extend(Sample(w, c) for w, c in v)
            else:
                set_threads(threads)
                samples[args.malloc] = measure(train, args.batch_size, args.batches_per_call, args.rounds, args.warmup, args.amp, args.seed)
            res = summarize(samples, shape, users_per_call, threads)
            res["batch"] = args.batch_size
            print_run(res)
            runs.append(res)
        if args.profile_steps:
            threads = args.threads[0] or default_threads
            for mode in modes:
                for precision in ("fp32", "bf16") if args.amp == "bf16" else ("fp32",):
                    key = mode if precision == "fp32" else f"{mode}/{precision}"
                    if args.malloc == "both":
                        prof = run_worker("bench.train_throughput", {**base, "malloc": mode, "threads": threads,
                                                                      "profile_steps": args.profile_steps, "precision": precision})
                    else:
                        set_threads(threads)
                        prof = profile_ours(train, args.batch_size, args.seed, args.profile_steps, precision)
                    prof["threads"] = threads
                    profiles[key] = prof
                    print_profile(key, prof)
    set_threads(default_threads)
    ml1m = None
    if args.ml1m:
        ml1m = ml1m_epochs(args.ml1m, args.ml1m_threads, args.ml1m_epochs)
        print_ml1m(ml1m)
        set_threads(default_threads)
    cuda = None
    if args.cuda == "auto" and torch.cuda.is_available():
        cuda = cuda_bench(args.cuda_items, args.batch_size, args.cuda_batches, args.seed)
        print_cuda(cuda)
    elif args.cuda == "auto":
        print("\nCUDA: not available on this machine; the GPU part (fp32, TF32, bf16) did not run")
    payload = {
        "machine": machine_info(),
        "config": {"items": args.items, "batch_size": args.batch_size, "users": int(train.shape[0]), "interactions": int(train.nnz),
                   "batches_per_call": args.batches_per_call, "rounds_per_process": args.rounds, "warmup": args.warmup,
                   "processes_per_mode": args.processes if args.malloc == "both" else 1, "threads": [r["threads"] for r in runs],
                   "malloc": modes, "amp": args.amp, "tiny": args.tiny,
                   "model": "Mult-VAE [I-600-200-600-I], tanh, dropout 0.5, multinomial, Adam lr 1e-3",
                   "data": "bench.common.ml20m_like_rows: log-normal items/user (mean 85.6, sigma 1, >= 5), Zipf popularity",
                   "ml20m_epoch": {"train_users": ML20M_TRAIN_USERS, "batches": ML20M_BATCHES_PER_EPOCH},
                   "malloc_keep_env_equivalent": "GLIBC_TUNABLES=" + KEEP_FREED_MEMORY_TUNABLES},
        "runs": runs,
        "profile": profiles,
        "ml1m_epochs": ml1m,
        "cuda": cuda,
    }
    path = write_result("train_throughput", payload, argv, args.out)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
