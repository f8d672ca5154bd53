"""The pyramidal training batch: stage targets, history layout and corruption, unit sampling, stage mix, caption
dropout."""


import pytest
import torch

from diffusers_neodragon.training_utils import (
    caption_dropout_mask,
    drop_captions,
    frames_from_true_history,
    pyramid_training_batch,
    sample_num_history,
    sample_stage,
    step_generator,
)
from tests.training.conftest import CAPTIONS, latents


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
        generator = torch.Generator().manual_seed(0)
        batch = pyramid_training_batch(scheduler, clean, stage, num_history=0, generator=generator)
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


def test_stage_mix():
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
