# SPDX-License-Identifier: Apache-2.0
"""The teacher pipeline folder of a compression operation: which one (the embedded Shapes model by default) and
writing it back out with the trained component(s) in place (``--pipeline_output``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def teacher_pipeline_path(teacher: str | os.PathLike | None) -> str:
    """``teacher``, or the embedded Shapes model's folder when none is given."""
    if teacher:
        return str(teacher)
    from diffusers_neodragon.pretrained import shapes_model_path  # noqa: PLC0415

    return shapes_model_path()


def save_pipeline_with(source: str | os.PathLike, output_dir: str | os.PathLike, **components) -> Path:
    """The pipeline of folder ``source`` with ``components`` (name=module) replaced, saved to ``output_dir``."""
    from diffusers import DiffusionPipeline  # noqa: PLC0415

    source = Path(source)
    if not (source / "model_index.json").is_file():
        raise ValueError(f"--pipeline_output needs a pipeline folder as --teacher; {source} has no model_index.json.")
    pipe = DiffusionPipeline.from_pretrained(str(source), dtype=torch.float32)
    pipe.register_modules(**components)
    pipe.save_pretrained(str(output_dir))
    return Path(output_dir)


__all__ = ["save_pipeline_with", "teacher_pipeline_path"]
