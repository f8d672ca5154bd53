"""CPU tests of ``save_pipeline_with`` and ``keep_stored_components``: the replaced component is written and listed,
every other component's files are copied byte for byte (a fp16 folder stays fp16), and a broken source folder is
refused."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from diffusers_neodragon import NeodragonPipeline, QuickSRNet
from diffusers_neodragon.training_utils.pipeline_folders import keep_stored_components, save_pipeline_with
from tests.tiny_components import pipeline, tiny_quicksrnet


@pytest.fixture(scope="module")
def fp16_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp16") / "pipe"
    pipe = pipeline(seed=0, with_super_resolution=False).to(torch.float16)
    pipe.save_pretrained(folder)
    return folder


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_the_replaced_component_is_written_and_the_rest_copied_as_stored(fp16_folder, tmp_path):
    network = tiny_quicksrnet()
    out = save_pipeline_with(fp16_folder, tmp_path / "out", super_resolution=network)

    before, after = _files(fp16_folder), _files(out)
    index_before = json.loads((fp16_folder / "model_index.json").read_text())
    index_after = json.loads((out / "model_index.json").read_text())
    assert index_before["super_resolution"] == [None, None]
    assert index_after.pop("super_resolution") == ["diffusers_neodragon.models.quicksrnet", "QuickSRNet"]
    index_before.pop("super_resolution")
    assert index_after == index_before
    unchanged = {k: v for k, v in before.items() if k.parts[0] != "model_index.json"}
    assert unchanged and all(after[k] == v for k, v in unchanged.items())  # nested first-frame pipeline included
    stored = load_file(out / "transformer" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}

    pipe = NeodragonPipeline.from_pretrained(out)
    assert isinstance(pipe.super_resolution, QuickSRNet) and pipe.first_frame_pipeline is not None
    for key, value in network.state_dict().items():
        assert torch.equal(pipe.super_resolution.state_dict()[key], value), key


def test_writing_again_leaves_no_file_of_the_earlier_component(fp16_folder, tmp_path):
    out = tmp_path / "out"
    save_pipeline_with(fp16_folder, out, super_resolution=tiny_quicksrnet())
    (out / "super_resolution" / "stale.safetensors").write_bytes(b"old")
    save_pipeline_with(fp16_folder, out, super_resolution=tiny_quicksrnet())
    assert not (out / "super_resolution" / "stale.safetensors").exists()


def test_a_broken_source_is_refused(fp16_folder, tmp_path):
    with pytest.raises(ValueError, match="has no model_index.json"):
        save_pipeline_with(tmp_path, tmp_path / "out", super_resolution=tiny_quicksrnet())
    broken = tmp_path / "broken"
    shutil.copytree(fp16_folder, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ValueError, match=r"lists \['vae'\]"):
        save_pipeline_with(broken, tmp_path / "out", super_resolution=tiny_quicksrnet())
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_list_valued_settings_are_not_taken_for_components(fp16_folder, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(fp16_folder, source)
    index = json.loads((source / "model_index.json").read_text())
    index.update(default_num_inference_steps=[4, 4, 4], default_video_num_inference_steps=[1, 1])
    (source / "model_index.json").write_text(json.dumps(index))
    out = save_pipeline_with(source, tmp_path / "out", super_resolution=tiny_quicksrnet())
    saved = json.loads((out / "model_index.json").read_text())
    assert saved["default_num_inference_steps"] == [4, 4, 4] and saved["default_video_num_inference_steps"] == [1, 1]


def test_keep_stored_components_puts_back_the_sources_files(fp16_folder, tmp_path):
    """A student pipeline saved from fp32 copies of the source's parts gets the source's own (fp16) files back for
    the parts it took unchanged; its replaced and excluded components stay as written."""
    out = tmp_path / "student"
    pipe = NeodragonPipeline.from_pretrained(fp16_folder, dtype=torch.float32)
    pipe.save_pretrained(out)
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() != \
           (fp16_folder / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    names = keep_stored_components(fp16_folder, out, exclude=("transformer",))
    assert "vae" in names and "transformer" not in names and "super_resolution" not in names
    before, after = _files(fp16_folder), _files(out)
    assert all(after[k] == v for k, v in before.items() if k.parts[0] in names)
    assert {t.dtype for t in load_file(out / "transformer" / "diffusion_pytorch_model.safetensors").values()} == \
           {torch.float32}
