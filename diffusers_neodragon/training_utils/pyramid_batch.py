# SPDX-License-Identifier: Apache-2.0
"""The pyramidal flow-matching training batch: the stage mix, caption dropout, the history-length draw, one stage's
example (:func:`pyramid_training_batch`, all noise/sigma math through
:class:`~diffusers_neodragon.PyramidalDMDScheduler`) and the model's own frames as history
(:func:`frames_from_true_history`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from .randomness import randint, uniform


CAPTION_DROPOUT_PROBABILITY = 0.1
"""Fraction of captions replaced by the empty string during training (classifier-free guidance)."""

HISTORY_CORRUPTION_RATIO = 1 / 3
"""Upper bound of the per-sample history corruption level sigma_c ~ U(0, ratio) (Pyramid-Flow's corrupt_ratio)."""

DEFAULT_SAMPLE_RATIOS = (1, 2, 1)
"""Pyramid-Flow's stage mix: relative frequency of stages 0, 1, 2 in training."""


def sample_stage(
    sample_ratios: Sequence[float] = DEFAULT_SAMPLE_RATIOS, generator: torch.Generator | None = None
) -> int:
    """One stage drawn with probability proportional to ``sample_ratios`` ([1, 2, 1]: ¼, ½, ¼)."""
    ratios = torch.tensor([float(r) for r in sample_ratios])
    if ratios.ndim != 1 or not len(ratios) or (ratios < 0).any() or ratios.sum() <= 0:
        raise ValueError(f"`sample_ratios` must be non-negative with a positive sum, got {list(sample_ratios)}.")
    u = float(uniform(generator, 1).item()) * float(ratios.sum())
    cumulative = torch.cumsum(ratios, 0)
    return int(min(int((cumulative <= u).sum()), len(ratios) - 1))


def caption_dropout_mask(
    batch_size: int, probability: float = CAPTION_DROPOUT_PROBABILITY, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Bool [B] (on CPU): which captions to replace by ``""`` (each with ``probability``, for CFG)."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"`probability` must lie in [0, 1], got {probability}.")
    return (uniform(generator, batch_size) < probability).cpu()


def drop_captions(
    captions: Sequence[str], probability: float = CAPTION_DROPOUT_PROBABILITY, generator: torch.Generator | None = None
) -> tuple[list[str], torch.Tensor]:
    """Replace each caption by ``""`` with ``probability`` (classifier-free guidance). Returns (captions, dropped)."""
    dropped = caption_dropout_mask(len(captions), probability, generator)
    return ["" if d else c for c, d in zip(captions, dropped.tolist())], dropped


@dataclass
class PyramidTrainingBatch:
    """Inputs and target of one transformer forward in pyramidal flow-matching training.

    Attributes:
        hidden_states: the noisy last unit [B, C, 1, h_s, w_s] at the stage's resolution.
        history: chronological condition clips for ``transformer(history=...)`` (``[]`` for the first frame).
        timestep: the transformer's raw 0-1000 timestep [B].
        ratio: the stage-local sigma [B] of ``hidden_states`` (1 = stage start, 0 = stage end).
        target: the velocity target ``start - end`` [B, C, 1, h_s, w_s].
        stage: the pyramid stage.
        num_history: number of clean history frames u (the unit trained is latent frame u).
        corruption_sigma: per-sample history corruption sigma_c [B] (zeros when there is no history).
        foreground: the objects' cells of latent frame u at the stage's resolution [B, 1, 1, h_s, w_s] (max-pooled),
            when :func:`pyramid_training_batch` was given a mask; else ``None``.
    """

    hidden_states: torch.Tensor
    history: list[torch.Tensor]
    timestep: torch.Tensor
    ratio: torch.Tensor
    target: torch.Tensor
    stage: int
    num_history: int
    corruption_sigma: torch.Tensor
    foreground: torch.Tensor | None = None


def sample_num_history(
    num_latent_frames: int, generator: torch.Generator | None = None, first_frame_prob: float | None = None
) -> int:
    """The unit count choice: u ~ U{0, ..., T-1} history frames, the trained unit being latent frame u.

    ``first_frame_prob`` (optional) trains the first frame (u = 0) with that probability and u ~ U{1, ..., T-1}
    otherwise: the first frame is made from text alone and every later frame copies its object, so a small model
    gains from seeing it more often than 1/T of the time (Pyramid-Flow mixes in image batches for the same reason).
    """
    if num_latent_frames < 1:
        raise ValueError(f"`num_latent_frames` must be >= 1, got {num_latent_frames}.")
    if first_frame_prob is None:
        return randint(generator, 0, num_latent_frames)
    if not 0.0 <= first_frame_prob <= 1.0:
        raise ValueError(f"`first_frame_prob` must lie in [0, 1], got {first_frame_prob}.")
    if num_latent_frames == 1 or float(uniform(generator, 1).item()) < first_frame_prob:
        return 0
    return randint(generator, 1, num_latent_frames)


def pyramid_training_batch(
    scheduler,
    latents: torch.Tensor,
    stage: int,
    num_history: int | None = None,
    generator: torch.Generator | None = None,
    corrupt_ratio: float = HISTORY_CORRUPTION_RATIO,
    noise: torch.Tensor | None = None,
    first_frame_prob: float | None = None,
    foreground: torch.Tensor | None = None,
    history_latents: torch.Tensor | None = None,
    timesteps: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> PyramidTrainingBatch:
    """Build one stage's autoregressive training example from clean, normalised latents (Pyramid-Flow recipe).

    Unit-count sampling (kept simple): one ``u = num_history`` per call, uniform over 0 .. T-1 when not given;
    the unit trained is latent frame ``u``, conditioned on frames ``0 .. u-1`` (u = 0: the first frame, no
    history). Frames after ``u`` are ignored. Everything else follows Pyramid-Flow's temporal-pyramid training:

    1. the clean latents of frames 0..u are turned into a spatial pyramid (``scheduler.pyramid``);
    2. one full-resolution Gaussian for frame u is brought to the stage's resolution with
       ``scheduler.downsample_noise`` (the same realisation at every level);
    3. ``scheduler.stage_endpoints`` gives the stage's start/end points, ``sample_training_timesteps`` a uniform
       grid point (local sigma ``ratio`` and raw timestep), ``interpolate`` the noisy input and
       ``velocity_target`` the target ``start - end``;
    4. the history clips are laid out exactly as at inference (``scheduler.history_conditions``: newest frame at
       the stage's resolution, older ones lower) and corrupted with one sigma_c ~ U(0, ``corrupt_ratio``) per
       sample (``PyramidalDMDScheduler.add_history_noise``).

    Args:
        scheduler: a :class:`~diffusers_neodragon.PyramidalDMDScheduler`.
        latents: clean normalised latents [B, C, T, H, W] at full resolution (H, W divisible by 2^(stages-1)).
        stage: the pyramid stage to train.
        num_history: history frame count u in [0, T-1]; drawn from ``generator`` when ``None``.
        generator: all randomness (u, noise, timesteps, corruption); ``None`` uses the global RNG.
        corrupt_ratio: upper bound of sigma_c (1/3 in Pyramid-Flow; 0 disables the corruption).
        noise: optional full-resolution noise [B, C, 1, H, W] for frame u (drawn when ``None``).
        first_frame_prob: probability of u = 0 when u is drawn (see :func:`sample_num_history`; ``None``: 1/T).
        foreground: optional object mask [B, 1, T, H, W] on the full latent grid (:func:`latent_foreground_mask`);
            its frame u, max-pooled to the stage's resolution, is returned as ``foreground``.
        history_latents: optional latents [B, C, T, H, W] whose frames 0 .. u-1 replace ``latents``' as the history
            (e.g. the model's own frames, :func:`frames_from_true_history`); frame u always comes from ``latents``.
        timesteps: optional ``(ratio, timestep)`` [B] each, instead of a uniform draw from the stage's training grid
            (e.g. ``scheduler.sample_inference_timesteps``: a step-distilled student's own sampler steps).
    """
    if latents.ndim != 5:
        raise ValueError(f"`latents` must be [B, C, T, H, W], got shape {tuple(latents.shape)}.")
    stages = scheduler.config.stages
    if not 0 <= stage < stages:
        raise ValueError(f"`stage` must be in [0, {stages - 1}], got {stage}.")
    factor = 2 ** (stages - 1)
    if latents.shape[-2] % factor or latents.shape[-1] % factor:
        raise ValueError(
            f"latent height and width must be divisible by {factor} (2^(stages-1)), got {tuple(latents.shape[-2:])}."
        )
    if not 0.0 <= corrupt_ratio <= 1.0:
        raise ValueError(f"`corrupt_ratio` must lie in [0, 1], got {corrupt_ratio}.")
    batch, channels, num_frames, height, width = latents.shape
    if foreground is not None and tuple(foreground.shape) != (batch, 1, num_frames, height, width):
        raise ValueError(
            f"`foreground` must have shape {(batch, 1, num_frames, height, width)}, got {tuple(foreground.shape)}."
        )
    if history_latents is not None and history_latents.shape != latents.shape:
        raise ValueError(
            f"`history_latents` must have the shape of `latents` {tuple(latents.shape)}, "
            f"got {tuple(history_latents.shape)}."
        )
    if num_history is None:
        num_history = sample_num_history(num_frames, generator, first_frame_prob)
    if not 0 <= num_history < num_frames:
        raise ValueError(f"`num_history` must be in [0, {num_frames - 1}], got {num_history}.")
    u = int(num_history)
    device = latents.device

    levels = scheduler.pyramid(latents[:, :, : u + 1])
    if noise is None:
        shape = (batch, channels, 1, height, width)
        noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
    elif tuple(noise.shape) != (batch, channels, 1, height, width):
        raise ValueError(f"`noise` must have shape {(batch, channels, 1, height, width)}, got {tuple(noise.shape)}.")
    stage_noise = scheduler.downsample_noise(noise.to(device=device, dtype=torch.float32), stages - 1 - stage)
    clean = levels[stage][:, :, u : u + 1].float()
    clean_lower = levels[stage - 1][:, :, u : u + 1].float() if stage > 0 else None
    start, end = scheduler.stage_endpoints(clean, stage_noise, stage, clean_lower)
    if timesteps is None:
        ratio, timestep = scheduler.sample_training_timesteps(stage, batch, generator=generator, device=device)
    else:
        ratio, timestep = (t.to(device) for t in timesteps)
    hidden_states = scheduler.interpolate(start, end, ratio)
    target = scheduler.velocity_target(start, end)

    corruption_sigma = torch.zeros(batch, device=device)
    history: list[torch.Tensor] = []
    if u > 0:
        if history_latents is None:
            history_levels = [level[:, :, :u] for level in levels]
        else:
            history_levels = scheduler.pyramid(history_latents[:, :, :u].to(latents.dtype))
        clips = scheduler.history_conditions(history_levels, stage)
        corruption_sigma = (uniform(generator, batch) * corrupt_ratio).to(device)
        history = scheduler.add_history_noise(clips, corruption_sigma, generator)
    if foreground is not None:
        pool = 2 ** (stages - 1 - stage)
        foreground = F.max_pool3d(foreground[:, :, u : u + 1].float(), (1, pool, pool))
    return PyramidTrainingBatch(
        hidden_states=hidden_states.to(latents.dtype),
        history=history,
        timestep=timestep,
        ratio=ratio,
        target=target.to(latents.dtype),
        stage=stage,
        num_history=u,
        corruption_sigma=corruption_sigma,
        foreground=foreground,
    )


@torch.no_grad()
def frames_from_true_history(
    pipe,
    latents: torch.Tensor,
    text: tuple,
    negative_text: tuple,
    num_inference_steps: Sequence[int],
    video_num_inference_steps: Sequence[int],
    guidance_scale: float,
    video_guidance_scale: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The model's own version of every latent frame of clean clips, each sampled from the clip's true history.

    Training only on true histories leaves the model unprepared for its own: Shapes videos keep a small diamond
    when every frame is sampled from the true frames before it, and lose it in a free rollout. Frames sampled this
    way carry the model's per-frame errors while staying aligned with the true clip (the object where the clip has
    it), so they can stand in for history frames against the true next frame (``--generated_history_prob`` of
    ``train_pyramidal_flow.py``, a DAgger-like correction). Frame j >= 1 is sampled from noise given true frames
    0 .. j-1, exactly as ``pipe`` samples later frames; frame 0 has no history and is re-sampled from the true frame
    over the last stage only (re-noised from its stage-before-last level), so that it keeps the true object's place.

    Args:
        pipe: a :class:`~diffusers_neodragon.NeodragonPipeline` (its transformer and scheduler are used).
        latents: clean normalised latents [B, C, T, H, W].
        text / negative_text: ``(embeds, mask or None, pooled)`` of the captions and of the negative prompt, each
            with B rows (masks both given or both None).
        num_inference_steps / video_num_inference_steps: steps per stage of the first / later frames.
        guidance_scale / video_guidance_scale: CFG scales of the first / later frames (<= 1: no CFG).
    """
    scheduler = pipe.scheduler
    stages = scheduler.config.stages
    dtype = pipe.transformer.dtype
    latents = latents.to(dtype)
    batch = latents.shape[0]

    def text_for(scale):
        if scale <= 1.0:
            return text, None
        mask = None if text[1] is None else torch.cat([negative_text[1], text[1]])
        return (torch.cat([negative_text[0], text[0]]), mask, torch.cat([negative_text[2], text[2]])), scale

    levels = scheduler.pyramid(latents)  # per frame, so each prefix's pyramid is a slice of it
    first_text, first_scale = text_for(guidance_scale)
    first = latents[:, :, :1]
    if stages > 1:
        first = pipe.denoise_unit(levels[stages - 2][:, :, :1], None, first_text, list(num_inference_steps),
                                  first_scale, generator, start_stage=stages - 1)
    frames = [first]
    video_text, video_scale = text_for(video_guidance_scale)
    for unit in range(1, latents.shape[2]):
        noise = randn_tensor((batch, latents.shape[1], 1, *latents.shape[-2:]), generator=generator,
                             device=latents.device, dtype=torch.float32)
        x = scheduler.downsample_noise(noise, times=stages - 1).to(dtype)
        history = [level[:, :, :unit] for level in levels]
        frames.append(pipe.denoise_unit(x, history, video_text, list(video_num_inference_steps), video_scale,
                                        generator))
    return torch.cat(frames, dim=2)

