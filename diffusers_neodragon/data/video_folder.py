"""Video clips from a folder: ``*.mp4`` files (read with imageio) and sub-folders of frame images, one clip each.

Minimal on purpose (reconstruction training needs pixels only): every clip is its first ``num_frames`` frames,
resized so its shorter side covers the target and centre-cropped to ``height x width``, as ``[3, F, H, W]`` in
[-1, 1]. Clips shorter than ``num_frames`` and files that cannot be decoded are left out (with their names in
``skipped``); video files are decoded up to ``num_frames`` once when the dataset is built to find them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)


def read_frames(path: str | os.PathLike, num_frames: int) -> np.ndarray:
    """The first ``num_frames`` frames of a video file or frame folder as uint8 [F, H, W, 3] (fewer if shorter)."""
    import imageio.v3 as iio  # noqa: PLC0415

    path = Path(path)
    if path.is_dir():
        frames = [np.asarray(iio.imread(p)) for p in _frame_files(path)[:num_frames]]
    else:
        frames = []
        for frame in iio.imiter(path):
            frames.append(np.asarray(frame))
            if len(frames) == num_frames:
                break
    frames = [f[..., None].repeat(3, -1) if f.ndim == 2 else f[..., :3] for f in frames]
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


def _open_args(source) -> tuple:
    """imageio's (uri, keywords) for a path or raw encoded bytes (a ``datasets`` row; ffmpeg probes the container,
    the extension only picks the plugin)."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), {"extension": ".mp4"}
    return Path(source), {}


def _imiter(source):
    import imageio.v3 as iio  # noqa: PLC0415

    uri, kwargs = _open_args(source)
    return iio.imiter(uri, **kwargs)


def video_fps(source) -> float | None:
    """The frame rate a video file or encoded bytes declare (None for frame folders or when unknown)."""
    import imageio.v3 as iio  # noqa: PLC0415

    if not isinstance(source, (bytes, bytearray)) and Path(source).is_dir():
        return None
    try:
        uri, kwargs = _open_args(source)
        fps = iio.immeta(uri, **kwargs).get("fps")
    except Exception:  # noqa: BLE001 - unknown rate: the caller decides (consecutive frames)
        return None
    return float(fps) if fps and np.isfinite(fps) and fps > 0 else None


def read_frame_indices(source, indices) -> np.ndarray:
    """The frames at ``indices`` (increasing or not) of a video file, encoded bytes or frame folder as uint8
    [len(indices), H, W, 3]; fewer rows when the clip ends before the largest index. Decodes only up to it."""
    import imageio.v3 as iio  # noqa: PLC0415

    indices = [int(i) for i in indices]
    wanted, last = set(indices), max(indices)
    found = {}
    if not isinstance(source, (bytes, bytearray)) and Path(source).is_dir():
        files = _frame_files(Path(source))
        found = {i: np.asarray(iio.imread(files[i])) for i in wanted if i < len(files)}
    else:
        for i, frame in enumerate(_imiter(source)):
            if i in wanted:
                found[i] = np.asarray(frame)
            if i >= last:
                break
    frames = [found[i] for i in indices if i in found]
    frames = [f[..., None].repeat(3, -1) if f.ndim == 2 else f[..., :3] for f in frames]
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


def clip_problem(source, num_frames: int) -> str | None:
    """Why a clip cannot give ``num_frames`` frames (None when it can). Video files are decoded that far once, here,
    so that a short or unreadable file is left out at the start instead of stopping training when its turn comes."""
    if not isinstance(source, (bytes, bytearray)) and Path(source).is_dir():
        count = len(_frame_files(Path(source)))
        return None if count >= num_frames else f"{count} frames, fewer than the {num_frames} needed"

    if not isinstance(source, (bytes, bytearray)) and not Path(source).is_file():
        return "no such file"
    count = 0
    try:
        for _ in _imiter(source):
            count += 1
            if count == num_frames:
                return None
    except Exception as error:  # noqa: BLE001 - any decoder error means the file cannot be used
        return f"cannot be decoded ({type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''})"
    return f"{count} frames, fewer than the {num_frames} needed"


def clip_paths(root: Path) -> list[Path]:
    """The video files and folders of frames in ``root``, sorted by name."""
    return sorted(p for p in Path(root).iterdir()
                  if (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES) or (p.is_dir() and _frame_files(p)))


def _has_frames(path: Path, num_frames: int) -> bool:
    return clip_problem(path, num_frames) is None


def frames_to_video(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 [F, h, w, 3] -> [3, F, height, width] in [-1, 1] (resized to cover, centre-cropped)."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    video = resize_crop(video, height, width).clamp(-1, 1)
    return video.transpose(0, 1).contiguous()


def resize_crop(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[F, 3, h, w] float → [F, 3, height, width]: bilinear resize so both sides cover, then centre crop."""
    h, w = video.shape[-2:]
    scale = max(height / h, width / w)
    size = (max(height, round(h * scale)), max(width, round(w * scale)))
    if size != (h, w):
        video = F.interpolate(video, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return video[..., top : top + height, left : left + width]


class VideoFolderDataset(torch.utils.data.Dataset):
    """The clips of ``root`` (video files and frame folders, sorted by name): ``{"video": [3, F, H, W] in [-1, 1],
    "path": str}``. Clips shorter than ``num_frames`` or unreadable are listed in ``skipped`` and left out."""

    def __init__(self, root: str | os.PathLike, num_frames: int, height: int, width: int):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"Video folder {root} does not exist.")
        candidates = clip_paths(root)
        self.num_frames, self.height, self.width = num_frames, height, width
        self.paths, self.skipped = [], []
        for path in candidates:
            (self.paths if _has_frames(path, num_frames) else self.skipped).append(path)
        if not self.paths:
            raise ValueError(
                f"No clip of >= {num_frames} frames in {root} (video files {VIDEO_SUFFIXES} or folders of frames "
                f"{FRAME_SUFFIXES})."
            )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        frames = read_frames(path, self.num_frames)
        if len(frames) < self.num_frames:
            raise ValueError(f"{path} has {len(frames)} frames, fewer than the {self.num_frames} asked for.")
        return {"video": frames_to_video(frames, self.height, self.width), "path": str(path)}
