"""Models shipped inside the package, so that ``neodragon generate`` works offline on a fresh machine.

``shapes``: a small Shapes-world text-to-video pipeline (fp16 weights, ~24 MB) trained by ``training/`` (recipe:
``training/recipes/shapes_default.sh``; its model card, ``shapes/README.md``, has the exact commands and scores).
"""

from pathlib import Path


SHAPES_MODEL_PATH = Path(__file__).resolve().parent / "shapes"


def shapes_model_path() -> str:
    """Folder of the embedded Shapes pipeline; load it with ``NeodragonPipeline.from_pretrained(path, dtype=...)``."""
    if not (SHAPES_MODEL_PATH / "model_index.json").is_file():
        raise FileNotFoundError(
            f"The embedded Shapes model is missing from {SHAPES_MODEL_PATH} (an incomplete install?). Reinstall "
            "diffusers-neodragon, or pass a pipeline folder or Hub id with --model."
        )
    return str(SHAPES_MODEL_PATH)
