"""Training precision: the contexts that give fp32, bf16 and bf16-sim their numerics, and bf16's cost on this CPU.

`bf16` is autocast around each forward pass alone (bf16 matmuls on fp32 master weights); the losses, the
backward pass and the optimizer step run outside it. `bf16-sim` rounds the dense layers' operands, results
and gradients to bf16 on fp32 units (multivae.bf16sim). On a CPU without bf16 matmul units (no AVX512-BF16 or
AMX, e.g. an AVX2-only AMD EPYC) torch multiplies bf16 in a slow fallback kernel: the numbers are right, the
speed is not, so the CLIs say so in one line with the factor measured on the spot.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import torch

from multivae.bf16sim import Bf16Sim

if TYPE_CHECKING:                      # the config is passed in; multivae.training imports this module
    from multivae.training import TrainConfig

PRECISIONS = ("fp32", "bf16", "bf16-sim")   # bf16-sim: bf16 numerics on fp32 units (multivae.bf16sim)


def cpu_has_bf16_matmul() -> bool:
    """Whether torch multiplies bf16 natively on this CPU (oneDNN with AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@contextlib.contextmanager
def training_precision(device: torch.device, cfg: TrainConfig):
    """The numerics that cover a training step's forward *and* backward pass, entered once per epoch: TF32 for
    fp32 matmuls on CUDA when asked (the process-wide setting is restored afterwards), and bf16-sim's matmuls.
    bf16 autocast is not here: it wraps each forward pass alone (`forward_precision`)."""
    with contextlib.ExitStack() as stack:
        if device.type == "cuda":
            before = torch.backends.cuda.matmul.fp32_precision
            torch.backends.cuda.matmul.fp32_precision = "tf32" if cfg.tf32 else "ieee"
            stack.callback(setattr, torch.backends.cuda.matmul, "fp32_precision", before)
        if cfg.precision == "bf16-sim":
            stack.enter_context(Bf16Sim())
        yield


def forward_precision(device: torch.device, cfg: TrainConfig) -> contextlib.AbstractContextManager:
    """bf16 autocast around one forward pass (matmuls in bf16 on the fp32 master weights), or nothing.

    Entered afresh for every batch, never around several steps: autocast keeps its bf16 copies of the weights
    until its outermost context exits, so one autocast around a whole epoch ran every batch's forward pass on
    the weights as they were at the epoch's first batch, whatever the optimizer had done since (ML-1M, 30
    epochs: test NDCG@100 0.209 against fp32's 0.379, below popularity's 0.223). The backward pass and the
    optimizer step run outside it, as PyTorch's autocast documentation asks."""
    if cfg.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bf16_matmul_slowdown(m: int = 256, k: int = 600, n: int = 1024, repeat: int = 3) -> float:
    """How many times slower a bf16 matmul of the model's shape runs than an fp32 one on this CPU, measured
    now (best of `repeat` each; well under a second where bf16 has no hardware)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    a16, b16 = a.bfloat16(), b.bfloat16()

    def best(x: torch.Tensor, y: torch.Tensor) -> float:
        times = []
        for _ in range(repeat + 1):                      # the first call warms the kernel up
            t = time.perf_counter()
            torch.mm(x, y)
            times.append(time.perf_counter() - t)
        return min(times[1:])

    return best(a16, b16) / max(best(a, b), 1e-9)


def bf16_speed_warning(device: torch.device, precision: str) -> str | None:
    """The one warning line for bf16 on a CPU without bf16 matmul units (None where bf16 has hardware)."""
    if precision != "bf16" or device.type != "cpu" or cpu_has_bf16_matmul():
        return None
    return (f"warning: precision bf16: this CPU has no bf16 matmul units (no AVX512-BF16/AMX); the numbers are right "
            f"but bf16 matmuls run {bf16_matmul_slowdown():.0f}x slower than fp32 here (measured now); "
            f"--precision bf16-sim gives bf16's numerics at about fp32 speed")
