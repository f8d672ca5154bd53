import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffusers_neodragon.utils.float8_weights import (
    FLOAT8_DTYPE,
    Float8WeightConv2d,
    Float8WeightLinear,
    quantize_per_output_channel,
    quantize_weights_float8,
)


def test_per_channel_rounding_error_is_bounded_by_three_mantissa_bits():
    torch.manual_seed(0)
    w = torch.randn(16, 64) * torch.logspace(-3, 2, 16)[:, None]  # channels five decades apart
    w[3] = 0.0
    q, scale = quantize_per_output_channel(w)
    assert q.dtype == FLOAT8_DTYPE and scale.shape == (16, 1)
    assert torch.equal(q.float().abs().amax(dim=1)[[i for i in range(16) if i != 3]], torch.full((15,), 448.0))
    error = (q.float() * scale - w).abs()
    # Normal e4m3 numbers keep 3 mantissa bits (relative error <= 2^-4); below 2^-6 the spacing is 2^-9 (x scale).
    assert bool((error <= w.abs() / 16 + scale * 2**-10 + 1e-12).all())
    assert bool((q[3].float() == 0).all())


def test_linear_and_conv_compute_with_the_dequantized_weight():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    x = torch.randn(5, 64)
    fp8 = Float8WeightLinear(linear)
    w = fp8.weight_float8.float() * fp8.weight_scale
    torch.testing.assert_close(fp8(x), F.linear(x, w, linear.bias))
    torch.testing.assert_close(fp8.weight, w)
    reference = linear(x)
    assert ((fp8(x) - reference).norm() / reference.norm()).item() < 0.05

    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
    image = torch.randn(2, 8, 9, 9)
    fp8_conv = Float8WeightConv2d(conv)
    w = fp8_conv.weight_float8.float() * fp8_conv.weight_scale
    torch.testing.assert_close(fp8_conv(image), F.conv2d(image, w, conv.bias, 2, 1, 1, 2))
    with pytest.raises(ValueError, match="zero padding"):
        Float8WeightConv2d(nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"))


def test_quantize_weights_float8_swaps_large_layers_only_and_survives_dtype_moves():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 8),  # 131072 and 4096 weights
        nn.Conv2d(64, 128, 3, padding=1), nn.Conv2d(64, 128, 3, padding=1, padding_mode="reflect"),
        nn.Linear(512, 512, bias=False),
    )
    x = torch.randn(3, 256)
    saved = quantize_weights_float8(model, min_numel=65536, skip=["5"])
    assert isinstance(model[0], Float8WeightLinear) and isinstance(model[3], Float8WeightConv2d)
    assert type(model[2]) is nn.Linear and type(model[4]) is nn.Conv2d and type(model[5]) is nn.Linear
    assert saved == 3 * (256 * 512 + 64 * 128 * 9) - 4 * (512 + 128)  # fp32 -> 1 byte, minus fp32 scales
    out = model[:3](x)
    model.to(torch.bfloat16)
    assert model[0].weight_float8.dtype == FLOAT8_DTYPE and model[0].weight.dtype == torch.bfloat16
    assert model[0].bias.dtype == torch.bfloat16
    torch.testing.assert_close(model[:3](x.bfloat16()).float(), out, atol=0.05, rtol=0.05)
