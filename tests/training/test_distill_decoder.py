"""CPU tests of training/distill_decoder.py: outputs (VAE folder, pipeline folder, card), the encoder left bitwise
unchanged, exact resume, the 8x8x8 check, latent caching and the teacher target, video folders, --push_to_hub, and
the export of the pipeline with the distilled decoder."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffusers_neodragon import AsymmetricVAE, CausalVideoVAE, NeodragonPipeline
from diffusers_neodragon.data.shapes import to_unit_range
from diffusers_neodragon.training_utils.asymmetric_student import build_student_vae, encoder_state
from diffusers_neodragon.training_utils.generated_clips import sample_generated_clips
from tests.script_loading import load_script
from tests.tiny_components import monolithic_pipeline, tiny_causal_vae


distill = load_script("training/distill_decoder.py")

TINY = [
    "--resolution", "16", "--num_frames", "9", "--decoder_num_features", "8,8,4,4", "--decoder_blocks_per_stage",
    "1", "--train_samples", "4", "--train_batch_size", "2", "--report_to", "none", "--lr_warmup_steps", "1",
    "--seed", "0", "--num_validation_clips", "1", "--checkpointing_steps", "0",
]
LATENT_CONSTANTS = ("image_latent_shift", "image_latent_scale", "video_latent_shift", "video_latent_scale")


@pytest.fixture(scope="module")
def teacher_pipeline(tmp_path_factory):
    """A tiny monolithic pipeline whose VAE has the full causal decoder (the embedded model's layout)."""
    folder = tmp_path_factory.mktemp("teacher")
    pipe = monolithic_pipeline(with_super_resolution=False)
    vae = tiny_causal_vae(seed=1)
    vae.register_to_config(image_latent_shift=0.1, image_latent_scale=1.5, video_latent_shift=-0.2,
                           video_latent_scale=1.2)
    pipe.register_modules(vae=vae)
    pipe.save_pretrained(folder)
    return folder


def run(teacher, output_dir, *extra):
    args = distill.parse_args([*TINY, "--teacher", str(teacher), "--output_dir", str(output_dir), *extra])
    return distill.main(args)


def weights(folder):
    return load_file(str(Path(folder) / "vae" / "diffusion_pytorch_model.safetensors"))


def test_distill_writes_an_asymmetric_vae_with_the_teacher_encoder_and_a_pipeline(teacher_pipeline, tmp_path):
    out = tmp_path / "run"
    result = run(teacher_pipeline, out, "--max_train_steps", "2", "--validation_steps", "1",
                 "--pipeline_output", str(tmp_path / "pipe"))
    assert result["global_step"] == 2 and result["loss"] > 0
    assert result["psnr_teacher"] > 0 and "psnr_student" in result and "ssim_student" in result
    student = AsymmetricVAE.from_pretrained(out / "vae")
    teacher = CausalVideoVAE.from_pretrained(teacher_pipeline / "vae")
    for name in LATENT_CONSTANTS:
        assert getattr(student.config, name) == getattr(teacher.config, name)
    taught = encoder_state(teacher)
    assert encoder_state(student).keys() == taught.keys() and len(taught) > 10
    for key, value in encoder_state(student).items():
        assert torch.equal(value, taught[key]), key  # bitwise: the latent space did not move
    assert list(student.config.decoder_num_features) == [8, 8, 4, 4] and student.config.decoder_blocks_per_stage == 1
    assert sorted(p.name for p in (out / "validation").glob("*.png")) == [
        "decoder-step-000001.png", "decoder-step-000002.png"]
    card = (out / "README.md").read_text()
    assert "accelerate launch training/distill_decoder.py" in card and "--max_train_steps 2" in card
    assert "1 - SSIM (offline substitute for LPIPS)" in card and "the clip itself" in card and "{{" not in card
    assert f"{result['psnr_student']:.4g}" in card

    # The pipeline folder: the teacher's, with the student as its vae; it loads and generates, whole and streamed.
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["vae"][1] == "AsymmetricVAE" and (tmp_path / "pipe" / "README.md").is_file()
    pipe = NeodragonPipeline.from_pretrained(tmp_path / "pipe", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.vae, AsymmetricVAE)
    teacher_pipe = NeodragonPipeline.from_pretrained(teacher_pipeline, dtype=torch.float32)
    for key, value in teacher_pipe.transformer.state_dict().items():
        assert torch.equal(value, pipe.transformer.state_dict()[key])
    kwargs = dict(height=64, width=64, num_frames=9, output_type="np", num_inference_steps=1,
                  video_num_inference_steps=1)
    whole = pipe("a red circle moving left", generator=torch.Generator().manual_seed(0), **kwargs).frames
    streamed = pipe("a red circle moving left", generator=torch.Generator().manual_seed(0), decode_chunk_size=1,
                    **kwargs).frames
    assert whole.shape == (1, 9, 64, 64, 3) and np.isfinite(whole).all()
    np.testing.assert_allclose(streamed, whole, atol=1e-5)


def test_distill_resume_reaches_the_uninterrupted_weights(teacher_pipeline, tmp_path):
    """2 steps (checkpoint at 2) + resume to 4 == 4 uninterrupted steps; a sampled posterior keeps it exact."""
    full, parts = tmp_path / "full", tmp_path / "parts"
    common = ("--train_samples", "3", "--train_batch_size", "1", "--checkpointing_steps", "2",
              "--num_validation_clips", "0", "--sample_posterior")
    run(teacher_pipeline, full, "--max_train_steps", "4", *common)
    run(teacher_pipeline, parts, "--max_train_steps", "2", *common)
    interrupted = weights(parts)
    assert run(teacher_pipeline, parts, "--max_train_steps", "4", "--resume_from_checkpoint", "latest",
               *common)["global_step"] == 4
    reference, resumed = weights(full), weights(parts)
    assert any(not torch.equal(interrupted[k], reference[k]) for k in reference)
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-5, atol=1e-6)


