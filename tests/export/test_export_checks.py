"""The exporter checks the requested graphs before building anything and never leaves a partial output folder."""

import json

import pytest
from torch import nn

from diffusers_neodragon import NeodragonPipeline
from diffusers_neodragon.export import exporter
from diffusers_neodragon.export import wrappers as W
from diffusers_neodragon.export.specs import ExportSize, pipeline_specs, select_components, skipped_components
from tests.tiny_components import components, tiny_causal_vae


SIZE = ExportSize(64, 64, 9)


@pytest.fixture(scope="module")
def causal_vae_pipe():
    """The tiny pipeline with the full causal decoder (CausalVideoVAE), as the embedded model has."""
    vae = tiny_causal_vae(seed=0, init=None)
    return NeodragonPipeline(**{**components(with_first_frame=False, with_super_resolution=False), "vae": vae})


class UnsupportedDecoder(nn.Module):
    """A decoder that neither the tiny-decoder nor the causal-decoder step wrapper knows."""


@pytest.fixture(scope="module")
def odd_decoder_pipe():
    vae = tiny_causal_vae(seed=0, init=None)
    vae.decoder = UnsupportedDecoder()
    return NeodragonPipeline(**{**components(with_first_frame=False, with_super_resolution=False), "vae": vae})


def test_an_unexportable_component_is_skipped_by_default_and_refused_when_named(odd_decoder_pipe):
    others = ["text_encoder", "pooled_text", "transformer_stage_0", "transformer_stage_1", "transformer_stage_2",
              "vae_encoder"]
    assert [name for name, _ in select_components(odd_decoder_pipe)] == others
    (reason,) = skipped_components(odd_decoder_pipe).values()
    assert list(skipped_components(odd_decoder_pipe)) == ["decoder_step"]
    assert reason.startswith("the VAE (CausalVideoVAE) has a UnsupportedDecoder, which does not export")
    assert "training/distill_decoder.py" in reason and "--components" in reason
    assert skipped_components(odd_decoder_pipe, ["decoder_step"]) == {}
    with pytest.raises(ValueError) as error:
        select_components(odd_decoder_pipe, ["decoder_step", "text_encoder"])
    message = str(error.value)
    assert message.startswith("cannot export decoder_step: the VAE (CausalVideoVAE) has a UnsupportedDecoder")
    assert "training/distill_decoder.py" in message and message.endswith("components=): text_encoder")
    with pytest.raises(ValueError, match="cannot export decoder_step"):
        pipeline_specs(odd_decoder_pipe, SIZE, components=["decoder_step"])


def test_the_full_causal_decoder_is_selected_as_two_graphs(causal_vae_pipe):
    """Its first-step and step graphs are both of kind decoder_step: naming the kind selects both."""
    assert skipped_components(causal_vae_pipe) == {}
    assert select_components(causal_vae_pipe, ["decoder_step"]) == [("decoder_first_step", "decoder_step"),
                                                                     ("decoder_step", "decoder_step")]
    (spec,) = pipeline_specs(causal_vae_pipe, SIZE, components=["decoder_first_step"])
    assert spec.name == "decoder_first_step" and list(spec.inputs) == ["latents"]


def test_unknown_components_are_named_with_the_valid_ones(causal_vae_pipe):
    with pytest.raises(ValueError) as error:
        select_components(causal_vae_pipe, ["nope", "text_encoder", "decoder"])
    message = str(error.value)
    assert message.startswith("unknown components ['nope', 'decoder']; valid names for this pipeline: ['text_encoder'")
    assert "'decoder_step'" in message and "'transformer_stage'" in message  # names and kinds
    with pytest.raises(ValueError, match="components is empty"):
        select_components(causal_vae_pipe, [])


