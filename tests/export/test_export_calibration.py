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


def _linear_graph(path, rng):
    """y = x @ W + b: one activation range (y) the quantiser calibrates."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "weight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "weight"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return numpy_helper.to_array(weight)


def _scale(model, tensor):
    from onnx import numpy_helper

    return float(numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == f"{tensor}_scale")))


def test_range_margin_stretches_each_calibrated_activation_range_about_zero(tmp_path):
    """The uint16 scale of an activation is its calibrated range (zero included) over 65535, times the margin;
    the range is computed here with numpy, independently of ONNX Runtime's calibrator."""
    import onnx

    from diffusers_neodragon.export.quantize import quantize_w8a16

    rng = np.random.default_rng(0)
    weight = _linear_graph(tmp_path / "linear.onnx", rng)
    feeds = [{"x": rng.standard_normal((4, 8)).astype(np.float32)} for _ in range(3)]
    outputs = np.stack([feed["x"] @ weight for feed in feeds])
    span = max(outputs.max(), 0.0) - min(outputs.min(), 0.0)
    for margin in (1.0, 3.0):
        path = quantize_w8a16(tmp_path / "linear.onnx", feeds, tmp_path / f"linear_{margin}.onnx", range_margin=margin)
        assert _scale(onnx.load(str(path)), "y") == pytest.approx(margin * span / 65535, rel=1e-4)
    with pytest.raises(ValueError, match="range_margin must be >= 1"):
        quantize_w8a16(tmp_path / "linear.onnx", feeds, tmp_path / "bad.onnx", range_margin=0.5)


