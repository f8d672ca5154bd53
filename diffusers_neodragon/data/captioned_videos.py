"""Captioned video clips for text-to-video training: a folder of videos with a metadata file, or a ``datasets`` table.

Every clip is ``num_frames`` frames (1 + 8k for the causal VAE) sampled at ``fps`` (a stride of source fps / target
fps from ``start`` seconds; consecutive frames when ``fps`` is None or the source rate is unknown), resized to cover
``height x width`` and centre-cropped, as ``{"video": [3, F, H, W] in [-1, 1], "caption": str, "name": str}``.
Clips are probed once when the dataset is built (decoded as far as the last sampled frame): a broken or too short
one is left out with a one-line reason printed and listed in ``skipped``, so a bad file never stops a run.
Decoding uses imageio (its ffmpeg plugin), as :mod:`.video_folder` does, whose reader this module reuses.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import torch

from .prompts import load_datasets_table
from .video_folder import VIDEO_SUFFIXES, clip_paths, clip_problem, frames_to_video, read_frame_indices, video_fps


METADATA_FIELDS = ("file", "caption", "fps", "start")


def read_metadata(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``.csv`` (header row) or ``.jsonl`` metadata file: ``file`` and ``caption`` required, ``fps``
    (overrides the file's declared rate) and ``start`` (seconds) optional."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Metadata file {path} does not exist (a .csv or .jsonl with columns file, caption).")
    if path.suffix.lower() not in (".csv", ".jsonl", ".json"):
        raise ValueError(f"Metadata file {path} must end in .csv or .jsonl.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path} line {number} is not JSON ({error}).") from error
    cleaned = []
    for number, row in enumerate(rows, 1):
        if not row.get("file") or row.get("caption") is None:
            raise ValueError(f"{path} row {number} needs `file` and `caption`, got {sorted(row)}.")
        fps, start = row.get("fps"), row.get("start")
        cleaned.append(dict(
            file=str(row["file"]), caption=str(row["caption"]).strip(),
            fps=float(fps) if fps not in (None, "") else None, start=float(start) if start not in (None, "") else 0.0,
        ))
    if not cleaned:
        raise ValueError(f"Metadata file {path} lists no clip.")
    return cleaned


def sample_indices(num_frames: int, source_fps: float | None, target_fps: float | None, start: float = 0.0) -> list:
    """Source frame indices of ``num_frames`` frames at ``target_fps`` from ``start`` seconds."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}.")
    first = round(start * source_fps) if source_fps else 0
    stride = source_fps / target_fps if (source_fps and target_fps) else 1.0
    return [first + int(math.floor(k * stride + 1e-6)) for k in range(num_frames)]


class CaptionedClips(torch.utils.data.Dataset):
    """Clips from ``entries`` (dicts with ``source``: a path or encoded bytes, ``caption``, ``name``, optional
    ``fps`` and ``start``), probed at build time; the shared core of the folder and ``datasets`` readers."""

    def __init__(self, entries, num_frames: int, height: int, width: int, fps: float | None = None,
                 verbose: bool = True):
        self.num_frames, self.height, self.width, self.fps = num_frames, height, width, fps
        self.entries, self.skipped = [], []
        for entry in entries:
            source_fps = entry.get("fps") or video_fps(entry["source"])
            indices = sample_indices(num_frames, source_fps, fps, entry.get("start") or 0.0)
            problem = clip_problem(entry["source"], indices[-1] + 1)
            if problem is None:
                self.entries.append({**entry, "indices": indices})
            else:
                self.skipped.append((entry["name"], problem))
                if verbose:
                    print(f"[data] skipping {entry['name']}: {problem}")
        if verbose and self.skipped:
            print(f"[data] {len(self.skipped)} of {len(self.skipped) + len(self.entries)} clips skipped.")
        if not self.entries:
            raise ValueError(
                f"No usable clip of {num_frames} frames among {len(self.skipped)}: "
                + "; ".join(f"{n}: {p}" for n, p in self.skipped[:5])
            )

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def captions(self) -> list[str]:
        return [entry["caption"] for entry in self.entries]

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        frames = read_frame_indices(entry["source"], entry["indices"])
        if len(frames) < self.num_frames:
            raise ValueError(f"{entry['name']} gave {len(frames)} frames, fewer than {self.num_frames}.")
        return {"video": frames_to_video(frames, self.height, self.width), "caption": entry["caption"],
                "name": entry["name"]}

    @staticmethod
    def collate_fn(items: list[dict]) -> dict:
        return {"video": torch.stack([item["video"] for item in items]),
                "caption": [item["caption"] for item in items], "name": [item["name"] for item in items]}


