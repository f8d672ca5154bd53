"""CPU smoke tests of training/train_vae.py: outputs, latent constants, model card, and exact resume."""

import inspect
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusers_neodragon import CausalVideoVAE
from tests.script_loading import load_script


train_vae = load_script("training/train_vae.py")

TINY = [
    "--resolution", "16", "--num_frames", "9", "--block_out_channels", "8,8,8,8", "--layers_per_block", "1,1,1,1",
    "--norm_num_groups", "4", "--latent_channels", "4", "--train_samples", "6", "--train_batch_size", "2",
    "--report_to", "none", "--lr_warmup_steps", "1", "--learning_rate", "1e-3", "--seed", "0",
]


def run(output_dir, *extra):
    args = train_vae.parse_args([*TINY, "--output_dir", str(output_dir), *extra])
    return train_vae.main(args)


def weights(folder):
    return load_file(str(Path(folder) / "vae" / "diffusion_pytorch_model.safetensors"))


def test_train_vae_writes_a_loadable_vae_with_constants_and_card(tmp_path):
    result = run(tmp_path, "--max_train_steps", "2", "--validation_steps", "1", "--num_validation_clips", "1",
                 "--normalization_samples", "2", "--checkpointing_steps", "0", "--edge_weight", "0.5")
    assert result["global_step"] == 2 and result["loss"] > 0 and result["psnr"] is not None
    vae = CausalVideoVAE.from_pretrained(tmp_path / "vae")
    assert vae.config.latent_channels == 4 and list(vae.config.encoder_block_out_channels) == [8, 8, 8, 8]
    defaults = inspect.signature(CausalVideoVAE.__init__).parameters
    for name in ("image_latent_shift", "image_latent_scale", "video_latent_shift", "video_latent_scale"):
        assert getattr(vae.config, name) != defaults[name].default
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    with torch.no_grad():
        assert vae(video).sample.shape == video.shape
    assert sorted(p.name for p in (tmp_path / "validation").glob("*.png")) == [
        "vae-step-000001.png", "vae-step-000002.png"
    ]
    card = (tmp_path / "README.md").read_text()
    assert "accelerate launch training/train_vae.py" in card and "--max_train_steps 2" in card
    assert "0.5·edge" in card
    assert f"{result['psnr']:.4g}" in card and "{{" not in card
    assert not list(tmp_path.glob("checkpoint-*"))


def test_train_vae_fine_tunes_a_run_folder_and_validates_on_longer_clips(tmp_path, monkeypatch):
    """Phase 2 of the recipe: start from phase 1's output folder (weights equal at step 0); validation clips have
    --validation_num_frames, not the training length."""
    run(tmp_path / "short", "--max_train_steps", "1", "--num_validation_clips", "0", "--normalization_samples", "2",
        "--checkpointing_steps", "0")
    args = train_vae.parse_args([*TINY, "--output_dir", str(tmp_path / "long"), "--pretrained_vae",
                                 str(tmp_path / "short"), "--validation_num_frames", "17"])
    assert torch.equal(train_vae.build_vae(args).encoder.conv_in.conv.weight,
                       CausalVideoVAE.from_pretrained(tmp_path / "short" / "vae").encoder.conv_in.conv.weight)
    validated = []
    log_validation = train_vae.log_validation
    monkeypatch.setattr(train_vae, "log_validation",
                        lambda vae, videos, *a, **k: validated.append(videos.shape)
                        or log_validation(vae, videos, *a, **k))
    result = run(tmp_path / "long", "--pretrained_vae", str(tmp_path / "short"), "--validation_num_frames", "17",
                 "--max_train_steps", "1", "--num_validation_clips", "1", "--normalization_samples", "2",
                 "--checkpointing_steps", "0")
    assert result["psnr"] is not None and validated == [torch.Size([1, 3, 17, 16, 16])]  # trained on 9 frames
    assert weights(tmp_path / "long").keys() == weights(tmp_path / "short").keys()
    with pytest.raises(ValueError, match="validation_num_frames"):
        train_vae.parse_args([*TINY, "--validation_num_frames", "12"])


