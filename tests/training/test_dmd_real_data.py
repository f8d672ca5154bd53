"""distill_pyramidal_dmd.py on real data: latent shards written by training/extract_latents.py from a tiny pipeline's
VAE and text path, and the same mp4 folder read directly; both runs see the same batch (same losses)."""

import numpy as np
import pytest

from tests.data.video_files import write_clip_folder
from tests.script_loading import load_script
from tests.tiny_components import monolithic_pipeline


distill = load_script("training/distill_pyramidal_dmd.py")
extract = load_script("training/extract_latents.py")
DATA = ["--resolution", "64", "--num_frames", "9", "--fps", "5", "--max_sequence_length", "24"]


def run(teacher, out, *extra):
    return distill.main(distill.parse_args([
        "--teacher_path", str(teacher), "--output_dir", str(out), "--train_batch_size", "2", "--report_to", "none",
        "--max_train_steps", "1", "--checkpointing_steps", "0", "--num_validation_prompts", "0", "--no-use_ema",
        "--steps_per_stage", "1", "--save_mode", "monolithic", "--seed", "0", "--first_frame_prob", "0.5",
        *DATA, *extra,
    ]))


@pytest.fixture(scope="module")
def teacher_and_clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("dmd-real")
    monolithic_pipeline(num_frames=9).save_pretrained(root / "teacher")
    return root / "teacher", write_clip_folder(root / "clips")


def test_a_dmd_step_from_latent_shards_equals_one_from_the_videos(teacher_and_clips, tmp_path):
    teacher, clips = teacher_and_clips
    shards = tmp_path / "latents"
    extract.main(extract.parse_args([*DATA, "--pretrained_model_name_or_path", str(teacher), "--text_features",
                                     "--video_folder", str(clips), "--output_dir", str(shards)]))
    from_shards = run(teacher, tmp_path / "a", "--latents_dir", str(shards))
    from_videos = run(teacher, tmp_path / "b", "--video_folder", str(clips))
    assert from_shards["global_step"] == from_videos["global_step"] == 1
    for key in ("loss_dmd", "loss_cauchy", "loss_fake"):
        assert np.isfinite(from_shards[key])
        np.testing.assert_allclose(from_shards[key], from_videos[key], rtol=1e-4, err_msg=key)
    card = (tmp_path / "a" / "README.md").read_text()
    assert f"2 clips of latents_dir={shards}" in card and "{{" not in card

    with pytest.raises(ValueError, match="one data source"):
        distill.parse_args(["--teacher_path", str(teacher), "--latents_dir", str(shards), "--dataset_name", "x"])
    with pytest.raises(ValueError, match="latents of shape"):
        run(teacher, tmp_path / "c", "--latents_dir", str(shards), "--num_frames", "17")
    other = tmp_path / "other-teacher"
    monolithic_pipeline(seed=1, num_frames=9).save_pretrained(other)
    with pytest.raises(ValueError, match="another VAE"):
        run(other, tmp_path / "d", "--latents_dir", str(shards))
