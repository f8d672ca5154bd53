"""Neodragon's asymmetric video VAE: Pyramid-Flow's causal 3-D conv encoder with a TAEHV-style tiny decoder.

The encoder (~110M parameters, 8x in space and time, causal first frame) is kept frozen so the latent space of the
generative model does not move; only the decoder is replaced by a ~10M-parameter per-frame 2-D conv net whose
MemBlocks see the previous time step, which is what makes decoding cheap enough for a phone NPU and lets it
stream one latent frame at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .causal_video_autoencoder_mixin import CausalVideoAutoencoderMixin
from .causal_video_blocks import CausalConv3d
from .causal_video_encoder import CausalVideoEncoder, check_scale


class Clamp(nn.Module):
    """Soft clamp to (-3, 3): keeps out-of-distribution latents (e.g. from a one-step DiT) from blowing up."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def _conv3x3(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)


class MemBlock(nn.Module):
    """Residual 2-D conv block that also reads the previous time step's input: ReLU(conv([x_t, x_{t-1}]) + x_t).

    This one-frame memory is the decoder's only temporal context, which is what makes streaming cheap."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv3x3(2 * channels, channels),
            nn.ReLU(),
            _conv3x3(channels, channels),
            nn.ReLU(),
            _conv3x3(channels, channels),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(torch.cat([x, past], dim=1)) + x)


class TGrow(nn.Module):
    """Temporal 2x (or 1x) upsampling: a 1x1 conv to ``stride`` channel groups, each becoming one time step
    (group 0 first)."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        num_frames, channels, height, width = x.shape
        return self.conv(x).reshape(num_frames * self.stride, channels, height, width)


class TinyVideoDecoder(nn.Module):
    """TAEHV-style decoder: latents [B, C, T, h, w] → frames [B, 3, 8T - 7, 8h, 8w] in about [-1, 1].

    ``blocks`` is laid out exactly as in the official checkpoint (Clamp, conv, ReLU, then per stage 3 MemBlocks,
    nearest Upsample, TGrow, conv; ReLU, final conv); ``blocks_per_stage`` changes the MemBlock count (smaller
    decoders distilled from a teacher). Each latent frame makes 8 frames and the first 7 of the
    whole video are dropped, so latent frame 0 (the image) decodes to one frame. With a shared ``cache`` dict,
    successive chunks of latent frames decode exactly as the whole clip would, holding one frame per MemBlock.
    """

    def __init__(
        self,
        latent_channels: int = 16,
        out_channels: int = 3,
        num_features: Sequence[int] = (256, 128, 64, 64),
        time_upscale: Sequence[bool] = (True, True, True),
        space_upscale: Sequence[bool] = (True, True, True),
        blocks_per_stage: int | Sequence[int] = 3,
    ) -> None:
        super().__init__()
        if not len(num_features) - 1 == len(time_upscale) == len(space_upscale):
            raise ValueError(
                "time_upscale and space_upscale need one flag per stage (len(num_features) - 1), got "
                f"{num_features}, {time_upscale}, {space_upscale}"
            )
        num_stages = len(time_upscale)
        blocks = [blocks_per_stage] * num_stages if isinstance(blocks_per_stage, int) else list(blocks_per_stage)
        if len(blocks) != num_stages or any(count < 0 for count in blocks):
            raise ValueError(
                f"blocks_per_stage must be one count >= 0 or one per stage ({num_stages}), got {blocks_per_stage}"
            )
        layers: list[nn.Module] = [Clamp(), _conv3x3(latent_channels, num_features[0]), nn.ReLU()]
        for stage, (time_up, space_up) in enumerate(zip(time_upscale, space_upscale)):
            channels = num_features[stage]
            layers += [MemBlock(channels) for _ in range(blocks[stage])]
            layers += [
                nn.Upsample(scale_factor=2 if space_up else 1),
                TGrow(channels, 2 if time_up else 1),
                _conv3x3(channels, num_features[stage + 1], bias=False),
            ]
        layers += [nn.ReLU(), _conv3x3(num_features[-1], out_channels)]
        self.blocks = nn.Sequential(*layers)
        self.frames_to_trim = 2 ** sum(bool(f) for f in time_upscale) - 1
        self.gradient_checkpointing = False

    def forward(self, z: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        batch, channels, num_frames, height, width = z.shape
        x = z.transpose(1, 2).reshape(batch * num_frames, channels, height, width)
        for block in self.blocks:
            if not isinstance(block, MemBlock):
                x = block(x)
                continue
            frames = x.reshape(batch, -1, *x.shape[1:])
            previous = None if cache is None else cache.get(block)
            if previous is None:
                previous = torch.zeros_like(frames[:, :1])
            past = torch.cat([previous, frames[:, :-1]], dim=1).reshape(x.shape)
            if cache is not None:
                cache[block] = frames[:, -1:].clone()
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = self._gradient_checkpointing_func(block, x, past)
            else:
                x = block(x, past)
        video = x.reshape(batch, -1, *x.shape[1:]).transpose(1, 2)
        is_first_chunk = cache is None or self not in cache
        if cache is not None:
            cache[self] = True
        return video[:, :, self.frames_to_trim :] if is_first_chunk else video


class AsymmetricVAE(CausalVideoAutoencoderMixin, ModelMixin, ConfigMixin):
    """Neodragon's VAE: :class:`CausalVideoEncoder` + 1x1x1 quant convs + :class:`TinyVideoDecoder`.

    Latent layout: 16 channels, 1 + (F - 1) / 8 frames, H/8 x W/8; latent frame 0 is the image (first video frame)
    and is normalised with the image constants, later frames with the video constants (Neodragon's video scale
    0.3031 differs from Pyramid-Flow's 1/3.0986). State-dict keys match the official checkpoint one to one.
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
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        dropout: float = 0.0,
        decoder_num_features: Sequence[int] = (256, 128, 64, 64),
        decoder_time_upscale: Sequence[bool] = (True, True, True),
        decoder_space_upscale: Sequence[bool] = (True, True, True),
        decoder_blocks_per_stage: int | Sequence[int] = 3,
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
        check_scale(decoder_time_upscale, temporal_downsample_scale, "decoder_time_upscale")
        check_scale(decoder_space_upscale, spatial_downsample_scale, "decoder_space_upscale")
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
        self.decoder = TinyVideoDecoder(
            latent_channels=latent_channels,
            out_channels=in_channels,
            num_features=decoder_num_features,
            time_upscale=decoder_time_upscale,
            space_upscale=decoder_space_upscale,
            blocks_per_stage=decoder_blocks_per_stage,
        )
        self.use_slicing = False
        self.apply(self._init_weights)