def test_components_are_selected_before_any_spec_is_built(causal_vae_pipe, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("an unselected spec was built")

    monkeypatch.setattr(W, "decoder_memory_shapes", never)
    monkeypatch.setattr(W, "decoder_step_wrapper", never)
    monkeypatch.setattr(W, "causal_decoder_cache_shapes", never)
    monkeypatch.setattr(W, "causal_decoder_step_wrapper", never)
    monkeypatch.setattr(W, "TextEncoderWrapper", never)
    specs = pipeline_specs(causal_vae_pipe, SIZE, components=["transformer_stage", "vae_encoder"])
    assert [s.name for s in specs] == ["transformer_stage_0", "transformer_stage_1", "transformer_stage_2",
                                       "vae_encoder"]
    assert select_components(causal_vae_pipe, ["transformer_stage_1"]) == [("transformer_stage_1", "transformer_stage")]
    built = []
    real = W.TransformerStageWrapper
    monkeypatch.setattr(W, "TransformerStageWrapper", lambda transformer, layout: built.append(layout.stage) or
                        real(transformer, layout))
    (spec,) = pipeline_specs(causal_vae_pipe, SIZE, components=["transformer_stage_1"])
    assert spec.name == "transformer_stage_1" and built == [1]


def test_only_the_named_first_frame_parts_are_built(tiny_pipe, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("an unselected first-frame part was built")

    monkeypatch.setattr(W, "UNetWrapper", never)
    monkeypatch.setattr(W, "ClipHiddenWrapper", never)
    (spec,) = pipeline_specs(tiny_pipe, SIZE, components=["t2i_vae_decoder"])
    assert spec.name == "t2i_vae_decoder"


def test_a_full_export_skips_an_unsupported_decoder_and_records_why(odd_decoder_pipe, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "out"
    with pytest.warns(exporter.SkippedComponentWarning, match="skipping decoder_step: the VAE"):
        manifest = exporter.export_pipeline(odd_decoder_pipe, out, SIZE, backend="torch", validate=False)
    assert list(manifest["components"]) == ["text_encoder", "pooled_text", "transformer_stage_0",
                                            "transformer_stage_1", "transformer_stage_2", "vae_encoder"]
    written = json.loads((out / "manifest.json").read_text())
    assert list(written["skipped"]) == ["decoder_step"] and "distill_decoder.py" in written["skipped"]["decoder_step"]
    assert sorted(p.name for p in out.glob("*.onnx")) == sorted(f"{name}.onnx" for name in manifest["components"])


def test_the_causal_vae_encoder_exports(causal_vae_pipe, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    manifest = exporter.export_pipeline(causal_vae_pipe, tmp_path / "out", SIZE, components=["vae_encoder"],
                                        backend="torch")
    assert manifest["components"]["vae_encoder"]["max_abs_error_vs_torch"] < 1e-4
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["components"].keys() == {"vae_encoder"}


def test_a_failed_export_leaves_nothing_behind(tiny_pipe, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    real = exporter.export_component
    calls = []

    def fail_on_the_second(spec, *args, **kwargs):
        calls.append(spec.name)
        if len(calls) == 2:
            raise RuntimeError("exporter crashed")
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(exporter, "export_component", fail_on_the_second)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        exporter.export_pipeline(tiny_pipe, tmp_path / "new" / "out", SIZE, components=["text_encoder", "pooled_text"],
                                 backend="torch")
    assert calls == ["text_encoder", "pooled_text"]
    assert list(tmp_path.iterdir()) == []  # no output, no missing parent created, no temporary folder

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    calls.clear()
    with pytest.raises(RuntimeError):
        exporter.export_pipeline(tiny_pipe, existing, SIZE, components=["text_encoder", "pooled_text"],
                                 backend="torch")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]


def test_an_export_into_an_existing_folder_replaces_only_its_own_files(tiny_pipe, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "out"
    (out / "scheduler").mkdir(parents=True)
    (out / "scheduler" / "stale.json").write_text("{}")
    (out / "manifest.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    exporter.export_pipeline(tiny_pipe, out, SIZE, components=["text_encoder"], backend="torch")
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "scheduler" / "stale.json").exists() and (out / "scheduler" / "scheduler_config.json").exists()
    assert list(json.loads((out / "manifest.json").read_text())["components"]) == ["text_encoder"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is not a folder"):
        exporter.export_pipeline(tiny_pipe, tmp_path / "file", SIZE, components=["text_encoder"], backend="torch")