def test_student_init_continues_an_earlier_student_of_the_same_teacher_only(teacher_pipeline, tmp_path):
    first = tmp_path / "first"
    run(teacher_pipeline, first, "--max_train_steps", "2", "--num_validation_clips", "0",
        "--decoder_num_features", "8,4,4,4")
    # (Warm-up makes step 1's learning rate 0.) The shape comes from the earlier student (not from the default
    # --decoder_num_features), and it trains on.
    run(teacher_pipeline, tmp_path / "second", "--max_train_steps", "2", "--num_validation_clips", "0",
        "--student_init", str(first))
    student = AsymmetricVAE.from_pretrained(tmp_path / "second" / "vae")
    assert list(student.config.decoder_num_features) == [8, 4, 4, 4]
    before, after = weights(first), weights(tmp_path / "second")
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    for key in encoder_state(student):
        assert torch.equal(before[key], after[key]), key
    assert f"steps: 2, from the student in {first}" in (tmp_path / "second" / "README.md").read_text()

    other = tmp_path / "other_teacher"
    pipe = NeodragonPipeline.from_pretrained(teacher_pipeline, dtype=torch.float32)
    pipe.register_modules(vae=tiny_causal_vae(seed=7))
    pipe.save_pretrained(other)
    with pytest.raises(ValueError, match="not the teacher's"):
        run(other, tmp_path / "third", "--max_train_steps", "1", "--student_init", str(first))


def test_student_upsampling_must_match_the_encoder():
    teacher = tiny_causal_vae()
    with pytest.raises(ValueError, match=r"upsamples 4x in time .* compresses 8x"):
        build_student_vae(teacher, (8, 8, 8, 8), time_upscale=(1, 1, 0))
    with pytest.raises(ValueError, match=r"upsamples 16x in space"):
        build_student_vae(teacher, (8, 8, 8, 8, 8), time_upscale=(1, 1, 1, 0), space_upscale=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="3 stages"):
        build_student_vae(teacher, (8, 8, 8, 8), time_upscale=(1, 1, 1, 0))
    # Four stages, one of them without resampling: still 8x8x8, a valid student with the teacher's latents.
    student = build_student_vae(teacher, (8, 8, 8, 8, 8), blocks_per_stage=(1, 1, 1, 0),
                                time_upscale=(1, 1, 1, 0), space_upscale=(0, 1, 1, 1))
    assert not any(p.requires_grad for p in student.encoder.parameters())
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(student.encode(video).latent_dist.mean, teacher.encode(video).latent_dist.mean)
        assert student.decode(teacher.encode(video).latent_dist.mode()).sample.shape == video.shape


