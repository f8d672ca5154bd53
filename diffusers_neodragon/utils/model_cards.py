"""Model cards for every folder the project writes (conversion, training), from templates shipped with the package.

One implementation: ``huggingface_hub.ModelCard.from_template`` renders a Jinja template of
``diffusers_neodragon/templates``; diffusers' ``populate_model_card`` adds the library name and tags to its YAML
header. A value the caller does not give renders as ``n/a``, so a card never shows a blank where a figure belongs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates"


def template_path(template: str | os.PathLike) -> Path:
    """A template file: a path, or the name of one shipped in ``diffusers_neodragon/templates``."""
    path = Path(template)
    if path.is_file():
        return path
    shipped = TEMPLATE_DIR / path.name
    if shipped.is_file():
        return shipped
    names = sorted(p.name for p in TEMPLATE_DIR.glob("*.md"))
    raise FileNotFoundError(f"Model card template {str(template)!r} is neither a file nor one of {names}")


def render_model_card(template: str | os.PathLike, values: Mapping[str, Any], tags: Sequence[str] | None = None):
    """The filled ``huggingface_hub.ModelCard`` (``{{ name }}`` placeholders; missing or None values become n/a)."""
    import jinja2.meta
    from diffusers.utils.hub_utils import populate_model_card
    from huggingface_hub import ModelCard, ModelCardData

    path = template_path(template)
    names = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(path.read_text(encoding="utf-8")))
    filled = {name: "n/a" if values.get(name) is None else values[name] for name in names}
    card = ModelCard.from_template(ModelCardData(), template_path=str(path), **filled)
    existing = set(card.data.tags or [])
    return populate_model_card(card, tags=[t for t in dict.fromkeys(tags or []) if t not in existing] or None)


def write_model_card(
    output_dir: str | os.PathLike, template: str | os.PathLike, values: Mapping[str, Any],
    tags: Sequence[str] | None = None,
) -> Path:
    """Render ``template`` with ``values`` and write it as ``output_dir/README.md``; returns that path."""
    destination = Path(output_dir) / "README.md"
    destination.parent.mkdir(parents=True, exist_ok=True)
    render_model_card(template, values, tags).save(str(destination))
    return destination
