"""Training losses: flow matching, VAE reconstruction, object masks."""

import math

import pytest
import torch

from diffusers_neodragon.training_utils import (
    flow_matching_loss,
    flow_matching_loss_per_sample,
    foreground_mask,
    latent_foreground_mask,
    psnr,
    vae_reconstruction_loss,
)


def test_flow_matching_loss_is_per_sample_mse_then_mean():
    pred, target = torch.zeros(2, 4, 1, 2, 2), torch.ones(2, 4, 1, 2, 2)
    target[1] = 3.0
    torch.testing.assert_close(flow_matching_loss_per_sample(pred, target), torch.tensor([1.0, 9.0]))
    torch.testing.assert_close(flow_matching_loss(pred, target), torch.tensor(5.0))
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
