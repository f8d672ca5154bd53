"""CPU smoke tests of training/distill_pyramidal_dmd.py on a tiny teacher: alternating updates, exact resume, and a
saved student that samples with its distilled steps and no CFG, in hybrid (teacher first frame) and own-first-frame
modes."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffusers_neodragon import AsymmetricVAE, NeodragonPipeline, PyramidalDMDScheduler
from tests.script_loading import load_script
from tests.tiny_components import monolithic_pipeline, tiny_causal_vae


distill = load_script("training/distill_pyramidal_dmd.py")
train = load_script("training/train_pyramidal_flow.py")

TINY_TEACHER = [
    "--resolution", "64", "--num_frames", "17", "--train_samples", "4", "--train_batch_size", "2",
    "--num_layers", "2", "--num_attention_heads", "2", "--attention_head_dim", "16",
    "--t5_dim", "32", "--t5_heads", "2", "--t5_layers", "1", "--clip_dim", "16", "--clip_heads", "2",
    "--clip_projection_dim", "8", "--max_sequence_length", "24", "--report_to", "none", "--max_train_steps", "1",
    "--checkpointing_steps", "0", "--num_validation_prompts", "0",
]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dmd")
    tiny_causal_vae(seed=0).save_pretrained(folder / "vae_folder" / "vae")
    train.main(train.parse_args([*TINY_TEACHER, "--vae_path", str(folder / "vae_folder"),
                                 "--output_dir", str(folder / "teacher")]))
    return folder / "teacher"


def run(teacher_dir, output_dir, *extra):
    args = distill.parse_args([
        "--teacher_path", str(teacher_dir), "--output_dir", str(output_dir), "--train_samples", "4",
        "--train_batch_size", "2", "--max_sequence_length", "24", "--report_to", "none", "--learning_rate", "1e-3",
        "--num_validation_prompts", "0", "--first_frame_prob", "0.5", *extra,
    ])
    return distill.main(args)


def weights(folder, name="transformer"):
    return load_file(str(Path(folder) / name / "diffusion_pytorch_model.safetensors"))


def test_alternating_steps_save_a_distilled_hybrid_pipeline(teacher_dir, tmp_path):
    out = tmp_path / "student"
    result = run(teacher_dir, out, "--max_train_steps", "3", "--steps_per_stage", "2", "--checkpointing_steps", "0",
                 "--num_validation_prompts", "1", "--save_dtype", "fp16")
    assert result["global_step"] == 3
    assert all(np.isfinite(result[k]) for k in ("loss_dmd", "loss_cauchy", "loss_fake"))
    teacher = weights(teacher_dir)
    student = weights(out)
    assert all(v.dtype == torch.float16 for v in student.values())  # --save_dtype casts the student alone
    assert any(not torch.equal(student[k], teacher[k].half()) for k in teacher)  # the student moved
    nested = weights(out / "first_frame_pipeline")
    assert all(torch.equal(nested[k], teacher[k]) for k in teacher)  # the teacher is saved as it was
    index = json.loads((out / "model_index.json").read_text())
    assert index["mode"] == "hybrid" and index["first_frame_pipeline"][1] == "NeodragonPipeline"
    assert (index["default_guidance_scale"], index["default_video_guidance_scale"]) == (0.0, 0.0)
    assert index["default_num_inference_steps"] == index["default_video_num_inference_steps"] == [2, 2, 2]
    card = (out / "README.md").read_text()
    assert "2-2-2 steps per stage and no classifier-free guidance" in card and "{{" not in card
    assert "(2-2-2 steps per stage, 6 transformer calls, no CFG)" in card  # its own first frame, by default alike
    assert (out / "validation" / "final-step-000003.png").is_file()

    pipe = NeodragonPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    pipe.first_frame_pipeline.set_progress_bar_config(disable=True)
    nested = pipe.first_frame_pipeline
    assert nested.config.mode == "monolithic" and nested.config.default_guidance_scale == 7.0
    cfg = []
    video = pipe("a small red circle moving left on a blue background", output_type="np", num_frames=9,
                 generator=torch.Generator().manual_seed(0),
                 callback_on_step_end=lambda p, i, t, kw: cfg.append(p.do_classifier_free_guidance) or {}).frames
    assert video.shape == (1, 9, 64, 64, 3) and np.isfinite(video).all()
    assert pipe.num_timesteps == 6 and cfg == [False] * 6  # frame 0 from the teacher, frame 1 with 2-2-2, no CFG
    pipe("a small red circle", output_type="latent", num_frames=9, mode="monolithic",
         generator=torch.Generator().manual_seed(0))
    assert pipe.num_timesteps == 12  # the student's own first frame, 2-2-2 too


def test_the_teachers_parts_are_saved_as_it_stores_them(teacher_dir, tmp_path):
    """An fp16 teacher runs at fp32 during training; its vae, text path and (hybrid) first-frame pipeline are
    written back as the teacher's own files, not upcast."""
    fp16_teacher = tmp_path / "teacher16"
    NeodragonPipeline.from_pretrained(teacher_dir).to(torch.float16).save_pretrained(fp16_teacher)
    out = tmp_path / "student"
    run(fp16_teacher, out, "--max_train_steps", "1", "--checkpointing_steps", "0", "--save_dtype", "fp16")

    def files(folder):
        return {p.relative_to(folder): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}

    teacher = files(fp16_teacher)
    for name in ("vae", "text_encoder_3", "scheduler"):
        assert {k: v for k, v in files(out).items() if k.parts[0] == name} == \
               {k: v for k, v in teacher.items() if k.parts[0] == name}, name
    assert files(out / "first_frame_pipeline") == teacher
    assert {t.dtype for t in weights(out, "vae").values()} == {torch.float16}
    assert NeodragonPipeline.from_pretrained(out).first_frame_pipeline.config.mode == "monolithic"


