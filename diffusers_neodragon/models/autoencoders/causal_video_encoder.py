"""Pyramid-Flow's causal 3-D conv video encoder (8x in space and time, causal first frame), shared by both VAEs.

Neodragon keeps it frozen so the denoiser's latent space never moves; the two decoders (the full causal one and the
tiny streaming one) read the same latents.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.models.activations import get_activation
from torch import nn

from .causal_video_blocks import (
    CausalConv3d,
    CausalDownEncoderBlock3D,
    CausalGroupNorm,
    CausalMidBlock3D,
)


def check_scale(flags: Sequence[bool], scale: int, what: str) -> None:
    """Raise if a stack of 2x resampling flags does not give the declared overall scale factor."""
    factor = 2 ** sum(bool(flag) for flag in flags)
    if factor != scale:
        raise ValueError(f"{what} {tuple(flags)} gives a factor of {factor}, but the config declares {scale}")


class CausalVideoEncoder(nn.Module):
    """Pyramid-Flow's causal video encoder: T frames → 1 + (T - 1) / 8 latent frames at 1/8 of H and W.

    Outputs ``2 * latent_channels`` channels (mean and log-variance). Pass a shared ``cache`` dict to encode a
    video chunk by chunk (first chunk the first frame alone, then multiples of 8 frames); the result equals the
    all-at-once encoding.
    """

    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 16,
        block_out_channels: Sequence[int] = (128, 256, 512, 512),
        layers_per_block: Sequence[int] = (2, 2, 2, 2),
        spatial_downsample: Sequence[bool] = (True, True, True, False),
        temporal_downsample: Sequence[bool] = (True, True, True, False),
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        lengths = {len(block_out_channels), len(layers_per_block), len(spatial_downsample), len(temporal_downsample)}
        if len(lengths) != 1:
            raise ValueError(
                "block_out_channels, layers_per_block, spatial_downsample and temporal_downsample must have the same "
                f"length, got {block_out_channels}, {layers_per_block}, {spatial_downsample}, {temporal_downsample}"
            )
        self.conv_in = CausalConv3d(in_channels, block_out_channels[0], kernel_size=3)
        self.down_blocks = nn.ModuleList(
            [
                CausalDownEncoderBlock3D(
                    block_out_channels[max(i - 1, 0)],
                    channels,
                    num_layers=layers_per_block[i],
                    spatial_downsample=spatial_downsample[i],
                    temporal_downsample=temporal_downsample[i],
                    norm_num_groups=norm_num_groups,
                    act_fn=act_fn,
                    dropout=dropout,
                )
                for i, channels in enumerate(block_out_channels)
            ]
        )
        self.mid_block = CausalMidBlock3D(
            block_out_channels[-1], norm_num_groups=norm_num_groups, act_fn=act_fn, dropout=dropout
        )
        self.conv_norm_out = CausalGroupNorm(norm_num_groups, block_out_channels[-1], eps=1e-6)
        self.conv_act = get_activation(act_fn)
        self.conv_out = CausalConv3d(block_out_channels[-1], 2 * latent_channels, kernel_size=3)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = self.conv_in(x, cache)
        for block in [*self.down_blocks, self.mid_block]:
            if cache is None and self.gradient_checkpointing and torch.is_grad_enabled():
                x = self._gradient_checkpointing_func(block, x)
            else:
                x = block(x, cache)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)), cache)
