# SPDX-License-Identifier: Apache-2.0
"""Losses and helpers shared by the training scripts in ``training/`` (and reachable by tests).

What lives here:

* losses: :func:`flow_matching_loss` (per-sample MSE, then mean; an optional term over the objects' latents,
  :func:`latent_foreground_mask`), :func:`vae_reconstruction_loss` (MSE + L1 + optional small KL + optional
  perceptual term), :func:`psnr`;
* the pyramidal flow-matching batch: :func:`pyramid_training_batch` builds, for one stage, the noisy last unit,
  the corrupted history clips, the timestep and the velocity target, entirely through
  :class:`~diffusers_neodragon.PyramidalDMDScheduler` (no noise/sigma math is re-derived here);
  :func:`sample_stage` / :func:`stage_columns` give the stage mix, :func:`drop_captions` the CFG dropout;
* frozen, randomly initialised stand-in text encoders for the Shapes world (:func:`build_shapes_text_encoders`)
  and :func:`encode_prompts`, which computes exactly what ``NeodragonPipeline.encode_prompt`` feeds the model;
* resumable randomness (:func:`step_generator`), checkpoint folders (:func:`save_checkpoint`,
  :func:`resolve_resume_checkpoint`, :func:`prune_checkpoints`), model cards (:func:`write_model_card`) and the
  Hub upload (:func:`push_folder_to_hub`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from .utils.model_cards import write_model_card  # noqa: F401  (the scripts' one import for their cards)


logger = logging.getLogger(__name__)

CAPTION_DROPOUT_PROBABILITY = 0.1
"""Fraction of captions replaced by the empty string during training (classifier-free guidance)."""

HISTORY_CORRUPTION_RATIO = 1 / 3
"""Upper bound of the per-sample history corruption level sigma_c ~ U(0, ratio) (Pyramid-Flow's corrupt_ratio)."""

DEFAULT_SAMPLE_RATIOS = (1, 2, 1)
"""Pyramid-Flow's stage mix: relative frequency of stages 0, 1, 2 in training."""

CHECKPOINT_PREFIX = "checkpoint-"


# ----------------------------------------------------------------------------------------------------- losses


def flow_matching_loss_per_sample(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    foreground: torch.Tensor | None = None,
    foreground_weight: float = 0.0,
) -> torch.Tensor:
    """Mean squared error over every non-batch dimension, in float32: one value per sample [B].

    With ``foreground`` (a 0/1 mask [B, 1, *target.shape[2:]], e.g. :attr:`PyramidTrainingBatch.foreground`) and
    ``foreground_weight`` w, adds w x the MSE averaged over the masked elements only: a small object covers a few
    latent pixels and the frame-wide mean is ruled by the background, so its shape barely moves the loss. A sample
    whose mask is empty adds nothing.
    """
    if model_pred.shape != target.shape:
        raise ValueError(f"`model_pred` {tuple(model_pred.shape)} and `target` {tuple(target.shape)} must match.")
    error = (model_pred.float() - target.float()).pow(2)
    loss = error.reshape(target.shape[0], -1).mean(dim=1)
    if foreground_weight:
        if foreground is None:
            raise ValueError("`foreground_weight` > 0 needs the `foreground` mask.")
        mask = foreground.float().expand_as(error).reshape(target.shape[0], -1)
        masked = (error.reshape(target.shape[0], -1) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        loss = loss + foreground_weight * masked
    return loss


def flow_matching_loss(
    model_preds: torch.Tensor | Sequence[torch.Tensor],
    targets: torch.Tensor | Sequence[torch.Tensor],
    foregrounds: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
    foreground_weight: float = 0.0,
) -> torch.Tensor:
    """Pyramid-Flow's loss: MSE averaged per sample, then over all samples of all groups (uniform weights).

    ``model_preds``/``targets`` (and ``foregrounds``, the masks of the optional object term, see
    :func:`flow_matching_loss_per_sample`) may be single tensors or lists of tensors of different shapes (one group
    per stage when a batch is split over stages); every sample counts once whatever its resolution.
    """
    if torch.is_tensor(model_preds):
        model_preds, targets, foregrounds = [model_preds], [targets], [foregrounds]
    if len(model_preds) != len(targets) or not model_preds:
        raise ValueError("Give as many predictions as targets (at least one).")
    if foregrounds is None:
        foregrounds = [None] * len(targets)
    per_sample = [
        flow_matching_loss_per_sample(p, t, m, foreground_weight) for p, t, m in zip(model_preds, targets, foregrounds)
    ]
    return torch.cat(per_sample).mean()


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) averaged over all elements (not summed, so weights are size-free)."""
    return 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).mean()


def vae_reconstruction_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    posterior=None,
    mse_weight: float = 1.0,
    l1_weight: float = 1.0,
    kl_weight: float = 0.0,
    perceptual_weight: float = 0.0,
    perceptual_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    edge_weight: float = 0.0,
    foreground_weight: float = 0.0,
    first_frame_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction loss of a video autoencoder: ``mse·MSE + l1·L1 + kl·KL + perceptual·P + edge·E + fg·F``.

    Args:
        reconstruction, target: videos [B, 3, T, H, W] in [-1, 1].
        posterior: the encoder's ``DiagonalGaussianDistribution`` (needed when ``kl_weight > 0``); the KL to
            N(0, I) is averaged over latent elements (see :func:`gaussian_kl`), so a small weight (1e-6 .. 1e-4)
            only keeps the latents bounded.
        perceptual_fn: ``fn(recon_frames, target_frames) -> [N]`` on frames [N, 3, H, W] in [-1, 1], e.g. LPIPS
            from :func:`build_lpips`. The perceptual term is OFF by default: LPIPS needs pretrained VGG/AlexNet
            weights that are downloaded on first use, which an offline machine cannot do.
        edge_weight: weight of ``E``, the L1 distance between the horizontal and vertical pixel differences of the
            two videos. Outlines are a sliver of the pixels, so MSE/L1 alone let a small VAE blur them; this
            offline stand-in for a perceptual term pays for every blurred edge.
        first_frame_weight: how many frames the first frame counts as in the pixel terms (MSE, L1, P, E, F). A
            causal VAE encodes it alone into the first latent frame, which the transformer's image stage generates
            and every later frame follows; in a 49-frame clip it is otherwise 1/49 of the loss, and small shapes in
            it were lost (8 gives it a latent frame's share).

    Returns:
        (loss, logs) with the float value of every active term.
    """
    if reconstruction.shape != target.shape:
        raise ValueError(
            f"`reconstruction` {tuple(reconstruction.shape)} and `target` {tuple(target.shape)} must match."
        )
    if first_frame_weight <= 0:
        raise ValueError(f"`first_frame_weight` must be > 0, got {first_frame_weight}.")
    diff = reconstruction.float() - target.float()
    frame_weights = torch.ones(diff.shape[2], device=diff.device)
    frame_weights[0] = first_frame_weight
    frame_weights = frame_weights / frame_weights.mean()  # a weighted mean over frames: 1 keeps the plain mean

    def mean(values: torch.Tensor) -> torch.Tensor:  # [B, C, T, ...] -> the frame-weighted mean
        return (values.float().mean(dim=(0, 1, *range(3, values.dim()))) * frame_weights).mean()

    terms: dict[str, torch.Tensor] = {}
    if mse_weight:
        terms["mse"] = mean(diff.pow(2))
    if l1_weight:
        terms["l1"] = mean(diff.abs())
    if kl_weight:
        if posterior is None:
            raise ValueError("`kl_weight` > 0 needs the `posterior`.")
        terms["kl"] = gaussian_kl(posterior.mean, posterior.logvar)
    if perceptual_weight:
        if perceptual_fn is None:
            raise ValueError(
                "`perceptual_weight` > 0 needs a `perceptual_fn` (e.g. `build_lpips()`, which downloads weights)."
            )
        per_frame = perceptual_fn(_frames(reconstruction).float(), _frames(target).float())
        terms["perceptual"] = mean(per_frame.reshape(diff.shape[0], 1, diff.shape[2]))
    if edge_weight:
        terms["edge"] = (mean(diff.diff(dim=-1).abs()) + mean(diff.diff(dim=-2).abs())) / 2
    if foreground_weight:
        mask = foreground_mask(target.float()) * frame_weights[:, None, None]
        terms["foreground"] = (diff.abs() * mask).sum() / (mask.sum() * diff.shape[1]).clamp_min(1.0)
    weights = {"mse": mse_weight, "l1": l1_weight, "kl": kl_weight, "perceptual": perceptual_weight,
               "edge": edge_weight, "foreground": foreground_weight}
    if not terms:
        raise ValueError("At least one loss weight must be non-zero.")
    loss = sum(weights[name] * value for name, value in terms.items())
    return loss, {name: float(value.detach()) for name, value in terms.items()}


def foreground_mask(video: torch.Tensor, threshold: float = 0.25, dilation: int = 2) -> torch.Tensor:
    """[B, 1, T, H, W] float mask of the pixels of ``video`` [B, C, T, H, W] unlike their frame's median colour.

    In mostly-background videos (the Shapes world: an object covers at most 16 % of a frame) the median is the
    background, so the mask is the objects; it is dilated by ``dilation`` pixels so that both sides of an outline
    count (a rounded-off corner is missing object inside the outline and stray colour outside it).
    """
    background = video.flatten(-2).median(-1).values[..., None, None]
    mask = ((video - background).abs().amax(1, keepdim=True) > threshold).float()
    if dilation:
        size = 2 * dilation + 1
        mask = F.max_pool3d(mask, (1, size, size), stride=1, padding=(0, dilation, dilation))
    return mask


def latent_foreground_mask(
    video: torch.Tensor, temporal_scale: int, spatial_scale: int, threshold: float = 0.25, dilation: int = 2
) -> torch.Tensor:
    """:func:`foreground_mask` of ``video`` [B, C, F, H, W] on the latent grid of a causal VAE: [B, 1, T, h, w].

    A latent cell is foreground when any pixel it encodes is: latent frame 0 covers pixel frame 0 alone, frame k > 0
    pixel frames ``(k-1)·t + 1 .. k·t`` (``t = temporal_scale``), each cell a ``spatial_scale`` square. A moving
    object's cells therefore cover its whole path within the latent frame.
    """
    if (video.shape[2] - 1) % temporal_scale or video.shape[-2] % spatial_scale or video.shape[-1] % spatial_scale:
        raise ValueError(
            f"video frames {video.shape[2]} must be 1 + {temporal_scale}k and its size {tuple(video.shape[-2:])} a "
            f"multiple of {spatial_scale}."
        )
    mask = foreground_mask(video.float(), threshold, dilation)
    cells = [F.max_pool3d(mask[:, :, :1], (1, spatial_scale, spatial_scale))]
    if mask.shape[2] > 1:
        cells.append(F.max_pool3d(mask[:, :, 1:], (temporal_scale, spatial_scale, spatial_scale)))
    return torch.cat(cells, dim=2)


def _frames(video: torch.Tensor) -> torch.Tensor:
    b, c, t, h, w = video.shape
    return video.transpose(1, 2).reshape(b * t, c, h, w)


def build_lpips(net: str = "vgg", device: str | torch.device = "cpu") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """LPIPS as a ``perceptual_fn`` (needs the ``lpips`` package and a network connection for its weights)."""
    try:
        import lpips  # noqa: PLC0415
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The perceptual loss needs the `lpips` package (`pip install lpips`), whose backbone weights are "
            "downloaded on first use; leave `--lpips_weight 0` on an offline machine."
        ) from error
    model = lpips.LPIPS(net=net).to(device).eval().requires_grad_(False)  # pragma: no cover
    return lambda x, y: model(x, y).flatten()  # pragma: no cover


