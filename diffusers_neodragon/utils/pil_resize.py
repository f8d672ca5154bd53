"""Pillow's 8-bit Lanczos resize, bit for bit, on tensors of any device.

The hybrid pipeline makes its first frame at twice the video's resolution with an image pipeline and resizes it to
the video's size, as the reference code does: through a uint8 PIL image and ``Image.resize(..., LANCZOS)``. On a GPU
that is a copy to the host, a CPU resize and a copy back, with the GPU idle meanwhile. :func:`pil_lanczos_resize`
computes the very integers Pillow computes, so the first frame stays on the device and the video does not change:
Pillow's filter taps in float64 in the same order, its 22-bit fixed-point weights, its rounding offset, shift and
clipping, the horizontal pass first. Every product of a pixel and a weight and every sum of them is an integer below
2^53, so float64 matrix multiplies give them exactly, on any device and in any order.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images: two bits of headroom for negative lobes
_LANCZOS_SUPPORT = 3.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -_LANCZOS_SUPPORT <= x < _LANCZOS_SUPPORT else 0.0


@lru_cache(maxsize=32)
def _fixed_point_weights(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    """``[out_size, in_size]`` float64 matrix of Pillow's integer weights for one axis (zero outside each tap
    window), computed with Python floats in the order of Pillow's ``precompute_coeffs`` and
    ``normalize_coeffs_8bpc``."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = _LANCZOS_SUPPORT * filterscale
    inverse = 1.0 / filterscale
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        taps = [_lanczos((x - center + 0.5) * inverse) for x in range(xmin, xmax)]
        total = 0.0
        for tap in taps:  # left to right as Pillow adds (Python 3.12's sum() compensates, which can differ)
            total += tap
        if total != 0.0:
            taps = [tap / total for tap in taps]
        one = float(1 << _PRECISION_BITS)
        weights[xx, xmin:xmax] = torch.tensor(
            [float(int(-0.5 + tap * one)) if tap < 0 else float(int(0.5 + tap * one)) for tap in taps],
            dtype=torch.float64)
    return weights.to(device)


def _round_and_clip(sums: torch.Tensor) -> torch.Tensor:
    """Pillow's ``clip8``: add half a unit, shift right by the precision bits (a floor), clip to 0..255."""
    return torch.floor((sums + float(1 << (_PRECISION_BITS - 1))) / float(1 << _PRECISION_BITS)).clamp_(0, 255)


def pil_lanczos_resize(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize ``pixels`` ``[..., H, W]``, whose values are the integers 0..255 (any float dtype), to
    ``[..., height, width]`` exactly as Pillow resizes an 8-bit image with ``Image.LANCZOS`` (no ``box``, no
    ``reducing_gap``). Returns float64 integers 0..255; an unchanged axis is not resampled, as in Pillow."""
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    out = pixels.to(torch.float64)
    if width != out.shape[-1]:
        columns = _fixed_point_weights(out.shape[-1], width, out.device)
        out = _round_and_clip(out @ columns.T)
    if height != out.shape[-2]:
        rows = _fixed_point_weights(out.shape[-2], height, out.device)
        out = _round_and_clip(rows @ out)
    return out
