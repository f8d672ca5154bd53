"""The embedded model's recipe runs end to end (SMOKE=1: every phase shrunk to a few CPU steps)."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from diffusers_neodragon import CausalVideoVAE, NeodragonPipeline, NeodragonTransformer3DModel


RECIPE = Path(__file__).resolve().parents[2] / "training" / "recipes" / "shapes_default.sh"


def test_shapes_recipe_smoke_run_writes_a_loadable_pipeline(tmp_path):
    repo = str(RECIPE.parents[2])  # the scripts import this checkout's package, not an installed copy
    env = {**os.environ, "SMOKE": "1", "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(["bash", str(RECIPE), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    for phase in ("vae-short", "vae-run", "vae-robust", "vae-whole", "pipeline-true-history", "pipeline-own-history-1"):
        assert (tmp_path / phase / "README.md").is_file(), phase
    pipe = NeodragonPipeline.from_pretrained(tmp_path / "pipeline")
    assert pipe.vae.config.latent_channels == pipe.transformer.config.in_channels
    assert "--generated_history_prob 1" in (tmp_path / "pipeline" / "README.md").read_text()
    vaes = {phase: CausalVideoVAE.from_pretrained(tmp_path / phase / "vae")
            for phase in ("vae-run", "vae-robust", "vae-whole")}

    def equal(a, b):
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    # the decoder-only phase keeps the encoder (and so every latent); the whole-VAE phase changes both halves, and
    # the pipeline decodes with (and its transformer was trained on the latents of) the whole-VAE phase's VAE
    assert equal(vaes["vae-robust"].encoder, vaes["vae-run"].encoder)
    assert not equal(vaes["vae-robust"].decoder, vaes["vae-run"].decoder)
    assert not equal(vaes["vae-whole"].encoder, vaes["vae-robust"].encoder)
    assert equal(pipe.vae, vaes["vae-whole"])
    # each own-history round continues the transformer of the round before
    transformers = [NeodragonTransformer3DModel.from_pretrained(tmp_path / phase / "transformer")
                    for phase in ("pipeline-true-history", "pipeline-own-history-1")]
    assert not equal(transformers[0], transformers[1]) and not equal(transformers[1], pipe.transformer)
