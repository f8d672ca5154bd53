"""The exporter checks the requested graphs before building anything and never leaves a partial output folder."""

import json

import pytest

from diffusers_neodragon import NeodragonPipeline
from diffusers_neodragon.export import exporter
from diffusers_neodragon.export import wrappers as W
from diffusers_neodragon.export.specs import ExportSize, pipeline_specs, select_components
from tests.tiny_components import components, tiny_causal_vae


SIZE = ExportSize(64, 64, 9)


@pytest.fixture(scope="module")
def causal_vae_pipe():
    """The tiny pipeline with the full causal decoder (CausalVideoVAE), as the embedded model has."""
    vae = tiny_causal_vae(seed=0, init=None)
    return NeodragonPipeline(**{**components(with_first_frame=False, with_super_resolution=False), "vae": vae})


def test_an_unexportable_component_is_named_with_its_reason(causal_vae_pipe):
    with pytest.raises(ValueError) as error:
        select_components(causal_vae_pipe)
    message = str(error.value)
    assert message.startswith("cannot export decoder_step: the VAE (CausalVideoVAE) has a CausalVideoDecoder")
    assert "text_encoder pooled_text transformer_stage_0 transformer_stage_1 transformer_stage_2 vae_encoder" in message
    with pytest.raises(ValueError, match="cannot export decoder_step"):
        pipeline_specs(causal_vae_pipe, SIZE, components=["decoder_step", "text_encoder"])
    with pytest.raises(ValueError, match=r"unknown components \['nope'\]"):
        select_components(causal_vae_pipe, ["nope"])


def test_components_are_selected_before_any_spec_is_built(causal_vae_pipe, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("an unselected spec was built")

    monkeypatch.setattr(W, "decoder_memory_shapes", never)
    monkeypatch.setattr(W, "TextEncoderWrapper", never)
    specs = pipeline_specs(causal_vae_pipe, SIZE, components=["transformer_stage", "vae_encoder"])
    assert [s.name for s in specs] == ["transformer_stage_0", "transformer_stage_1", "transformer_stage_2",
                                       "vae_encoder"]
    assert select_components(causal_vae_pipe, ["transformer_stage_1"]) == [("transformer_stage_1", "transformer_stage")]


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
