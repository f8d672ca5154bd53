"""The model card of a converted release folder (``neodragon_converted.md``, through the package's one model-card
implementation in :mod:`diffusers_neodragon.utils.model_cards`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def component_table(pipe, sources: Mapping[str, str]) -> str:
    """Markdown rows ``| component | class | parameters | source folder |`` for a pipeline's components."""
    rows = []
    for name, component in pipe.components.items():
        if component is None:
            continue
        if isinstance(component, torch.nn.Module):
            count = f"{sum(p.numel() for p in component.parameters()):,}"
        elif hasattr(component, "components"):  # a nested pipeline
            modules = [c for c in component.components.values() if isinstance(c, torch.nn.Module)]
            count = f"{sum(p.numel() for m in modules for p in m.parameters()):,}"
        else:
            count = "-"
        rows.append(f"| `{name}` | `{type(component).__name__}` | {count} | {sources.get(name, '-')} |")
    return "\n".join(rows)


def write_conversion_model_card(output_dir: os.PathLike, values: Mapping[str, Any],
                                template: os.PathLike | None = None) -> Path:
    """Fill the ``neodragon_converted.md`` template (or ``template``) and write it as ``output_dir/README.md``."""
    import diffusers
    import transformers

    from .. import __version__
    from ..utils.model_cards import write_model_card

    defaults = dict(package_version=__version__, diffusers_version=diffusers.__version__,
                    transformers_version=transformers.__version__, torch_version=torch.__version__)
    return write_model_card(output_dir, template or "neodragon_converted.md", {**defaults, **values})
