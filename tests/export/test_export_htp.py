"""The QNN HTP check (onnxruntime-qnn's x86 simulator, CPU fallback disabled) on the tiny export."""

import numpy as np
import pytest


pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip(
    "onnxruntime_qnn", reason="onnxruntime-qnn (the QNN HTP backend and its x86 simulator) is not installed; the dev "
    "extra installs it on Linux x86_64, where its HTP simulator is verified")

CHECKED = ["text_encoder", "pooled_text", "transformer_stage_2", "decoder_step"]


def _cpu_outputs(path, feeds):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.fixture(scope="module")
def calibration(tiny_export):
    """Real inputs of every graph in one ONNX-pipeline generation (also the w8a16 calibration data)."""
    from diffusers_neodragon.export.quantize import collect_calibration_data

    return collect_calibration_data(tiny_export[0], prompts=["a red circle moving left"], modes=("monolithic",))


def test_text_transformer_stage_and_decoder_step_run_fully_on_htp_in_fp16(tiny_export, calibration):
    from diffusers_neodragon.export.htp_check import check_export, format_report

    folder, manifest = tiny_export
    feeds = {name: calibration[name][-1] for name in CHECKED}
    references = {name: _cpu_outputs(folder / manifest["components"][name]["file"], feeds[name]) for name in CHECKED}
    reports = check_export(folder, "fp16", CHECKED, feeds, references)
    print(format_report(reports))
    assert [r.component for r in reports] == CHECKED
    for report in reports:
        assert report.on_htp, (report.component, report.error)
        assert report.context_binary_bytes > 0 and report.memory["weights_mib"] > 0
        # fp16 on random tiny weights: well under 2% of the output's range
        assert report.rel_error < 2e-2, (report.component, report.max_abs_error, report.rel_error)


def test_a_cpu_only_node_fails_loudly(tmp_path):
    """The check is exact: one node the HTP cannot take (NonZero) makes session creation fail."""
    import onnx
    from onnx import TensorProto, helper

    from diffusers_neodragon.export.htp_check import check_graph

    graph = helper.make_graph(
        [helper.make_node("NonZero", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [1, None])],
    )
    path = tmp_path / "nonzero.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    report = check_graph(path, {"x": np.array([0, 1, 0, 2], np.float32)}, precision="fp16")
    assert not report.on_htp and "CPU" in report.error


def test_w8a16_transformer_and_decoder_on_htp(tiny_export, calibration):
    """onnxruntime static quantisation (QDQ, uint8 weights / uint16 activations) calibrated with the ONNX pipeline."""
    from diffusers_neodragon.export.htp_check import check_graph
    from diffusers_neodragon.export.quantize import quantize_export

    folder, manifest = tiny_export
    names = ["transformer_stage_0", "decoder_step"]
    written = quantize_export(folder, components=names, calibration=calibration)
    assert sorted(written) == sorted(names)
    for name in names:
        feeds = calibration[name][-1]
        reference = _cpu_outputs(folder / manifest["components"][name]["file"], feeds)
        report = check_graph(written[name], feeds, reference, "w8a16", name)
        assert report.on_htp, (name, report.error)
        assert "QuantizeLinear" in report.op_types
        assert report.rel_error < 5e-2, (name, report.max_abs_error, report.rel_error)


def test_memory_estimate_counts_weights_at_the_target_precision(tiny_export):
    from diffusers_neodragon.export.htp_check import graph_memory

    folder, manifest = tiny_export
    entry = manifest["components"]["transformer_stage_2"]
    fp16 = graph_memory(folder / entry["file"], "fp16")
    assert fp16["weights_mib"] == pytest.approx(entry["parameters"] * 2 / 2**20, rel=0.05)
    assert fp16["peak_activations_mib"] > 0 and fp16["budget_fraction"] < 0.01


def test_the_report_gives_the_worst_of_several_states(tmp_path):
    """A w8a16 graph calibrated on small inputs clips a large one: over both states the report is the clipped
    state's error, the same figure as checking that state alone."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from diffusers_neodragon.export.htp_check import check_graph
    from diffusers_neodragon.export.quantize import quantize_w8a16

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "weight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "weight"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])], [weight])
    path = tmp_path / "linear.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    calibration = [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(4)]
    quantised = quantize_w8a16(path, calibration, range_margin=1.0)
    inside, outside = calibration[0], {"x": 8 * calibration[1]["x"]}
    references = [_cpu_outputs(path, state) for state in (inside, outside)]
    both = check_graph(quantised, [inside, outside], references, "w8a16", work_dir=tmp_path / "a")
    alone = [check_graph(quantised, state, reference, "w8a16", work_dir=tmp_path / "b")
             for state, reference in zip((inside, outside), references)]
    assert both.on_htp and both.num_states == 2
    assert alone[1].rel_error > 10 * alone[0].rel_error  # clipped at 8x the calibrated range
    assert both.rel_error == pytest.approx(alone[1].rel_error, rel=1e-6)


def test_transformer_stages_compile_into_one_context_binary_with_shared_weights(tiny_export):
    """The stages' weights are stored once: one binary for the three stages, about the size of one stage's alone
    (the context shares equal weights by content, not by name)."""
    import onnx

    from diffusers_neodragon.export.htp_check import check_export, format_report

    folder, manifest = tiny_export
    stages = [folder / entry["file"] for entry in manifest["components"].values()
              if entry["kind"] == "transformer_stage"]
    assert len(stages) == 3
    *separate, report = check_export(folder, "fp16", components=["transformer_stage"], run=False)
    assert [r.component for r in separate] == [p.stem for p in stages] and report.component == "transformer_stages"
    assert report.on_htp, report.error
    assert "transformer_stages" in format_report([*separate, report])
    binaries = sorted((folder / "htp").glob("*shared_ctx*.bin"))
    assert [b.name for b in binaries] == ["transformer_stage_0_fp16_shared_ctx_qnn.bin"]
    for path in stages:  # each graph's context model points into the one binary
        ctx = onnx.load(folder / "htp" / f"{path.stem}_fp16_shared_ctx.onnx")
        (node,) = [n for n in ctx.graph.node if n.op_type == "EPContext"]
        assert {a.name: a.s for a in node.attribute}["ep_cache_context"] == binaries[0].name.encode()
    largest = max(r.context_binary_bytes for r in separate)
    assert report.context_binary_bytes == binaries[0].stat().st_size
    # weights once: far below the three binaries together, near the largest alone
    assert 0.5 * largest < report.context_binary_bytes < 0.6 * sum(r.context_binary_bytes for r in separate)


def test_a_report_without_memory_figures_prints_no_budget_lines():
    from diffusers_neodragon.export.htp_check import HTPReport, format_report

    shared = HTPReport(component="transformer_stages", precision="fp16", on_htp=True, num_nodes=3)
    assert "budget" not in format_report([shared])
    measured = HTPReport(component="decoder_step", precision="fp16", on_htp=True,
                         memory={"weights_mib": 2.0, "peak_activations_mib": 1.0})
    assert "3.0 MiB" in format_report([shared, measured])
