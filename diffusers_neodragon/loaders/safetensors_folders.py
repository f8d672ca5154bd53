"""Reading checkpoint folders with ``safetensors`` only: single files, sharded folders, whole pipeline trees.

Every failure is one ``ValueError`` line that names the file: a missing or malformed JSON file, a truncated or
corrupted safetensors file (an interrupted download), a folder holding only pickle weights (never loaded: unpickling
can run arbitrary code).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file


WEIGHT_STEMS = ("diffusion_pytorch_model", "model")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TRAINING_STATE_FOLDER = re.compile(r"checkpoint-\d+")
MAX_LISTED = 20
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def format_keys(keys: Iterable[Any]) -> str:
    """``[a, b, ... and N more]``: at most ``MAX_LISTED`` names, so an error message stays readable."""
    keys = list(keys)
    shown = ", ".join(str(k) for k in keys[:MAX_LISTED])
    return f"[{shown}{f', ... and {len(keys) - MAX_LISTED} more' if len(keys) > MAX_LISTED else ''}]"


def read_json(path: os.PathLike) -> dict[str, Any]:
    """Read a JSON file, with an error that names the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Missing {path.name} in {path.parent}: not a checkpoint folder of the expected layout.")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); the file may be truncated or corrupted.") from None


def _unreadable(path: Path, error: Exception) -> ValueError:
    reason = " ".join(str(error).split())  # one line, whatever the library's message looks like
    return ValueError(
        f"Cannot read {path} as safetensors ({reason}). The file is truncated or corrupted (an interrupted "
        "download?): delete it and download it again."
    )


def check_safetensors_file(path: os.PathLike) -> None:
    """Open a safetensors file's header (which also checks that the file covers every tensor it lists)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            handle.keys()
    except Exception as error:  # SafetensorError, OSError
        raise _unreadable(path, error) from None


def read_safetensors_file(path: os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file (``safetensors.torch.load_file``), a damaged file as one clear line."""
    path = Path(path)
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # SafetensorError, OSError
        raise _unreadable(path, error) from None


def pickle_refusal(folder: Path, pickles: list[str]) -> ValueError:
    """The error for a folder whose only weights are pickle files."""
    return ValueError(
        f"No safetensors weights in {folder}: {folder / pickles[0]} is a pickle checkpoint, and pickle checkpoints "
        "are never loaded here (unpickling can run arbitrary code); safetensors is required: convert it to "
        "safetensors first."
    )


def weight_files(folder: os.PathLike) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files holding a folder's weights (and the shard index's weight map, if sharded)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder.")
    for stem in WEIGHT_STEMS:
        index = folder / f"{stem}.safetensors.index.json"
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index} has no `weight_map`; the shard index is corrupted.")
            files = [folder / name for name in sorted(set(weight_map.values()))]
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise ValueError(f"{folder} is missing the shards {absent} listed in {index.name}.")
            return files, weight_map
        single = folder / f"{stem}.safetensors"
        if single.is_file():
            return [single], None
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return found, None
    if found:
        raise ValueError(
            f"{folder} holds several safetensors files {[f.name for f in found]} and no shard index; cannot tell "
            "which one holds the weights."
        )
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise pickle_refusal(folder, pickles)
    raise ValueError(f"No safetensors weights in {folder}.")


def check_safetensors_folder(folder: os.PathLike) -> list[Path]:
    """Open (header only) every safetensors file of a folder, so that a truncated download fails with a clear error
    before a library loader sees it. Returns the weight files."""
    files, _ = weight_files(folder)
    for path in files:
        check_safetensors_file(path)
    return files


def check_weights_tree(root: os.PathLike) -> None:
    """Check every folder under ``root`` (a diffusers pipeline folder, nested pipelines included) before a library
    loader reads it: a folder holding pickle weights and no safetensors file is refused, naming the file; every
    safetensors file must have a readable header. Training-state folders (``checkpoint-<step>``, accelerate's pickled
    optimizer beside a run's saved pipeline) are skipped: no pipeline loader reads them."""
    for folder, subfolders, names in os.walk(root, followlinks=True):
        subfolders[:] = [d for d in subfolders if not TRAINING_STATE_FOLDER.fullmatch(d)]
        safetensors = sorted(n for n in names if n.endswith(".safetensors"))
        pickles = sorted(n for n in names if Path(n).suffix in PICKLE_SUFFIXES)
        if pickles and not safetensors:
            raise pickle_refusal(Path(folder), pickles)
        for name in safetensors:
            check_safetensors_file(Path(folder) / name)


def load_safetensors_folder(folder: os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder (single file or shards), read with ``safetensors`` only."""
    folder = Path(folder)
    files, weight_map = weight_files(folder)
    state: dict[str, torch.Tensor] = {}
    for path in files:
        shard = read_safetensors_file(path)
        repeated = sorted(shard.keys() & state.keys())
        if repeated:
            raise ValueError(f"Tensor {repeated[0]!r} appears in more than one shard of {folder}.")
        state.update(shard)
    if weight_map is not None and set(weight_map) != set(state):
        raise ValueError(
            f"The shard index of {folder} does not match its shards: listed but absent "
            f"{format_keys(sorted(set(weight_map) - set(state)))}, present but unlisted "
            f"{format_keys(sorted(set(state) - set(weight_map)))}."
        )
    return state


def checkpoint_dtype(folder: os.PathLike) -> torch.dtype:
    """The dtype of the first floating-point tensor of a checkpoint folder (what it was saved in)."""
    files, _ = weight_files(folder)
    try:
        with safe_open(str(files[0]), framework="pt", device="cpu") as handle:
            for key in handle.keys():
                dtype = _SAFETENSORS_DTYPES.get(handle.get_slice(key).get_dtype())
                if dtype is not None:
                    return dtype
    except Exception as error:
        raise _unreadable(files[0], error) from None
    return torch.float32
