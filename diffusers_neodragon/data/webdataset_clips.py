"""Captioned video clips streamed from WebDataset tar shards (``webdataset`` package): the input format of
multi-node runs, where no process can list or hold the whole set.

A sample is the files of one key in a tar: ``<key>.mp4`` (the video) and ``<key>.txt`` (its caption; another video
or caption extension can be named). Process r of n reads the shards r, r + n, ... of the sorted list, and a
``DataLoader`` worker w of k reads every k-th of those, so no two readers decode the same clip and no process opens
another's shards. Clips are sampled, resized and cropped as :mod:`.captioned_videos` does; a sample that cannot be
decoded, is too short or lacks a file is skipped with a one-line reason (counted in ``skipped`` of the reader that
met it) instead of stopping the stream.
"""

from __future__ import annotations

import glob
import os
import random
from pathlib import Path

import torch

from .captioned_videos import CaptionedClips, sample_indices
from .video_folder import frames_to_video, read_frame_indices, video_fps


def shard_urls(shards) -> list[str]:
    """The sorted tar shards of a folder (``*.tar``), a glob, a brace pattern (``data/{00000..00009}.tar``) or a
    list of those."""
    if isinstance(shards, (str, os.PathLike)):
        shards = [shards]
    urls = []
    for item in shards:
        item = str(item)
        if Path(item).is_dir():
            urls += sorted(glob.glob(os.path.join(item, "*.tar")))
        elif any(c in item for c in "*?["):
            urls += sorted(glob.glob(item))
        else:
            from braceexpand import braceexpand  # noqa: PLC0415 - a dependency of webdataset

            urls += list(braceexpand(item))
    if not urls:
        raise ValueError(f"No tar shard found in {shards} (a folder of .tar files, a glob or a brace pattern).")
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if missing:
        raise ValueError(f"Tar shards do not exist: {missing[:3]}{' ...' if len(missing) > 3 else ''}.")
    return urls


class WebDatasetClips(torch.utils.data.IterableDataset):
    """Clips of this process's shards as ``{"video": [3, F, H, W] in [-1, 1], "caption": str, "name": str}``.

    ``set_epoch(e)`` shuffles the order of this process's shards (``seed + e``; None: in order)."""

    def __init__(self, shards, num_frames: int, height: int, width: int, fps: float | None = None,
                 process_index: int = 0, num_processes: int = 1, video_key: str = "mp4", caption_key: str = "txt",
                 seed: int | None = None, verbose: bool = True):
        try:
            import webdataset  # noqa: F401, PLC0415
        except ImportError as error:
            raise ValueError("Reading WebDataset shards needs the `webdataset` package: pip install "
                             "'diffusers-neodragon[data]' (or pip install webdataset).") from error
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index {process_index} must lie in [0, {num_processes}).")
        urls = shard_urls(shards)
        if len(urls) < num_processes:
            raise ValueError(f"{len(urls)} tar shards for {num_processes} processes: every process needs its own "
                             "shard; write more (smaller) shards.")
        self.all_shards = urls
        self.shards = urls[process_index::num_processes]
        self.num_frames, self.height, self.width, self.fps = num_frames, height, width, fps
        self.video_key, self.caption_key = video_key.lower(), caption_key.lower()
        self.seed, self.epoch, self.verbose = seed, 0, verbose
        self.skipped = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def worker_shards(self) -> list[str]:
        """This process's shards in this epoch's order, cut to this ``DataLoader`` worker's share."""
        shards = list(self.shards)
        if self.seed is not None:
            random.Random(self.seed + self.epoch).shuffle(shards)
        info = torch.utils.data.get_worker_info()
        return shards if info is None else shards[info.id :: info.num_workers]

    def clip(self, sample: dict) -> tuple[dict | None, str | None]:
        """(the clip, None) or (None, why it is skipped) of one tar sample."""
        video, caption = sample.get(self.video_key), sample.get(self.caption_key)
        if video is None or caption is None:
            return None, f"no .{self.video_key if video is None else self.caption_key} file"
        caption = caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
        indices = sample_indices(self.num_frames, video_fps(video), self.fps)
        try:
            frames = read_frame_indices(video, indices)
        except Exception as error:  # noqa: BLE001 - any decoder error means the clip cannot be used
            return None, f"cannot be decoded ({type(error).__name__})"
        if len(frames) < self.num_frames:
            return None, f"{len(frames)} frames, fewer than the {self.num_frames} needed"
        return {"video": frames_to_video(frames, self.height, self.width), "caption": caption.strip(),
                "name": f"{sample.get('__url__', '')}:{sample['__key__']}"}, None

    def __iter__(self):
        yield from self._clips(self.worker_shards())

    def shard_clips(self, number: int):
        """The good clips of tar ``number`` of the whole sorted list (latent extraction writes one shard per tar)."""
        return self._clips([self.all_shards[number]])

    def _clips(self, shards):
        import webdataset as wds  # noqa: PLC0415

        if not shards:
            return
        stream = wds.WebDataset(shards, shardshuffle=False, nodesplitter=None, workersplitter=None,
                                empty_check=False)
        for sample in stream:
            item, problem = self.clip(sample)
            if item is not None:
                yield item
                continue
            name = f"{sample.get('__url__', '')}:{sample.get('__key__')}"
            self.skipped.append((name, problem))
            if self.verbose:
                print(f"[data] skipping {name}: {problem}")

    collate_fn = staticmethod(CaptionedClips.collate_fn)
