"""w8a16 calibration covers every graph it quantises, the VAE encoder of a monolithic export included."""

import numpy as np
import pytest


pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_monolithic_calibration_feeds_the_vae_encoder_with_decoded_frames(tiny_export):
    """A monolithic generation never encodes an image: the encoder is calibrated on the frames the decoder_step
    graph makes (first and last frame of each video), in the pipeline's pixel range."""
    from diffusers_neodragon.export.quantize import collect_calibration_data

    folder, manifest = tiny_export
    calibration = collect_calibration_data(folder, prompts=["a red circle"], modes=("monolithic",))
    feeds = calibration["vae_encoder"]
    assert len(feeds) == 2
    shape = manifest["components"]["vae_encoder"]["inputs"]["sample"]["shape"]
    for feed in feeds:
        assert list(feed["sample"].shape) == shape
        assert -1.0 <= feed["sample"].min() < feed["sample"].max() <= 1.0
    assert {"text_encoder", "transformer_stage_0", "decoder_step", "super_resolution"} <= set(calibration)


def test_quantize_export_refuses_a_graph_without_calibration_data(tiny_export):
    from diffusers_neodragon.export.quantize import quantize_export

    with pytest.raises(ValueError, match=r"no calibration data for \['vae_encoder'\]"):
        quantize_export(tiny_export[0], components=["vae_encoder", "text_encoder"], calibration={})


def test_activation_matmuls_take_a_signed_int16_second_input(tmp_path):
    """Q·Kᵀ-like MatMuls (both inputs activations) get a signed int16, zero-offset second input, which the HTP
    computes at full precision; a MatMul with a weight keeps uint8 weights and uint16 activations."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from diffusers_neodragon.export.quantize import activation_matmul_second_inputs, quantize_w8a16

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "weight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["q", "weight"], ["q_proj"]),
         helper.make_node("Transpose", ["k"], ["k_t"], perm=[0, 2, 1]),
         helper.make_node("MatMul", ["q_proj", "k_t"], ["logits"])],
        "attention", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 4, 8]) for n in ("q", "k")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 4, 4])], [weight])
    path = tmp_path / "attention.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert activation_matmul_second_inputs(path) == ["k_t"]
    feeds = [{n: rng.standard_normal((2, 4, 8)).astype(np.float32) for n in ("q", "k")} for _ in range(4)]
    quantised = onnx.load(str(quantize_w8a16(path, feeds)))
    zero_points = {i.name: i for i in quantised.graph.initializer if "zero_point" in i.name}
    types = {name: zero_points[name].data_type for name in zero_points}
    k_t = [t for name, t in types.items() if name.startswith("k_t")]
    assert k_t == [TensorProto.INT16] and not numpy_helper.to_array(zero_points[next(
        n for n in zero_points if n.startswith("k_t"))]).any()
    assert types[next(n for n in types if n.startswith("weight"))] == TensorProto.UINT8
    assert types[next(n for n in types if n.startswith("q_proj"))] in (TensorProto.UINT16, TensorProto.INT16)
