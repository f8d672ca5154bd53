# SPDX-License-Identifier: Apache-2.0
"""The teacher pipeline folder of a compression operation: which one (the embedded Shapes model by default) and
writing it back out with the trained component(s) in place (``--pipeline_output``), the other parts as stored."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def teacher_pipeline_path(teacher: str | os.PathLike | None) -> str:
    """``teacher``, or the embedded Shapes model's folder when none is given."""
    if teacher:
        return str(teacher)
    from diffusers_neodragon.pretrained import shapes_model_path  # noqa: PLC0415

    return shapes_model_path()


def save_pipeline_with(source: str | os.PathLike, output_dir: str | os.PathLike, **components) -> Path:
    """The pipeline of folder ``source`` with ``components`` (name=module) replaced, saved to ``output_dir``.

    Every other component's folder is copied as it is stored, so a fp16 teacher stays fp16 (loading the pipeline and
    saving it again would write each component in the dtype it was loaded in) and nothing is loaded that is not
    replaced. A folder ``source`` lists that is missing is an error, not a component silently dropped."""
    source, output_dir = Path(source), Path(output_dir)
    if not (source / "model_index.json").is_file():
        raise ValueError(f"--pipeline_output needs a pipeline folder as --teacher; {source} has no model_index.json.")
    index = json.loads((source / "model_index.json").read_text())
    kept = [name for name, entry in index.items() if name not in components and _is_stored_component(entry)]
    missing = [name for name in kept if not (source / name).is_dir()]
    if missing:
        raise ValueError(f"{source} lists {missing} in model_index.json but has no such folders.")
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in kept:
        _copy_component(source, output_dir, name)
    for name, module in components.items():
        shutil.rmtree(output_dir / name, ignore_errors=True)  # no file of an earlier write left beside the new one
        module.save_pretrained(str(output_dir / name))
        index[name] = [_library_of(module), type(module).__name__]
    (output_dir / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return output_dir


def keep_stored_components(source: str | os.PathLike, output_dir: str | os.PathLike, exclude=()) -> list[str]:
    """Put ``source``'s own files back for every component listed with the same class in both ``model_index.json``
    files, except ``exclude``, which must name every part the pipeline in ``output_dir`` trained or replaced. A
    student pipeline built around its teacher's frozen parts, loaded at fp32 for training, would otherwise store
    them at fp32. Returns the names restored."""
    source, output_dir = Path(source), Path(output_dir)
    index = json.loads((source / "model_index.json").read_text())
    saved = json.loads((output_dir / "model_index.json").read_text())
    names = [name for name, entry in saved.items() if name not in exclude and _is_stored_component(entry)
             and index.get(name) == entry and (source / name).is_dir()]
    for name in names:
        _copy_component(source, output_dir, name)
    return names


def _copy_component(source: Path, output_dir: Path, name: str) -> None:
    shutil.rmtree(output_dir / name, ignore_errors=True)  # no file of an earlier write left beside the copy
    shutil.copytree(source / name, output_dir / name)


def _is_stored_component(entry) -> bool:
    """A ``model_index.json`` entry naming a component folder, ``[library, class]``; not ``[None, None]`` (absent)
    nor a config value that happens to be a list (``default_num_inference_steps``)."""
    return isinstance(entry, list) and len(entry) == 2 and all(isinstance(v, str) for v in entry)


def _library_of(module) -> str:
    """The library entry of ``model_index.json`` for a model (not a nested pipeline nor a compiled wrapper): as
    diffusers writes it, the package for diffusers and transformers classes, the defining module for ours."""
    path = type(module).__module__
    top = path.split(".")[0]
    return top if top in ("diffusers", "transformers") else path


__all__ = ["keep_stored_components", "save_pipeline_with", "teacher_pipeline_path"]
