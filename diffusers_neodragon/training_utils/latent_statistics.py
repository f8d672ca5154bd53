# SPDX-License-Identifier: Apache-2.0
"""Latent normalisation constants of a causal video VAE (first latent frame and later frames apart), and noise
added in that normalised space to make decoders robust to generated latents."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


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
                count = torch.tensor(float(part.numel()), dtype=torch.float64)
                sums[name] += torch.stack([count, part.sum(), part.pow(2).sum()])
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


def perturb_latents(vae, latents: torch.Tensor, max_std: float, generator: torch.Generator | None = None,
                    relative_to_spread: bool = False) -> torch.Tensor:
    """Raw latents with ``s * N(0, 1)`` added in the normalised space, ``s ~ U(0, max_std)`` per clip.

    A transformer's latents are never exactly on the encoder's manifold; a decoder trained only on clean latents
    turns small errors into speckle and flicker. ``relative_to_spread`` scales the noise by the batch's own latent
    spread (first latent frame and later ones apart), for when the encoder trains too and could otherwise outgrow
    a fixed noise by scaling its latents up.
    """
    if max_std <= 0:
        return latents
    normalised = vae.normalize_latents(latents)
    device = generator.device if generator is not None else normalised.device
    scale = torch.rand((latents.shape[0], 1, 1, 1, 1), generator=generator, device=device)
    noise = torch.randn(normalised.shape, generator=generator, device=device).to(normalised.device)
    if relative_to_spread:
        spread = normalised.detach().float()
        noise[:, :, :1] *= spread[:, :, :1].std()
        if spread.shape[2] > 1:
            noise[:, :, 1:] *= spread[:, :, 1:].std()
    perturbed = normalised + (max_std * scale.to(noise.device) * noise).to(normalised.dtype)
    return vae.denormalize_latents(perturbed)
