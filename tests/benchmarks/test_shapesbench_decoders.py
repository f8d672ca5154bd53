"""benchmarks/shapesbench_decoders.py: every decoder scored on the pipeline's own latents, checked against
shapesbench.py run on the pipeline and on the pipeline with the student VAE put in."""

import pytest

from diffusers_neodragon.training_utils.asymmetric_student import build_student_vae
from tests.script_loading import load_script
from tests.tiny_components import monolithic_pipeline, tiny_causal_vae


decoders = load_script("benchmarks/shapesbench_decoders.py")
shapesbench = load_script("benchmarks/shapesbench.py")


def test_each_row_is_the_pipeline_with_that_decoder(tmp_path, capsys):
    pipe = monolithic_pipeline(num_frames=9, with_super_resolution=False)
    teacher_vae = tiny_causal_vae(seed=1)
    pipe.register_modules(vae=teacher_vae)
    pipe.save_pretrained(tmp_path / "teacher")
    student = build_student_vae(teacher_vae, (8, 8, 4, 4), blocks_per_stage=1)
    student.save_pretrained(tmp_path / "student")
    pipe.register_modules(vae=student)
    pipe.save_pretrained(tmp_path / "with_student")

    table = decoders.main([str(tmp_path / "teacher"), f"student={tmp_path / 'student'}", "--seeds", "1",
                           "--num-prompts", "2", "--device", "cpu"])
    assert list(table) == ["pipeline", "student"]
    assert "PSNR against the pipeline's own decoder" in capsys.readouterr().out
    assert table["pipeline"]["psnr_vs_pipeline"] == float("inf") and 0 < table["student"]["psnr_vs_pipeline"] < 100
    for label, folder in (("pipeline", "teacher"), ("student", "with_student")):
        report = shapesbench.main([str(tmp_path / folder), "--seed", "1", "--num-prompts", "2", "--device", "cpu"])
        for split in ("seen", "held-out"):
            for field in ("score", "semantic", "quality", "temporal"):
                assert table[label][split][field] == [pytest.approx(report["summary"][split][field], abs=1e-9)]


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        decoders.build_parser().parse_args(["pipe", "pipeline=somewhere"])  # the pipeline's own row's label
    with pytest.raises(SystemExit):
        decoders.build_parser().parse_args(["pipe", "no_folder"])
    with pytest.raises(ValueError, match="--num-prompts"):
        decoders.compare_decoders("pipe", [("a", "b")], [0], 0)
    with pytest.raises(ValueError, match="labels must differ"):
        decoders.compare_decoders("pipe", [("a", "b"), ("a", "c")], [0], 1)
