"""The embedded model's recipe runs end to end (SMOKE=1: every phase shrunk to a few CPU steps)."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from diffusers_neodragon import CausalVideoVAE, NeodragonPipeline


RECIPE = Path(__file__).resolve().parents[2] / "training" / "recipes" / "shapes_default.sh"


def test_shapes_recipe_smoke_run_writes_a_loadable_pipeline(tmp_path):
    env = {**os.environ, "SMOKE": "1", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(RECIPE), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    for phase in ("vae-short", "vae-run", "vae-robust"):
        assert (tmp_path / phase / "vae" / "config.json").is_file()
    pipe = NeodragonPipeline.from_pretrained(tmp_path / "pipeline")
    assert pipe.vae.config.latent_channels == pipe.transformer.config.in_channels
    # the pipeline decodes with the noise-robust decoder, whose encoder (so every latent) is the 49-frame VAE's
    robust, long = (CausalVideoVAE.from_pretrained(tmp_path / phase / "vae") for phase in ("vae-robust", "vae-run"))

    def equal(a, b):
        return [torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values())]

    assert all(equal(pipe.vae.encoder, long.encoder)) and all(equal(pipe.vae.decoder, robust.decoder))
    assert not all(equal(pipe.vae.decoder, long.decoder))
