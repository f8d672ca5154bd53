"""w8a16 calibration covers every graph it quantises, the VAE encoder of a monolithic export included."""

import pytest


pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_monolithic_calibration_feeds_the_vae_encoder_with_decoded_frames(tiny_export):
    """A monolithic generation never encodes an image: the encoder is calibrated on the frames the decoder_step
    graph makes (first and last frame of each video), in the pipeline's pixel range."""
    from diffusers_neodragon.export.quantize import collect_calibration_data

    folder, manifest = tiny_export
    calibration = collect_calibration_data(folder, prompts=["a red circle"], modes=("monolithic",))
    feeds = calibration["vae_encoder"]
    assert len(feeds) == 2
    shape = manifest["components"]["vae_encoder"]["inputs"]["sample"]["shape"]
    for feed in feeds:
        assert list(feed["sample"].shape) == shape
        assert -1.0 <= feed["sample"].min() < feed["sample"].max() <= 1.0
    assert {"text_encoder", "transformer_stage_0", "decoder_step", "super_resolution"} <= set(calibration)


def test_quantize_export_refuses_a_graph_without_calibration_data(tiny_export):
    from diffusers_neodragon.export.quantize import quantize_export

    with pytest.raises(ValueError, match=r"no calibration data for \['vae_encoder'\]"):
        quantize_export(tiny_export[0], components=["vae_encoder", "text_encoder"], calibration={})
