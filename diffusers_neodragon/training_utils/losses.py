# SPDX-License-Identifier: Apache-2.0
"""Training losses: flow matching (per sample, optional object term), VAE reconstruction, object masks, PSNR, LPIPS."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F


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
    model_pred: torch.Tensor, target: torch.Tensor, foreground: torch.Tensor | None = None,
    foreground_weight: float = 0.0,
) -> torch.Tensor:
    """Pyramid-Flow's loss: MSE averaged per sample, then over the samples (see
    :func:`flow_matching_loss_per_sample` for the optional object term)."""
    return flow_matching_loss_per_sample(model_pred, target, foreground, foreground_weight).mean()


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


def build_lpips(
    net: str = "vgg", device: str | torch.device = "cpu"
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
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

