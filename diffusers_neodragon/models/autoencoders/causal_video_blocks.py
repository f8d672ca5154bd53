"""Causal 3-D building blocks of the Pyramid-Flow video VAE (shared by its encoder and its full decoder).

Everything here works on ``[batch, channels, frames, height, width]`` tensors and is causal in time: an output
frame depends only on input frames at the same or earlier times. Normalisation and attention act per frame,
so the only temporal coupling is the causal convolutions. That makes chunked (streaming) processing exact: pass
the same ``cache`` dict to every call of a sequence of chunks and each :class:`CausalConv3d` carries the input
frames its next chunk still needs, and each :class:`CausalTemporalUpsample2x` remembers that the first frame
has been emitted. ``cache=None`` processes the whole clip at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.activations import get_activation
from diffusers.models.attention_processor import Attention
from torch import nn


def _triple(value: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (value,) * 3 if isinstance(value, int) else tuple(value)


class CausalConv3d(nn.Module):
    """Conv3d padded with zeros in front in time (``kernel_t - 1`` frames) and symmetrically in space.

    The wrapped ``nn.Conv3d`` has ``padding=0`` and is stored as ``conv`` so that state-dict keys read
    ``...conv.weight`` like Pyramid-Flow's. With a ``cache`` the zero front padding of a later chunk is replaced
    by the unconsumed tail of the previous chunk's padded input (exact for any temporal stride).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 3,
        stride: int | tuple[int, int, int] = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        kernel_t, kernel_h, kernel_w = _triple(kernel_size)
        if kernel_h % 2 == 0 or kernel_w % 2 == 0:
            raise ValueError(f"spatial kernel sizes must be odd, got {(kernel_h, kernel_w)}")
        self.kernel_t = kernel_t
        self.stride_t = _triple(stride)[0]
        self.time_pad = kernel_t - 1
        self.space_pad = (kernel_w // 2, kernel_w // 2, kernel_h // 2, kernel_h // 2)
        self.conv = nn.Conv3d(in_channels, out_channels, (kernel_t, kernel_h, kernel_w), stride=stride, bias=bias)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        front = None if cache is None else cache.get(self)
        if front is None:
            x = F.pad(x, (*self.space_pad, self.time_pad, 0))
        else:
            x = torch.cat([front, F.pad(x, self.space_pad)], dim=2)
        if cache is not None:
            num_out = max(0, (x.shape[2] - self.kernel_t) // self.stride_t + 1)
            cache[self] = x[:, :, num_out * self.stride_t :].clone()
        return self.conv(x)


class CausalGroupNorm(nn.GroupNorm):
    """GroupNorm applied to each frame separately, so that statistics never mix frames (keeps causality)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = x.shape
        x = x.transpose(1, 2).reshape(batch * frames, channels, height, width)
        x = super().forward(x)
        return x.reshape(batch, frames, channels, height, width).transpose(1, 2)


class CausalResnetBlock3D(nn.Module):
    """Pre-norm residual block: GN → act → causal conv → GN → act → dropout → causal conv, with a 1x1x1
    shortcut conv when the channel count changes."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        norm_num_groups: int = 32,
        eps: float = 1e-6,
        act_fn: str = "silu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.norm1 = CausalGroupNorm(norm_num_groups, in_channels, eps=eps)
        self.conv1 = CausalConv3d(in_channels, out_channels, kernel_size=3)
        self.norm2 = CausalGroupNorm(norm_num_groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_channels, out_channels, kernel_size=3)
        self.nonlinearity = get_activation(act_fn)
        self.conv_shortcut = (
            CausalConv3d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        hidden = self.conv1(self.nonlinearity(self.norm1(x)), cache)
        hidden = self.conv2(self.dropout(self.nonlinearity(self.norm2(hidden))), cache)
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + hidden


class CausalDownsample(nn.Module):
    """Strided causal 3x3x3 conv: stride ``(1, 2, 2)`` halves H and W, stride ``(2, 1, 1)`` maps T frames to
    ``(T - 1) // 2 + 1`` (frame 0 stays alone, so an image is a 1-frame video)."""

    def __init__(self, channels: int, stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels, kernel_size=3, stride=stride)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        return self.conv(x, cache)


class CausalSpatialUpsample2x(nn.Module):
    """Causal conv to 4x channels followed by a 2x2 depth-to-space (Pyramid-Flow's learned spatial upsampling)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels * 4, kernel_size=3)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = self.conv(x, cache)
        batch, channels, frames, height, width = x.shape
        # out[c, t, 2h+i, 2w+j] = x[4c + 2i + j, t, h, w]: frames folded into the batch and a 4-D pixel shuffle, which
        # exports as one DepthToSpace (the 7-D reshape/transpose of the same permutation is refused by QNN's HTP).
        x = x.transpose(1, 2).reshape(batch * frames, channels, height, width)
        x = F.pixel_shuffle(x, 2)
        return x.reshape(batch, frames, channels // 4, height * 2, width * 2).transpose(1, 2)


class CausalTemporalUpsample2x(nn.Module):
    """Causal conv to 2x channels, depth-to-time (each frame becomes two), then the very first output frame is
    dropped: T frames become 2T - 1, the inverse of the encoder's causal temporal downsampling."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels * 2, kernel_size=3)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        is_first_chunk = cache is None or self not in cache
        if cache is not None:
            cache[self] = True
        x = self.conv(x, cache)
        batch, channels, frames, height, width = x.shape
        x = x.reshape(batch, channels // 2, 2, frames, height, width).transpose(2, 3)
        x = x.reshape(batch, channels // 2, frames * 2, height, width)
        return x[:, :, 1:] if is_first_chunk else x


class CausalMidBlock3D(nn.Module):
    """Resnet → single-head self-attention over the H·W tokens of each frame (group norm, residual) → resnet.

    The attention is diffusers' ``Attention`` configured exactly as Pyramid-Flow's VAE mid block, so its keys are
    ``attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}``.
    """

    def __init__(
        self,
        channels: int,
        norm_num_groups: int = 32,
        eps: float = 1e-6,
        act_fn: str = "silu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        resnet_args = dict(norm_num_groups=norm_num_groups, eps=eps, act_fn=act_fn, dropout=dropout)
        self.resnets = nn.ModuleList(
            [CausalResnetBlock3D(channels, **resnet_args), CausalResnetBlock3D(channels, **resnet_args)]
        )
        self.attentions = nn.ModuleList(
            [
                Attention(
                    channels,
                    heads=1,
                    dim_head=channels,
                    eps=eps,
                    norm_num_groups=norm_num_groups,
                    residual_connection=True,
                    bias=True,
                    upcast_softmax=True,
                    _from_deprecated_attn_block=True,
                )
            ]
        )

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = self.resnets[0](x, cache)
        batch, channels, frames, height, width = x.shape
        frames_first = x.transpose(1, 2).reshape(batch * frames, channels, height, width)
        x = self.attentions[0](frames_first)
        x = x.reshape(batch, frames, channels, height, width).transpose(1, 2)
        return self.resnets[1](x, cache)


class CausalDownEncoderBlock3D(nn.Module):
    """Encoder stage: ``num_layers`` resnets, then optionally a 2x spatial and a 2x causal temporal downsampling
    (keys ``resnets.{j}``, ``downsamplers.0.conv.conv``, ``temporal_downsamplers.0.conv.conv``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        spatial_downsample: bool,
        temporal_downsample: bool,
        norm_num_groups: int = 32,
        eps: float = 1e-6,
        act_fn: str = "silu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                CausalResnetBlock3D(
                    in_channels if j == 0 else out_channels,
                    out_channels,
                    norm_num_groups=norm_num_groups,
                    eps=eps,
                    act_fn=act_fn,
                    dropout=dropout,
                )
                for j in range(num_layers)
            ]
        )
        self.downsamplers = (
            nn.ModuleList([CausalDownsample(out_channels, stride=(1, 2, 2))]) if spatial_downsample else None
        )
        self.temporal_downsamplers = (
            nn.ModuleList([CausalDownsample(out_channels, stride=(2, 1, 1))]) if temporal_downsample else None
        )

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        for samplers in (self.downsamplers, self.temporal_downsamplers):
            if samplers is not None:
                x = samplers[0](x, cache)
        return x


class CausalUpDecoderBlock3D(nn.Module):
    """Decoder stage: ``num_layers`` resnets, then optionally a 2x spatial and a 2x causal temporal upsampling
    (keys ``resnets.{j}``, ``upsamplers.0.conv.conv``, ``temporal_upsamplers.0.conv.conv``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        spatial_upsample: bool,
        temporal_upsample: bool,
        norm_num_groups: int = 32,
        eps: float = 1e-6,
        act_fn: str = "silu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                CausalResnetBlock3D(
                    in_channels if j == 0 else out_channels,
                    out_channels,
                    norm_num_groups=norm_num_groups,
                    eps=eps,
                    act_fn=act_fn,
                    dropout=dropout,
                )
                for j in range(num_layers)
            ]
        )
        self.upsamplers = nn.ModuleList([CausalSpatialUpsample2x(out_channels)]) if spatial_upsample else None
        self.temporal_upsamplers = (
            nn.ModuleList([CausalTemporalUpsample2x(out_channels)]) if temporal_upsample else None
        )

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        for samplers in (self.upsamplers, self.temporal_upsamplers):
            if samplers is not None:
                x = samplers[0](x, cache)
        return x
