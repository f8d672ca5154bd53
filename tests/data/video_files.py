"""Tiny real mp4 files for the real-data tests (imageio's ffmpeg writer): frame k of a clip is a uniform grey of
level ``8 + 12 k`` (so a test can tell which source frames were sampled) with a coloured square per clip."""

import json

import numpy as np


def frame_level(k: int) -> int:
    return 8 + 12 * k


def write_clip(path, num_frames: int = 20, fps: float = 10.0, size=(48, 80), color=(255, 0, 0)):
    import imageio.v3 as iio

    frames = np.zeros((num_frames, *size, 3), np.uint8)
    for k in range(num_frames):
        frames[k] = frame_level(k)
        frames[k, 4:12, 4:12] = color
    iio.imwrite(path, frames, fps=fps, codec="libx264", macro_block_size=16)
    return path


def write_clip_folder(root, metadata_name="metadata.jsonl"):
    """3 good clips (20 frames at 10 fps), a 5-frame clip, a corrupt file; a metadata file listing all five."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        write_clip(root / f"clip{i}.mp4", color=color)
        rows.append({"file": f"clip{i}.mp4", "caption": f"clip number {i} moving left"})
    rows[1]["start"] = 0.5
    write_clip(root / "short.mp4", num_frames=5)
    rows.insert(1, {"file": "short.mp4", "caption": "too short"})
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    rows.append({"file": "broken.mp4", "caption": "broken"})
    (root / metadata_name).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root
