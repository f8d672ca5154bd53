"""benchmarks/ort_video_fidelity.py on a tiny export: the ONNX graphs on ONNX Runtime's CPU provider reproduce the
torch pipeline's video, and another pipeline's weights do not."""

import json

import pytest

from tests.script_loading import load_script
from tests.tiny_components import monolithic_pipeline


fidelity = load_script("benchmarks/ort_video_fidelity.py")
PROMPT = "a red circle moving left on a blue background"


def test_the_export_reproduces_its_pipeline_and_not_another(tmp_path):
    pytest.importorskip("onnxruntime")
    import PIL.Image

    from diffusers_neodragon.export.exporter import export_pipeline
    from diffusers_neodragon.export.specs import ExportSize

    pipe = monolithic_pipeline(num_frames=9)
    pipe.save_pretrained(tmp_path / "pipe")
    export_pipeline(pipe, tmp_path / "export", ExportSize(height=64, width=64, num_frames=9), backend="torch")
    result = fidelity.main([str(tmp_path / "pipe"), str(tmp_path / "export"), "--strip", str(tmp_path / "s.png"),
                            "--json", str(tmp_path / "r.json"), "--threads", "1", "--prompt", PROMPT])
    assert result["frames"] == 9 and result["psnr_db"] > 60 and result["worst_frame_psnr_db"] > 55
    assert json.loads((tmp_path / "r.json").read_text())["psnr_db"] == result["psnr_db"]
    assert PIL.Image.open(tmp_path / "s.png").size == (8 * 128, 2 * 128)  # 64x64 frames through the 2x SR

    monolithic_pipeline(num_frames=9, seed=7).save_pretrained(tmp_path / "other")
    other = fidelity.main([str(tmp_path / "other"), str(tmp_path / "export"), "--prompt", PROMPT, "--steps", "2",
                           "--video-steps", "1"])
    assert other["psnr_db"] < 40 and other["steps"] == 2
