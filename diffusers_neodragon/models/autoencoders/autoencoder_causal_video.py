"""Pyramid-Flow's full causal video VAE decoder, and the VAE that pairs it with the shared causal encoder.

Neodragon ships only the tiny decoder; this ~226M-parameter mirror of the encoder is the teacher for decoder
distillation and the decoder of the small VAEs we train ourselves. Module names follow Pyramid-Flow's
``CausalVaeDecoder`` so that converting its checkpoints is a key-for-key copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.activations import get_activation
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .causal_video_autoencoder_mixin import CausalVideoAutoencoderMixin
from .causal_video_blocks import (
    CausalConv3d,
    CausalGroupNorm,
    CausalMidBlock3D,
    CausalUpDecoderBlock3D,
)
from .causal_video_encoder import CausalVideoEncoder, check_scale


class CausalVideoDecoder(nn.Module):
    """Latents [B, C, T, h, w] → frames [B, 3, 1 + 8(T - 1), 8h, 8w]: conv_in, mid block, up blocks with causal
    spatial and temporal 2x upsampling, group norm, act, conv_out.

    ``block_out_channels`` is given in encoder order (the decoder walks it backwards, as Pyramid-Flow does);
    ``layers_per_block`` and the upsampling flags are in decoder order. With a shared ``cache`` dict, chunks of
    latent frames decode exactly as the whole clip would (latent frame 0 → 1 frame, every later one → 8).
    """

    def __init__(
        self,
        latent_channels: int = 16,
        out_channels: int = 3,
        block_out_channels: Sequence[int] = (128, 256, 512, 512),
        layers_per_block: Sequence[int] = (3, 3, 3, 3),
        spatial_upsample: Sequence[bool] = (True, True, True, False),
        temporal_upsample: Sequence[bool] = (True, True, True, False),
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        lengths = {len(block_out_channels), len(layers_per_block), len(spatial_upsample), len(temporal_upsample)}
        if len(lengths) != 1:
            raise ValueError(
                "block_out_channels, layers_per_block, spatial_upsample and temporal_upsample must have the same "
                f"length, got {block_out_channels}, {layers_per_block}, {spatial_upsample}, {temporal_upsample}"
            )
        reversed_channels = list(reversed(block_out_channels))
        self.conv_in = CausalConv3d(latent_channels, reversed_channels[0], kernel_size=3)
        self.mid_block = CausalMidBlock3D(
            reversed_channels[0], norm_num_groups=norm_num_groups, act_fn=act_fn, dropout=dropout
        )
        self.up_blocks = nn.ModuleList(
            [
                CausalUpDecoderBlock3D(
                    reversed_channels[max(i - 1, 0)],
                    channels,
                    num_layers=layers_per_block[i],
                    spatial_upsample=spatial_upsample[i],
                    temporal_upsample=temporal_upsample[i],
                    norm_num_groups=norm_num_groups,
                    act_fn=act_fn,
                    dropout=dropout,
                )
                for i, channels in enumerate(reversed_channels)
            ]
        )
        self.conv_norm_out = CausalGroupNorm(norm_num_groups, block_out_channels[0], eps=1e-6)
        self.conv_act = get_activation(act_fn)
        self.conv_out = CausalConv3d(block_out_channels[0], out_channels, kernel_size=3)
        self.gradient_checkpointing = False

    def forward(self, z: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = self.conv_in(z, cache)
        for block in [self.mid_block, *self.up_blocks]:
            if cache is None and self.gradient_checkpointing and torch.is_grad_enabled():
                x = self._gradient_checkpointing_func(block, x)
            else:
                x = block(x, cache)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)), cache)


class CausalVideoVAE(CausalVideoAutoencoderMixin, ModelMixin, ConfigMixin):
    """Pyramid-Flow's causal video VAE: :class:`CausalVideoEncoder` + quant convs + :class:`CausalVideoDecoder`.

    Same latent space, encode/decode/``iter_decode``/normalisation API and constants as ``AsymmetricVAE``. The
    latent constants default to Neodragon's; Pyramid-Flow's own checkpoints were trained with a video scale of
    1 / 3.0986 (``video_latent_scale=0.32273``), which a conversion should set in the config.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 16,
        encoder_block_out_channels: Sequence[int] = (128, 256, 512, 512),
        encoder_layers_per_block: Sequence[int] = (2, 2, 2, 2),
        encoder_spatial_downsample: Sequence[bool] = (True, True, True, False),
        encoder_temporal_downsample: Sequence[bool] = (True, True, True, False),
        decoder_block_out_channels: Sequence[int] = (128, 256, 512, 512),
        decoder_layers_per_block: Sequence[int] = (3, 3, 3, 3),
        decoder_spatial_upsample: Sequence[bool] = (True, True, True, False),
        decoder_temporal_upsample: Sequence[bool] = (True, True, True, False),
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        dropout: float = 0.0,
        temporal_downsample_scale: int = 8,
        spatial_downsample_scale: int = 8,
        image_latent_shift: float = 0.1490,
        image_latent_scale: float = 0.5430,
        video_latent_shift: float = -0.2343,
        video_latent_scale: float = 0.3031,
    ) -> None:
        super().__init__()
        check_scale(encoder_temporal_downsample, temporal_downsample_scale, "encoder_temporal_downsample")
        check_scale(encoder_spatial_downsample, spatial_downsample_scale, "encoder_spatial_downsample")
        check_scale(decoder_temporal_upsample, temporal_downsample_scale, "decoder_temporal_upsample")
        check_scale(decoder_spatial_upsample, spatial_downsample_scale, "decoder_spatial_upsample")
        self.encoder = CausalVideoEncoder(
            in_channels=in_channels,
            latent_channels=latent_channels,
            block_out_channels=encoder_block_out_channels,
            layers_per_block=encoder_layers_per_block,
            spatial_downsample=encoder_spatial_downsample,
            temporal_downsample=encoder_temporal_downsample,
            norm_num_groups=norm_num_groups,
            act_fn=act_fn,
            dropout=dropout,
        )
        self.quant_conv = CausalConv3d(2 * latent_channels, 2 * latent_channels, kernel_size=1)
        self.post_quant_conv = CausalConv3d(latent_channels, latent_channels, kernel_size=1)
        self.decoder = CausalVideoDecoder(
            latent_channels=latent_channels,
            out_channels=in_channels,
            block_out_channels=decoder_block_out_channels,
            layers_per_block=decoder_layers_per_block,
            spatial_upsample=decoder_spatial_upsample,
            temporal_upsample=decoder_temporal_upsample,
            norm_num_groups=norm_num_groups,
            act_fn=act_fn,
            dropout=dropout,
        )
        self.use_slicing = False
        self.apply(self._init_weights)