def psnr(reconstruction: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB of tensors in a range of width ``data_range`` (2 for [-1, 1])."""
    mse = (reconstruction.float().clamp(-1, 1) - target.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


# --------------------------------------------------------------------------------- randomness and the stage mix


def step_generator(seed: int, step: int, process_index: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator for all the randomness of one (micro-)step, a pure function of (seed, step, process).

    Deriving the noise, timesteps, stage, unit count and caption dropout of step ``k`` from ``(seed, k, rank)``
    makes a run resumed from a checkpoint draw exactly what the uninterrupted run drew, without depending on
    global RNG states.
    """
    state = np.random.SeedSequence([int(seed), int(step), int(process_index)]).generate_state(2, np.uint32)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
    return generator


def _rand(generator: torch.Generator | None, *shape: int) -> torch.Tensor:
    device = generator.device if generator is not None else "cpu"
    return torch.rand(shape, generator=generator, device=device)


def _randint(generator: torch.Generator | None, low: int, high: int) -> int:
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(low, high, (1,), generator=generator, device=device).item())


def sample_stage(sample_ratios: Sequence[float] = DEFAULT_SAMPLE_RATIOS, generator: torch.Generator | None = None) -> int:
    """One stage drawn with probability proportional to ``sample_ratios`` ([1, 2, 1]: ¼, ½, ¼)."""
    ratios = torch.tensor([float(r) for r in sample_ratios])
    if ratios.ndim != 1 or not len(ratios) or (ratios < 0).any() or ratios.sum() <= 0:
        raise ValueError(f"`sample_ratios` must be non-negative with a positive sum, got {list(sample_ratios)}.")
    u = float(_rand(generator, 1).item()) * float(ratios.sum())
    cumulative = torch.cumsum(ratios, 0)
    return int(min(int((cumulative <= u).sum()), len(ratios) - 1))


