"""``neodragon export`` (the ``neodragon`` console script's subcommand, and ``export_main``) on saved pipelines."""

import json

import pytest

from diffusers_neodragon_cli import build_parser, main
from diffusers_neodragon_cli.export_arguments import build_export_parser, export_main


pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_export_with_htp_check_writes_graphs_manifest_and_report(tmp_path, capsys):
    pytest.importorskip("onnxruntime_qnn", reason="--check-htp needs onnxruntime-qnn (dev extra, Linux x86_64)")
    from tests.tiny_components import pipeline

    model = tmp_path / "model"
    pipeline(with_first_frame=False).save_pretrained(model)
    out = tmp_path / "onnx"
    code = main(["export", str(model), "--output", str(out), "--height", "64", "--width", "64", "--frames", "9",
                 "--components", "text_encoder", "decoder_step", "--check-htp", "--backend", "torch"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "[1/2] exporting text_encoder" in printed and "of the paper's 3.5 GB budget" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["components"]) == ["text_encoder", "decoder_step"]
    assert manifest["precision"] == "fp16" and manifest["size"]["num_frames"] == 9
    report = json.loads((out / "htp_report_fp16.json").read_text())
    assert [r["on_htp"] for r in report["reports"]] == [True, True]


def test_bad_sizes_and_arguments_are_rejected(tmp_path, capsys):
    from tests.tiny_components import pipeline

    model = tmp_path / "model"
    pipeline(with_first_frame=False, with_super_resolution=False).save_pretrained(model)
    assert export_main([str(model), "--output", str(tmp_path / "o"), "--height", "96"]) == 2
    assert "multiples of 64" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_export_parser().parse_args([str(model), "--output", "x", "--precision", "int4"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", str(model)])  # --output is required


def test_neodragon_export_subcommand_parses_the_documented_arguments():
    args = build_parser().parse_args(["export", "model", "--output", "out", "--precision", "w8a16", "--check-htp",
                                      "--aihub-device", "Snapdragon 8 Elite QRD"])
    assert (args.command, args.pipeline, args.output, args.precision, args.check_htp, args.aihub_device) == (
        "export", "model", "out", "w8a16", True, "Snapdragon 8 Elite QRD")
    assert build_parser().parse_args(["export", "model", "--output", "out"]).precision == "fp16"


def _causal_vae_model(folder):
    """A tiny monolithic pipeline whose VAE has the full causal decoder (CausalVideoVAE), as the embedded model."""
    from diffusers_neodragon import NeodragonPipeline
    from tests.tiny_components import components, tiny_causal_vae

    parts = {**components(with_first_frame=False, with_super_resolution=False), "vae": tiny_causal_vae(init=None)}
    NeodragonPipeline(**parts, mode="monolithic", default_height=64, default_width=64,
                      default_num_frames=9).save_pretrained(folder)
    return folder


def test_full_causal_decoder_exports_and_every_graph_quantises_at_w8a16(tmp_path, capsys):
    """One command exports everything, the full causal decoder as its first-step and step graphs, and calibrates
    and quantises them and the VAE encoder of this monolithic model (on frames those graphs decode)."""
    model = _causal_vae_model(tmp_path / "model")
    out = tmp_path / "onnx"
    code = main(["export", str(model), "--output", str(out), "--backend", "torch", "--precision", "w8a16"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "skipping" not in captured.err and "not exported" not in captured.out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"] == {}
    for name in ("decoder_first_step", "decoder_step", "vae_encoder"):
        assert manifest["components"][name]["w8a16_file"] == f"{name}.w8a16.onnx"
        assert (out / f"{name}.w8a16.onnx").exists()
    assert [manifest["components"][f"transformer_stage_{s}"]["w8a16_file"] for s in range(3)] == [
        f"transformer_stage_{s}.w8a16.onnx" for s in range(3)]


def test_an_unknown_component_fails_fast_and_leaves_no_folder(tmp_path, capsys):
    model = _causal_vae_model(tmp_path / "model")
    out = tmp_path / "new" / "onnx"
    assert main(["export", str(model), "--output", str(out), "--components", "decoder", "text_encoder"]) == 2
    err = capsys.readouterr().err
    assert "unknown components ['decoder']; valid names for this pipeline: ['text_encoder', 'pooled_text'" in err
    assert "'decoder_first_step'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_w8a16_of_a_subset_fails_fast_naming_the_graphs_calibration_needs(tmp_path, capsys):
    model = _causal_vae_model(tmp_path / "model")
    out = tmp_path / "onnx"
    assert main(["export", str(model), "--output", str(out), "--components", "decoder_step",
                 "--precision", "w8a16"]) == 2
    err = capsys.readouterr().err
    assert "calibrates by running the exported pipeline, which also needs text_encoder" in err
    assert "transformer_stage_0" in err and "decoder_first_step" not in err.split("needs")[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_embedded_model_exports_only_the_named_graphs(tmp_path, capsys):
    """The embedded model (full causal decoder): an unknown name fails before any work and writes nothing; a named
    graph is exported alone."""
    from diffusers_neodragon.pretrained import shapes_model_path

    out = tmp_path / "onnx"
    assert main(["export", shapes_model_path(), "--output", str(out), "--backend", "torch",
                 "--components", "decoder", "text_encoder"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]  # not progress bars
    assert len(err) == 1 and err[0].startswith("neodragon: error: unknown components ['decoder']"), err
    assert list(tmp_path.iterdir()) == []

    code = main(["export", shapes_model_path(), "--output", str(out), "--backend", "torch", "--frames", "9",
                 "--components", "text_encoder"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["components"]) == ["text_encoder"] and manifest["skipped"] == {}
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]


def test_output_that_is_a_file_is_rejected_before_loading(tmp_path, capsys):
    target = tmp_path / "out.onnx"
    target.write_text("")
    assert export_main([str(tmp_path / "no_model"), "--output", str(target)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
