# SPDX-License-Identifier: Apache-2.0
"""Latent normalisation constants of a causal video VAE (first latent frame and later frames apart)."""

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