@pytest.mark.parametrize("first_frame_prob", [1.0, 0.0])
def test_first_frame_steps_train_and_sample_the_first_frame_alone(teacher_dir, tmp_path, monkeypatch,
                                                                  first_frame_prob):
    """--first_frame_steps_per_stage: batches of the first frame (u = 0) draw their noisy points from that sampler,
    the others from --steps_per_stage; the monolithic folder samples frame 0 with it by default."""
    drawn = []
    original = PyramidalDMDScheduler.sample_inference_timesteps

    def spy(self, stage, num_steps, *args, **kwargs):
        drawn.append(num_steps)
        return original(self, stage, num_steps, *args, **kwargs)

    monkeypatch.setattr(PyramidalDMDScheduler, "sample_inference_timesteps", spy)
    out = tmp_path / "student"
    run(teacher_dir, out, "--max_train_steps", "2", "--steps_per_stage", "1", "--first_frame_steps_per_stage", "2",
        "--save_mode", "monolithic", "--first_frame_prob", str(first_frame_prob), "--checkpointing_steps", "0")
    assert drawn == ([2, 2] if first_frame_prob == 1.0 else [1, 1])
    index = json.loads((out / "model_index.json").read_text())
    assert (index["default_num_inference_steps"], index["default_video_num_inference_steps"]) == ([2] * 3, [1] * 3)
    assert "(2-2-2 steps per stage, 6 transformer calls, no CFG)" in (out / "README.md").read_text()
    if first_frame_prob == 1.0:
        pipe = NeodragonPipeline.from_pretrained(out)
        pipe.set_progress_bar_config(disable=True)
        pipe("a small red circle", output_type="latent", num_frames=9, generator=torch.Generator().manual_seed(0))
        assert pipe.num_timesteps == 6 + 3  # frame 0 at 2-2-2, frame 1 at 1-1-1


def test_bad_first_frame_steps_are_refused(teacher_dir, tmp_path):
    with pytest.raises(ValueError, match="--first_frame_steps_per_stage must be ints >= 1"):
        run(teacher_dir, tmp_path / "s", "--first_frame_steps_per_stage", "0")
    with pytest.raises(ValueError, match="need 1 or 3 entries"):
        run(teacher_dir, tmp_path / "s", "--first_frame_steps_per_stage", "2,2", "--max_train_steps", "1")


def test_resume_equals_uninterrupted_and_progressive_start(teacher_dir, tmp_path):
    common = ("--checkpointing_steps", "2", "--steps_per_stage", "1", "--save_mode", "monolithic")
    run(teacher_dir, tmp_path / "full", "--max_train_steps", "4", *common)
    parts = tmp_path / "parts"
    run(teacher_dir, parts, "--max_train_steps", "2", *common)
    result = run(teacher_dir, parts, "--max_train_steps", "4", "--resume_from_checkpoint", "latest", *common)
    assert result["global_step"] == 4
    reference, resumed = weights(tmp_path / "full"), weights(parts)
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-5, atol=1e-6)
    fake_ref = weights(tmp_path / "full" / "checkpoint-4", "fake")
    fake_res = weights(parts / "checkpoint-4", "fake")
    for key in fake_ref:
        torch.testing.assert_close(fake_res[key], fake_ref[key], rtol=1e-5, atol=1e-6)
    index = json.loads((parts / "model_index.json").read_text())
    assert index["mode"] == "monolithic" and index["first_frame_pipeline"] == [None, None]

    # progressive: a 1-1-1 run starting from the previous student's folder
    nxt = tmp_path / "next"
    run(teacher_dir, nxt, "--max_train_steps", "1", "--student_path", str(parts), "--checkpointing_steps", "0",
        "--no-use_ema", "--learning_rate", "0")
    for key, value in weights(nxt).items():
        torch.testing.assert_close(value, reference[key])


def test_a_text_distilled_teacher_with_a_streaming_decoder(tmp_path):
    """Later in the compression chain the teacher reads its text through DT5 -> ContextAdapter and decodes with an
    AsymmetricVAE: the student trains on the adapter's features and the saved pipeline keeps both parts."""
    teacher = tmp_path / "teacher"
    monolithic_pipeline(num_frames=9).save_pretrained(teacher)
    out = tmp_path / "student"
    result = run(teacher, out, "--max_train_steps", "1", "--steps_per_stage", "1", "--num_frames", "9",
                 "--resolution", "64", "--checkpointing_steps", "0", "--save_mode", "monolithic")
    assert result["global_step"] == 1 and np.isfinite(result["loss_dmd"])
    student, original = NeodragonPipeline.from_pretrained(out), NeodragonPipeline.from_pretrained(teacher)
    assert isinstance(student.vae, AsymmetricVAE)
    before, after = original.context_adapter.state_dict(), student.context_adapter.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
