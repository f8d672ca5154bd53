"""CPU tests of training/train_quicksrnet.py: a loadable QuickSRNet folder with its card and validation figures,
exact resume, ``--pipeline_output`` (the trained network inside a pipeline that generates), the VAE-degraded
inputs, fine-tuning a pipeline's network, and clear errors for bad arguments."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffusers_neodragon import NeodragonPipeline, QuickSRNet
from tests.script_loading import load_script
from tests.tiny_components import monolithic_pipeline


train = load_script("training/train_quicksrnet.py")

DATA = [
    "--resolution", "32", "--num_frames", "2", "--frames_per_clip", "2", "--crop_size", "16", "--train_samples", "4",
    "--train_batch_size", "2", "--report_to", "none", "--lr_warmup_steps", "1", "--learning_rate", "1e-2",
    "--num_validation_clips", "1", "--checkpointing_steps", "0",
]
TINY = [*DATA, "--num_channels", "4", "--num_intermediate_layers", "1"]


@pytest.fixture(scope="module")
def teacher_pipeline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    monolithic_pipeline().save_pretrained(folder)
    return folder


def run(output_dir, *extra, tiny=TINY):
    return train.main(train.parse_args([*tiny, "--output_dir", str(output_dir), *extra]))


def weights(folder):
    return load_file(str(Path(folder) / "super_resolution" / "diffusion_pytorch_model.safetensors"))


def test_training_writes_a_loadable_network_card_and_pipeline(teacher_pipeline, tmp_path):
    out = tmp_path / "run"
    result = run(out, "--max_train_steps", "3", "--validation_steps", "2", "--teacher", str(teacher_pipeline),
                 "--pipeline_output", str(tmp_path / "pipe"))
    assert result["global_step"] == 3 and result["loss"] > 0
    # Nearest and bicubic are measured on the same inputs; SR starts as nearest and has moved away from it.
    assert result["psnr_nearest"] > 10 and result["psnr_bicubic"] > 10 and result["psnr_sr"] != result["psnr_nearest"]
    model = QuickSRNet.from_pretrained(out, subfolder="super_resolution")
    assert model.config.num_channels == 4 and model.config.scale_factor == 2
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 3, 16, 16)
    assert sorted(p.name for p in (out / "validation").glob("*.png")) == ["sr-step-000002.png", "sr-step-000003.png"]
    card = (out / "README.md").read_text()
    assert "accelerate launch training/train_quicksrnet.py" in card and "--max_train_steps 3" in card
    assert "1 - SSIM (offline substitute for LPIPS)" in card and "area" in card and "{{" not in card
    assert f"{result['psnr_bicubic']:.4g}" in card and f"{result['ssim_sr']:.4g}" in card

    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["super_resolution"][1] == "QuickSRNet" and (tmp_path / "pipe" / "README.md").is_file()
    pipe = NeodragonPipeline.from_pretrained(tmp_path / "pipe", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    trained = weights(out)
    for key, value in pipe.super_resolution.state_dict().items():
        assert torch.equal(value, trained[key]), key
    frames = pipe("a red circle moving left", height=64, width=64, num_frames=9, output_type="np",
                  num_inference_steps=1, video_num_inference_steps=1,
                  generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 9, 128, 128, 3) and np.isfinite(frames).all()


def test_resume_reaches_the_uninterrupted_weights(tmp_path):
    full, parts = tmp_path / "full", tmp_path / "parts"
    common = ("--checkpointing_steps", "2", "--num_validation_clips", "0", "--train_samples", "3",
              "--train_batch_size", "1", "--downsample", "bicubic", "--pixel_loss", "l1")
    run(full, "--max_train_steps", "4", *common)
    run(parts, "--max_train_steps", "2", *common)
    interrupted = weights(parts)
    assert run(parts, "--max_train_steps", "4", "--resume_from_checkpoint", "latest", *common)["global_step"] == 4
    reference, resumed = weights(full), weights(parts)
    assert any(not torch.equal(interrupted[k], reference[k]) for k in reference)
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-5, atol=1e-6)


def test_vae_degraded_inputs_and_fine_tuning_a_pipelines_network(teacher_pipeline, tmp_path):
    tiny = list(DATA)
    tiny[tiny.index("--num_frames") + 1] = "9"
    result = run(tmp_path / "run", "--max_train_steps", "1", "--teacher", str(teacher_pipeline), "--degrade", "vae",
                 "--pretrained_model_name_or_path", str(teacher_pipeline), "--perceptual", "none", tiny=tiny)
    assert result["global_step"] == 1 and np.isfinite(result["psnr_sr"])
    start = QuickSRNet.from_pretrained(teacher_pipeline, subfolder="super_resolution")
    tuned = QuickSRNet.from_pretrained(tmp_path / "run", subfolder="super_resolution")
    assert tuned.config.num_channels == start.config.num_channels
    assert "VAE round trip" in (tmp_path / "run" / "README.md").read_text()


def test_bad_arguments_raise_clear_errors(teacher_pipeline, tmp_path):
    with pytest.raises(ValueError, match="--crop_size must be a positive multiple of the scale 2"):
        run(tmp_path / "a", "--crop_size", "15")
    with pytest.raises(ValueError, match="--scale 3 does not match the loaded model's scale_factor 2"):
        train.main(train.parse_args(["--pretrained_model_name_or_path", str(teacher_pipeline), "--scale", "3",
                                     "--output_dir", str(tmp_path / "b")]))
    with pytest.raises(ValueError, match="from scratch"):
        train.parse_args(["--pretrained_model_name_or_path", "x", "--num_channels", "8"])
    with pytest.raises(ValueError, match="1 \\+ 8k"):
        train.parse_args(["--degrade", "vae", "--num_frames", "4"])
    with pytest.raises(ValueError, match="holds no QuickSRNet"):
        run(tmp_path / "c", "--pretrained_model_name_or_path", str(tmp_path), tiny=DATA)
    with pytest.raises(ValueError, match="needs a pipeline folder"):
        run(tmp_path / "d", "--teacher", str(teacher_pipeline / "vae"), "--pipeline_output", str(tmp_path / "p"))
    with pytest.raises(ValueError, match="multiple of 16"):
        run(tmp_path / "e", "--degrade", "vae", "--num_frames", "9", "--teacher", str(teacher_pipeline),
            "--resolution", "40")


def test_video_folder_frames_and_push_to_hub(tmp_path, monkeypatch):
    import huggingface_hub
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    clips = tmp_path / "clips"
    for k in range(3):
        (clips / f"clip{k}").mkdir(parents=True)
        for i in range(2):
            iio.imwrite(clips / f"clip{k}" / f"{i:03d}.png", rng.integers(0, 255, (32, 40, 3), dtype=np.uint8))
    pushed = []
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: type("Repo", (), {"repo_id": repo_id})())
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kw: pushed.append(kw))
    result = run(tmp_path / "run", "--video_folder", str(clips), "--max_train_steps", "1", "--push_to_hub",
                 "--hub_model_id", "me/tiny-sr", "--hub_token", "secret")
    assert result["global_step"] == 1 and np.isfinite(result["psnr_sr"])
    assert len(pushed) == 1 and pushed[0]["folder_path"] == str(tmp_path / "run")
    card = (tmp_path / "run" / "README.md").read_text()
    assert "# me/tiny-sr" in card and f"{clips} (video folder)" in card and "secret" not in card
    with pytest.raises(ValueError, match="too few to hold 3 out"):
        run(tmp_path / "run2", "--video_folder", str(clips), "--num_validation_clips", "3")
