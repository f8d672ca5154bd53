"""NeodragonPipeline.from_pretrained on diffusers-format folders: bad input answered in one line before any weight is
read, and the weight-loading options reaching the nested first_frame_pipeline."""

import shutil

import pytest
import torch

from diffusers_neodragon import NeodragonPipeline
from diffusers_neodragon.loaders import looks_like_local_path
from tests.tiny_components import pipeline


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny hybrid pipeline (with an SDXL first_frame_pipeline) saved twice: plain float32 and variant="fp16"."""
    pipe = pipeline()
    root = tmp_path_factory.mktemp("saved")
    pipe.save_pretrained(root / "plain")
    pipe.to(torch.float16).save_pretrained(root / "fp16", variant="fp16")
    return root


def _models(pipe):
    nested = pipe.first_frame_pipeline
    return {"transformer": pipe.transformer, "vae": pipe.vae, "text_encoder_3": pipe.text_encoder_3,
            "first_frame_pipeline.unet": nested.unet, "first_frame_pipeline.vae": nested.vae,
            "first_frame_pipeline.text_encoder_2": nested.text_encoder_2}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_reaches_the_nested_pipeline(saved, dtype):
    pipe = NeodragonPipeline.from_pretrained(saved / "plain", dtype=dtype)
    assert {name: model.dtype for name, model in _models(pipe).items()} == dict.fromkeys(_models(pipe), dtype)


def test_variant_loads_and_reaches_the_nested_pipeline(saved):
    reference = pipeline().to(torch.float16)
    pipe = NeodragonPipeline.from_pretrained(saved / "fp16", variant="fp16", dtype=torch.float16)
    assert pipe.config._name_or_path == str(saved / "fp16")
    assert pipe.first_frame_pipeline.config._name_or_path == str(saved / "fp16" / "first_frame_pipeline")
    for name, model in _models(pipe).items():
        assert model.dtype == torch.float16, name
    for key, value in reference.first_frame_pipeline.unet.state_dict().items():
        assert torch.equal(pipe.first_frame_pipeline.unet.state_dict()[key], value), key
    assert not list((saved / "fp16").rglob("*.safetensors")) or all(
        ".fp16." in p.name for p in (saved / "fp16").rglob("*.safetensors"))


def test_device_map_reaches_the_nested_pipeline(saved):
    pipe = NeodragonPipeline.from_pretrained(saved / "plain", device_map="cpu")
    assert pipe.hf_device_map is not None and pipe.first_frame_pipeline.hf_device_map is not None


@pytest.mark.parametrize("component", ["transformer", "first_frame_pipeline/unet"])
def test_pickle_only_weights_are_refused(saved, tmp_path, component):
    folder = tmp_path / "pickled"
    shutil.copytree(saved / "plain", folder)
    weights = folder / component / "diffusion_pytorch_model.safetensors"
    pickled = folder / component / "diffusion_pytorch_model.bin"
    torch.save({"weight": torch.zeros(1)}, pickled)
    weights.unlink()
    with pytest.raises(ValueError, match=rf"{pickled}.* is a pickle checkpoint.*safetensors is required") as error:
        NeodragonPipeline.from_pretrained(folder)
    assert "\n" not in str(error.value)


def test_a_training_runs_checkpoint_folders_do_not_block_loading(saved, tmp_path):
    """A training script's output folder is a pipeline with accelerate's ``checkpoint-<step>`` state beside it (a
    pickled optimizer the loader never reads); a pickle anywhere else is still refused."""
    folder = tmp_path / "run"
    shutil.copytree(saved / "plain", folder)
    (folder / "checkpoint-1200").mkdir()
    torch.save({"state": torch.zeros(1)}, folder / "checkpoint-1200" / "optimizer.bin")
    loaded = NeodragonPipeline.from_pretrained(folder)
    assert torch.equal(loaded.transformer.pos_embed.proj.weight, NeodragonPipeline.from_pretrained(
        saved / "plain").transformer.pos_embed.proj.weight)
    (folder / "checkpoint-1200").rename(folder / "checkpoint-best")
    with pytest.raises(ValueError, match=r"checkpoint-best.*optimizer\.bin is a pickle checkpoint"):
        NeodragonPipeline.from_pretrained(folder)


def test_truncated_safetensors_is_one_line_naming_the_file(saved, tmp_path):
    folder = tmp_path / "truncated"
    shutil.copytree(saved / "plain", folder)
    weights = folder / "first_frame_pipeline" / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"Cannot read {weights} as safetensors .* truncated or corrupted") as error:
        NeodragonPipeline.from_pretrained(folder)
    assert "\n" not in str(error.value)
    assert error.value.__cause__ is None and error.value.__suppress_context__  # raised from None: one traceback


@pytest.mark.parametrize("path", ["/nonexistent/neodragon", "./missing-folder", "~/missing-neodragon", "a/b/c"])
def test_missing_local_path_says_it_does_not_exist(path):
    with pytest.raises(ValueError, match=r"does not exist: there is no such folder") as error:
        NeodragonPipeline.from_pretrained(path)
    assert path in str(error.value) and "repo id" in str(error.value) and "\n" not in str(error.value)


def test_a_file_is_not_a_folder(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        NeodragonPipeline.from_pretrained(file)


def test_hub_ids_are_not_taken_for_local_paths():
    assert not looks_like_local_path("Qualcomm-AI-Research/Neodragon")
    assert not looks_like_local_path("gpt2")
    assert all(looks_like_local_path(p) for p in ("/abs", "./rel", "../up", "~/home", "a/b/c"))


def test_hub_repo_in_diffusers_layout_is_downloaded_then_loaded_like_a_folder(saved, monkeypatch):
    import diffusers_neodragon.loaders.pipeline_loading as pipeline_loading

    probes, downloads = [], []
    monkeypatch.setattr(pipeline_loading, "snapshot_download",
                        lambda repo_id, allow_patterns=None, **kw: probes.append(allow_patterns) or str(saved / "fp16"))
    monkeypatch.setattr(NeodragonPipeline, "download",
                        classmethod(lambda cls, name, **kw: downloads.append((name, kw)) or str(saved / "fp16")))
    pipe = NeodragonPipeline.from_pretrained("me/tiny-neodragon", variant="fp16", revision="abc", dtype=torch.float16)
    assert probes == [["*.json"]]
    assert downloads == [("me/tiny-neodragon", {"variant": "fp16", "use_safetensors": True, "revision": "abc"})]
    assert pipe.config._name_or_path == "me/tiny-neodragon"
    assert pipe.first_frame_pipeline.unet.dtype == torch.float16


def test_loading_the_nested_pipeline_dumps_no_notice(saved, caplog):
    with caplog.at_level("WARNING"):
        NeodragonPipeline.from_pretrained(saved / "plain")
    assert not [r for r in caplog.records if "non-standard module" in r.getMessage()]
