"""Unit tests of the training helpers: pyramidal batches, losses, stage mix, text stand-ins, checkpoints."""

import json
import math
import time

import pytest
import torch

from diffusers_neodragon import CausalVideoVAE, NeodragonPipeline, NeodragonTransformer3DModel, PyramidalDMDScheduler
from diffusers_neodragon.training_utils import (
    EpochShuffleSampler,
    build_shapes_text_encoders,
    caption_dropout_mask,
    checkpoint_step,
    compute_latent_statistics,
    drop_captions,
    encode_prompts,
    flow_matching_loss,
    flow_matching_loss_per_sample,
    foreground_mask,
    frames_from_true_history,
    freeze_unused_parameters,
    initialize_transformer_weights,
    latent_foreground_mask,
    list_checkpoints,
    load_vae_folder,
    parse_resolution,
    pooled_projection_dim,
    prune_checkpoints,
    psnr,
    pyramid_training_batch,
    refine_patch_size,
    resolve_resume_checkpoint,
    sample_num_history,
    sample_stage,
    stage_columns,
    step_generator,
    vae_reconstruction_loss,
    video_strip,
    write_model_card,
)
from diffusers_neodragon.utils.model_cards import render_model_card


WORDS = "a small large red blue green circle square moving left right on background".split()
CAPTIONS = ["a small red circle moving left on a blue background", "a large green square moving right on a red background"]


@pytest.fixture(scope="module")
def scheduler():
    return PyramidalDMDScheduler()


@pytest.fixture(scope="module")
def text_components():
    return build_shapes_text_encoders(WORDS, seed=3, t5_dim=32, t5_heads=2, t5_layers=1, clip_dim=16, clip_heads=2,
                                      clip_projection_dim=8, t5_max_length=24, clip_max_length=16)


