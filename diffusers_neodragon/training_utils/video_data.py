# SPDX-License-Identifier: Apache-2.0
"""The real-data arguments every video training script shares: a video folder with a metadata file, or a
``datasets`` dataset, read on the fly (:mod:`diffusers_neodragon.data.captioned_videos`), or a folder of latent
shards written by ``training/extract_latents.py`` (``--latents_dir``)."""

from __future__ import annotations


def add_video_data_arguments(parser, latents: bool = True, webdataset: bool = False) -> None:
    """The data options; ``webdataset``: also --webdataset (streamed: for scripts that read clips once in order,
    such as training/extract_latents.py)."""
    group = parser.add_argument_group("Real data (default: the Shapes world)")
    group.add_argument("--video_folder", type=str, default=None,
                       help="A folder of videos; --metadata lists them with their captions.")
    group.add_argument("--metadata", type=str, default=None,
                       help="CSV or JSONL with columns file (relative to --video_folder), caption, optional fps "
                            "(overrides the file's) and start (seconds); default: VIDEO_FOLDER/metadata.jsonl "
                            "or .csv.")
    group.add_argument("--dataset_name", type=str, default=None,
                       help="A `datasets` dataset (save_to_disk folder, local data files or Hub id) with video "
                            "(path or bytes) and caption columns.")
    if webdataset:
        group.add_argument("--webdataset", type=str, default=None,
                           help="WebDataset tar shards (a folder, glob or brace pattern; <key>.mp4 + <key>.txt per "
                                "sample): each process reads its own shards.")
    group.add_argument("--dataset_split", type=str, default="train")
    group.add_argument("--video_column", type=str, default="video")
    group.add_argument("--caption_column", type=str, default="caption")
    group.add_argument("--fps", type=float, default=None,
                       help="Sample frames at this rate (default: consecutive source frames).")
    if latents:
        group.add_argument("--latents_dir", type=str, default=None,
                           help="Train from latent shards written by training/extract_latents.py (no decoding).")


def real_data_source(args) -> str | None:
    """A one-line description of the real data given (None: none, the Shapes world)."""
    names = ("latents_dir", "video_folder", "dataset_name", "webdataset")
    given = [name for name in names if getattr(args, name, None)]
    if len(given) > 1:
        raise ValueError(f"Give one data source, got {', '.join('--' + g for g in given)}.")
    if getattr(args, "metadata", None) and not getattr(args, "video_folder", None):
        raise ValueError("--metadata needs --video_folder.")
    if not given:
        return None
    return f"{given[0]}={getattr(args, given[0])}" + (f" fps={args.fps:g}" if getattr(args, "fps", None) else "")


def video_dataset_from_args(args, verbose: bool = True, captions: bool = True, num_frames: int | None = None,
                            process_index: int = 0, num_processes: int = 1):
    """The captioned clips of --video_folder/--metadata or --dataset_name at --num_frames (or ``num_frames``),
    --height x --width. ``captions=False`` (the VAE): a folder without a metadata file gives all its videos and a
    dataset without the caption column is read, both with empty captions."""
    from pathlib import Path  # noqa: PLC0415

    from diffusers_neodragon.data.captioned_videos import CaptionedVideoFolder, CaptionedVideoTable  # noqa: PLC0415

    num_frames = num_frames or args.num_frames
    if args.video_folder:
        metadata = args.metadata
        if metadata is None:
            found = [Path(args.video_folder) / n for n in ("metadata.jsonl", "metadata.csv")]
            found = [p for p in found if p.is_file()]
            if not found and captions:
                raise ValueError(f"{args.video_folder} has no metadata.jsonl / metadata.csv: pass --metadata.")
            metadata = found[0] if found else None
        return CaptionedVideoFolder(args.video_folder, metadata, num_frames, args.height, args.width,
                                    fps=args.fps, verbose=verbose)
    if getattr(args, "webdataset", None):
        from diffusers_neodragon.data.webdataset_clips import WebDatasetClips  # noqa: PLC0415

        return WebDatasetClips(args.webdataset, num_frames, args.height, args.width, fps=args.fps,
                               process_index=process_index, num_processes=num_processes, verbose=verbose)
    if args.dataset_name:
        return CaptionedVideoTable(args.dataset_name, num_frames, args.height, args.width, fps=args.fps,
                                   split=args.dataset_split, video_column=args.video_column,
                                   caption_column=args.caption_column, verbose=verbose, captions=captions)
    raise ValueError("Give --video_folder (with --metadata), --dataset_name or --webdataset.")