def test_the_script_rejects_a_mismatched_decoder_and_bad_arguments(teacher_pipeline, tmp_path):
    with pytest.raises(ValueError, match="does not invert the teacher's encoder"):
        run(teacher_pipeline, tmp_path, "--decoder_time_upscale", "1,1,0", "--max_train_steps", "1")
    with pytest.raises(ValueError, match="num_frames"):
        distill.parse_args(["--num_frames", "10"])
    with pytest.raises(ValueError, match="pipeline folder"):
        run(teacher_pipeline / "vae", tmp_path / "v", "--max_train_steps", "1", "--pipeline_output",
            str(tmp_path / "p"))


def test_lpips_without_local_weights_names_the_offline_alternatives(monkeypatch):
    from diffusers_neodragon.training_utils import perceptual

    monkeypatch.setattr(perceptual, "lpips_weights_missing", lambda net: "weights not at /x")
    monkeypatch.setattr(distill, "lpips_weights_missing", perceptual.lpips_weights_missing)
    with pytest.raises(ValueError, match="weights not at /x.*--perceptual ssim"):
        distill.parse_args(["--perceptual", "lpips"])
    with pytest.raises(RuntimeError, match="LPIPS is unavailable"):
        perceptual.build_local_lpips("vgg")


def test_cached_latents_teacher_target_l1_and_encoder_features(teacher_pipeline, tmp_path):
    cache = tmp_path / "cache"
    result = run(teacher_pipeline, tmp_path / "run", "--max_train_steps", "2", "--latent_cache_dir", str(cache),
                 "--dataloader_num_workers", "2", "--target", "teacher", "--pixel_loss", "l1",
                 "--perceptual", "encoder_features")
    assert result["global_step"] == 2 and np.isfinite(result["loss"])
    files = sorted(cache.glob("*.safetensors"))
    assert [f.name for f in files] == [f"{i:08d}.safetensors" for i in range(4)]
    teacher = CausalVideoVAE.from_pretrained(teacher_pipeline / "vae")
    args = distill.parse_args([*TINY, "--teacher", str(teacher_pipeline)])
    dataset, _ = distill.build_datasets(args)
    with torch.no_grad():
        posterior = teacher.encode(to_unit_range(dataset[3]["video"][None])).latent_dist
    torch.testing.assert_close(load_file(str(files[3]))["mean"], posterior.mean[0], rtol=1e-5, atol=1e-6)
    # The cache belongs to this teacher and these clips: other clips (another seed) are refused, not mixed in.
    with pytest.raises(ValueError, match="another teacher or other clips"):
        run(teacher_pipeline, tmp_path / "other", "--max_train_steps", "1", "--latent_cache_dir", str(cache),
            "--seed", "7")
    card = (tmp_path / "run" / "README.md").read_text()
    assert "the teacher decoder's output" in card and "1·L1" in card and "frozen teacher encoder" in card


def test_latent_noise_and_loss_weights_change_what_the_student_learns(teacher_pipeline, tmp_path, monkeypatch):
    """--latent_noise_std decodes perturbed latents (the clean posterior of the same clip otherwise), and with
    the object, edge and first-frame weights it reaches the loss and the card."""
    decoded = []
    decode = AsymmetricVAE.decode
    monkeypatch.setattr(AsymmetricVAE, "decode",
                        lambda self, z, *a, **k: (self.training and decoded.append(z.detach().clone()))
                        or decode(self, z, *a, **k))
    common = ("--max_train_steps", "2", "--num_validation_clips", "0")  # the first step's learning rate is 0
    run(teacher_pipeline, tmp_path / "clean", *common)
    run(teacher_pipeline, tmp_path / "noisy", *common, "--latent_noise_std", "0.5", "--foreground_weight", "2",
        "--first_frame_weight", "8", "--edge_weight", "0.5")
    clean, noisy = decoded[0], decoded[2]
    assert clean.shape == noisy.shape and 0 < (noisy - clean).abs().mean() < 1
    assert any(not torch.equal(a, b) for a, b in zip(weights(tmp_path / "clean").values(),
                                                      weights(tmp_path / "noisy").values()))
    card = (tmp_path / "noisy" / "README.md").read_text()
    assert "2·foreground L1 + 0.5·edge L1" in card
    assert "first frame counted 8x" in card and "std up to 0.5" in card
    for bad, message in ((("--latent_noise_std", "-0.1"), "--latent_noise_std"),
                         (("--foreground_weight", "-1"), "--foreground_weight"),
                         (("--edge_weight", "-1"), "--edge_weight"),
                         (("--foreground_weight", "1", "--video_folder", str(tmp_path)), "plain backgrounds")):
        with pytest.raises(ValueError, match=message):
            distill.parse_args([*TINY, *bad])


