"""The embedded model's recipe runs end to end (SMOKE=1: every phase shrunk to a few CPU steps)."""

import os
import subprocess
import sys
from pathlib import Path

from diffusers_neodragon import NeodragonPipeline


RECIPE = Path(__file__).resolve().parents[2] / "training" / "recipes" / "shapes_default.sh"


def test_shapes_recipe_smoke_run_writes_a_loadable_pipeline(tmp_path):
    env = {**os.environ, "SMOKE": "1", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(RECIPE), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    for phase in ("vae-short", "vae-run"):
        assert (tmp_path / phase / "vae" / "config.json").is_file()
    pipe = NeodragonPipeline.from_pretrained(tmp_path / "pipeline")
    assert pipe.vae.config.latent_channels == pipe.transformer.config.in_channels
