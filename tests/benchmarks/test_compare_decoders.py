"""benchmarks/compare_decoders.py on tiny VAEs: figures of both decoders, the encoder check, the CPU peak counter."""

import json

import torch

from diffusers_neodragon.training_utils.asymmetric_student import build_student_vae
from tests.script_loading import load_script
from tests.tiny_components import tiny_causal_vae


compare_decoders = load_script("benchmarks/compare_decoders.py")


def test_cpu_peak_memory_counts_the_tensors_alive_at_once():
    with torch.no_grad(), compare_decoders.CpuPeakMemory() as tracker:
        a = torch.zeros(1000, 1000)  # 4 MB
        b = a + 1  # 8 MB alive
        del a
        c = b * 2  # still 8 MB: a was freed
        del b, c
    assert tracker.peak == 8_000_000 and tracker.live == 0


def test_compare_reports_quality_speed_memory_and_parameters(tmp_path):
    teacher = tiny_causal_vae(seed=0)
    teacher.save_pretrained(tmp_path / "teacher")
    build_student_vae(teacher, (8, 8, 4, 4), blocks_per_stage=1).save_pretrained(tmp_path / "student")
    other = tiny_causal_vae(seed=5)  # another encoder: its latent space differs
    build_student_vae(other, (8, 8, 4, 4), blocks_per_stage=1).save_pretrained(tmp_path / "other")
    common = ["--clips", "2", "--frames", "17", "--size", "16", "--repeats", "1", "--device", "cpu"]
    result = compare_decoders.main([str(tmp_path / "teacher"), str(tmp_path / "student"), *common,
                                    "--json", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text()) == result
    assert result["same_encoder"] is True and result["clips"] == 2
    teacher_figures, student_figures = result["decoders"]["teacher"], result["decoders"]["student"]
    assert student_figures["parameters"] < teacher_figures["parameters"]
    assert result["parameter_ratio"] == teacher_figures["parameters"] / student_figures["parameters"]
    for figures in (teacher_figures, student_figures):
        assert 0 < figures["psnr"] < 100 and -1 <= figures["ssim"] <= 1
        assert figures["whole_seconds"] > 0 and figures["streamed_seconds"] > 0
        assert figures["whole_peak_mib"] > 0 and figures["streamed_peak_mib"] > 0
    # 3 latent frames: streaming holds one latent frame's activations, the whole decode all three
    assert student_figures["streamed_peak_mib"] < student_figures["whole_peak_mib"]
    assert compare_decoders.main([str(tmp_path / "teacher"), str(tmp_path / "other"), *common])[
        "same_encoder"] is False