def test_generated_clips_are_the_teacher_pipelines_own_samples_and_resume_exactly(teacher_pipeline, tmp_path):
    """--generated_clips: the teacher pipeline samples clips once (its latents, its decoder's pixels as the target);
    every step adds some to the batch, a resumed run draws the same ones, and a folder of other clips is refused."""
    clips = tmp_path / "clips"
    common = ("--resolution", "64", "--generated_clips", "3", "--generated_batch_size", "1", "--generated_clips_dir",
              str(clips), "--train_batch_size", "1", "--num_validation_clips", "0", "--checkpointing_steps", "2")
    run(teacher_pipeline, tmp_path / "full", "--max_train_steps", "4", *common)
    assert sorted(f.name for f in clips.glob("*.safetensors")) == [f"{i:08d}.safetensors" for i in range(3)]

    # Independently: the pipeline's own video of clip 1's prompt and seed is the stored target, and its latents
    # decode to it.
    args = distill.parse_args([*TINY, *common])
    prompt = distill.generation_prompts(args)[1]
    pipe = NeodragonPipeline.from_pretrained(teacher_pipeline, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(prompt, num_frames=9, height=64, width=64, generator=torch.Generator().manual_seed(1),
                  output_type="np").frames[0]  # [F, H, W, 3] in [0, 1]
    stored = load_file(str(clips / "00000001.safetensors"))
    assert stored["video"].dtype == torch.uint8 and stored["video"].shape == (3, 9, 64, 64)
    np.testing.assert_allclose(stored["video"].permute(1, 2, 3, 0).numpy() / 255.0, frames, atol=1.5 / 255)
    with torch.no_grad():
        decoded = pipe.vae.decode(stored["latents"][None]).sample[0]
    torch.testing.assert_close(decoded.clamp(-1, 1), stored["video"].float() / 127.5 - 1, rtol=0, atol=1.5 / 127.5)

    run(teacher_pipeline, tmp_path / "parts", "--max_train_steps", "2", *common)
    run(teacher_pipeline, tmp_path / "parts", "--max_train_steps", "4", "--resume_from_checkpoint", "latest", *common)
    reference, resumed = weights(tmp_path / "full"), weights(tmp_path / "parts")
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-5, atol=1e-6)
    without = tmp_path / "without"
    run(teacher_pipeline, without, "--max_train_steps", "4", *common[:2], *common[8:])
    assert any(not torch.equal(weights(without)[k], reference[k]) for k in reference)  # they reached the loss
    card = (tmp_path / "full" / "README.md").read_text()
    assert "3 clips (its transformer's latents" in card and "Shapes world training split" in card

    # The folder grows (the 3 clips kept, a 4th sampled), but never mixes in another seed or another prompt.
    before = (clips / "00000002.safetensors").stat().st_mtime_ns
    sample_generated_clips(pipe, [*distill.generation_prompts(args), "a red circle moving left"], clips, seed=0,
                           num_frames=9, height=64, width=64)
    assert (clips / "00000003.safetensors").is_file() and (clips / "00000002.safetensors").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="another pipeline, seed or size"):
        sample_generated_clips(pipe, ["a red circle moving left"], clips, seed=5, num_frames=9, height=64, width=64)
    with pytest.raises(ValueError, match="sampled from another prompt"):
        sample_generated_clips(pipe, ["a red circle moving left"], clips, seed=0, num_frames=9, height=64, width=64)
    for bad, message in ((("--generated_clips", "-1"), "--generated_clips"),
                         (("--generated_clips", "2", "--sample_posterior"), "no posterior|have none"),
                         (("--generated_clips", "2", "--video_folder", str(tmp_path)), "--generation_prompts")):
        with pytest.raises(ValueError, match=message):
            distill.parse_args([*TINY, *bad])
    with pytest.raises(ValueError, match="not a pipeline folder"):
        run(teacher_pipeline / "vae", tmp_path / "vae_only", "--max_train_steps", "1", *common)


