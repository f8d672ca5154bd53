# SPDX-License-Identifier: Apache-2.0
"""Pyramidal DMD step distillation (Neodragon, operation 4): the losses and the re-noising of a student's samples.

Per pyramid stage a student predicts the clean stage latent in one Euler step
(:meth:`~diffusers_neodragon.PyramidalDMDScheduler.predict_clean_stage_latent`). It follows the DMD gradient (the
frozen teacher's "real" clean estimate minus a trainable "fake" model's, both on the student's sample re-noised
into the stage), normalised by how far the teacher's estimate is from the sample (DMD's weighting), plus a Cauchy
loss to the downsampled data. The fake model learns the student's distribution with the pyramidal flow-matching loss
on the same re-noised samples. All noise math goes through the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor


def dmd_loss(sample: torch.Tensor, real_clean: torch.Tensor, fake_clean: torch.Tensor, eps: float = 1e-6):
    """DMD's distribution-matching surrogate: 0.5 * mean((sample - stopgrad(sample - grad))^2), whose gradient with
    respect to ``sample`` is ``grad / N`` (N elements), grad = (fake_clean - real_clean) / w per sample and w =
    mean |sample - real_clean| (the teacher-confidence weight: samples the teacher denoises close to themselves get
    larger steps). ``real_clean`` / ``fake_clean`` are the clean estimates of the teacher and of the fake model from
    ``sample`` re-noised; neither receives a gradient. Returns a scalar (float32)."""
    if not sample.shape == real_clean.shape == fake_clean.shape:
        raise ValueError(
            f"`sample` {tuple(sample.shape)}, `real_clean` {tuple(real_clean.shape)} and `fake_clean` "
            f"{tuple(fake_clean.shape)} must have the same shape."
        )
    x = sample.float()
    with torch.no_grad():
        real, fake = real_clean.float(), fake_clean.float()
        dims = tuple(range(1, x.ndim))
        weight = (x - real).abs().mean(dim=dims, keepdim=True).clamp_min(eps)
        grad = torch.nan_to_num((fake - real) / weight)
        target = x - grad
    return 0.5 * F.mse_loss(x, target)


def cauchy_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's regression to the data, log(1 + ||prediction - target||^2) per sample (squared L2 norm over every
    non-batch element), averaged over the batch: robust to the far-off samples a one-step student starts with."""
    if prediction.shape != target.shape:
        raise ValueError(f"`prediction` {tuple(prediction.shape)} and `target` {tuple(target.shape)} must match.")
    squared = (prediction.float() - target.float()).pow(2).reshape(prediction.shape[0], -1).sum(dim=1)
    return torch.log1p(squared).mean()


@dataclass
class RenoisedSample:
    """A (student) sample brought back into its stage: the transformer inputs and the flow-matching target.

    Attributes:
        hidden_states: the noisy point [B, C, 1, h, w] at stage-local sigma ``ratio``.
        timestep: the transformer's raw timestep [B].
        ratio: the stage-local sigma [B].
        target: the velocity target ``start - end`` (the fake model's regression target).
    """

    hidden_states: torch.Tensor
    timestep: torch.Tensor
    ratio: torch.Tensor
    target: torch.Tensor


def renoise_sample(
    scheduler, sample: torch.Tensor, stage: int, generator: torch.Generator | None = None
) -> RenoisedSample:
    """Put a clean stage latent [B, C, 1, h, w] (at ``stage``'s resolution) back on its stage's path as pyramidal
    training does with data: full-resolution Gaussian noise brought down with ``scheduler.downsample_noise``, the
    stage's start/end points (``stage_endpoints``, the lower stage being the sample's bilinear half), a uniform
    training timestep, ``interpolate``. The DMD scores and the fake model's loss both read this point."""
    stages = scheduler.config.stages
    x = sample.float()
    factor = 2 ** (stages - 1 - stage)
    shape = (x.shape[0], x.shape[1], x.shape[2], x.shape[3] * factor, x.shape[4] * factor)
    noise = randn_tensor(shape, generator=generator, device=x.device, dtype=torch.float32)
    noise = scheduler.downsample_noise(noise, stages - 1 - stage)
    lower = scheduler.pyramid(x)[-2] if stage > 0 else None
    start, end = scheduler.stage_endpoints(x, noise, stage, lower)
    ratio, timestep = scheduler.sample_training_timesteps(stage, x.shape[0], generator=generator, device=x.device)
    hidden_states = scheduler.interpolate(start, end, ratio)
    target = scheduler.velocity_target(start, end)
    return RenoisedSample(hidden_states.to(sample.dtype), timestep, ratio, target.to(sample.dtype))