def folder_rows(root: Path) -> list[dict]:
    """Metadata rows with empty captions for every video file and folder of frames in ``root`` (sorted): the clips
    of a folder without a metadata file, for training that needs no captions (the VAE)."""
    rows = [dict(file=p.name, caption="", fps=None, start=0.0) for p in clip_paths(root)]
    if not rows:
        raise ValueError(f"{root} holds no video file ({', '.join(VIDEO_SUFFIXES)}) or folder of frames.")
    return rows


class CaptionedVideoFolder(CaptionedClips):
    """The clips a metadata file lists (``file`` relative to ``root``), in its order; with ``metadata=None`` every
    video of the folder, uncaptioned (:func:`folder_rows`)."""

    def __init__(self, root, metadata, num_frames: int, height: int, width: int, fps: float | None = None,
                 verbose: bool = True):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"Video folder {root} does not exist.")
        rows = read_metadata(metadata) if metadata is not None else folder_rows(root)
        entries = [dict(source=root / row["file"], name=row["file"], caption=row["caption"], fps=row["fps"],
                        start=row["start"]) for row in rows]
        super().__init__(entries, num_frames, height, width, fps, verbose)


def datasets_entries(table, video_column: str = "video", caption_column: str = "caption", root=None) -> list[dict]:
    """Entries of a ``datasets`` table (or any sequence of row dicts) whose video column holds a path (relative to
    ``root`` when given), encoded bytes, or the ``{"path", "bytes"}`` dict of an undecoded ``datasets.Video``;
    ``caption_column=None``: empty captions."""
    columns = getattr(table, "column_names", None) or (list(table[0]) if len(table) else [])
    for column in (video_column, caption_column):
        if column is not None and column not in columns:
            raise ValueError(f"The dataset has no column {column!r} (columns: {columns}); pass --video_column / "
                             "--caption_column.")
    entries = []
    for number in range(len(table)):
        row = table[number]
        video = row[video_column]
        if isinstance(video, dict):
            video = video.get("bytes") or video.get("path")
        if isinstance(video, str) and root is not None and not os.path.isabs(video):
            video = str(Path(root) / video)
        if not isinstance(video, (str, bytes, bytearray, os.PathLike)):
            raise ValueError(f"Row {number}'s {video_column!r} is a {type(video).__name__}: give paths or bytes "
                             "(cast a decoded datasets.Video column with decode=False).")
        name = video if isinstance(video, str) else f"row {number}"
        caption = "" if caption_column is None else str(row[caption_column]).strip()
        entries.append(dict(source=video, caption=caption, name=str(name),
                            fps=row.get("fps") or None, start=float(row.get("start") or 0.0)))
    return entries


class CaptionedVideoTable(CaptionedClips):
    """The clips of a ``datasets`` dataset: a local folder (``save_to_disk`` or data files), a Hub id or a loaded
    ``datasets.Dataset`` (a ``datasets.Video`` column is read undecoded: paths or bytes); with
    ``captions=False`` a missing caption column gives empty captions."""

    def __init__(self, name_or_path, num_frames: int, height: int, width: int, fps: float | None = None,
                 split: str = "train", video_column: str = "video", caption_column: str = "caption",
                 verbose: bool = True, captions: bool = True):
        table = load_datasets_table(name_or_path, split)
        columns = getattr(table, "column_names", None) or (list(table[0]) if len(table) else [])
        if not captions and caption_column not in columns:
            caption_column = None  # uncaptioned clips (the VAE)
        try:
            import datasets  # noqa: PLC0415

            if isinstance(table.features.get(video_column), datasets.Video):
                table = table.cast_column(video_column, datasets.Video(decode=False))
        except (ImportError, AttributeError):
            pass
        local = isinstance(name_or_path, (str, os.PathLike)) and Path(name_or_path).is_dir()
        root = Path(name_or_path) if local else None
        entries = datasets_entries(table, video_column, caption_column, root)
        super().__init__(entries, num_frames, height, width, fps, verbose)
