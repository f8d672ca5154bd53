"""The diffusers-style encode/decode API that both causal video VAEs share (chunked, streaming, latent constants)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from diffusers.models.autoencoders.vae import (
    AutoencoderMixin,
    DecoderOutput,
    DiagonalGaussianDistribution,
)
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn


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
