"""Latent normalisation constants of a causal VAE."""


import pytest
import torch

from diffusers_neodragon.training_utils import (
    compute_latent_statistics,
)
from tests.tiny_components import tiny_causal_vae


def test_latent_statistics_normalise_image_and_video_frames():
    vae = tiny_causal_vae(seed=0)
    videos = torch.rand(3, 3, 9, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    stats = compute_latent_statistics(vae, videos.split(2))
    vae.register_to_config(**stats)
    z = vae.normalize_latents(vae.encode(videos).latent_dist.mode())
    for part in (z[:, :, :1], z[:, :, 1:]):
        assert abs(part.mean().item()) < 1e-4 and abs(part.std(unbiased=False).item() - 1) < 1e-3
    with pytest.raises(ValueError, match="single latent frame"):
        compute_latent_statistics(vae, [videos[:, :, :1]])
