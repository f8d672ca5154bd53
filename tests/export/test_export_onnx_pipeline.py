"""Export of the tiny pipeline and the ONNX Runtime pipeline against the torch pipeline."""

import json

import numpy as np
import PIL.Image
import pytest
import torch

from tests.export.conftest import SIZE


pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

PROMPT = "a red circle moving left"
ALL_GRAPHS = [
    "text_encoder", "pooled_text", "transformer_stage_0", "transformer_stage_1", "transformer_stage_2", "decoder_step",
    "vae_encoder", "super_resolution", "t2i_text_encoder", "t2i_text_encoder_2", "t2i_unet", "t2i_vae_decoder",
]


def test_every_component_exports_with_static_shapes(tiny_export):
    folder, manifest = tiny_export
    assert list(manifest["components"]) == ALL_GRAPHS
    on_disk = json.loads((folder / "manifest.json").read_text())
    assert on_disk["opset"] == 17 and on_disk["size"] == {**{k: SIZE[k] for k in ("height", "width")},
                                                          "num_frames": 17, "max_sequence_length": 128}
    for name, entry in on_disk["components"].items():
        assert (folder / entry["file"]).exists()
        for io in (*entry["inputs"].values(), *entry["outputs"].values()):
            assert all(isinstance(d, int) and d > 0 for d in io["shape"]), (name, io)
        assert entry["max_abs_error_vs_torch"] < 1e-4, name
    stage2 = on_disk["components"]["transformer_stage_2"]
    assert list(stage2["inputs"]) == ["hidden_states", "history_1", "history_2", "encoder_hidden_states",
                                      "pooled_projections", "timestep_proj", "attention_bias", "rope_cos", "rope_sin"]
    assert stage2["inputs"]["attention_bias"]["shape"] == [1, 1, 128 + 4 + 16 + 16, 128 + 4 + 16 + 16]
    assert on_disk["components"]["decoder_step"]["outputs"]["sample"]["shape"] == [1, 3, 8, 64, 64]
    assert on_disk["components"]["decoder_step"]["graph_passes"]["dropped_empty_concat_inputs"] == 3


def _torch_run(pipe, **kwargs):
    return pipe(PROMPT, **SIZE, generator=torch.Generator().manual_seed(0), **kwargs).frames


@pytest.fixture(scope="module")
def ort_pipe(tiny_export):
    from diffusers_neodragon.export.ort_pipeline import ORTNeodragonPipeline

    return ORTNeodragonPipeline(tiny_export[0])


@pytest.mark.parametrize(
    "case", ["image_to_video", "hybrid_text_to_image_first_frame", "monolithic_cfg", "monolithic_history_noise"])
def test_ort_pipeline_matches_torch(tiny_pipe, ort_pipe, case):
    rng = np.random.default_rng(0)
    kwargs = {
        "image_to_video": dict(image=PIL.Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))),
        "hybrid_text_to_image_first_frame": dict(mode="hybrid"),
        "monolithic_cfg": dict(mode="monolithic", num_inference_steps=2, video_num_inference_steps=[1, 2, 1],
                               video_guidance_scale=3.0),
        "monolithic_history_noise": dict(mode="monolithic", num_inference_steps=1, video_num_inference_steps=1,
                                         history_noise=0.3),
    }[case]
    want_latents = _torch_run(tiny_pipe, output_type="latent", **kwargs)
    got_latents = ort_pipe(PROMPT, generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs)
    torch.testing.assert_close(got_latents, want_latents, atol=1e-4, rtol=1e-4)
    if case == "image_to_video":  # the decoder steps and QuickSRNet, once
        want = _torch_run(tiny_pipe, output_type="np", **kwargs)
        got = ort_pipe(PROMPT, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs)
        assert got.shape == want.shape == (1, 17, 128, 128, 3)  # QuickSRNet 2x included
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_ort_pipeline_rejects_sizes_beyond_the_export(ort_pipe):
    with pytest.raises(ValueError, match="num_frames"):
        ort_pipe(PROMPT, num_frames=25)
    with pytest.raises(ValueError, match="prompt"):
        ort_pipe(["a", "b"])


def test_ort_pipeline_without_a_decoder_step_says_so(tiny_export, tiny_pipe):
    from diffusers_neodragon.export.ort_pipeline import ORTNeodragonPipeline, torch_vae_decoder

    pipe = ORTNeodragonPipeline(tiny_export[0])
    del pipe.manifest["components"]["decoder_step"]  # as exported from a VAE with the full causal decoder
    with pytest.raises(ValueError, match="no decoder_step graph: pass output_type='latent'"):
        pipe.decode(torch.zeros(1, 4, 2, 8, 8))
    latents = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    pipe.decoder = torch_vae_decoder(tiny_pipe.vae)  # a torch decoder stands in for the missing graph
    with torch.no_grad():
        want = tiny_pipe.vae.decode(tiny_pipe.vae.denormalize_latents(latents)).sample
    torch.testing.assert_close(pipe.decode(latents), want)


def test_the_removed_optimum_backend_is_refused_with_the_alternative():
    from diffusers_neodragon.export.exporter import resolve_backend

    assert resolve_backend("auto") == resolve_backend("torch") == "torch"
    with pytest.raises(ValueError, match="use backend='torch'"):
        resolve_backend("optimum")


def test_external_data_of_initializers_and_constants_is_consolidated_into_one_file(tmp_path):
    """A > 2 GB graph from the legacy exporter has one file per large tensor, Constant-node values included: they
    end up in a single ``<file>_data`` and no stale file is left."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from diffusers_neodragon.export.exporter import _consolidate_external_data

    ones = np.ones((64, 64), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(ones, "c_value")),
         helper.make_node("Add", ["x", "c"], ["y"]), helper.make_node("Mul", ["y", "w"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [64, 64])], [numpy_helper.from_array(2 * ones, "w")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path), save_as_external_data=True, all_tensors_to_one_file=False,
              size_threshold=0, convert_attribute=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c_value", "m.onnx", "w"]
    _consolidate_external_data(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx_data"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": ones})[0], 4 * ones)
