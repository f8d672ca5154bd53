#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""Encode a captioned video dataset once into latent shards, so that training reads latents instead of videos.

Input: ``--video_folder`` with ``--metadata`` (CSV/JSONL: file, caption, optional fps, start), ``--dataset_name`` (a
``datasets`` dataset with video and caption columns) or ``--webdataset`` (tar shards, ``<key>.mp4`` + ``<key>.txt``;
latent shard i holds tar i's clips, so each process reads only its own tars), sampled to ``--num_frames`` at
``--fps`` and resized and centre-cropped to ``--resolution``; broken or short clips are skipped with a message. The
VAE (and with ``--text_features`` the text encoders) come from ``--pretrained_model_name_or_path`` (a pipeline
folder) or ``--vae_path``. Output (``diffusers_neodragon.data.latent_shards``): ``shards/*.safetensors`` (normalised
latents, optionally T5 token features, mask and pooled CLIP vector), ``index.jsonl`` (shard, index, caption per
sample) and ``settings.json``. Shards are written atomically; running the same command again resumes (written shards
are skipped); with ``accelerate launch`` each process writes every n-th shard.

    accelerate launch training/extract_latents.py --pretrained_model_name_or_path runs/shapes-base \\
        --video_folder clips --metadata clips/metadata.csv --num_frames 49 --resolution 128 --fps 8 \\
        --text_features --output_dir latents/clips
    accelerate launch training/train_pyramidal_flow.py --pretrained_model_name_or_path runs/shapes-base \\
        --latents_dir latents/clips --output_dir runs/finetuned ...
"""

from __future__ import annotations

import argparse
import json

import torch
from accelerate import Accelerator

from diffusers_neodragon.training_utils import load_vae_folder, parse_resolution
from diffusers_neodragon.training_utils.latent_extraction import LATENT_DTYPES, extract_latent_shards
from diffusers_neodragon.training_utils.prompts import TEXT_MODULE_NAMES, load_text_components
from diffusers_neodragon.training_utils.video_data import (
    add_video_data_arguments,
    real_data_source,
    video_dataset_from_args,
)


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Encode a video dataset into latent shards.")
    parser.add_argument("--pretrained_model_name_or_path", type=str, default=None,
                        help="A pipeline folder: its vae (and with --text_features its text encoders).")
    parser.add_argument("--vae_path", type=str, default=None, help="A VAE folder (default: the pipeline's).")
    parser.add_argument("--text_encoders_path", type=str, default=None,
                        help="Folder with text_encoder(_2,_3) + tokenizer(_2,_3) (default: the pipeline's).")
    parser.add_argument("--text_features", action="store_true",
                        help="Also store the text encoders' features (T5 tokens + mask, pooled CLIP).")
    parser.add_argument("--max_sequence_length", type=int, default=64,
                        help="T5 tokens; the training scripts default to 64 too and must use the same value.")
    parser.add_argument("--output_dir", type=str, required=True)
    parser.add_argument("--resolution", type=str, default="128", help="`N` or `HxW`.")
    parser.add_argument("--num_frames", type=int, default=49, help="1 + 8k frames.")
    parser.add_argument("--samples_per_shard", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--latent_dtype", type=str, default="float32", choices=sorted(LATENT_DTYPES))
    add_video_data_arguments(parser, latents=False, webdataset=True)
    args = parser.parse_args(input_args)
    args.height, args.width = parse_resolution(args.resolution)
    if args.num_frames < 1 or (args.num_frames - 1) % 8:
        raise ValueError(f"--num_frames must be 1 + 8k, got {args.num_frames}.")
    if not (args.vae_path or args.pretrained_model_name_or_path):
        raise ValueError("Give --pretrained_model_name_or_path (a pipeline folder) or --vae_path.")
    if args.text_features and not (args.text_encoders_path or args.pretrained_model_name_or_path):
        raise ValueError("--text_features needs --pretrained_model_name_or_path or --text_encoders_path.")
    args.data_source = real_data_source(args)
    if args.data_source is None:
        raise ValueError("Give --video_folder (with --metadata), --dataset_name or --webdataset.")
    return args


def main(args) -> dict:
    accelerator = Accelerator()
    vae = load_vae_folder(args.vae_path or args.pretrained_model_name_or_path, torch.float32)
    vae = vae.to(accelerator.device).eval().requires_grad_(False)
    text_components = None
    if args.text_features:
        text_components = load_text_components(args.text_encoders_path or args.pretrained_model_name_or_path)
        for name in TEXT_MODULE_NAMES:
            if text_components.get(name) is not None:
                text_components[name].to(accelerator.device)
    dataset = video_dataset_from_args(args, verbose=accelerator.is_main_process,
                                      process_index=accelerator.process_index, num_processes=accelerator.num_processes)
    result = extract_latent_shards(
        dataset, vae, args.output_dir, text_components=text_components, samples_per_shard=args.samples_per_shard,
        batch_size=args.batch_size, max_sequence_length=args.max_sequence_length, latent_dtype=args.latent_dtype,
        source=args.data_source, process_index=accelerator.process_index, num_processes=accelerator.num_processes,
        wait=accelerator.wait_for_everyone, show_progress=accelerator.is_local_main_process,
    )
    count = len(dataset) if hasattr(dataset, "__len__") else None  # a tar stream: this process's skips only
    result.update(num_samples=count, skipped_clips=[list(s) for s in dataset.skipped])
    if accelerator.is_main_process:
        print(f"[extract_latents] {count if count is not None else 'the'} clips in {result['num_shards']} shards -> "
              f"{args.output_dir} ({len(dataset.skipped)} clips skipped{'' if count is not None else ' here'})")
        print(json.dumps({k: result[k] for k in ("written", "skipped")}))
    accelerator.end_training()
    return result


if __name__ == "__main__":
    main(parse_args())
