"""The full causal decoder (CausalVideoVAE) exports as a first-step graph + a streaming step graph with explicit conv
caches, and the ONNX pipeline decodes with them like the torch pipeline."""

import json

import numpy as np
import pytest
import torch

from diffusers_neodragon import NeodragonPipeline
from diffusers_neodragon.export import wrappers as W
from tests.tiny_components import components, tiny_causal_vae


PROMPT = "a red circle moving left"
SIZE = dict(height=64, width=64, num_frames=17)
STEPS = dict(num_inference_steps=1, video_num_inference_steps=1)


@pytest.fixture(scope="module")
def causal_pipe():
    """A tiny monolithic pipeline with the full causal decoder, as the embedded model."""
    vae = tiny_causal_vae(seed=0, init=None)
    pipe = NeodragonPipeline(**{**components(with_first_frame=False, with_super_resolution=False), "vae": vae},
                             mode="monolithic", default_height=64, default_width=64, default_num_frames=17)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_causal_decoder_steps_equal_the_models_decode(causal_pipe):
    """First-step wrapper on latent frame 0, then the step wrapper per later frame with the caches carried: the
    model's own decode of the whole clip at once (to 1e-5; float reassociation only, measured 1.8e-6)."""
    vae = causal_pipe.vae
    z = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    first, step = W.causal_decoder_step_wrapper(vae, first=True), W.causal_decoder_step_wrapper(vae)
    shapes = W.causal_decoder_cache_shapes(vae, 8, 8)
    # every 3x3x3 conv carries its 2 last padded input frames (1x1x1 shortcuts carry nothing)
    assert len(shapes) == len(step.convs) == sum(1 for m in vae.decoder.modules()
                                                 if isinstance(m, W.CausalConv3d) and m.kernel_t == 3)
    assert all(shape[2] == 2 for shape in shapes)
    with torch.no_grad():
        want = vae.decode(z).sample
        video, *caches = first(z[:, :, :1])
        assert video.shape[2] == 1 and [tuple(c.shape) for c in caches] == shapes
        frames = [video]
        for i in range(1, z.shape[2]):
            video, *caches = step(z[:, :, i : i + 1], **{f"cache_{k}": c for k, c in enumerate(caches)})
            assert video.shape[2] == 8 and [tuple(c.shape) for c in caches] == shapes
            frames.append(video)
    assert want.abs().max() > 0.5  # the tiny decoder carries signal
    torch.testing.assert_close(torch.cat(frames, dim=2), want, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def causal_export(causal_pipe, tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from diffusers_neodragon.export.exporter import export_pipeline
    from diffusers_neodragon.export.specs import ExportSize

    folder = tmp_path_factory.mktemp("causal_export")
    return folder, export_pipeline(causal_pipe, folder, ExportSize(**SIZE), backend="torch")


def test_a_full_export_includes_the_causal_decoder_graphs(causal_export):
    folder, manifest = causal_export
    assert list(manifest["components"]) == ["text_encoder", "pooled_text", "transformer_stage_0",
                                            "transformer_stage_1", "transformer_stage_2", "decoder_first_step",
                                            "decoder_step", "vae_encoder"]
    written = json.loads((folder / "manifest.json").read_text())
    assert written["skipped"] == {}
    first, step = written["components"]["decoder_first_step"], written["components"]["decoder_step"]
    assert list(first["inputs"]) == ["latents"] and first["outputs"]["sample"]["shape"] == [1, 3, 1, 64, 64]
    assert step["outputs"]["sample"]["shape"] == [1, 3, 8, 64, 64]
    caches = step["metadata"]["cache_shapes"]
    assert list(step["inputs"]) == ["latents", *[f"cache_{k}" for k in range(len(caches))]]
    outputs = ["sample", *[f"cache_{k}_out" for k in range(len(caches))]]
    assert list(first["outputs"]) == list(step["outputs"]) == outputs
    for k, shape in enumerate(caches):
        assert step["inputs"][f"cache_{k}"]["shape"] == step["outputs"][f"cache_{k}_out"]["shape"] == shape
        assert first["outputs"][f"cache_{k}_out"]["shape"] == shape
    for name, entry in written["components"].items():
        assert (folder / entry["file"]).exists()
        assert entry["max_abs_error_vs_torch"] < 1e-4, name


def test_ort_pipeline_decodes_with_the_causal_decoder_graphs_like_torch(causal_pipe, causal_export):
    from diffusers_neodragon.export.ort_pipeline import ORTNeodragonPipeline

    ort_pipe = ORTNeodragonPipeline(causal_export[0])
    want = causal_pipe(PROMPT, **SIZE, **STEPS, generator=torch.Generator().manual_seed(0), output_type="np").frames
    got = ort_pipe(PROMPT, **STEPS, generator=torch.Generator().manual_seed(0), output_type="np")
    assert got.shape == want.shape == (1, 17, 64, 64, 3)
    assert want.std() > 0.05  # not a flat video
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert ort_pipe.session("decoder_first_step") is not None  # the graphs did the decoding, not a fallback

    del ort_pipe.manifest["components"]["decoder_first_step"]
    with pytest.raises(ValueError, match="no decoder_first_step graph"):
        ort_pipe.decode(torch.zeros(1, 4, 3, 8, 8))


def test_the_full_causal_decoders_first_step_places_fully_on_the_htp(causal_export):
    """The spatial upsampler's 2x2 depth-to-space is a 4-D pixel shuffle (one DepthToSpace): its earlier 7-D
    reshape/transpose was refused by QNN's HTP, which left the full causal decoder's step graphs on the CPU."""
    pytest.importorskip("onnxruntime_qnn", reason="the HTP check needs onnxruntime-qnn (Linux x86_64)")
    import onnx

    from diffusers_neodragon.export.htp_check import check_export

    folder, _ = causal_export
    ops = {node.op_type for node in onnx.load(str(folder / "decoder_first_step.onnx")).graph.node}
    assert "DepthToSpace" in ops
    (report,) = check_export(folder, "fp16", components=["decoder_first_step"], run=False)
    assert report.on_htp, report.error
