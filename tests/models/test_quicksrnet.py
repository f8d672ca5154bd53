import io

import pytest
import torch
import torch.nn.functional as F

from diffusers_neodragon.models.quicksrnet import QuickSRNet
from tests.tiny_components import tiny_quicksrnet


def _trained_like(scale_factor=2, seed=0, **kwargs):
    """A tiny model whose last conv is no longer zero, as after training."""
    torch.manual_seed(seed)
    model = tiny_quicksrnet(scale_factor=scale_factor, **kwargs)
    with torch.no_grad():
        model.conv_out.weight.normal_(std=0.1)
        model.conv_out.bias.normal_(std=0.1)
    return model


@pytest.mark.parametrize("scale_factor", [2, 3, 4])
def test_shape_and_zero_init_is_exact_nearest_upsampling(scale_factor):
    torch.manual_seed(0)
    model = QuickSRNet(scale_factor=scale_factor).eval()
    x = torch.rand(2, 3, 5, 7) * 2 - 1
    out = model(x)
    assert out.shape == (2, 3, 5 * scale_factor, 7 * scale_factor)
    assert torch.equal(out, F.interpolate(x, scale_factor=scale_factor, mode="nearest"))


def test_parameter_counts():
    def count(**kw):
        return sum(p.numel() for p in QuickSRNet(**kw).parameters())

    assert count() == 22_860  # small, 2x
    assert count(scale_factor=4) == 33_264  # small, 4x
    assert count(num_intermediate_layers=5) == 50_604  # medium, 2x
    assert count(num_channels=64, num_intermediate_layers=11) == 414_924  # large, 2x


def test_video_matches_per_frame_and_chunking():
    model = _trained_like()
    video = torch.randn(2, 3, 5, 6, 4)
    with torch.no_grad():
        full = model.upscale_video(video)
        chunked = model.upscale_video(video, chunk_size=3)
        per_frame = torch.stack([model(video[:, :, f]) for f in range(5)], dim=2)
    assert full.shape == (2, 3, 5, 12, 8)
    torch.testing.assert_close(full, per_frame, atol=1e-6, rtol=0)
    torch.testing.assert_close(chunked, per_frame, atol=1e-6, rtol=0)


def test_clamp_output():
    model = _trained_like(clamp_output=(-1.0, 1.0))
    out = model(torch.randn(1, 3, 4, 4) * 3)
    assert out.min() >= -1 and out.max() <= 1


def test_save_load_round_trip(tmp_path):
    model = _trained_like(scale_factor=3, activation="hardtanh", clamp_output=(0.0, 1.0))
    model.save_pretrained(tmp_path)
    loaded = QuickSRNet.from_pretrained(tmp_path).eval()
    assert loaded.config.scale_factor == 3 and loaded.config.activation == "hardtanh"
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.rand(1, 3, 5, 5)
    assert torch.equal(model(x), loaded(x))


def test_bad_input_raises():
    model = QuickSRNet()
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        model(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        model(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, 3, F, H, W\]"):
        model.upscale_video(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="chunk_size"):
        model.upscale_video(torch.randn(1, 3, 2, 8, 8), chunk_size=0)
    for bad in ({"scale_factor": 5}, {"scale_factor": 2.0}, {"activation": "gelu"}, {"clamp_output": (1, -1)}):
        with pytest.raises(ValueError):
            QuickSRNet(**bad)


def test_exports_as_plain_ops():
    model = _trained_like()
    x = torch.rand(1, 3, 8, 8)
    program = torch.export.export(model, (x,))
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("conv2d" in op for op in ops) and any("pixel_shuffle" in op for op in ops)
    assert all(any(name in op for name in ("conv2d", "relu", "add", "pixel_shuffle")) for op in ops), ops
    torch.testing.assert_close(program.module()(x), model(x))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_onnx_export():
    onnx = pytest.importorskip("onnx")
    model = _trained_like()
    x = torch.rand(1, 3, 8, 8)
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17, input_names=["x"])
    graph = onnx.load_from_string(buffer.getvalue()).graph
    assert {node.op_type for node in graph.node} - {"Constant"} == {"Conv", "Relu", "Add", "DepthToSpace"}
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), model(x), atol=1e-5, rtol=1e-5)
