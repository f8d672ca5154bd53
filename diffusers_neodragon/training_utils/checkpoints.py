# SPDX-License-Identifier: Apache-2.0
"""A run's folders: ``checkpoint-<step>`` (list, rotate, save with accelerate, resolve ``--resume_from_checkpoint``)
and the trained VAE of a run or pipeline folder (:func:`load_vae_folder`)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch


logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"


def load_vae_folder(path: str | os.PathLike, dtype: torch.dtype = torch.float32, cls=None) -> torch.nn.Module:
    """A VAE from a local VAE folder or from a folder holding ``vae/`` (a ``train_vae.py`` run or a pipeline).

    ``cls`` defaults to the config's ``_class_name`` among this package's models (``CausalVideoVAE`` or
    ``AsymmetricVAE``), so callers that only need "the VAE in this folder" need not know which one it is.
    """
    import diffusers_neodragon  # noqa: PLC0415

    folder = Path(path)
    subfolder = "vae" if (folder / "vae" / "config.json").is_file() else None
    if cls is None:
        name = json.loads((folder / (subfolder or "") / "config.json").read_text()).get("_class_name", "")
        cls = getattr(diffusers_neodragon, name, None)
        if cls is None:
            raise ValueError(f"{folder} holds no diffusers_neodragon VAE (config _class_name {name!r}).")
    return cls.from_pretrained(str(folder), subfolder=subfolder, dtype=dtype)


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``checkpoint-<step>`` folders of ``output_dir`` as (step, path), oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = re.fullmatch(re.escape(CHECKPOINT_PREFIX) + r"(\d+)", path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def prune_checkpoints(output_dir: str | os.PathLike, total_limit: int | None, keep_room: int = 1) -> list[Path]:
    """Delete the oldest checkpoints so that ``total_limit - keep_room`` remain (room for the one about to be
    saved), as the diffusers scripts do. ``None`` keeps everything. Returns the removed folders."""
    if total_limit is None:
        return []
    if total_limit < 1:
        raise ValueError(f"`checkpoints_total_limit` must be >= 1, got {total_limit}.")
    checkpoints = list_checkpoints(output_dir)
    excess = len(checkpoints) - (total_limit - keep_room)
    removed = []
    for _, path in checkpoints[: max(excess, 0)]:
        shutil.rmtree(path)
        removed.append(path)
    if removed:
        logger.info("Removed %d old checkpoint(s): %s", len(removed), ", ".join(p.name for p in removed))
    return removed


def save_checkpoint(
    accelerator, output_dir: str | os.PathLike, global_step: int, total_limit: int | None = None
) -> Path:
    """Rotate old checkpoints (main process) and ``accelerator.save_state`` to ``output_dir/checkpoint-<step>``.

    Call it on every process: accelerate writes the shared state once and each process's RNG state.
    """
    path = Path(output_dir) / f"{CHECKPOINT_PREFIX}{global_step}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    logger.info("Saved state to %s", path)
    return path


def resolve_resume_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> Path | None:
    """The checkpoint folder to resume from: ``"latest"`` -> the highest ``checkpoint-<step>`` in ``output_dir``
    (``None`` when there is none: the run starts fresh); a name or path -> that folder (relative names are looked
    up in ``output_dir``), which must exist."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            logger.warning("No checkpoint in %s: starting a new training run.", output_dir)
            return None
        return checkpoints[-1][1]
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        path = Path(output_dir) / resume_from_checkpoint
    if not path.is_dir():
        raise ValueError(f"Checkpoint {resume_from_checkpoint!r} does not exist (nor in {output_dir}).")
    return path


def checkpoint_step(path: str | os.PathLike) -> int:
    """The global step encoded in a ``checkpoint-<step>`` folder name."""
    match = re.fullmatch(re.escape(CHECKPOINT_PREFIX) + r"(\d+)", Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a `{CHECKPOINT_PREFIX}<step>` folder.")
    return int(match.group(1))