def test_train_vae_resume_reaches_the_uninterrupted_weights(tmp_path):
    """2 steps (checkpoint at 2) + resume to 4 == 4 uninterrupted steps, to float tolerance."""
    full, parts = tmp_path / "full", tmp_path / "parts"
    # 3 samples, batch 1: 3 steps per epoch, so the resumed run starts mid-epoch and crosses into the next one.
    common = ("--resolution", "8", "--train_batch_size", "1", "--train_samples", "3", "--checkpointing_steps", "2",
              "--num_validation_clips", "0", "--normalization_samples", "1")
    run(full, "--max_train_steps", "4", *common)
    (parts / "checkpoint-1").mkdir(parents=True)  # rotated away by the limit below
    run(parts, "--max_train_steps", "2", "--checkpoints_total_limit", "1", *common)
    assert [p.name for p in parts.glob("checkpoint-*")] == ["checkpoint-2"]
    interrupted = weights(parts)
    result = run(parts, "--max_train_steps", "4", "--resume_from_checkpoint", "latest", *common)
    assert result["global_step"] == 4
    reference, resumed = weights(full), weights(parts)
    assert any(not torch.equal(interrupted[k], reference[k]) for k in reference)
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-5, atol=1e-6)


def test_train_vae_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_frames"):
        train_vae.parse_args(["--num_frames", "10"])
    with pytest.raises(ValueError, match="resolution"):
        train_vae.parse_args(["--resolution", "30"])


def _colour_gain(vae):
    """How much the decoded mean colour moves when the latent's first channel changes (spatially flat codes)."""
    z = torch.zeros(2, vae.config.latent_channels, 1, 2, 2)
    z[0, 0], z[1, 0] = 1.0, -1.0
    with torch.no_grad():
        out = vae.decode(z).sample
    return (out[0].mean((1, 2, 3)) - out[1].mean((1, 2, 3))).abs().max().item()


def _latent_std(vae):
    torch.manual_seed(1)
    with torch.no_grad():
        return vae.encode(torch.rand(2, 3, 1, 16, 16) * 2 - 1).latent_dist.mean.std().item()


def test_scaled_init_passes_latents_and_colours_at_unit_scale():
    """The reference init (std 0.02) shrinks a narrow VAE's latent path to ~1e-4, and such a VAE never learns
    colours; the scaled init starts every residual block as the identity with O(1) latents and colour gain."""
    torch.manual_seed(0)
    scaled = train_vae.build_vae(train_vae.parse_args([*TINY, "--vae_init", "scaled"]))
    torch.manual_seed(0)
    reference = train_vae.build_vae(train_vae.parse_args([*TINY, "--vae_init", "reference"]))
    for module in scaled.modules():
        if isinstance(module, train_vae.CausalResnetBlock3D):
            assert not module.conv2.conv.weight.any()
    assert not scaled.decoder.mid_block.attentions[0].to_out[0].weight.any()
    assert _latent_std(scaled) > 0.05 > 0.01 > _latent_std(reference)
    assert _colour_gain(scaled) > 0.05 > 0.01 > _colour_gain(reference)


def test_decoder_only_fine_tune_keeps_the_encoder_and_constants(tmp_path):
    """--decoder_only --latent_noise_std (here with --foreground_weight): the encoder, posterior projection and latent
    constants are the pretrained ones (a transformer trained on them stays valid); the decoder learns."""
    run(tmp_path / "base", "--max_train_steps", "1", "--num_validation_clips", "0", "--normalization_samples", "2",
        "--checkpointing_steps", "0")
    run(tmp_path / "tuned", "--pretrained_vae", str(tmp_path / "base"), "--decoder_only", "--latent_noise_std", "0.5",
        "--foreground_weight", "2", "--first_frame_weight", "8", "--max_train_steps", "2",
        "--num_validation_clips", "0",
        "--checkpointing_steps", "0")
    assert "+ 2.0·foreground, the first frame counting as 8 frames" in (tmp_path / "tuned" / "README.md").read_text()
    before, after = weights(tmp_path / "base"), weights(tmp_path / "tuned")
    assert before.keys() == after.keys()
    decoder = [n for n in before if n.startswith(("decoder.", "post_quant_conv."))]
    assert all(torch.equal(before[n], after[n]) for n in before if n not in decoder)  # encoder + quant_conv
    changed = [n for n in decoder if not torch.equal(before[n], after[n])]
    assert len(changed) > len(decoder) // 2  # (zero-initialised branches keep a few at their start)
    base, tuned = (CausalVideoVAE.from_pretrained(tmp_path / folder / "vae") for folder in ("base", "tuned"))
    for name in train_vae.LATENT_CONSTANTS:
        assert getattr(tuned.config, name) == getattr(base.config, name)
    with pytest.raises(ValueError, match="--decoder_only"):
        train_vae.parse_args([*TINY, "--decoder_only"])
    with pytest.raises(ValueError, match="--latent_noise_std"):
        train_vae.parse_args([*TINY, "--latent_noise_std", "-1"])
    with pytest.raises(ValueError, match="--first_frame_weight"):
        train_vae.parse_args([*TINY, "--first_frame_weight", "0"])


