"""Neodragon's asymmetric video VAE: Pyramid-Flow's causal 3-D conv encoder with a TAEHV-style tiny decoder.

The encoder (~110M parameters, 8x in space and time, causal first frame) is kept frozen so the latent space of the
generative model does not move; only the decoder is replaced by a ~10M-parameter per-frame 2-D conv net whose
MemBlocks see the previous time step, which is what makes decoding cheap enough for a phone NPU and lets it
stream one latent frame at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.activations import get_activation
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

from diffusers_neodragon.models.causal_video_blocks import (
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
    nearest Upsample, TGrow, conv; ReLU, final conv). Each latent frame makes 8 frames and the first 7 of the
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
    ) -> None:
        super().__init__()
        if not len(num_features) - 1 == len(time_upscale) == len(space_upscale):
            raise ValueError(
                "time_upscale and space_upscale need one flag per stage (len(num_features) - 1), got "
                f"{num_features}, {time_upscale}, {space_upscale}"
            )
        layers: list[nn.Module] = [Clamp(), _conv3x3(latent_channels, num_features[0]), nn.ReLU()]
        for stage, (time_up, space_up) in enumerate(zip(time_upscale, space_upscale)):
            channels = num_features[stage]
            layers += [MemBlock(channels) for _ in range(3)]
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


class CausalVideoAutoencoderMixin(AutoencoderMixin):
    """diffusers-style encode/decode API shared by the causal video VAEs (this one and ``CausalVideoVAE``).

    Expects ``encoder``, ``quant_conv``, ``post_quant_conv``, ``decoder`` modules that accept a ``cache`` dict for
    chunked processing, and config entries ``in_channels``, ``latent_channels``, ``temporal_downsample_scale``,
    ``spatial_downsample_scale`` and the four latent constants.
    """

    def _init_weights(self, module: nn.Module) -> None:
        # The reference initialisation (truncated normal 0.02, zero bias), used when training from scratch.
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.GroupNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _check_video(self, x: torch.Tensor) -> None:
        t_scale, s_scale = self.config.temporal_downsample_scale, self.config.spatial_downsample_scale
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected a video [batch, {self.config.in_channels}, frames, height, width], "
                f"got shape {tuple(x.shape)}"
            )
        if (x.shape[2] - 1) % t_scale:
            raise ValueError(f"the number of frames must be 1 + {t_scale}·k (1, {1 + t_scale}, …), got {x.shape[2]}")
        if x.shape[3] % s_scale or x.shape[4] % s_scale:
            raise ValueError(f"height and width must be multiples of {s_scale}, got {x.shape[3]}x{x.shape[4]}")

    def _check_latents(self, z: torch.Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"expected latents [batch, {self.config.latent_channels}, frames, height, width], got shape "
                f"{tuple(z.shape)}"
            )

    @apply_forward_hook  # model CPU offload loads the VAE on these entry points, not only on forward
    def encode(
        self, x: torch.Tensor, return_dict: bool = True, encode_chunk_size: int | None = None
    ) -> AutoencoderKLOutput | tuple[DiagonalGaussianDistribution]:
        """Encode pixels [B, C, 1 + 8k, H, W] in [-1, 1] to the posterior over raw (unnormalised) latents.

        ``encode_chunk_size`` (a multiple of the temporal factor) encodes the first frame alone and then that many
        frames at a time, bounding activation memory for long videos; the result is the same.
        """
        self._check_video(x)
        t_scale = self.config.temporal_downsample_scale
        if encode_chunk_size is not None and (encode_chunk_size <= 0 or encode_chunk_size % t_scale):
            raise ValueError(f"encode_chunk_size must be a positive multiple of {t_scale}, got {encode_chunk_size}")
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._encode(part, encode_chunk_size) for part in x.split(1)])
        else:
            moments = self._encode(x, encode_chunk_size)
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def _encode(self, x: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
        if chunk_size is None:
            return self.quant_conv(self.encoder(x))
        cache: dict = {}
        chunks = [x[:, :, :1], *x[:, :, 1:].split(chunk_size, dim=2)]
        return self.quant_conv(torch.cat([self.encoder(chunk, cache) for chunk in chunks], dim=2))

    @apply_forward_hook
    def decode(
        self, z: torch.Tensor, return_dict: bool = True, decode_chunk_size: int | None = None
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Decode raw (denormalised) latents [B, 16, T, h, w] to pixels [B, 3, 1 + 8(T - 1), 8h, 8w].

        ``decode_chunk_size=None`` decodes all frames at once (the reference behaviour); an integer decodes that
        many latent frames at a time through :meth:`iter_decode`, with the same result and bounded memory.
        """
        self._check_latents(z)
        self._check_chunk_size(decode_chunk_size, allow_none=True)
        if self.use_slicing and z.shape[0] > 1:
            sample = torch.cat([self._decode(part, decode_chunk_size) for part in z.split(1)])
        else:
            sample = self._decode(z, decode_chunk_size)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def _decode(self, z: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
        if chunk_size is None:
            return self.decoder(self.post_quant_conv(z))
        return torch.cat(list(self._iter_decode(z, chunk_size)), dim=2)

    @apply_forward_hook
    def iter_decode(self, z: torch.Tensor, decode_chunk_size: int = 1) -> Iterator[torch.Tensor]:
        """Stream the decoding: yield the pixel frames [B, 3, n, H, W] of each chunk of ``decode_chunk_size``
        latent frames in order (latent frame 0 gives 1 frame, every later one 8), carrying the decoder's state
        between chunks so that the concatenation equals :meth:`decode`. Batch slicing does not apply here."""
        self._check_latents(z)
        self._check_chunk_size(decode_chunk_size, allow_none=False)
        return self._iter_decode(z, decode_chunk_size)

    def _iter_decode(self, z: torch.Tensor, chunk_size: int) -> Iterator[torch.Tensor]:
        cache: dict = {}
        for chunk in z.split(chunk_size, dim=2):
            yield self.decoder(self.post_quant_conv(chunk), cache)

    @staticmethod
    def _check_chunk_size(chunk_size: int | None, allow_none: bool) -> None:
        if (chunk_size is None and not allow_none) or (chunk_size is not None and chunk_size < 1):
            raise ValueError(f"decode_chunk_size must be a positive number of latent frames, got {chunk_size}")

    def normalize_latents(self, z: torch.Tensor, start_frame: int = 0) -> torch.Tensor:
        """Raw latents → the DiT's normalised space, (z - shift) · scale: image constants for video frame 0, video
        constants for later frames. ``start_frame`` is the index of ``z[:, :, 0]`` in the video (for chunks)."""
        c = self.config
        return self._per_frame(
            z,
            start_frame,
            lambda x: (x - c.image_latent_shift) * c.image_latent_scale,
            lambda x: (x - c.video_latent_shift) * c.video_latent_scale,
        )

    def denormalize_latents(self, z: torch.Tensor, start_frame: int = 0) -> torch.Tensor:
        """Inverse of :meth:`normalize_latents`: z / scale + shift, per frame."""
        c = self.config
        return self._per_frame(
            z,
            start_frame,
            lambda x: x / c.image_latent_scale + c.image_latent_shift,
            lambda x: x / c.video_latent_scale + c.video_latent_shift,
        )

    @staticmethod
    def _per_frame(
        z: torch.Tensor,
        start_frame: int,
        image_fn: Callable[[torch.Tensor], torch.Tensor],
        video_fn: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        if z.ndim != 5:
            raise ValueError(f"expected latents [batch, channels, frames, height, width], got shape {tuple(z.shape)}")
        if start_frame < 0:
            raise ValueError(f"start_frame must be >= 0, got {start_frame}")
        if start_frame > 0:
            return video_fn(z)
        return torch.cat([image_fn(z[:, :, :1]), video_fn(z[:, :, 1:])], dim=2)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Reconstruct ``sample``: encode, take the posterior mean (or a sample), decode."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)


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
        )
        self.use_slicing = False
        self.apply(self._init_weights)
