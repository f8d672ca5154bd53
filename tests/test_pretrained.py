"""The embedded Shapes model: safetensors only, within the size budget, loadable offline in fp32, and the README's
first command makes the video it asks for."""

import re
from pathlib import Path

import imageio.v3
import torch

from diffusers_neodragon import CausalVideoVAE, NeodragonPipeline, NeodragonTransformer3DModel
from diffusers_neodragon.evaluation import evaluate_video
from diffusers_neodragon.pretrained import SHAPES_MODEL_PATH, shapes_model_path
from diffusers_neodragon_cli import main


def test_embedded_model_files_are_safetensors_within_30_mb():
    files = [p for p in Path(shapes_model_path()).rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in files) <= 30 * 2**20
    assert (SHAPES_MODEL_PATH / "README.md").is_file()


def test_embedded_model_loads_in_float32_with_finite_weights():
    pipe = NeodragonPipeline.from_pretrained(shapes_model_path(), dtype=torch.float32)
    assert isinstance(pipe.transformer, NeodragonTransformer3DModel) and isinstance(pipe.vae, CausalVideoVAE)
    assert pipe.config.mode == "monolithic" and pipe.transformer.config.in_channels == pipe.vae.config.latent_channels
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            for p in module.parameters():
                assert p.dtype == torch.float32 and torch.isfinite(p).all(), name


def test_readme_generate_command_makes_the_prompted_video(tmp_path):
    """The README's first generate command as a user runs it (the embedded model, its default sampler, 49 frames):
    ShapesBench must judge every attribute of the mp4 it writes as prompted."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    prompt = re.search(r'^neodragon generate "([^"]+)"', readme, flags=re.MULTILINE).group(1)
    out = tmp_path / "out.mp4"
    assert main(["generate", prompt, "--output", str(out)]) == 0
    result = evaluate_video(imageio.v3.imread(out), prompt)
    assert all(result["correct"].values()), (prompt, result["predicted"])


def test_folders_saved_with_the_old_module_paths_still_load(tmp_path):
    """model_index.json names each component's module; the paths from before models/ took diffusers' layout load."""
    import json
    import shutil

    from diffusers import DiffusionPipeline

    shutil.copytree(shapes_model_path(), tmp_path, dirs_exist_ok=True)
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["transformer"][0] = "diffusers_neodragon.models.transformer_neodragon"
    index["vae"][0] = "diffusers_neodragon.models.causal_video_decoder"
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    pipe = DiffusionPipeline.from_pretrained(tmp_path)
    assert isinstance(pipe.transformer, NeodragonTransformer3DModel) and isinstance(pipe.vae, CausalVideoVAE)
