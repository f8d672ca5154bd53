"""Prompt-only data (text-encoder distillation, calibration): a text file with one prompt per line, or a text column
of a ``datasets`` dataset; and the one ``datasets`` loader every real-data reader shares."""

from __future__ import annotations

import os
from pathlib import Path


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """Non-empty, stripped lines of a UTF-8 text file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Prompt file {path} does not exist (a text file, one prompt per line).")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ValueError(f"{path} holds no prompt.")
    return prompts


def load_datasets_table(name_or_path: str | os.PathLike, split: str = "train"):
    """A ``datasets.Dataset``: a ``save_to_disk`` folder (``load_from_disk``), else a local folder / data file or a
    Hub id (``load_dataset``), cut to ``split``; a ``datasets.Dataset`` given is returned as it is."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        return name_or_path
    try:
        import datasets  # noqa: PLC0415
    except ImportError as error:
        raise ValueError(f"Reading {name_or_path} needs the `datasets` package: pip install datasets.") from error
    source = Path(name_or_path)
    saved = [source / "dataset_info.json", source / "dataset_dict.json"]
    if source.is_dir() and any(path.is_file() for path in saved):
        data = datasets.load_from_disk(str(source))
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ValueError(f"{source} has no split {split!r} (splits: {list(data)}).")
            data = data[split]
        return data
    return datasets.load_dataset(str(name_or_path), split=split)


def dataset_prompts(name_or_path, column: str = "text", split: str = "train") -> list[str]:
    """The non-empty entries of a ``datasets`` text column."""
    data = load_datasets_table(name_or_path, split)
    if column not in data.column_names:
        raise ValueError(f"{name_or_path} has no column {column!r} (columns: {data.column_names}).")
    prompts = [str(t).strip() for t in data[column] if t is not None and str(t).strip()]
    if not prompts:
        raise ValueError(f"{name_or_path}'s column {column!r} holds no prompt.")
    return prompts


def load_prompts(source, column: str = "text", split: str = "train") -> list[str]:
    """Prompts from a ``.txt`` file (one per line) or a ``datasets`` dataset's text column."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() in ("", ".txt", ".prompts"):
        return read_prompt_file(path)
    return dataset_prompts(source, column, split)
