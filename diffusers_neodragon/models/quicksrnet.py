"""QuickSRNet: the plain-convolution super-resolution network Neodragon runs after the decoder (320x512 → 640x1024).

QuickSRNet (Berger et al., "QuickSRNet: Plain Single-Image Super-Resolution Architecture for Faster Inference on
Mobile Platforms", CVPR-W 2023) is a stack of 3x3 convolutions ending in a depth-to-space (PixelShuffle), chosen
because every op maps straight onto a mobile NPU. The official Neodragon code ships no super-resolution model;
this is our implementation, trained by our own scripts.

Published variants (2x): small = 32 channels / 2 intermediate layers (our default), medium = 32 / 5,
large = 64 / 11. The published models use Hardtanh(0, 1) activations and clip the output to [0, 1] because they
work on [0, 1] images; here the activation and the optional clamp are config, so the [-1, 1] pipeline range passes
through unchanged. The "anchor" (input repeated ``s²`` times per channel, added before the PixelShuffle) makes the
network start as exact nearest-neighbour upsampling when the last conv is zero-initialised, so the convs only learn
the residual detail.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


_ACTIVATIONS = {
    "relu": nn.ReLU,
    # The published QuickSRNet's choice for [0, 1] images.
    "hardtanh": lambda: nn.Hardtanh(min_val=0.0, max_val=1.0),
}


class QuickSRNet(ModelMixin, ConfigMixin):
    r"""
    ``conv3x3(in→C) + act``, ``num_intermediate_layers × (conv3x3(C→C) + act)``, ``conv3x3(C→in·s²)``, plus the
    anchor ``repeat_interleave(x, s², dim=1)``, then ``PixelShuffle(s)`` and an optional clamp.

    Parameters:
        in_channels (`int`): image channels (output has the same number).
        num_channels (`int`): feature width ``C`` (32 small/medium, 64 large).
        num_intermediate_layers (`int`): ``C→C`` convs between the first and last conv (2 small, 5 medium, 11 large).
        scale_factor (`int`): upscaling factor ``s``: 2, 3 or 4.
        activation (`str`): "relu" (default) or "hardtanh" (Hardtanh(0, 1), as published for [0, 1] inputs).
        clamp_output (`Sequence[float]`, *optional*): ``(min, max)`` to clamp the output to, e.g. ``(-1, 1)``;
            ``None`` leaves it unclamped.

    State-dict keys: ``conv_in.{weight,bias}``, ``convs.{i}.{weight,bias}``, ``conv_out.{weight,bias}``.
    """

    # the feature stack (all full-resolution activations) is recomputed in the backward pass when enabled
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        num_channels: int = 32,
        num_intermediate_layers: int = 2,
        scale_factor: int = 2,
        activation: str = "relu",
        clamp_output: Sequence[float] | None = None,
    ):
        super().__init__()
        if type(scale_factor) is not int or scale_factor not in (2, 3, 4):
            raise ValueError(f"`scale_factor` must be 2, 3 or 4, got {scale_factor!r}.")
        if in_channels <= 0 or num_channels <= 0 or num_intermediate_layers < 0:
            raise ValueError(
                f"Need in_channels > 0, num_channels > 0 and num_intermediate_layers >= 0, got {in_channels}, "
                f"{num_channels}, {num_intermediate_layers}."
            )
        if activation not in _ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {sorted(_ACTIVATIONS)}, got {activation!r}.")
        if clamp_output is not None and (len(clamp_output) != 2 or clamp_output[0] >= clamp_output[1]):
            raise ValueError(f"`clamp_output` must be None or (min, max) with min < max, got {clamp_output!r}.")

        self.conv_in = nn.Conv2d(in_channels, num_channels, kernel_size=3, padding=1)
        self.convs = nn.ModuleList(
            nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1) for _ in range(num_intermediate_layers)
        )
        self.conv_out = nn.Conv2d(num_channels, in_channels * scale_factor**2, kernel_size=3, padding=1)
        self.act = _ACTIVATIONS[activation]()
        self.pixel_shuffle = nn.PixelShuffle(scale_factor)
        # Anchor as a fixed 1x1 conv (output channel c*s² + k copies input channel c), the form Qualcomm deploys:
        # a single Conv node in ONNX, friendlier to NPUs and quantisers than expand/reshape or repeat_interleave.
        anchor = torch.eye(in_channels).repeat_interleave(scale_factor**2, dim=0)
        self.register_buffer("anchor_weight", anchor[:, :, None, None], persistent=False)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.gradient_checkpointing = False

    def _features(self, sample: torch.Tensor) -> torch.Tensor:
        hidden = self.act(self.conv_in(sample))
        for conv in self.convs:
            hidden = self.act(conv(hidden))
        return hidden

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        """Upscale ``[N, in_channels, H, W]`` to ``[N, in_channels, s·H, s·W]``; the value range passes through."""
        if sample.ndim != 4 or sample.shape[1] != self.config.in_channels:
            raise ValueError(
                f"QuickSRNet expects images of shape [N, {self.config.in_channels}, H, W], got {tuple(sample.shape)}."
            )
        if self.gradient_checkpointing and torch.is_grad_enabled():
            hidden = self._gradient_checkpointing_func(self._features, sample)
        else:
            hidden = self._features(sample)
        # Channel c*s² + k of the anchor lands, after PixelShuffle, on sub-pixel k of the s x s block of input
        # pixel c, so anchor alone is nearest-neighbour upsampling.
        anchor = F.conv2d(sample, self.anchor_weight)
        out = self.pixel_shuffle(self.conv_out(hidden) + anchor)
        if self.config.clamp_output is not None:
            out = out.clamp(min=self.config.clamp_output[0], max=self.config.clamp_output[1])
        return out

    def upscale_video(self, video: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Upscale ``[B, in_channels, F, H, W]`` frame by frame → ``[B, in_channels, F, s·H, s·W]``.

        Frames are run through the network ``chunk_size`` at a time (all at once when ``None``) to bound the
        memory of the full-resolution feature maps.
        """
        if video.ndim != 5 or video.shape[1] != self.config.in_channels:
            raise ValueError(
                f"upscale_video expects videos of shape [B, {self.config.in_channels}, F, H, W], got "
                f"{tuple(video.shape)}."
            )
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"`chunk_size` must be a positive int or None, got {chunk_size!r}.")
        b, c, f, h, w = video.shape
        frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        chunk_size = chunk_size or frames.shape[0]
        upscaled = torch.cat([self(chunk) for chunk in frames.split(chunk_size)], dim=0)
        s = self.config.scale_factor
        return upscaled.reshape(b, f, c, h * s, w * s).permute(0, 2, 1, 3, 4)
