"""`precision: bf16-sim`: the numerics of bf16 autocast on fp32 matmul units, to measure bf16's quality on a
CPU without bf16 matmul hardware (where torch's fallback bf16 matmuls run 13x slower than fp32).

Inside `Bf16Sim()`, every `torch.addmm` (the model's dense layers) rounds its operands and its result to
bf16 and accumulates in fp32, as AMX / tensor-core bf16 GEMMs do; its backward rounds the incoming gradient,
the input gradient and the weight and bias gradients to bf16 the same way (autocast's matmuls run in bf16 in
the backward pass too). Values stay in fp32 tensors holding bf16-representable numbers. Not simulated:
elementwise ops between the matmuls (tanh, the reparameterization) run in fp32 here and in bf16 under
autocast; their results are rounded to bf16 anyway when the next matmul reads them.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode


def round_bf16(t: torch.Tensor) -> torch.Tensor:
    """Round to the nearest bf16 value (ties to even), kept in t's dtype."""
    return t.to(torch.bfloat16).to(t.dtype)


class _Addmm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, bias: torch.Tensor, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        a16, w16 = round_bf16(a), round_bf16(w)
        ctx.save_for_backward(a16, w16)
        return round_bf16(torch.addmm(round_bf16(bias), a16, w16))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a16, w16 = ctx.saved_tensors
        g16 = round_bf16(grad)
        d_bias = round_bf16(g16.sum(0)) if ctx.needs_input_grad[0] else None
        d_a = round_bf16(g16 @ w16.t()) if ctx.needs_input_grad[1] else None
        d_w = round_bf16(a16.t() @ g16) if ctx.needs_input_grad[2] else None
        return d_bias, d_a, d_w


class Bf16Sim(TorchFunctionMode):
    """A context in which `torch.addmm(bias, a, w)` takes bf16-rounded operands and gives a bf16-rounded result."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.addmm and len(args) == 3 and not kwargs and args[1].dim() == 2 and args[1].dtype == torch.float32:
            return _Addmm.apply(*args)
        return func(*args, **kwargs)
