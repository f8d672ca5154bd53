# SPDX-License-Identifier: Apache-2.0
"""Perceptual terms for reconstruction training that work offline, LPIPS from local weights, and SSIM.

Every loss here is a ``perceptual_fn(recon_frames, target_frames) -> [N]`` on frames [N, 3, H, W] in [-1, 1], the
form :func:`~diffusers_neodragon.training_utils.losses.vae_reconstruction_loss` takes.

* ``lpips``: the `lpips` package, only if its backbone's ImageNet weights are already in torch's hub cache (this
  project's machines cannot download; :func:`build_local_lpips` says where to put the file);
* ``ssim``: 1 - SSIM (Gaussian window 11, sigma 1.5), structure and contrast that MSE averages away;
* ``encoder_features``: a frozen conv net's feature distance, LPIPS-style (unit-normalised channels, squared
  difference): the teacher VAE's own encoder blocks serve as the pretrained feature extractor.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F


PERCEPTUAL_KINDS = ("none", "ssim", "encoder_features", "lpips")
# torchvision's ImageNet weights that lpips.LPIPS(pretrained=True, net=...) loads through torch.hub.
LPIPS_BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, window_size: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM [N] of frames [N, C, H, W] (Wang et al. 2004: Gaussian window, K1 0.01, K2 0.03, valid
    region only). Frames smaller than the window use a window of their size."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim needs two [N, C, H, W] tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    x, y = x.float(), y.float()
    size = min(window_size, x.shape[-2], x.shape[-1])
    window = _gaussian_window(size, sigma, x.shape[1], x.device, x.dtype)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=x.shape[1])

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return value.flatten(1).mean(1)


def ssim_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - SSIM per frame."""
    return 1.0 - ssim(x, y)


class EncoderFeatureLoss(torch.nn.Module):
    """LPIPS-style distance in the feature maps of a frozen causal video encoder (the teacher VAE's).

    Each frame goes through ``conv_in`` and the down blocks as a one-frame video (the causal encoder treats a lone
    frame as an image); at every block output the channels are unit-normalised per pixel and the squared
    difference averaged, as LPIPS does without its learned channel weights. Gradients flow to the input only."""

    def __init__(self, encoder: torch.nn.Module, num_blocks: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.num_blocks = len(encoder.down_blocks) if num_blocks is None else num_blocks
        encoder.requires_grad_(False).eval()

    def features(self, frames: torch.Tensor) -> list[torch.Tensor]:
        x = self.encoder.conv_in(frames[:, :, None].to(self.encoder.conv_in.conv.weight.dtype))
        out = []
        for block in self.encoder.down_blocks[: self.num_blocks]:
            x = block(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for fx, fy in zip(self.features(x), self.features(y)):
            fx, fy = F.normalize(fx.float(), dim=1, eps=1e-6), F.normalize(fy.float(), dim=1, eps=1e-6)
            total = total + (fx - fy).pow(2).sum(1).flatten(1).mean(1)
        return total / self.num_blocks


def lpips_weights_missing(net: str = "vgg") -> str | None:
    """None when LPIPS can run offline with backbone ``net``, else what is missing and how to provide it."""
    try:
        import lpips  # noqa: F401, PLC0415
    except ImportError:
        return "the `lpips` package is not installed (pip install lpips; it also needs torchvision)"
    if net not in LPIPS_BACKBONE_FILES:
        return f"unknown LPIPS backbone {net!r} (one of {sorted(LPIPS_BACKBONE_FILES)})"
    path = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILES[net]
    if not path.is_file():
        return (
            f"the {net} backbone weights are not at {path}: nothing here can download them. On a machine with a "
            f"network run `python -c \"import lpips; lpips.LPIPS(net='{net}')\"`, then copy "
            f"{LPIPS_BACKBONE_FILES[net]} from its $TORCH_HOME/hub/checkpoints/ (default ~/.cache/torch) into "
            f"{path.parent} here (or point TORCH_HOME at a folder holding hub/checkpoints/{LPIPS_BACKBONE_FILES[net]})"
        )
    return None


def build_local_lpips(net: str = "vgg", device: str | torch.device = "cpu") -> Callable:
    """LPIPS (the linear heads ship with the `lpips` package) on a backbone whose weights are already local;
    a ``RuntimeError`` that says how to provide them otherwise, before anything tries to download."""
    missing = lpips_weights_missing(net)
    if missing:
        raise RuntimeError(f"LPIPS is unavailable: {missing}. Offline alternatives: --perceptual ssim or "
                           "--perceptual encoder_features.")
    import lpips  # noqa: PLC0415  # pragma: no cover - needs the package and its weights

    model = lpips.LPIPS(net=net, verbose=False).to(device).eval().requires_grad_(False)  # pragma: no cover
    return lambda x, y: model(x, y).flatten()  # pragma: no cover


def build_perceptual_loss(kind: str, encoder: torch.nn.Module | None = None, lpips_net: str = "vgg",
                          device: str | torch.device = "cpu") -> Callable | None:
    """The ``perceptual_fn`` of ``kind`` (one of :data:`PERCEPTUAL_KINDS`; "none" gives None). ``encoder``: the
    frozen encoder for "encoder_features"."""
    if kind == "none":
        return None
    if kind == "ssim":
        return ssim_loss
    if kind == "encoder_features":
        if encoder is None:
            raise ValueError("--perceptual encoder_features needs the frozen encoder.")
        return EncoderFeatureLoss(encoder)
    if kind == "lpips":
        return build_local_lpips(lpips_net, device)
    raise ValueError(f"Unknown perceptual loss {kind!r}; choose one of {PERCEPTUAL_KINDS}.")


def describe_perceptual(kind: str, lpips_net: str = "vgg") -> str:
    """How the model card names the perceptual term."""
    return {
        "none": "none",
        "ssim": "1 - SSIM (offline substitute for LPIPS)",
        "encoder_features": "feature distance in the frozen teacher encoder's blocks (offline substitute for LPIPS)",
        "lpips": f"LPIPS ({lpips_net}, local weights)",
    }[kind]


__all__ = [
    "LPIPS_BACKBONE_FILES", "PERCEPTUAL_KINDS", "EncoderFeatureLoss", "build_local_lpips", "build_perceptual_loss",
    "describe_perceptual", "lpips_weights_missing", "ssim", "ssim_loss",
]
