import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffusers_neodragon.utils.float8_weights import (
    FLOAT8_DTYPE,
    Float8WeightConv2d,
    Float8WeightLinear,
    float8_linear,
    quantize_per_output_channel,
    quantize_weights_float8,
)


_FLOAT8_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not _FLOAT8_GPU, reason="needs float8 tensor cores"))]


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


@pytest.mark.parametrize("device", DEVICES)
def test_float8_linear_matches_float64_for_inputs_on_the_float8_grid(device):
    """Independent of the kernel: when every row's largest magnitude is 448 x a power of two and every entry is a
    float8 number times that power, the per-row quantization loses nothing, so the float8 product must equal the
    float64 product of the same numbers up to the float32 accumulation and the bf16 rounding of the output (the GPU's
    fast accumulation keeps fewer bits). The products are exact, but their exponents span more than float32's 24
    bits: on the CPU the sum is bounded by the usual n * 2^-24 * sum|terms|. Hopper's float8 tensor cores keep about
    14 bits in their accumulator (DeepSeek-V3 report, 3.3.2): on an H100 one of 672 outputs, a sum that cancels to
    -5.09 from terms whose magnitudes add up to 2.2e4, was 0.22 off (2^-16.6 of that sum)."""
    torch.manual_seed(0)
    grid = torch.randn(7, 3, 64).clamp(-2, 2).mul(200).to(FLOAT8_DTYPE).double()  # e4m3 values in [-400, 400]
    grid[..., 0] = 448.0
    row_powers = 2.0 ** torch.randint(-6, 6, (7, 3, 1)).double()
    x = (grid * row_powers).to(torch.bfloat16)
    assert torch.equal(x.double(), grid * row_powers)  # e4m3 numbers fit in bf16
    w_codes = torch.randn(32, 64).mul(100).clamp(-448, 448).to(FLOAT8_DTYPE)
    w_scale = (2.0 ** torch.randint(-12, -4, (32, 1))).float()
    out = float8_linear(x.to(device), w_codes.to(device), w_scale.to(device), fast_accum=False).cpu()
    assert out.shape == (7, 3, 32) and out.dtype == torch.bfloat16
    weight = w_codes.double() * w_scale.double()
    exact = x.double() @ weight.T
    accumulation = (2**-14 if device == "cuda" else 64 * 2**-24) * (x.double().abs() @ weight.abs().T)
    error = (out.double() - exact).abs()
    assert bool((error <= 2**-7 * exact.abs() + accumulation).all()), (error - 2**-7 * exact.abs() - accumulation).max()


@pytest.mark.parametrize("device", DEVICES)
def test_float8_linear_handles_zero_and_huge_rows_and_stays_close_on_gaussian_inputs(device):
    torch.manual_seed(0)
    linear = nn.Linear(128, 64).bfloat16()
    q, scale = quantize_per_output_channel(linear.weight)
    x = torch.randn(4, 10, 128).bfloat16()
    x[0, 0] = 0.0
    x[1, 1] *= 1e4  # beyond e4m3's range before scaling
    out = float8_linear(x.to(device), q.to(device), scale.to(device), linear.bias.to(device)).cpu()
    assert bool(out.isfinite().all())
    torch.testing.assert_close(out[0, 0], linear.bias)
    reference = linear(x).float()
    assert ((out.float() - reference).norm() / reference.norm()).item() < 0.06


def test_float8_matmul_layers_multiply_in_float8_for_bfloat16_only():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32).bfloat16()
    layer = Float8WeightLinear(linear, float8_matmul=True)
    assert layer.float8_matmul and "float8_matmul=True" in repr(layer)
    x = torch.randn(6, 64).bfloat16()
    torch.testing.assert_close(layer(x), float8_linear(x, layer.weight_float8, layer.weight_scale, layer.bias))
    assert not torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    layer.float()  # float32 activations: the dequantized path
    torch.testing.assert_close(layer(x.float()), F.linear(x.float(), layer.weight, layer.bias))
    # float8 kernels need both dimensions divisible by 16: such layers keep the dequantized path
    assert not Float8WeightLinear(nn.Linear(64, 24), float8_matmul=True).float8_matmul
    model = nn.Sequential(nn.Linear(256, 512), nn.Linear(512, 200))
    quantize_weights_float8(model, min_numel=0, float8_matmul=True)
    assert model[0].float8_matmul and not model[1].float8_matmul