def test_linear_weights_are_quantised_per_output_channel_by_default(tmp_path):
    """A Gemm (a Linear on a 2-D input: the timestep and adaLN paths) gets one uint8 scale per output channel; QNN
    has no per-channel MatMul, so those stay per tensor."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from diffusers_neodragon.export.quantize import quantize_w8a16

    rng = np.random.default_rng(1)
    weight = rng.standard_normal((6, 8)).astype(np.float32) * np.arange(1, 7, dtype=np.float32)[:, None]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "weight"], ["y"], transB=1)], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 6])], [numpy_helper.from_array(weight, "weight")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "gemm.onnx"))
    feeds = [{"x": rng.standard_normal((4, 8)).astype(np.float32)}]
    model = onnx.load(str(quantize_w8a16(tmp_path / "gemm.onnx", feeds)))
    scales = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "weight_scale"))
    assert scales.shape == (6,)
    # each output channel (row) symmetric about zero by its own largest |w|: 255 uint8 steps around zero point 128
    np.testing.assert_allclose(scales, np.abs(weight).max(1) / 127.5, rtol=1e-4)


def test_default_calibration_prompts_follow_the_pipelines_world():
    from types import SimpleNamespace

    from diffusers_neodragon.data.shapes import fixed_prompt_set
    from diffusers_neodragon.export.quantize import (
        DEFAULT_CALIBRATION_PROMPTS,
        DEFAULT_HELDOUT_PROMPTS,
        default_calibration_prompts,
    )

    shapes = SimpleNamespace(init_kwargs={"prompt_normalizer": "shapes"})
    assert default_calibration_prompts(shapes) == fixed_prompt_set("seen", 4)
    assert default_calibration_prompts(shapes, "heldout", 2) == fixed_prompt_set("heldout", 2)
    assert default_calibration_prompts(SimpleNamespace(init_kwargs={})) == list(DEFAULT_CALIBRATION_PROMPTS)
    assert default_calibration_prompts(None, "heldout") == list(DEFAULT_HELDOUT_PROMPTS)
    assert not set(DEFAULT_CALIBRATION_PROMPTS) & set(DEFAULT_HELDOUT_PROMPTS)
    with pytest.raises(ValueError, match="split"):
        default_calibration_prompts(shapes, "train")


def test_the_recorder_keeps_a_uniform_sample_of_bounded_size():
    """Each of 20 feeds lands in a 4-feed sample with probability 4/20: counted over 2000 recordings."""
    from diffusers_neodragon.export.quantize import SampledRecorder

    counts = np.zeros(20)
    for seed in range(2000):
        recorder = SampledRecorder(4, seed=seed)
        for i in range(20):
            recorder.setdefault("graph", []).append(i)
        assert len(recorder["graph"]) == 4 and len(set(recorder["graph"])) == 4
        counts[recorder["graph"]] += 1
    np.testing.assert_allclose(counts / 2000, 0.2, atol=0.04)  # binomial std 0.009
    few = SampledRecorder(4)
    for i in range(3):
        few.setdefault("graph", []).append(i)
    assert few["graph"] == [0, 1, 2]

    # A graph's sample does not depend on the other graphs recorded beside it (`--components` subsets).
    alone, beside = SampledRecorder(4), SampledRecorder(4)
    for i in range(50):
        beside.setdefault("other", []).append(i)
        for recorder in (alone, beside):
            recorder.setdefault("graph", []).append(i)
    assert alone["graph"] == beside["graph"]


def test_the_margin_reaches_every_activation_scale_converted_ones_included(tmp_path):
    """Attention's P·V output is int16 (the HTP reads activation x activation MatMuls so) and read as uint16 by the
    Transpose after it: quantised twice, both scales must double with a margin of 2, and no weight scale moves."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from diffusers_neodragon.export.quantize import quantize_w8a16

    rng = np.random.default_rng(2)
    weight = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "weight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["q", "weight"], ["q_proj"]),
         helper.make_node("Transpose", ["k"], ["k_t"], perm=[0, 2, 1]),
         helper.make_node("MatMul", ["q_proj", "k_t"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["p"], axis=-1),
         helper.make_node("MatMul", ["p", "v"], ["o"]),
         helper.make_node("Transpose", ["o"], ["out"], perm=[1, 0, 2])],
        "attention", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 4, 8]) for n in ("q", "k", "v")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 2, 8])], [weight])
    path = tmp_path / "attention.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    feeds = [{n: rng.standard_normal((2, 4, 8)).astype(np.float32) for n in ("q", "k", "v")} for _ in range(4)]

    def scales(margin):
        model = onnx.load(str(quantize_w8a16(path, feeds, tmp_path / f"m{margin}.onnx", range_margin=margin)))
        values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        return {node.name: values[node.input[1]] for node in model.graph.node
                if node.op_type == "QuantizeLinear" and node.input[0] != "weight"}, values["weight_scale"]

    (plain, plain_weight), (wide, wide_weight) = scales(1.0), scales(2.0)
    assert len(plain) >= 7 and plain.keys() == wide.keys()
    converted = [name for name in plain if "convert" in name.lower()]
    assert converted, sorted(plain)  # the uint16 re-quantisation of the int16 P·V output exists and is checked
    for name in plain:
        if "p_QuantizeLinear" in name or name.startswith("p_"):  # Softmax output: QNN fixes its scale
            continue
        np.testing.assert_allclose(wide[name], 2 * plain[name], rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(wide_weight, plain_weight)


def test_heldout_states_are_more_for_the_transformer_stages(tiny_export):
    """The check's held-out states: up to 16 per transformer stage (the worst of 4 understated their error), 4 for
    the other graphs, drawn from the held-out prompts and both held-out seeds."""
    from diffusers_neodragon.export.quantize import (
        DEFAULT_HELDOUT_STATES,
        HELDOUT_STATES,
        collect_calibration_data,
        collect_heldout_states,
    )

    folder, _ = tiny_export
    states = collect_heldout_states(folder, modes=("monolithic",))
    everything = collect_calibration_data(folder, split="heldout", seeds=(1, 2), max_per_component=10_000,
                                          modes=("monolithic",))
    stage, decoder = states["transformer_stage_0"], states["decoder_step"]
    assert len(stage) == min(HELDOUT_STATES["transformer_stage"], len(everything["transformer_stage_0"])) > 4
    assert len(decoder) == min(DEFAULT_HELDOUT_STATES, len(everything["decoder_step"]))
    for state in decoder:  # real held-out states, each one a call of the held-out generations
        assert any(all(np.array_equal(f[k], state[k]) for k in state) for f in everything["decoder_step"])
