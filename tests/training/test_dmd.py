"""The Pyramidal DMD losses against hand-computed values, and the re-noising of a student's sample."""

import math

import pytest
import torch

from diffusers_neodragon import PyramidalDMDScheduler
from diffusers_neodragon.training_utils.dmd import cauchy_loss, dmd_loss, renoise_sample


def test_dmd_loss_value_and_gradient_by_hand():
    """sample (1, 2), real (0, 0), fake (1, 1): w = mean(|1|, |2|) = 1.5, grad = (1, 1) / 1.5; loss = 0.5 * mean(grad^2)
    = 0.5 / 2.25 = 0.2222; d loss / d sample = grad / N = (1/3, 1/3). No gradient to the score estimates."""
    sample = torch.tensor([[1.0, 2.0]], requires_grad=True)
    real = torch.zeros(1, 2, requires_grad=True)
    fake = torch.ones(1, 2, requires_grad=True)
    loss = dmd_loss(sample, real, fake)
    assert loss.item() == pytest.approx(0.5 / 2.25, abs=1e-7)
    loss.backward()
    torch.testing.assert_close(sample.grad, torch.full((1, 2), 1 / 3))
    assert real.grad is None and fake.grad is None


def test_dmd_loss_weight_is_per_sample_and_gradient_vanishes_when_scores_agree():
    sample = torch.tensor([[1.0, 1.0], [4.0, 4.0]], requires_grad=True)
    real = torch.zeros(2, 2)
    fake = torch.ones(2, 2)
    dmd_loss(sample, real, fake).backward()
    # weights 1 and 4: grads (1, 1) and (0.25, 0.25), divided by the 4 elements
    torch.testing.assert_close(sample.grad, torch.tensor([[0.25, 0.25], [0.0625, 0.0625]]))
    assert dmd_loss(sample, real, real).item() == 0.0
    with pytest.raises(ValueError, match="same shape"):
        dmd_loss(sample, real[:1], fake)


def test_cauchy_loss_by_hand():
    """Differences (3, 4) and (0, 0): log(1 + 25) and log(1), averaged; gradient 2 d / (1 + ||d||^2) / B."""
    prediction = torch.tensor([[3.0, 4.0], [1.0, 1.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    loss = cauchy_loss(prediction, target)
    assert loss.item() == pytest.approx(math.log(26) / 2, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(prediction.grad, torch.tensor([[6 / 26 / 2, 8 / 26 / 2], [0.0, 0.0]]))


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_renoise_sample_is_on_the_stage_path(stage):
    """The re-noised point and target satisfy the flow: hidden - ratio * target = the stage end, and the one-step
    clean prediction with the exact target recovers the sample when it is constant on 2x2 blocks."""
    scheduler = PyramidalDMDScheduler()
    lower = torch.randn(2, 4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    sample = torch.nn.functional.interpolate(lower, scale_factor=(1, 2, 2), mode="nearest")
    a = renoise_sample(scheduler, sample, stage, torch.Generator().manual_seed(1))
    b = renoise_sample(scheduler, sample, stage, torch.Generator().manual_seed(1))
    assert torch.equal(a.hidden_states, b.hidden_states) and a.hidden_states.shape == sample.shape
    clean = scheduler.predict_clean_stage_latent(a.hidden_states, a.target, a.ratio, stage)
    torch.testing.assert_close(clean, sample, atol=1e-4, rtol=0)
    assert a.timestep.shape == (2,) and (a.timestep > 0).all()


def test_pyramid_training_batch_takes_given_timesteps():
    """A student's batch at its own sampler's grid: the given (ratio, timestep) are used, the rest is unchanged."""
    from diffusers_neodragon.training_utils.pyramid_batch import pyramid_training_batch

    scheduler = PyramidalDMDScheduler()
    latents = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    given = (torch.tensor([1.0, 0.5]), torch.tensor([1000.0, 800.0]))
    example = pyramid_training_batch(scheduler, latents, 1, num_history=2, generator=torch.Generator().manual_seed(1),
                                     timesteps=given)
    assert torch.equal(example.ratio, given[0]) and torch.equal(example.timestep, given[1])
    assert example.hidden_states.shape == (2, 4, 1, 4, 4) and len(example.history) == 2

    def at(ratio):  # the same draws (given timesteps use none of the generator) at another point of the line
        return pyramid_training_batch(scheduler, latents, 1, num_history=2, generator=torch.Generator().manual_seed(1),
                                      timesteps=(torch.full((2,), ratio), torch.full((2,), 500.0)))

    start, end, middle = at(1.0), at(0.0), at(0.5)
    torch.testing.assert_close(start.hidden_states - end.hidden_states, start.target)  # target = start - end
    torch.testing.assert_close(middle.hidden_states, (start.hidden_states + end.hidden_states) / 2)
    torch.testing.assert_close(example.hidden_states[1], middle.hidden_states[1])  # ratio 0.5 in the given batch


def test_the_exact_velocity_one_step_prediction_is_the_cauchy_target():
    """What the student's one-step prediction is compared with. With the exact velocity it is Down(data, 2^i) in the
    first and last stage; in the middle stage the stage's straight line reaches noise 0 at a mix of the data and the
    upsampled lower stage, so comparing with Down(data) would penalise a perfect student (the script compares with
    this prediction instead)."""
    from diffusers_neodragon.training_utils import pyramid_training_batch

    scheduler = PyramidalDMDScheduler()
    latents = torch.randn(2, 4, 1, 16, 16, generator=torch.Generator().manual_seed(0))  # not constant on 2x2 blocks
    errors = []
    for stage in range(3):
        example = pyramid_training_batch(scheduler, latents, stage, num_history=0,
                                         generator=torch.Generator().manual_seed(stage))
        exact = scheduler.predict_clean_stage_latent(example.hidden_states, example.target, example.ratio, stage)
        data = scheduler.pyramid(latents)[stage]
        errors.append(((exact - data).norm() / data.norm()).item())
    assert errors[0] < 1e-5 and errors[2] < 1e-5
    assert errors[1] > 0.05
