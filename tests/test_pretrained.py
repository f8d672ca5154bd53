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


# ------------------------------------------------------------------------------------------ user phrasings

CANONICAL = "a large red circle moving left on a blue background"
PHRASINGS = [
    "a red circle moving left on a blue background",
    "The red circle moves to the left on the blue background.",
    "RED LARGE CIRCLE, MOVING TOWARDS THE LEFT, ON A BLUE BACKGROUND!",
    "a big red circle heading leftwards against a blue backdrop",
    "on a blue background, an red circle going left",
]


def test_embedded_model_reads_user_phrasings_as_the_caption_they_mean(caplog):
    """The shipped tokenizers name the Shapes prompt normaliser, so each phrasing reaches the text encoders as the
    training caption it means: the same token ids, hence bitwise the same text features as the caption itself."""
    import logging

    from diffusers_neodragon.data.shapes_prompts import normalize_shapes_prompt
    from diffusers_neodragon.data.vocab_tokenizer import prompt_normalizer

    pipe = NeodragonPipeline.from_pretrained(shapes_model_path(), dtype=torch.float32)
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        assert prompt_normalizer(getattr(pipe, name)) is normalize_shapes_prompt, name
    ids = pipe.tokenizer_3(CANONICAL).input_ids
    expected = pipe.encode_prompt(CANONICAL)
    with caplog.at_level(logging.WARNING):
        for phrasing in PHRASINGS:
            assert pipe.tokenizer_3(phrasing).input_ids != ids  # as typed, the model would read other ids
            assert pipe.tokenizer_3(normalize_shapes_prompt(phrasing).text).input_ids == ids
            for got, want in zip(pipe.encode_prompt(phrasing), expected):
                assert (got is None and want is None) or torch.equal(got, want), phrasing
    assert not caplog.records  # every word of these phrasings is understood

    with caplog.at_level(logging.WARNING):
        got = pipe.encode_prompt("a fluffy red circle moving slowly to the left on a blue background")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "left out: ['fluffy', 'slowly']" in messages[0], messages
    assert repr(CANONICAL) in messages[0]
    assert all((g is None and w is None) or torch.equal(g, w) for g, w in zip(got, expected))