def stage_columns(batch_size: int, sample_ratios: Sequence[int] = DEFAULT_SAMPLE_RATIOS) -> list[tuple[int, torch.Tensor]]:
    """Pyramid-Flow's deterministic batch split: sample j goes to column j % sum(ratios), column -> stage.

    With [1, 2, 1] the columns map to stages (0, 1, 1, 2). Returns (stage, sample indices) for every stage that
    received samples, lowest stage first.
    """
    if any(int(r) != r or r < 0 for r in sample_ratios) or sum(sample_ratios) <= 0:
        raise ValueError(f"`sample_ratios` must be non-negative ints with a positive sum, got {list(sample_ratios)}.")
    column_stage = [s for s, r in enumerate(sample_ratios) for _ in range(int(r))]
    stage_of = torch.tensor([column_stage[j % len(column_stage)] for j in range(batch_size)])
    groups = []
    for stage in range(len(sample_ratios)):
        indices = torch.nonzero(stage_of == stage).flatten()
        if len(indices):
            groups.append((stage, indices))
    return groups


def caption_dropout_mask(
    batch_size: int, probability: float = CAPTION_DROPOUT_PROBABILITY, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Bool [B] (on CPU): which captions to replace by ``""`` (each with ``probability``, for CFG)."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"`probability` must lie in [0, 1], got {probability}.")
    return (_rand(generator, batch_size) < probability).cpu()


def drop_captions(
    captions: Sequence[str], probability: float = CAPTION_DROPOUT_PROBABILITY, generator: torch.Generator | None = None
) -> tuple[list[str], torch.Tensor]:
    """Replace each caption by ``""`` with ``probability`` (classifier-free guidance). Returns (captions, dropped)."""
    dropped = caption_dropout_mask(len(captions), probability, generator)
    return ["" if d else c for c, d in zip(captions, dropped.tolist())], dropped


# ----------------------------------------------------------------------------------- pyramidal training batch


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
        return _randint(generator, 0, num_latent_frames)
    if not 0.0 <= first_frame_prob <= 1.0:
        raise ValueError(f"`first_frame_prob` must lie in [0, 1], got {first_frame_prob}.")
    if num_latent_frames == 1 or float(_rand(generator, 1).item()) < first_frame_prob:
        return 0
    return _randint(generator, 1, num_latent_frames)


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
            f"`history_latents` must have the shape of `latents` {tuple(latents.shape)}, got {tuple(history_latents.shape)}."
        )
    if num_history is None:
        num_history = sample_num_history(num_frames, generator, first_frame_prob)
    if not 0 <= num_history < num_frames:
        raise ValueError(f"`num_history` must be in [0, {num_frames - 1}], got {num_history}.")
    u = int(num_history)
    device = latents.device

    levels = scheduler.pyramid(latents[:, :, : u + 1])
    if noise is None:
        noise = randn_tensor((batch, channels, 1, height, width), generator=generator, device=device, dtype=torch.float32)
    elif tuple(noise.shape) != (batch, channels, 1, height, width):
        raise ValueError(f"`noise` must have shape {(batch, channels, 1, height, width)}, got {tuple(noise.shape)}.")
    stage_noise = scheduler.downsample_noise(noise.to(device=device, dtype=torch.float32), stages - 1 - stage)
    clean = levels[stage][:, :, u : u + 1].float()
    clean_lower = levels[stage - 1][:, :, u : u + 1].float() if stage > 0 else None
    start, end = scheduler.stage_endpoints(clean, stage_noise, stage, clean_lower)
    ratio, timestep = scheduler.sample_training_timesteps(stage, batch, generator=generator, device=device)
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
        corruption_sigma = (_rand(generator, batch) * corrupt_ratio).to(device)
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


