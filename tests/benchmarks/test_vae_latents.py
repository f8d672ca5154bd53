"""benchmarks/vae_latents.py: its two measures on known tensors, and a run on a tiny random VAE folder (CPU)."""

import json

import pytest
import torch

from tests.script_loading import load_script
from tests.tiny_components import tiny_causal_vae


vae_latents = load_script("benchmarks/vae_latents.py")


def test_roughness_is_near_one_for_white_noise_and_small_for_a_smooth_field():
    noise = torch.randn(2, 4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert vae_latents.roughness(noise) == pytest.approx(1.0, abs=0.02)
    ramp = torch.linspace(-1, 1, 64).expand(2, 4, 3, 64, 64)  # neighbours differ by 2/63, the field spans 2
    assert vae_latents.roughness(ramp) == pytest.approx(((2 / 63) ** 2 / 2) / (2 * ramp.var().item()), rel=1e-4)


def test_separation_is_the_rms_difference_over_the_masked_cells_only():
    a = torch.zeros(1, 4, 1, 4, 4)
    b = a.clone()
    b[:, :, :, 0, 0] = 2.0  # every channel of one cell differs by 2
    b[:, :, :, 3, 3] = 100.0  # outside the mask: ignored
    mask = torch.zeros(1, 1, 1, 4, 4)
    mask[..., 0, :2] = 1  # two cells, one of them different
    assert vae_latents.separation(a, b, mask) == pytest.approx((4 * 4 / (2 * 4)) ** 0.5)
    assert vae_latents.separation(a, a, mask) == 0.0


def test_report_on_a_tiny_random_vae(tmp_path, capsys):
    tiny_causal_vae(seed=0, init=None).save_pretrained(tmp_path / "vae")
    out = tmp_path / "latents.json"
    report = vae_latents.main([str(tmp_path), "--clips", "1", "--pairs", "2", "--json", str(out)])
    figures = report[str(tmp_path)]
    assert list(figures) == ["std first frame", "std later frames", "roughness first frame", "roughness all frames",
                             "separation small diamond - circle", "separation small triangle - circle",
                             "separation small square - circle"]
    assert all(value > 0 for value in figures.values())  # a random encoder still sees every shape differently
    assert json.loads(out.read_text()) == report
    assert "separation small diamond - circle" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        vae_latents.main([str(tmp_path), "--pairs", "0"])
