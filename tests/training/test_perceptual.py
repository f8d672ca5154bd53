"""The offline perceptual terms (SSIM, frozen-encoder features) and the LPIPS weight check."""

import pytest
import torch

from diffusers_neodragon.training_utils.perceptual import (
    EncoderFeatureLoss,
    build_perceptual_loss,
    lpips_weights_missing,
    ssim,
    ssim_loss,
)
from tests.tiny_components import tiny_causal_vae


def frames(seed=0, n=2, size=16):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_ssim_is_one_for_equal_frames_and_falls_with_noise():
    x = frames()
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    slightly, badly = x + 0.05 * frames(1), x + 0.5 * frames(2)
    assert (ssim(x, slightly) > ssim(x, badly)).all() and (ssim(x, badly) < 0.9).all()
    assert (ssim_loss(x, x).abs() < 1e-6).all()
    assert ssim(frames(size=6), frames(1, size=6)).shape == (2,)  # frames smaller than the window
    with pytest.raises(ValueError, match="one shape"):
        ssim(x, x[:, :, :8])


def test_encoder_feature_loss_is_zero_for_equal_frames_and_trains_the_input_only():
    loss = EncoderFeatureLoss(tiny_causal_vae().encoder)
    x = frames().requires_grad_(True)
    assert torch.allclose(loss(x, x.detach()), torch.zeros(2), atol=1e-6)
    value = loss(x, frames(1))
    assert value.shape == (2,) and (value > 0).all()
    value.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.encoder.parameters())


def test_build_perceptual_loss():
    assert build_perceptual_loss("none") is None and build_perceptual_loss("ssim") is ssim_loss
    with pytest.raises(ValueError, match="frozen encoder"):
        build_perceptual_loss("encoder_features")
    with pytest.raises(ValueError, match="Unknown"):
        build_perceptual_loss("vgg")


def test_lpips_check_names_the_backbone_file_and_where_it_goes(tmp_path, monkeypatch):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "lpips", types.ModuleType("lpips"))  # the package present, weights absent
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    message = lpips_weights_missing("vgg")
    assert "vgg16-397923af.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth").write_bytes(b"")
    assert lpips_weights_missing("vgg") is None
    assert "unknown" in lpips_weights_missing("resnet")