# ------------------------------------------------------------------------------------------ transformer init


@torch.no_grad()
def initialize_transformer_weights(transformer: torch.nn.Module) -> torch.nn.Module:
    """Pyramid-Flow's from-scratch initialisation of the MMDiT (SD3/DiT style).

    Xavier-uniform on every Linear and Conv (the patch-embedding conv on its flattened [out, in·k·k] weight), zero
    biases; the timestep and pooled-text embedders N(0, 0.02); adaLN modulations (every block's ``norm1`` and
    ``norm1_context``, ``norm_out``) and ``proj_out`` zeroed, so each block starts as the identity and the model
    predicts zero velocity. Norm weights keep their defaults (ones).
    """
    for module in transformer.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)):
            weight = module.weight
            torch.nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    for module in transformer.time_text_embed.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.02)
    zeroed = [transformer.norm_out.linear, transformer.proj_out]
    for block in transformer.transformer_blocks:
        zeroed += [block.norm1.linear, block.norm1_context.linear]
    for module in zeroed:
        torch.nn.init.zeros_(module.weight)
        if module.bias is not None:
            torch.nn.init.zeros_(module.bias)
    return transformer


@torch.no_grad()
def refine_patch_size(transformer, patch_size: int):
    """A copy of ``transformer`` with a smaller spatial ``patch_size`` that starts where the original left off.

    Why: a finer token grid draws smaller objects, and training it from scratch throws away everything the coarse
    model learned. Every block keeps its weights (they only see tokens); the three patch-dependent parts are mapped
    (as FlexiViT resizes patch embeddings) so that, on a latent that is constant within each old patch, the first
    new token of a patch is embedded and positioned exactly as the old token was, and the new model predicts about
    the average of the old patch (the other tokens of a patch sit at positions in between, and the text gets a
    smaller share of each attention average):

    * the patch-embedding kernel is summed over the ``r x r`` sub-kernels (``r = old / new``);
    * ``proj_out`` averages the ``r x r`` sub-patches each old token predicted;
    * the sincos table keeps its spacing in space: ``pos_embed_max_size`` grows ``r``-fold and ``sample_size`` is
      set so that one new token advances ``1 / r`` of an old token's position.

    The result is a new fp32 model on the input's device; fine-tune it at the new patch size.
    """
    config = transformer.config
    old = config.patch_size
    if patch_size == old:
        return transformer
    if patch_size < 1 or old % patch_size:
        raise ValueError(
            f"patch_size {patch_size} must divide the model's patch_size {old} (only refining is supported)."
        )
    r = old // patch_size
    refined = type(transformer).from_config(
        config, patch_size=patch_size, pos_embed_max_size=config.pos_embed_max_size * r,
        sample_size=config.sample_size // old * patch_size,
    ).to(transformer.device)
    state = {k: v.float() for k, v in transformer.state_dict().items()}
    dim, channels = transformer.proj_out.in_features, config.in_channels
    kernel = state["pos_embed.proj.weight"]  # [D, C, old, old] -> sum of the r x r sub-kernels
    state["pos_embed.proj.weight"] = kernel.reshape(dim, channels, r, patch_size, r, patch_size).sum((2, 4))
    # proj_out rows are ordered (row in patch, column in patch, channel); average the r x r sub-patches.
    weight = state["proj_out.weight"].reshape(r, patch_size, r, patch_size, channels, dim)
    state["proj_out.weight"] = weight.mean((0, 2)).reshape(-1, dim)
    bias = state["proj_out.bias"].reshape(r, patch_size, r, patch_size, channels)
    state["proj_out.bias"] = bias.mean((0, 2)).reshape(-1)
    refined.load_state_dict(state)
    return refined


