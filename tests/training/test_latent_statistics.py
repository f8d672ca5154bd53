"""Latent normalisation constants of a causal VAE."""


import pytest
import torch

from diffusers_neodragon import CausalVideoVAE
from diffusers_neodragon.training_utils import (
    compute_latent_statistics,
)


def test_latent_statistics_normalise_image_and_video_frames():
    torch.manual_seed(0)
    vae = CausalVideoVAE(latent_channels=4, encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                         encoder_layers_per_block=(1,) * 4, decoder_layers_per_block=(1,) * 4, norm_num_groups=4)
    for module in vae.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.Linear)):
            module.reset_parameters()
    videos = torch.rand(3, 3, 9, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    stats = compute_latent_statistics(vae, videos.split(2))
    vae.register_to_config(**stats)
    z = vae.normalize_latents(vae.encode(videos).latent_dist.mode())
    for part in (z[:, :, :1], z[:, :, 1:]):
        assert abs(part.mean().item()) < 1e-4 and abs(part.std(unbiased=False).item() - 1) < 1e-3
    with pytest.raises(ValueError, match="single latent frame"):
        compute_latent_statistics(vae, [videos[:, :, :1]])