def test_latent_noise_perturbs_the_decoded_latents_in_normalised_units():
    vae = train_vae.build_vae(train_vae.parse_args([*TINY, "--output_dir", "unused"])).eval()
    vae.register_to_config(image_latent_scale=4.0, video_latent_scale=2.0)
    video = torch.rand(2, 3, 9, 16, 16) * 2 - 1
    decoded = []
    vae.decode = lambda latents: decoded.append(latents) or CausalVideoVAE.decode(vae, latents)
    with torch.no_grad():
        clean = train_vae.VAEReconstruction(vae)(video, torch.Generator().manual_seed(0))
        noisy = train_vae.VAEReconstruction(vae, latent_noise_std=1.0, encoder_frozen=True)(
            video, torch.Generator().manual_seed(0))
    torch.testing.assert_close(noisy[1], clean[1])  # the same posterior
    delta = vae.normalize_latents(decoded[1]) - vae.normalize_latents(decoded[0])
    # One noise level s ~ U(0, 1) per clip, applied in normalised units: frame 0 (image constants) and the later
    # frame (video constants) get the same spread, and the two clips get different ones.
    spread = delta.std(dim=(1, 3, 4))  # [clip, latent frame]
    assert (spread > 0).all() and (spread < 1.5).all()
    torch.testing.assert_close(spread[:, 0], spread[:, 1], rtol=0.5, atol=0.0)
    assert not torch.allclose(spread[0], spread[1], rtol=0.2)


def test_latent_noise_follows_the_latents_spread_while_the_encoder_trains():
    """With a trainable encoder the noise scales with the batch's latent spread (first latent frame and later ones
    apart), so an encoder that scaled its latents up would not shrink it; a frozen encoder keeps fixed units."""
    vae = train_vae.build_vae(train_vae.parse_args([*TINY, "--output_dir", "unused"])).eval()
    vae.register_to_config(image_latent_scale=4.0, video_latent_scale=2.0)
    video = torch.rand(2, 3, 9, 16, 16) * 2 - 1

    def noise_over_spread(encoder_frozen: bool) -> torch.Tensor:
        decoded = []
        vae.decode = lambda latents: decoded.append(latents) or CausalVideoVAE.decode(vae, latents)
        with torch.no_grad():
            train_vae.VAEReconstruction(vae)(video, torch.Generator().manual_seed(0))
            train_vae.VAEReconstruction(vae, 1.0, encoder_frozen)(video, torch.Generator().manual_seed(0))
        clean = vae.normalize_latents(decoded[0])
        delta = vae.normalize_latents(decoded[1]) - clean
        first, later = delta[:, :, :1].std() / clean[:, :, :1].std(), delta[:, :, 1:].std() / clean[:, :, 1:].std()
        return torch.stack([first, later])

    frozen, training = noise_over_spread(True), noise_over_spread(False)
    vae.register_to_config(image_latent_scale=40.0, video_latent_scale=20.0)  # latents 10x larger in normalised units
    torch.testing.assert_close(noise_over_spread(False), training, rtol=1e-3, atol=0.0)
    assert (noise_over_spread(True) < frozen / 5).all()


def test_train_vae_on_a_folder_of_mp4_files_without_metadata(tmp_path):
    """--video_folder without a metadata file: every video of the folder (the broken one skipped), no captions."""
    from tests.data.video_files import write_clip

    folder = tmp_path / "clips"
    folder.mkdir()
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        write_clip(folder / f"clip{i}.mp4", color=color)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    (folder / "notes.txt").write_text("not a clip")
    common = ["--max_train_steps", "1", "--num_validation_clips", "1", "--normalization_samples", "2",
              "--checkpointing_steps", "0"]
    real = run(tmp_path / "real", *common, "--video_folder", str(folder), "--fps", "5")
    shapes = run(tmp_path / "shapes", *common)
    assert real["global_step"] == 1 and real["psnr"] is not None and real["loss"] != shapes["loss"]
    card = (tmp_path / "real" / "README.md").read_text()
    assert f"3 clips of video_folder={folder} fps=5" in card and "{{" not in card and "Shapes world" not in card
    with pytest.raises(ValueError, match="foreground_weight"):
        train_vae.parse_args([*TINY, "--video_folder", str(folder), "--foreground_weight", "1"])
    with pytest.raises(ValueError, match="no video file"):
        run(tmp_path / "empty", *common, "--video_folder", str(tmp_path / "real" / "vae"))
