"""Weight-only float8 storage for inference: half the memory of bf16 weights, computed in the activations' dtype.

The full-size hybrid pipeline holds 8.8 GiB of bf16 weights, more than an 8 GB card, while its activations peak far
lower. Storing the large ``nn.Linear`` / ``nn.Conv2d`` weights as ``float8_e4m3fn`` with one scale per output channel
halves them; each call dequantizes its weight (one layer at a time) and runs the usual bf16 kernel, so the layer
computes ``x @ (q * s).T`` with ``|q * s - w| <= |w| / 16`` per weight (e4m3 keeps 3 mantissa bits). Inference only:
the swapped modules hold buffers, not parameters, and their state dicts are not the original ones.

diffusers' ``enable_layerwise_casting`` (``hooks.apply_layerwise_casting``) also stores weights in float8, but as a
plain cast without a scale, so small weights fall into e4m3's subnormal range: for Gaussian weights of std 0.005 the
plain cast has a relative L2 error of 11 %, the per-channel scale here 2.6 % (std 0.02: 3.3 % against 2.6 %).

With ``float8_matmul=True`` a linear layer also multiplies in float8: each call scales every row (token) of its
input by the row's largest magnitude, casts it to e4m3 and runs ``torch._scaled_mm`` with the weight's per-channel
scales on the float8 tensor cores, and no bf16 copy of the weight is made. This is the per-row scaling of torchao's
``Float8DynamicActivationFloat8WeightConfig`` (whose kernel selection failed on the DiT's shapes with torch 2.11),
done here so the layer keeps its CPU path and its float8 weights. It pays for float8 storage rather than beating
bf16: on one H100 a compiled full-size DiT call takes 7.7 ms against 8.8 ms dequantizing and 7.3 ms in bf16 at
320x512, and 31.5 ms against 33.4 ms in bf16 at 640x1024 (the per-row activation scaling costs what the faster
GEMMs save, and attention is half the time there).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


FLOAT8_DTYPE = torch.float8_e4m3fn
_FLOAT8_MAX = torch.finfo(FLOAT8_DTYPE).max  # 448


def quantize_per_output_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)`` with ``q`` float8 and ``scale`` float32 of shape ``[out, 1, ...]``: each output channel's largest
    magnitude maps to the float8 maximum, so no channel overflows and small channels keep their resolution."""
    w = weight.detach().float()
    amax = w.abs().flatten(1).amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny)
    scale = (amax / _FLOAT8_MAX).reshape(-1, *([1] * (w.ndim - 1)))
    return (w / scale).to(FLOAT8_DTYPE), scale


class _Float8Weight(nn.Module):
    def _store(self, module: nn.Module) -> None:
        q, scale = quantize_per_output_channel(module.weight)
        self.register_buffer("weight_float8", q)
        self.register_buffer("weight_scale", scale)
        self.bias = module.bias
        self.compute_dtype = module.weight.dtype

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return self.weight_float8.to(dtype) * self.weight_scale.to(dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight, for code that reads ``layer.weight`` (its dtype, say); made on every access."""
        return self.dequantized_weight(self.compute_dtype)

    def _apply(self, fn, recurse=True):
        # `.to(dtype)` of the model must not cast the float8 codes: keep them, follow the dtype for the compute.
        codes = self.weight_float8
        super()._apply(fn, recurse)
        if self.weight_float8.dtype != FLOAT8_DTYPE:
            probe = fn(torch.empty(0, dtype=self.compute_dtype, device=codes.device))
            self.compute_dtype = probe.dtype
            self.weight_float8 = codes.to(self.weight_float8.device)
        return self


def float8_linear(x: torch.Tensor, weight_float8: torch.Tensor, weight_scale: torch.Tensor,
                  bias: torch.Tensor | None = None, fast_accum: bool = True) -> torch.Tensor:
    """``x @ (weight_float8 * weight_scale).T + bias`` multiplied in float8: ``x`` is quantized per row (its last
    dimension) to e4m3 with a float32 scale, the product accumulates in float32 (on a GPU with ``fast_accum``, in
    the tensor cores' faster, less precise accumulator) and comes back in ``x.dtype``."""
    rows = x.reshape(-1, x.shape[-1])
    amax = rows.abs().amax(dim=1, keepdim=True).float()
    row_scale = (amax / _FLOAT8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    codes = (rows.float() / row_scale).clamp(-_FLOAT8_MAX, _FLOAT8_MAX).to(FLOAT8_DTYPE)
    if codes.is_cuda:
        # Fast accumulation: 6 % faster on an H100 for the same error (4.55 against 4.59 % on a full-size DiT call).
        out = torch._scaled_mm(codes, weight_float8.t(), scale_a=row_scale,
                               scale_b=weight_scale.float().reshape(1, -1), out_dtype=x.dtype,
                               use_fast_accum=fast_accum)
    else:  # the same products in float32: the CPU's _scaled_mm takes only per-tensor scales before torch 2.13
        weight = weight_float8.float() * weight_scale.float().reshape(-1, 1)
        out = ((codes.float() * row_scale) @ weight.T).to(x.dtype)
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], -1)


class Float8WeightLinear(_Float8Weight):
    """An ``nn.Linear`` whose weight is stored in float8 and, with ``float8_matmul``, multiplied in float8 for
    bfloat16 inputs (see the module docstring). The float8 kernels need both dimensions divisible by 16; other
    layers keep the dequantizing path."""

    def __init__(self, linear: nn.Linear, float8_matmul: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._store(linear)
        self.float8_matmul = float8_matmul and self.in_features % 16 == 0 and self.out_features % 16 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.float8_matmul and x.dtype == torch.bfloat16:
            return float8_linear(x, self.weight_float8, self.weight_scale, self.bias)
        return F.linear(x, self.dequantized_weight(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"float8_matmul={self.float8_matmul}")


class Float8WeightConv2d(_Float8Weight):
    """An ``nn.Conv2d`` (zero padding) whose weight is stored in float8 (see the module docstring)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("Float8WeightConv2d supports zero padding given as numbers only.")
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self._store(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dequantized_weight(x.dtype), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


def quantize_weights_float8(model: nn.Module, min_numel: int = 65536, skip: Iterable[str] = (),
                            float8_matmul: bool = False) -> int:
    """Replace, in place, every ``nn.Linear`` and zero-padded ``nn.Conv2d`` of ``model`` with at least ``min_numel``
    weights (small layers save nothing worth their error) by its float8 counterpart, except those whose qualified
    name contains one of ``skip``; ``float8_matmul`` makes the linear layers multiply in float8. Returns the number
    of bytes saved."""
    skip = tuple(skip)
    saved = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                swap = Float8WeightLinear
            elif type(child) is nn.Conv2d and child.padding_mode == "zeros" and not isinstance(child.padding, str):
                swap = Float8WeightConv2d
            else:
                continue
            qualified = f"{parent_name}.{name}" if parent_name else name
            if child.weight.numel() < min_numel or any(pattern in qualified for pattern in skip):
                continue
            replacement = swap(child, float8_matmul) if swap is Float8WeightLinear else swap(child)
            saved += child.weight.numel() * (child.weight.element_size() - 1) - replacement.weight_scale.numel() * 4
            setattr(parent, name, replacement)
    return saved
