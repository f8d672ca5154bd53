"""The latent cache's VAE fingerprint: the same VAE saved into another folder (the next run's) matches; other
weights do not."""

import torch

from diffusers_neodragon import CausalVideoVAE
from diffusers_neodragon.training_utils.latent_cache import vae_fingerprint
from tests.tiny_components import tiny_causal_vae


def test_fingerprint_follows_weights_and_config_not_the_folder(tmp_path):
    vae = tiny_causal_vae(seed=1)
    vae.save_pretrained(tmp_path / "a")
    vae.save_pretrained(tmp_path / "b")
    a = CausalVideoVAE.from_pretrained(tmp_path / "a")
    b = CausalVideoVAE.from_pretrained(tmp_path / "b")
    assert a.config._name_or_path != b.config._name_or_path
    assert vae_fingerprint(a) == vae_fingerprint(b)
    with torch.no_grad():
        next(b.parameters()).add_(1e-3)
    assert vae_fingerprint(a)["vae_weights_sha256"] != vae_fingerprint(b)["vae_weights_sha256"]
