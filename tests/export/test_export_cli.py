"""``neodragon export`` (the ``neodragon`` console script's subcommand, and ``export_main``) on saved pipelines."""

import json

import pytest

from diffusers_neodragon.cli import build_parser, main
from diffusers_neodragon.export.cli import build_export_parser, export_main


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