def test_video_folder_training(teacher_pipeline, tmp_path):
    import imageio.v3 as iio

    from diffusers_neodragon.data.video_folder import VideoFolderDataset

    rng = np.random.default_rng(0)
    clips = tmp_path / "clips"
    for k in range(3):
        (clips / f"clip{k}").mkdir(parents=True)
        for i in range(10):
            iio.imwrite(clips / f"clip{k}" / f"{i:03d}.png", rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
    (clips / "short").mkdir()
    iio.imwrite(clips / "short" / "000.png", np.zeros((20, 24, 3), np.uint8))
    iio.imwrite(clips / "short_video.gif", rng.integers(0, 255, (3, 20, 24, 3), dtype=np.uint8))  # 3 frames
    (clips / "broken.mp4").write_bytes(b"not a video")
    dataset = VideoFolderDataset(clips, num_frames=9, height=16, width=16)
    assert len(dataset) == 3 and [p.name for p in dataset.skipped] == ["broken.mp4", "short", "short_video.gif"]
    video = dataset[0]["video"]
    assert video.shape == (3, 9, 16, 16) and video.min() >= -1 and video.max() <= 1
    result = run(teacher_pipeline, tmp_path / "run", "--video_folder", str(clips), "--max_train_steps", "1",
                 "--train_batch_size", "1")
    assert result["global_step"] == 1 and result["psnr_student"] is not None
    with pytest.raises(ValueError, match="No clip"):
        VideoFolderDataset(clips, num_frames=17, height=16, width=16)


def test_push_to_hub_uploads_the_pipeline_folder(teacher_pipeline, tmp_path, monkeypatch):
    import huggingface_hub

    pushed = []
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: type("Repo", (), {"repo_id": repo_id})())
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kw: pushed.append(kw))
    run(teacher_pipeline, tmp_path / "run", "--max_train_steps", "1", "--num_validation_clips", "0",
        "--pipeline_output", str(tmp_path / "pipe"), "--push_to_hub", "--hub_model_id", "me/tiny-decoder",
        "--hub_token", "secret")
    assert len(pushed) == 1 and pushed[0]["repo_id"] == "me/tiny-decoder"
    assert pushed[0]["folder_path"] == str(tmp_path / "pipe") and pushed[0]["token"] == "secret"
    card = (tmp_path / "pipe" / "README.md").read_text()
    assert "# me/tiny-decoder" in card and "secret" not in card


def test_the_pipeline_with_the_distilled_decoder_exports(teacher_pipeline, tmp_path, capsys):
    """After distillation the tiny decoder's step exports (ONNX, torch backend; and on the QNN HTP simulator where
    onnxruntime-qnn is installed). The teacher's full causal decoder exports too, as two step graphs with explicit
    caches (tests/export/test_export_causal_decoder.py), but its temporal upsampler is not placed on the HTP."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from diffusers_neodragon_cli.export_arguments import export_main

    run(teacher_pipeline, tmp_path / "run", "--max_train_steps", "1", "--num_validation_clips", "0",
        "--pipeline_output", str(tmp_path / "pipe"))
    out = tmp_path / "onnx"
    check_htp = []
    try:
        import onnxruntime_qnn  # noqa: F401

        check_htp = ["--check-htp"]
    except ImportError:
        pass
    code = export_main([str(tmp_path / "pipe"), "--output", str(out), "--height", "64", "--width", "64",
                        "--frames", "9", "--components", "decoder_step", "--backend", "torch", *check_htp])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["components"]) == ["decoder_step"]
    assert (out / manifest["components"]["decoder_step"]["file"]).is_file()
    if check_htp:
        report = json.loads((out / "htp_report_fp16.json").read_text())
        assert [r["on_htp"] for r in report["reports"]] == [True]


def test_the_student_decoder_starts_at_unit_gain():
    """The reference init (std 0.02) shrinks a narrow decoder's output to ~1e-7; the student's starts O(1), with
    every MemBlock the identity."""
    from diffusers_neodragon.models.autoencoders.autoencoder_asymmetric import MemBlock

    student = build_student_vae(tiny_causal_vae(), (32, 32, 16, 16), blocks_per_stage=3)
    assert all(not b.conv[-1].weight.any() for b in student.decoder.modules() if isinstance(b, MemBlock))
    with torch.no_grad():
        out = student.decode(torch.randn(2, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0))).sample
    assert 0.1 < out.std().item() < 10