def freeze_unused_parameters(transformer: torch.nn.Module) -> list[str]:
    """Stop training the last block's text-query projection (``add_q_proj``, ``norm_add_q``), which cannot change
    the output: that block is context-pre-only, so its text outputs are discarded (the model skips those queries).

    Kept in the checkpoint for compatibility with the official layout. Returns the frozen names. Needed for
    multi-GPU training: DDP requires every trainable parameter to receive a gradient.
    """
    attention = transformer.transformer_blocks[-1].attn
    frozen = []
    for prefix, module in (("add_q_proj", attention.add_q_proj), ("norm_add_q", attention.norm_add_q)):
        for name, parameter in module.named_parameters():
            parameter.requires_grad_(False)
            frozen.append(f"transformer_blocks.{len(transformer.transformer_blocks) - 1}.attn.{prefix}.{name}")
    return frozen


# ------------------------------------------------------------------------------------------ text encoders


def build_shapes_text_encoders(
    vocabulary: Iterable[str],
    seed: int = 0,
    t5_dim: int = 256,
    t5_layers: int = 2,
    t5_heads: int = 4,
    t5_ff_dim: int | None = None,
    clip_dim: int = 64,
    clip_layers: int = 1,
    clip_heads: int = 2,
    clip_projection_dim: int | None = None,
    t5_max_length: int = 64,
    clip_max_length: int = 32,
) -> dict:
    """Frozen, randomly initialised stand-ins for the text encoders of the Shapes world's base model.

    The real encoders (T5-XXL, CLIP-L, CLIP-G) cannot be downloaded here, and a closed world of templated captions
    does not need language understanding: a random, frozen encoder over a word-level vocabulary is still a fixed,
    deterministic function that maps different captions to different embeddings, and the transformer learns to read
    it (its ``context_embedder`` plays the role it plays for T5-XXL in Pyramid-Flow).

    Returns the pipeline components ``text_encoder_3`` (transformers ``T5EncoderModel``, the "teacher" T5 of width
    ``t5_dim`` that the transformer's ``context_embedder`` reads) + ``tokenizer_3`` (T5-like word-level tokenizer),
    and ``text_encoder`` / ``text_encoder_2`` (``CLIPTextModelWithProjection``; their ``text_embeds`` concatenated
    form the pooled vector of size ``2 * clip_projection_dim``) + ``tokenizer`` / ``tokenizer_2`` (CLIP-like, with
    ``<|startoftext|>`` / ``<|endoftext|>``). Everything is in eval mode with ``requires_grad`` off. The same
    arguments always give the same weights (the global RNG is left untouched).
    """
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel  # noqa: PLC0415

    from diffusers_neodragon.data.vocab_tokenizer import build_word_level_tokenizer  # noqa: PLC0415

    words = list(vocabulary)
    if t5_dim % t5_heads or clip_dim % clip_heads:
        raise ValueError("`t5_dim` must be divisible by `t5_heads` and `clip_dim` by `clip_heads`.")
    clip_projection_dim = clip_projection_dim or clip_dim
    tokenizer_3 = build_word_level_tokenizer(words, model_max_length=t5_max_length)
    clip_tokenizers = [
        build_word_level_tokenizer(
            words, model_max_length=clip_max_length, bos_token="<|startoftext|>", eos_token="<|endoftext|>"
        )
        for _ in range(2)
    ]
    t5_config = T5Config(
        vocab_size=len(tokenizer_3),
        d_model=t5_dim,
        d_kv=t5_dim // t5_heads,
        d_ff=t5_ff_dim or 2 * t5_dim,
        num_layers=t5_layers,
        num_heads=t5_heads,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=tokenizer_3.pad_token_id,
        eos_token_id=tokenizer_3.eos_token_id,
        decoder_start_token_id=tokenizer_3.pad_token_id,
        is_encoder_decoder=False,
        use_cache=False,
    )

    def clip_config(tokenizer):
        return CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=clip_dim,
            intermediate_size=4 * clip_dim,
            num_hidden_layers=clip_layers,
            num_attention_heads=clip_heads,
            projection_dim=clip_projection_dim,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder_3 = T5EncoderModel(t5_config)
        torch.manual_seed(seed + 1)
        text_encoder = CLIPTextModelWithProjection(clip_config(clip_tokenizers[0]))
        torch.manual_seed(seed + 2)
        text_encoder_2 = CLIPTextModelWithProjection(clip_config(clip_tokenizers[1]))
    for model in (text_encoder_3, text_encoder, text_encoder_2):
        model.eval().requires_grad_(False)
    return dict(
        text_encoder=text_encoder,
        tokenizer=clip_tokenizers[0],
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizers[1],
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


TEXT_COMPONENT_NAMES = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")


def pooled_projection_dim(text_components: dict) -> int:
    """Size of the pooled vector the CLIP encoders produce (sum of their projection dims)."""
    return sum(
        text_components[name].config.projection_dim
        for name in ("text_encoder", "text_encoder_2")
        if text_components.get(name) is not None
    )


@torch.no_grad()
def encode_prompts(
    text_components: dict,
    texts: Sequence[str],
    device: str | torch.device = "cpu",
    max_sequence_length: int = 128,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What ``NeodragonPipeline.encode_prompt`` computes without a ContextAdapter, padded to a fixed length.

    Returns (token features [B, L, D] of ``text_encoder_3``, their mask [B, L] (1 = real token), pooled
    [B, pooled_dim]) in float32 with ``L = max_sequence_length``. The pipeline trims the common padding instead;
    padded tokens are masked out in the transformer, so both give the same result. Slice to
    ``int(mask.sum(1).max())`` tokens to save attention work.
    """
    texts = list(texts)
    tokens = text_components["tokenizer_3"](
        texts, padding="max_length", max_length=max_sequence_length, truncation=True, return_tensors="pt"
    )
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    embeds = text_components["text_encoder_3"](ids, attention_mask=mask).last_hidden_state
    pooled = []
    for tokenizer_name, encoder_name in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
        encoder = text_components.get(encoder_name)
        if encoder is None:
            continue
        tokenizer = text_components[tokenizer_name]
        clip_ids = tokenizer(
            texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        pooled.append(encoder(clip_ids.to(device)).text_embeds)
    if not pooled:
        raise ValueError("At least one of text_encoder / text_encoder_2 is needed for the pooled vector.")
    return embeds.float(), mask, torch.cat(pooled, dim=-1).float()


# ------------------------------------------------------------------------------------------ checkpoints


def load_vae_folder(path: str | os.PathLike, dtype: torch.dtype = torch.float32, cls=None) -> torch.nn.Module:
    """A VAE from a local VAE folder or from a folder holding ``vae/`` (a ``train_vae.py`` run or a pipeline).

    ``cls`` defaults to the config's ``_class_name`` among this package's models (``CausalVideoVAE`` or
    ``AsymmetricVAE``), so callers that only need "the VAE in this folder" need not know which one it is.
    """
    import json  # noqa: PLC0415

    import diffusers_neodragon  # noqa: PLC0415

    folder = Path(path)
    subfolder = "vae" if (folder / "vae" / "config.json").is_file() else None
    if cls is None:
        name = json.loads((folder / (subfolder or "") / "config.json").read_text()).get("_class_name", "")
        cls = getattr(diffusers_neodragon, name, None)
        if cls is None:
            raise ValueError(f"{folder} holds no diffusers_neodragon VAE (config _class_name {name!r}).")
    return cls.from_pretrained(str(folder), subfolder=subfolder, dtype=dtype)


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``checkpoint-<step>`` folders of ``output_dir`` as (step, path), oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = re.fullmatch(re.escape(CHECKPOINT_PREFIX) + r"(\d+)", path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def prune_checkpoints(output_dir: str | os.PathLike, total_limit: int | None, keep_room: int = 1) -> list[Path]:
    """Delete the oldest checkpoints so that ``total_limit - keep_room`` remain (room for the one about to be
    saved), as the diffusers scripts do. ``None`` keeps everything. Returns the removed folders."""
    if total_limit is None:
        return []
    if total_limit < 1:
        raise ValueError(f"`checkpoints_total_limit` must be >= 1, got {total_limit}.")
    checkpoints = list_checkpoints(output_dir)
    excess = len(checkpoints) - (total_limit - keep_room)
    removed = []
    for _, path in checkpoints[: max(excess, 0)]:
        shutil.rmtree(path)
        removed.append(path)
    if removed:
        logger.info("Removed %d old checkpoint(s): %s", len(removed), ", ".join(p.name for p in removed))
    return removed


def save_checkpoint(accelerator, output_dir: str | os.PathLike, global_step: int, total_limit: int | None = None) -> Path:
    """Rotate old checkpoints (main process) and ``accelerator.save_state`` to ``output_dir/checkpoint-<step>``.

    Call it on every process: accelerate writes the shared state once and each process's RNG state.
    """
    path = Path(output_dir) / f"{CHECKPOINT_PREFIX}{global_step}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    logger.info("Saved state to %s", path)
    return path


def resolve_resume_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> Path | None:
    """The checkpoint folder to resume from: ``"latest"`` -> the highest ``checkpoint-<step>`` in ``output_dir``
    (``None`` when there is none: the run starts fresh); a name or path -> that folder (relative names are looked
    up in ``output_dir``), which must exist."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            logger.warning("No checkpoint in %s: starting a new training run.", output_dir)
            return None
        return checkpoints[-1][1]
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        path = Path(output_dir) / resume_from_checkpoint
    if not path.is_dir():
        raise ValueError(f"Checkpoint {resume_from_checkpoint!r} does not exist (nor in {output_dir}).")
    return path


def checkpoint_step(path: str | os.PathLike) -> int:
    """The global step encoded in a ``checkpoint-<step>`` folder name."""
    match = re.fullmatch(re.escape(CHECKPOINT_PREFIX) + r"(\d+)", Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a `{CHECKPOINT_PREFIX}<step>` folder.")
    return int(match.group(1))


class EpochShuffleSampler(torch.utils.data.Sampler):
    """Shuffled indices whose order is a pure function of (seed, epoch): resumable without saved RNG state.

    Accelerate's data loaders call ``set_epoch`` on it; combine with ``accelerator.skip_first_batches`` to resume
    mid-epoch.
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True):
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


# ------------------------------------------------------------------------------------------ VAE latents


@torch.no_grad()
def compute_latent_statistics(
    vae, videos: Iterable[torch.Tensor], max_clips: int | None = None, device: str | torch.device | None = None
) -> dict[str, float]:
    """Latent normalisation constants of a causal video VAE from raw latents of sample clips.

    The first latent frame (the image) and the later latent frames (video) get separate constants, as in the
    VAE config: ``shift`` = mean and ``scale`` = 1 / std over all channels and positions, so that
    ``(z - shift) * scale`` has zero mean and unit variance. ``videos`` yields [B, 3, F, H, W] in [-1, 1] (F > 1
    for the video constants); latents are the posterior means. Returns the four config entries
    (``image_latent_shift``, ``image_latent_scale``, ``video_latent_shift``, ``video_latent_scale``).
    """
    device = device or next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    sums = {"image": torch.zeros(3, dtype=torch.float64), "video": torch.zeros(3, dtype=torch.float64)}
    seen = 0
    for video in videos:
        if max_clips is not None and seen >= max_clips:
            break
        if max_clips is not None:
            video = video[: max_clips - seen]
        z = vae.encode(video.to(device=device, dtype=dtype)).latent_dist.mode().double().cpu()
        for name, part in (("image", z[:, :, :1]), ("video", z[:, :, 1:])):
            if part.numel():
                sums[name] += torch.stack([torch.tensor(float(part.numel()), dtype=torch.float64), part.sum(), part.pow(2).sum()])
        seen += video.shape[0]
    if sums["image"][0] == 0:
        raise ValueError("No clips to compute latent statistics from.")
    if sums["video"][0] == 0:
        raise ValueError("The clips have a single latent frame: give clips of 1 + 8k frames with k >= 1.")
    stats = {}
    for name, (count, total, squares) in sums.items():
        mean = total / count
        std = math.sqrt(max(float(squares / count - mean**2), 1e-12))
        stats[f"{name}_latent_shift"] = float(mean)
        stats[f"{name}_latent_scale"] = 1.0 / std
    return stats


# ------------------------------------------------------------------------------------------ small utilities


def parse_resolution(value: str | int | Sequence[int]) -> tuple[int, int]:
    """``128`` -> (128, 128); ``"64x128"`` -> height 64, width 128."""
    if isinstance(value, (tuple, list)):
        height, width = (int(v) for v in value)
    elif isinstance(value, int):
        height = width = value
    else:
        parts = re.split(r"[x,]", str(value).lower().strip())
        if len(parts) == 1:
            height = width = int(parts[0])
        elif len(parts) == 2:
            height, width = int(parts[0]), int(parts[1])
        else:
            raise ValueError(f"A resolution is `N` or `HxW`, got {value!r}.")
    if height < 1 or width < 1:
        raise ValueError(f"A resolution must be positive, got {value!r}.")
    return height, width


def parse_int_list(value: str | Sequence[int]) -> tuple[int, ...]:
    """``"32,64,64"`` -> (32, 64, 64)."""
    if isinstance(value, str):
        return tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    return tuple(int(v) for v in value)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def training_command(script: str, argv: Sequence[str] | None) -> str:
    """The command line that reproduces a run (``accelerate launch <script> <args>``)."""
    import shlex  # noqa: PLC0415

    return "accelerate launch " + shlex.join([script, *(argv or [])])


def video_strip(videos: Sequence[torch.Tensor], max_frames: int = 8):
    """A PIL image with one row per video [3, T, H, W] in [-1, 1]: ``max_frames`` evenly spaced frames each."""
    import PIL.Image  # noqa: PLC0415

    rows = []
    for video in videos:
        video = video.detach().float().cpu().clamp(-1, 1)
        frames = video.shape[1]
        picks = sorted({round(i * (frames - 1) / max(min(max_frames, frames) - 1, 1)) for i in range(min(max_frames, frames))})
        row = torch.cat([video[:, i] for i in picks], dim=2)  # [3, H, n*W]
        rows.append(row)
    width = max(r.shape[2] for r in rows)
    rows = [F.pad(r, (0, width - r.shape[2]), value=-1.0) for r in rows]
    grid = torch.cat(rows, dim=1)
    array = ((grid.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return PIL.Image.fromarray(array)


# ------------------------------------------------------------------------------------------ model cards, Hub


def create_hub_repo(args) -> str | None:
    """Create (or reuse) the Hub repository of ``--hub_model_id`` (default: the output folder's name)."""
    if not getattr(args, "push_to_hub", False):
        return None
    from huggingface_hub import create_repo  # noqa: PLC0415

    return create_repo(
        repo_id=args.hub_model_id or Path(args.output_dir).name, exist_ok=True, token=getattr(args, "hub_token", None)
    ).repo_id


def push_folder_to_hub(repo_id: str, folder: str | os.PathLike, token: str | None = None) -> None:
    """Upload the final folder, leaving out checkpoints and logs."""
    from huggingface_hub import upload_folder  # noqa: PLC0415

    upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message="End of training",
        ignore_patterns=["checkpoint-*", "step_*", "epoch_*", "logs/*", "*.pt"],
        token=token,
    )


def format_float(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


# ------------------------------------------------------------------------------------------- run control


def resolve_trackers(report_to: str | None):
    """``--report_to`` for ``Accelerator(log_with=...)``: None for "none", and None (with a warning) for
    tensorboard when it is not installed, so that a missing optional logger never stops a training run."""
    if report_to in (None, "", "none"):
        return None
    if report_to == "tensorboard":
        from accelerate.utils import is_tensorboard_available  # noqa: PLC0415

        if not is_tensorboard_available():
            logger.warning("tensorboard is not installed: tracker logging is off.")
            return None
    return report_to


def training_time_is_up(max_seconds: float | None, start_time: float, accelerator) -> bool:
    """True once ``max_seconds`` have passed since ``start_time`` (``time.perf_counter()``) on any process."""
    if max_seconds is None:
        return False
    # Every process must agree, or a distributed run would hang.
    flag = torch.tensor(float(time.perf_counter() - start_time > max_seconds), device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="max").item())


def should_stop(accelerator, args, global_step: int, start_time: float) -> bool:
    """True at an optimiser-step boundary (no accumulated gradient is dropped) once ``--max_train_steps`` or
    ``--max_train_seconds`` is reached; the same answer on every process."""
    return accelerator.sync_gradients and (
        global_step >= args.max_train_steps or training_time_is_up(args.max_train_seconds, start_time, accelerator)
    )


def finish_training_loop(script: str, accelerator, args, output_dir, start_step: int, global_step: int,
                         start_time: float) -> None:
    """After the loop: a last checkpoint when the final step was not a checkpoint step (so a stopped run resumes
    where it stopped), and the steps per second."""
    if args.checkpointing_steps and global_step > start_step and global_step % args.checkpointing_steps:
        save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
    seconds = time.perf_counter() - start_time
    accelerator.print(
        f"[{script}] trained steps {start_step}..{global_step} in {seconds:.1f} s "
        f"({(global_step - start_step) / max(seconds, 1e-9):.2f} steps/s)"
    )