def latents(batch=2, frames=4, size=8, seed=0):
    return torch.randn(batch, 4, frames, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ pyramid training batch


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_target_is_start_minus_end_from_the_scheduler(scheduler, stage):
    clean = latents()
    noise = torch.randn(2, 4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    batch = pyramid_training_batch(scheduler, clean, stage, num_history=2, generator=torch.Generator().manual_seed(2),
                                   noise=noise)
    levels = scheduler.pyramid(clean[:, :, :3])
    stage_noise = scheduler.downsample_noise(noise, 2 - stage)
    lower = levels[stage - 1][:, :, 2:3] if stage else None
    start, end = scheduler.stage_endpoints(levels[stage][:, :, 2:3], stage_noise, stage, lower)
    torch.testing.assert_close(batch.target, scheduler.velocity_target(start, end))
    torch.testing.assert_close(batch.target, start - end)
    torch.testing.assert_close(batch.hidden_states, scheduler.interpolate(start, end, batch.ratio))
    assert batch.hidden_states.shape == (2, 4, 1, 8 >> (2 - stage), 8 >> (2 - stage))
    # The (ratio, timestep) pair is a point of the stage's training grid.
    for r, t in zip(batch.ratio, batch.timestep):
        index = torch.nonzero(scheduler.sigmas_per_stage[stage] == r).flatten()
        assert len(index) == 1 and scheduler.timesteps_per_stage[stage][index[0]] == t
    assert batch.stage == stage and batch.num_history == 2


def test_history_layout_is_the_inference_layout_and_uncorrupted_at_ratio_zero(scheduler):
    clean = latents(frames=5)
    batch = pyramid_training_batch(scheduler, clean, 2, num_history=4, corrupt_ratio=0.0,
                                   generator=torch.Generator().manual_seed(0))
    expected = scheduler.history_conditions(clean[:, :, :4], 2)
    assert [c.shape for c in batch.history] == [c.shape for c in expected]
    for got, want in zip(batch.history, expected):
        torch.testing.assert_close(got, want)
    assert torch.equal(batch.corruption_sigma, torch.zeros(2))


def test_history_latents_replace_only_the_history(scheduler):
    """history_latents=latents changes nothing; other history latents change the history and nothing else."""
    clean, other = latents(frames=5), latents(frames=5, seed=7)
    kwargs = dict(num_history=3, corrupt_ratio=0.0)
    plain = pyramid_training_batch(scheduler, clean, 2, generator=torch.Generator().manual_seed(0), **kwargs)
    same = pyramid_training_batch(scheduler, clean, 2, generator=torch.Generator().manual_seed(0),
                                  history_latents=clean, **kwargs)
    mixed = pyramid_training_batch(scheduler, clean, 2, generator=torch.Generator().manual_seed(0),
                                   history_latents=other, **kwargs)
    for got, want in zip(same.history, plain.history):
        torch.testing.assert_close(got, want)
    for got, want in zip(mixed.history, scheduler.history_conditions(other[:, :, :3], 2)):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(mixed.target, plain.target)
    torch.testing.assert_close(mixed.hidden_states, plain.hidden_states)
    with pytest.raises(ValueError, match="history_latents"):
        pyramid_training_batch(scheduler, clean, 2, history_latents=other[:, :, :4], **kwargs)


def test_frames_from_true_history_sees_only_the_true_frames_before_each_frame():
    """Frame j >= 1 is sampled from true frames 0 .. j-1 only, frame 0 from the true frame 0: changing true frame 2
    leaves sampled frames 0-2 as they were and changes frame 3; the result is a function of the generator."""
    from tests.tiny_components import pipeline

    pipe = pipeline(with_first_frame=False, with_super_resolution=False)
    embeds, negative_embeds, pooled, negative_pooled, mask, negative_mask = pipe.encode_prompt(
        CAPTIONS[:2], negative_prompt="", device="cpu", dtype=torch.float32)
    negative, text = (negative_embeds, negative_mask, negative_pooled), (embeds, mask, pooled)
    clean = latents(frames=4, size=16)
    changed = clean.clone()
    changed[:, :, 2] += 1.0

    def sample(x, seed=0):
        return frames_from_true_history(pipe, x, text, negative, [2, 2, 2], [1, 1, 1], 3.0, 2.0,
                                        generator=torch.Generator().manual_seed(seed))

    first, again, other = sample(clean), sample(clean), sample(changed)
    assert first.shape == clean.shape and torch.isfinite(first).all()
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    torch.testing.assert_close(other[:, :, :3], first[:, :, :3], rtol=0, atol=0)
    assert not torch.allclose(other[:, :, 3], first[:, :, 3])
    assert not torch.allclose(sample(clean, seed=1), first)
    with pytest.raises(ValueError, match="start_stage"):
        pipe.denoise_unit(clean[:, :, :1], None, text, [1, 1, 1], start_stage=3)


def test_history_corruption_statistics(scheduler):
    """One sigma_c ~ U(0, 1/3) per sample, shared by all clips; cond = sigma·noise + (1 - sigma)·clean."""
    batch_size = 4000
    clean = torch.full((batch_size, 4, 3, 8, 8), 2.0)
    batch = pyramid_training_batch(scheduler, clean, 2, num_history=2, generator=torch.Generator().manual_seed(0))
    sigma = batch.corruption_sigma
    assert sigma.shape == (batch_size,)
    assert 0 <= sigma.min() and sigma.max() < 1 / 3
    assert abs(sigma.mean().item() - 1 / 6) < 0.01
    assert abs(sigma.var().item() - (1 / 3) ** 2 / 12) < 0.002
    assert len(batch.history) == 2  # frame 0 at half resolution, frame 1 at full resolution
    for clip in batch.history:
        s = sigma.reshape(-1, 1, 1, 1, 1)
        noise = (clip - (1 - s) * 2.0) / s
        assert abs(noise.mean().item()) < 0.01 and abs(noise.std().item() - 1.0) < 0.01
        # Fresh noise per clip and per sample: no correlation between samples' noise.
    n0 = (batch.history[0] - (1 - sigma.reshape(-1, 1, 1, 1, 1)) * 2.0) / sigma.reshape(-1, 1, 1, 1, 1)
    n1 = (batch.history[1][..., ::2, ::2] - (1 - sigma.reshape(-1, 1, 1, 1, 1)) * 2.0) / sigma.reshape(-1, 1, 1, 1, 1)
    assert abs(torch.corrcoef(torch.stack([n0.flatten(), n1.flatten()]))[0, 1].item()) < 0.02


def test_first_frame_units_have_no_history(scheduler):
    clean = latents(frames=3)
    for stage in range(3):
        batch = pyramid_training_batch(scheduler, clean, stage, num_history=0, generator=torch.Generator().manual_seed(0))
        assert batch.history == [] and batch.num_history == 0
        assert torch.equal(batch.corruption_sigma, torch.zeros(2))
    # Unit counts drawn uniformly over 0..T-1; u = 0 appears and gives no history.
    counts = torch.zeros(3)
    for step in range(300):
        batch = pyramid_training_batch(scheduler, clean, 1, generator=step_generator(0, step))
        counts[batch.num_history] += 1
        assert (batch.num_history == 0) == (batch.history == [])
    assert (counts > 60).all()


def test_foreground_comes_back_for_the_unit_at_the_stage_resolution(scheduler):
    clean = latents(frames=3)
    foreground = torch.zeros(2, 1, 3, 8, 8)
    foreground[0, :, 1, 5, 6] = 1.0  # sample 0, latent frame 1
    for stage, size in ((0, 2), (1, 4), (2, 8)):
        batch = pyramid_training_batch(scheduler, clean, stage, num_history=1, foreground=foreground,
                                       generator=torch.Generator().manual_seed(0))
        assert batch.foreground.shape == (2, 1, 1, size, size) and batch.foreground.sum() == 1
        cell = 8 // size
        assert batch.foreground[0, 0, 0, 5 // cell, 6 // cell] == 1
    assert pyramid_training_batch(scheduler, clean, 2, num_history=0, foreground=foreground).foreground.sum() == 0
    assert pyramid_training_batch(scheduler, clean, 2).foreground is None
    with pytest.raises(ValueError, match="foreground"):
        pyramid_training_batch(scheduler, clean, 2, foreground=foreground[:, :, :2])


def test_first_frame_prob_sets_the_share_of_first_frame_units():
    counts = torch.zeros(7)
    for step in range(1000):
        counts[sample_num_history(7, step_generator(0, step), first_frame_prob=0.4)] += 1
    assert 340 < counts[0] < 460  # binomial(1000, 0.4): sd 15.5
    assert (counts[1:] > 60).all() and (counts[1:] < 140).all()  # the rest uniform over 1..6: 100 each
    assert sample_num_history(1, torch.Generator().manual_seed(0), first_frame_prob=0.0) == 0
    assert all(sample_num_history(4, step_generator(1, s), first_frame_prob=0.0) > 0 for s in range(50))
    assert all(sample_num_history(4, step_generator(1, s), first_frame_prob=1.0) == 0 for s in range(50))
    with pytest.raises(ValueError, match="first_frame_prob"):
        sample_num_history(4, first_frame_prob=1.5)


def test_batch_is_deterministic_per_generator_and_validates_inputs(scheduler):
    clean = latents()
    a = pyramid_training_batch(scheduler, clean, 1, generator=step_generator(5, 7))
    b = pyramid_training_batch(scheduler, clean, 1, generator=step_generator(5, 7))
    assert torch.equal(a.hidden_states, b.hidden_states) and a.num_history == b.num_history
    c = pyramid_training_batch(scheduler, clean, 1, generator=step_generator(5, 8))
    assert not torch.equal(a.hidden_states, c.hidden_states)
    with pytest.raises(ValueError, match="num_history"):
        pyramid_training_batch(scheduler, clean, 1, num_history=4)
    with pytest.raises(ValueError, match="divisible"):
        pyramid_training_batch(scheduler, torch.zeros(1, 4, 2, 6, 6), 1)
    with pytest.raises(ValueError, match="stage"):
        pyramid_training_batch(scheduler, clean, 3)


# ------------------------------------------------------------------------------------------- stage mix, CFG


def test_stage_mix():
    assert [(s, i.tolist()) for s, i in stage_columns(8)] == [(0, [0, 4]), (1, [1, 2, 5, 6]), (2, [3, 7])]
    draws = torch.tensor([sample_stage((1, 2, 1), step_generator(0, i)) for i in range(4000)])
    frequencies = torch.bincount(draws, minlength=3).float() / len(draws)
    torch.testing.assert_close(frequencies, torch.tensor([0.25, 0.5, 0.25]), atol=0.03, rtol=0)
    assert all(sample_stage((0, 1, 0), step_generator(1, i)) == 1 for i in range(50))
    with pytest.raises(ValueError):
        sample_stage((0, 0, 0))


def test_caption_dropout_is_ten_percent_to_the_empty_string():
    dropped = caption_dropout_mask(20000, generator=torch.Generator().manual_seed(0))
    assert abs(dropped.float().mean().item() - 0.1) < 0.01
    captions, mask = drop_captions(CAPTIONS * 50, 0.5, torch.Generator().manual_seed(1))
    assert all((c == "") == m for c, m in zip(captions, mask.tolist()))
    assert set(captions) - {""} <= set(CAPTIONS)


def test_step_generator_is_a_pure_function_of_seed_step_and_rank():
    draw = lambda g: torch.rand(4, generator=g)  # noqa: E731
    assert torch.equal(draw(step_generator(0, 3)), draw(step_generator(0, 3)))
    assert not torch.equal(draw(step_generator(0, 3)), draw(step_generator(0, 4)))
    assert not torch.equal(draw(step_generator(0, 3)), draw(step_generator(0, 3, process_index=1)))
    assert not torch.equal(draw(step_generator(0, 3)), draw(step_generator(1, 3)))


def test_epoch_shuffle_sampler():
    sampler = EpochShuffleSampler(10, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and first == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first


# ---------------------------------------------------------------------------------------------------- losses


def test_flow_matching_loss_is_per_sample_mse_then_mean():
    pred, target = torch.zeros(2, 4, 1, 2, 2), torch.ones(2, 4, 1, 2, 2)
    target[1] = 3.0
    torch.testing.assert_close(flow_matching_loss_per_sample(pred, target), torch.tensor([1.0, 9.0]))
    # Groups of different resolutions: every sample counts once.
    small = (torch.zeros(1, 4, 1, 1, 1), torch.full((1, 4, 1, 1, 1), 2.0))
    torch.testing.assert_close(flow_matching_loss([pred, small[0]], [target, small[1]]), torch.tensor(14.0 / 3))
    with pytest.raises(ValueError):
        flow_matching_loss(pred, target[:, :2])


def test_flow_matching_foreground_term_is_the_mse_over_the_masked_cells():
    """One wrong cell of four: the frame-wide MSE is 1/4 of it, the foreground term all of it; an empty mask adds
    nothing, and the mask broadcasts over channels."""
    pred, target = torch.zeros(2, 4, 1, 2, 2), torch.zeros(2, 4, 1, 2, 2)
    target[:, :, :, 0, 0] = 1.0
    mask = torch.zeros(2, 1, 1, 2, 2)
    mask[0, :, :, 0, 0] = 1.0  # sample 0: the wrong cell; sample 1: no object
    torch.testing.assert_close(flow_matching_loss_per_sample(pred, target, mask, 3.0), torch.tensor([3.25, 0.25]))
    torch.testing.assert_close(flow_matching_loss_per_sample(pred, target, mask), torch.tensor([0.25, 0.25]))
    mask[0] = 1.0  # the whole frame: the term equals the MSE
    torch.testing.assert_close(flow_matching_loss(pred, target, mask, 1.0), torch.tensor((0.5 + 0.25) / 2))
    with pytest.raises(ValueError, match="foreground"):
        flow_matching_loss(pred, target, foreground_weight=1.0)


def test_latent_foreground_mask_follows_the_causal_vae_grid():
    """A 4x4 square moving 2 px right per frame over 17 frames (latent frames: pixel 0, 1-8, 9-16), 8x8 cells: each
    latent frame marks the cells its object (dilated 2 px) touched in any of its pixel frames."""
    video = torch.full((1, 3, 17, 32, 48), -1.0)
    for frame in range(17):
        video[:, 1, frame, 10:14, 4 + 2 * frame : 8 + 2 * frame] = 1.0
    mask = latent_foreground_mask(video, temporal_scale=8, spatial_scale=8)
    assert mask.shape == (1, 1, 3, 4, 6)
    # dilated columns: frame 0 2..9 -> cells 0-1; frames 1-8 4..25 -> 0-3; frames 9-16 20..41 -> 2-5; rows 8..15 -> 1
    expected = [[0, 1], [0, 1, 2, 3], [2, 3, 4, 5]]
    for t, columns in enumerate(expected):
        assert torch.nonzero(mask[0, 0, t])[:, 1].tolist() == columns and (mask[0, 0, t].sum(1)[[0, 2, 3]] == 0).all()
    with pytest.raises(ValueError, match="1 \\+ 8k"):
        latent_foreground_mask(video[:, :, :16], 8, 8)


def test_vae_reconstruction_loss():
    target = torch.zeros(1, 3, 9, 8, 8)
    recon = torch.full_like(target, 0.5)
    loss, logs = vae_reconstruction_loss(recon, target)
    assert logs == {"mse": 0.25, "l1": 0.5} and loss.item() == pytest.approx(0.75)
    posterior = type("P", (), {"mean": torch.zeros(1, 4, 2, 1, 1), "logvar": torch.zeros(1, 4, 2, 1, 1)})()
    loss, logs = vae_reconstruction_loss(recon, target, posterior, kl_weight=0.1)
    assert logs["kl"] == 0.0
    posterior.mean = torch.ones(1, 4, 2, 1, 1)
    _, logs = vae_reconstruction_loss(recon, target, posterior, kl_weight=0.1)
    assert logs["kl"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="posterior"):
        vae_reconstruction_loss(recon, target, kl_weight=0.1)
    with pytest.raises(ValueError, match="perceptual_fn"):  # LPIPS is off by default (weights need a download)
        vae_reconstruction_loss(recon, target, perceptual_weight=0.1)
    _, logs = vae_reconstruction_loss(recon, target, perceptual_weight=1.0,
                                      perceptual_fn=lambda x, y: (x - y).abs().flatten(1).mean(1))
    assert logs["perceptual"] == pytest.approx(0.5)
    # The edge term ignores a constant offset but sees a blurred step: target steps 0 -> 1 between columns 3 and 4,
    # the reconstruction ramps over columns 3..5 (differences 0.5, 0.5 where the target has 0, 1).
    _, logs = vae_reconstruction_loss(recon, target, mse_weight=0, l1_weight=0, edge_weight=1.0)
    assert logs == {"edge": 0.0}
    step = torch.zeros(1, 3, 2, 8, 8)
    step[..., 4:] = 1.0
    ramp = step.clone()
    ramp[..., 4] = 0.5
    _, logs = vae_reconstruction_loss(ramp, step, mse_weight=0, l1_weight=0, edge_weight=1.0)
    assert logs["edge"] == pytest.approx((1.0 / 7) / 2)  # |0.5-0| + |0.5-1| per row over 7 x-differences; none in y
    assert psnr(recon, target) == pytest.approx(10 * math.log10(4 / 0.25))


def test_foreground_loss_weighs_a_small_object_like_the_rest_of_the_frame():
    """The mask is the object (dilated 2 px) on a uniform background; a wrong object costs the same ``F`` whatever
    its size, while the frame-wide L1 shrinks with the object's share of the frame."""
    target = torch.full((1, 3, 2, 32, 32), -1.0)
    target[:, 0, :, 10:14, 10:14] = 1.0  # a 4x4 red square on black
    mask = foreground_mask(target)
    assert mask.shape == (1, 1, 2, 32, 32) and mask.sum().item() == 2 * 8 * 8
    assert mask[0, 0, 0, 8:16, 8:16].min() == 1 and mask[0, 0, 0, 7].max() == 0
    missing = target.clone()
    missing[:, 0] = -1.0  # the object vanished
    _, logs = vae_reconstruction_loss(missing, target, mse_weight=0, foreground_weight=1.0)
    assert logs["foreground"] == pytest.approx(2 * 16 / (64 * 3)) and logs["l1"] == pytest.approx(2 * 16 / (1024 * 3))
    _, logs = vae_reconstruction_loss(target, target, foreground_weight=1.0)
    assert logs["foreground"] == 0.0


def test_first_frame_weight_counts_the_first_frame_as_several():
    """An error only in frame 0 of 9 frames: with weight w it weighs w / (w + 8) of every pixel term; weight 1 is the
    plain mean; an error in the other frames weighs less alike."""
    target = torch.full((2, 3, 9, 16, 16), -1.0)
    target[:, 0, :, 4:8, 4:8] = 1.0
    first_wrong = target.clone()
    first_wrong[:, :, 0] = 0.0  # every pixel of frame 0 off by 1 (object) or 1 (background)
    terms = dict(mse_weight=1.0, l1_weight=1.0, edge_weight=1.0, foreground_weight=1.0,
                 perceptual_weight=1.0, perceptual_fn=lambda x, y: (x - y).abs().flatten(1).mean(1))
    _, plain = vae_reconstruction_loss(first_wrong, target, **terms)
    _, weighted = vae_reconstruction_loss(first_wrong, target, first_frame_weight=8.0, **terms)
    for name in ("mse", "l1", "perceptual", "foreground"):
        assert plain[name] == pytest.approx(1 / 9, rel=1e-5), name
        assert weighted[name] == pytest.approx(8 / 16, rel=1e-5), name
    assert weighted["edge"] == pytest.approx(plain["edge"] * 9 * 8 / 16, rel=1e-5) and plain["edge"] > 0
    later_wrong = target.clone()
    later_wrong[:, :, 1:] = 0.0
    _, weighted = vae_reconstruction_loss(later_wrong, target, first_frame_weight=8.0, **terms)
    assert weighted["l1"] == pytest.approx(8 / 16, rel=1e-5)
    with pytest.raises(ValueError, match="first_frame_weight"):
        vae_reconstruction_loss(target, target, first_frame_weight=0.0)


def test_latent_statistics_normalise_image_and_video_frames():
    torch.manual_seed(0)
    vae = CausalVideoVAE(latent_channels=4, encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                         encoder_layers_per_block=(1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1), norm_num_groups=4)
    for module in vae.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.Linear)):
            module.reset_parameters()
    videos = torch.rand(3, 3, 9, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    stats = compute_latent_statistics(vae, videos.split(2))
    vae.register_to_config(**stats)
    z = vae.normalize_latents(vae.encode(videos).latent_dist.mode())
    for part in (z[:, :, :1], z[:, :, 1:]):
        assert abs(part.mean().item()) < 1e-4 and abs(part.std(unbiased=False).item() - 1) < 1e-3
    with pytest.raises(ValueError, match="single latent frame"):
        compute_latent_statistics(vae, [videos[:, :, :1]])


# ------------------------------------------------------------------------------------------ model and text


def test_transformer_init_predicts_zero(text_components):
    model = NeodragonTransformer3DModel(in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
                                        pooled_projection_dim=16, context_embedder_dim=32, sample_size=8,
                                        pos_embed_max_size=16)
    initialize_transformer_weights(model)
    embeds, mask, pooled = encode_prompts(text_components, CAPTIONS, max_sequence_length=16)
    out = model(torch.randn(2, 4, 1, 8, 8), embeds, pooled, torch.tensor([500.0, 10.0]),
                history=[torch.randn(2, 4, 1, 4, 4)], encoder_attention_mask=mask).sample
    assert torch.equal(out, torch.zeros_like(out))
    assert model.transformer_blocks[0].attn.to_q.weight.std() > 0


def test_refined_patch_size_starts_where_the_coarse_model_left_off(text_components):
    """Patch 2 -> 1. On a latent that is constant over each 2x2 patch, the first token of every patch is embedded
    exactly as the coarse token was, and the refined model predicts the mean of the 2x2 patch the coarse model
    predicted, up to the finer positions within a patch and the text's smaller share of the attention (about 4 %
    here; a model with the same blocks but fresh patch-dependent weights is off by about 300 %)."""
    torch.manual_seed(0)
    model = NeodragonTransformer3DModel(in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
                                        pooled_projection_dim=16, context_embedder_dim=32, sample_size=8,
                                        pos_embed_max_size=16)
    for name, parameter in model.named_parameters():  # a trained-looking model: no zeroed modulation or output
        if name.startswith(("proj_out", "norm_out")) or ".norm1" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    refined = refine_patch_size(model, 1)
    assert (refined.config.patch_size, refined.config.pos_embed_max_size, refined.config.sample_size) == (1, 32, 4)
    coarse_state, fine_state = model.state_dict(), refined.state_dict()
    assert all(torch.equal(coarse_state[k], fine_state[k]) for k in coarse_state if k.startswith("transformer_blocks"))

    def blocky(*shape):
        return torch.randn(*shape).repeat_interleave(2, -1).repeat_interleave(2, -2)

    latent = blocky(2, 4, 1, 4, 4)
    with torch.no_grad():
        tokens = refined.pos_embed([latent]).reshape(2, 8, 8, -1)[:, ::2, ::2].reshape(2, 16, -1)
        torch.testing.assert_close(tokens, model.pos_embed([latent]), rtol=0, atol=1e-5)
        hidden = torch.randn(5, 16)  # proj_out rows are (row in patch, column in patch, channel)
        patch_mean = model.proj_out(hidden).reshape(5, 4, 4).mean(1)
        torch.testing.assert_close(refined.proj_out(hidden), patch_mean, rtol=0, atol=1e-6)

    embeds, mask, pooled = encode_prompts(text_components, CAPTIONS, max_sequence_length=16)
    kwargs = dict(encoder_hidden_states=embeds, pooled_projections=pooled, timestep=torch.tensor([500.0, 10.0]),
                  history=[blocky(2, 4, 1, 2, 2)], encoder_attention_mask=mask)
    fresh = NeodragonTransformer3DModel(**{k: v for k, v in refined.config.items() if not k.startswith("_")})
    blocks_only = {k: v for k, v in fine_state.items() if not k.startswith(("pos_embed", "proj_out"))}
    fresh.load_state_dict(blocks_only, strict=False)
    torch.nn.init.normal_(fresh.proj_out.weight, std=0.1)
    with torch.no_grad():
        expected = torch.nn.functional.avg_pool3d(model(latent, **kwargs).sample, (1, 2, 2))
        expected = expected.repeat_interleave(2, -1).repeat_interleave(2, -2)
        error = (refined(latent, **kwargs).sample - expected).norm() / expected.norm()
        fresh_error = (fresh(latent, **kwargs).sample - expected).norm() / expected.norm()
    assert error < 0.1 and fresh_error > 1.0

    assert refine_patch_size(model, 2) is model
    with pytest.raises(ValueError, match="divide"):
        refine_patch_size(refined, 2)


def test_freeze_unused_parameters_leaves_exactly_the_parameters_that_get_gradients(text_components):
    """DDP needs every trainable parameter in the graph; the frozen ones must be the only ones outside it."""
    model = NeodragonTransformer3DModel(in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
                                        pooled_projection_dim=16, context_embedder_dim=32, sample_size=8,
                                        pos_embed_max_size=16)
    frozen = freeze_unused_parameters(model)
    assert frozen == ["transformer_blocks.1.attn.add_q_proj.weight", "transformer_blocks.1.attn.add_q_proj.bias",
                      "transformer_blocks.1.attn.norm_add_q.weight"]
    embeds, mask, pooled = encode_prompts(text_components, CAPTIONS, max_sequence_length=16)
    for history in (None, [torch.randn(2, 4, 1, 4, 4)]):
        model.zero_grad(set_to_none=True)
        out = model(torch.randn(2, 4, 1, 8, 8), embeds, pooled, torch.tensor([500.0, 10.0]), history=history,
                    encoder_attention_mask=mask).sample
        out.square().mean().backward()
        without_grad = {n for n, p in model.named_parameters() if p.grad is None}
        assert without_grad == set(frozen)
        assert all(not p.requires_grad for n, p in model.named_parameters() if n in without_grad)


def test_shapes_text_encoders_are_frozen_deterministic_and_distinct(text_components):
    again = build_shapes_text_encoders(WORDS, seed=3, t5_dim=32, t5_heads=2, t5_layers=1, clip_dim=16, clip_heads=2,
                                       clip_projection_dim=8, t5_max_length=24, clip_max_length=16)
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        assert not any(p.requires_grad for p in text_components[name].parameters())
        assert not text_components[name].training
    assert text_components["tokenizer"].bos_token == "<|startoftext|>"
    assert text_components["tokenizer"].eos_token == "<|endoftext|>"
    assert text_components["text_encoder_3"].config.d_model == 32 and pooled_projection_dim(text_components) == 16
    texts = CAPTIONS + [""]
    e1, m1, p1 = encode_prompts(text_components, texts, max_sequence_length=16)
    e2, m2, p2 = encode_prompts(again, texts, max_sequence_length=16)
    assert torch.equal(e1, e2) and torch.equal(p1, p2) and torch.equal(m1, m2)
    assert (p1[0] - p1[1]).abs().max() > 1e-3 and (p1[0] - p1[2]).abs().max() > 1e-3
    assert (e1[0, :3] - e1[1, :3]).abs().max() > 1e-3
    other = build_shapes_text_encoders(WORDS, seed=4, t5_dim=32, t5_heads=2, t5_layers=1, clip_dim=16, clip_heads=2,
                                       clip_projection_dim=8)
    assert not torch.equal(encode_prompts(other, texts, max_sequence_length=16)[2], p1)


def test_encode_prompts_matches_the_pipeline(text_components):
    transformer = NeodragonTransformer3DModel(in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
                                              pooled_projection_dim=16, context_embedder_dim=32, sample_size=8,
                                              pos_embed_max_size=16)
    vae = CausalVideoVAE(latent_channels=4, encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                         encoder_layers_per_block=(1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1), norm_num_groups=4)
    pipe = NeodragonPipeline(transformer=transformer, scheduler=PyramidalDMDScheduler(), vae=vae, mode="monolithic",
                             **text_components)
    texts = CAPTIONS + [""]
    ours = encode_prompts(text_components, texts, max_sequence_length=20)
    embeds, _, pooled, _, mask, _ = pipe.encode_prompt(
        texts, do_classifier_free_guidance=False, max_sequence_length=20, device="cpu", dtype=torch.float32)
    theirs = (embeds, mask, pooled)
    keep = theirs[0].shape[1]
    torch.testing.assert_close(ours[0][:, :keep], theirs[0])
    torch.testing.assert_close(ours[1][:, :keep], theirs[1])
    assert ours[1][:, keep:].sum() == 0
    torch.testing.assert_close(ours[2], theirs[2])


# ------------------------------------------------------------------------------------ checkpoints and cards


def test_checkpoint_rotation_and_resolution(tmp_path):
    assert resolve_resume_checkpoint(tmp_path, "latest") is None
    assert resolve_resume_checkpoint(tmp_path, None) is None
    for step in (2, 10, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-x").mkdir()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4, 10]
    assert resolve_resume_checkpoint(tmp_path, "latest").name == "checkpoint-10"
    assert resolve_resume_checkpoint(tmp_path, "checkpoint-4") == tmp_path / "checkpoint-4"
    with pytest.raises(ValueError):
        resolve_resume_checkpoint(tmp_path, "checkpoint-7")
    assert checkpoint_step(tmp_path / "checkpoint-10") == 10
    removed = prune_checkpoints(tmp_path, total_limit=2)  # keeps room for the next one
    assert [p.name for p in removed] == ["checkpoint-2", "checkpoint-4"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10]
    assert prune_checkpoints(tmp_path, None) == []


def test_model_card_and_small_utilities(tmp_path):
    template = tmp_path / "t.md"
    template.write_text("---\nlicense: mit\n---\na {{ x }} b {{y}} {{ missing }} {{ empty }}\n")
    assert render_model_card(template, {"x": 1, "y": "two", "empty": None}).text.strip() == "a 1 b two n/a n/a"
    path = write_model_card(tmp_path, "vae.md", {"title": "T", "psnr": "30.1", "command": "accelerate launch x"},
                            tags=["shapes", "neodragon"])
    text = path.read_text()
    assert "# T" in text and "30.1" in text and "accelerate launch x" in text and "{{" not in text
    assert text.count("- neodragon") == 1 and "- shapes" in text
    assert parse_resolution("64x128") == (64, 128) and parse_resolution(96) == (96, 96)
    strip = video_strip([torch.zeros(3, 9, 8, 8), torch.ones(3, 2, 8, 8)], max_frames=4)
    assert strip.size == (32, 16)


def test_resolve_trackers_and_training_time_is_up():
    from diffusers_neodragon.training_utils import resolve_trackers, training_time_is_up

    class SingleProcess:  # what training_time_is_up needs of an Accelerator, without touching accelerate's state
        device = torch.device("cpu")

        @staticmethod
        def reduce(tensor, reduction):
            return tensor

    assert resolve_trackers("none") is None and resolve_trackers(None) is None
    assert resolve_trackers("wandb") == "wandb"
    accelerator = SingleProcess()
    now = time.perf_counter()
    assert not training_time_is_up(None, now - 1e6, accelerator)
    assert not training_time_is_up(60.0, now, accelerator)
    assert training_time_is_up(60.0, now - 61.0, accelerator)


def test_load_vae_folder_finds_the_vae_of_a_vae_folder_or_of_a_folder_holding_vae(tmp_path):
    vae = CausalVideoVAE(latent_channels=4, encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                         encoder_layers_per_block=(1,) * 4, decoder_layers_per_block=(1,) * 4, norm_num_groups=4)
    vae.save_pretrained(tmp_path / "run" / "vae")
    vae.save_pretrained(tmp_path / "bare")
    for folder in (tmp_path / "run", tmp_path / "bare"):
        loaded = load_vae_folder(folder)  # class from the config's _class_name
        assert type(loaded) is CausalVideoVAE and next(loaded.parameters()).dtype == torch.float32
        assert torch.equal(loaded.encoder.conv_in.conv.weight, vae.encoder.conv_in.conv.weight)
    assert next(load_vae_folder(tmp_path / "bare", torch.float16).parameters()).dtype == torch.float16
    config = json.loads((tmp_path / "bare" / "config.json").read_text())
    (tmp_path / "bare" / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="no diffusers_neodragon VAE"):
        load_vae_folder(tmp_path / "bare")
    assert type(load_vae_folder(tmp_path / "bare", cls=CausalVideoVAE)) is CausalVideoVAE  # an explicit class wins
