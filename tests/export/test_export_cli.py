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


def test_full_causal_decoder_is_skipped_and_the_rest_exports_at_w8a16(tmp_path, capsys):
    """One command exports everything exportable: the decoder is skipped loudly and recorded in the manifest, and
    the VAE encoder of this monolithic model is calibrated (on frames the torch VAE decodes) and quantised."""
    model = _causal_vae_model(tmp_path / "model")
    out = tmp_path / "onnx"
    code = main(["export", str(model), "--output", str(out), "--backend", "torch", "--precision", "w8a16"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "neodragon: warning: skipping decoder_step: the VAE (CausalVideoVAE)" in captured.err
    assert "not exported" in captured.out and "decoder_step" in captured.out.splitlines()[-2]
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["skipped"]) == ["decoder_step"]
    assert "training/distill_decoder.py" in manifest["skipped"]["decoder_step"]
    assert "decoder_step" not in manifest["components"]
    assert manifest["components"]["vae_encoder"]["w8a16_file"] == "vae_encoder.w8a16.onnx"
    assert (out / "vae_encoder.w8a16.onnx").exists()
    assert [manifest["components"][f"transformer_stage_{s}"]["w8a16_file"] for s in range(3)] == [
        f"transformer_stage_{s}.w8a16.onnx" for s in range(3)]


def test_naming_the_full_causal_decoder_fails_fast_and_leaves_no_folder(tmp_path, capsys):
    model = _causal_vae_model(tmp_path / "model")
    out = tmp_path / "new" / "onnx"
    assert main(["export", str(model), "--output", str(out), "--components", "decoder_step"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]  # not progress bars
    assert len(err) == 1 and err[0].startswith(
        "neodragon: error: cannot export decoder_step: the VAE (CausalVideoVAE) has a CausalVideoDecoder"), err
    assert "training/distill_decoder.py" in err[0] and "--components" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    assert main(["export", str(model), "--output", str(out), "--components", "decoder", "text_encoder"]) == 2
    err = capsys.readouterr().err
    assert "unknown components ['decoder']; valid names for this pipeline: ['text_encoder', 'pooled_text'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_embedded_model_names_the_full_decoder_and_exports_the_others(tmp_path, capsys):
    """The embedded model's VAE has the full causal decoder: naming it fails before any work and writes nothing;
    the graphs that can be exported are exported when named."""
    from diffusers_neodragon.pretrained import shapes_model_path

    out = tmp_path / "onnx"
    assert main(["export", shapes_model_path(), "--output", str(out), "--backend", "torch",
                 "--components", "decoder_step", "text_encoder"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]  # not progress bars
    assert len(err) == 1 and err[0].startswith(
        "neodragon: error: cannot export decoder_step: the VAE (CausalVideoVAE) has a CausalVideoDecoder"), err
    assert "distill_decoder.py" in err[0] and err[0].endswith("components=): text_encoder")
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
