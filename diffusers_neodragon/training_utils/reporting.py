# SPDX-License-Identifier: Apache-2.0
"""What a run reports: parameter counts, figures for model cards, and validation strips of videos."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of ``module`` (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def format_float(value: float | None, digits: int = 4) -> str:
    """``value`` with ``digits`` significant digits for a model card; ``n/a`` when there is none."""
    return "n/a" if value is None else f"{value:.{digits}g}"


def video_strip(videos: Sequence[torch.Tensor], max_frames: int = 8):
    """A PIL image with one row per video [3, T, H, W] in [-1, 1]: ``max_frames`` evenly spaced frames each."""
    import PIL.Image  # noqa: PLC0415

    rows = []
    for video in videos:
        video = video.detach().float().cpu().clamp(-1, 1)
        frames = video.shape[1]
        count = min(max_frames, frames)
        picks = sorted({round(i * (frames - 1) / max(count - 1, 1)) for i in range(count)})
        row = torch.cat([video[:, i] for i in picks], dim=2)  # [3, H, n*W]
        rows.append(row)
    width = max(r.shape[2] for r in rows)
    rows = [F.pad(r, (0, width - r.shape[2]), value=-1.0) for r in rows]
    grid = torch.cat(rows, dim=1)
    array = ((grid.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return PIL.Image.fromarray(array)


def log_image(accelerator, tag: str, image, step: int) -> None:
    """Send a PIL ``image`` (a validation strip) to the run's image-capable trackers (TensorBoard, W&B)."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            import numpy as np  # noqa: PLC0415

            tracker.writer.add_image(tag, np.asarray(image), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb  # noqa: PLC0415

            tracker.log({tag: wandb.Image(image)}, step=step)
