# SPDX-License-Identifier: Apache-2.0
"""Encode a captioned video dataset once into latent shards (:mod:`diffusers_neodragon.data.latent_shards`):
normalised VAE latents (as :func:`.latent_cache.encode_videos`) and optionally the text features
(:func:`.prompts.encode_prompts`), ``samples_per_shard`` clips a shard. Process r of n writes shards r, r + n, ...;
shards already on disk are skipped, so an interrupted run resumes; the main process writes ``index.jsonl`` once every
shard is there. From WebDataset tar shards (:class:`~diffusers_neodragon.data.webdataset_clips.WebDatasetClips`)
latent shard i holds the good clips of tar i, so process r reads only its own tars."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from diffusers_neodragon.data.latent_shards import check_settings, shard_name, write_index, write_shard

from .latent_cache import encode_videos, vae_fingerprint
from .prompts import encode_prompts


LATENT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def extraction_settings(dataset, vae, samples_per_shard: int, text_features: bool, max_sequence_length: int,
                        source: str, latent_dtype: str = "float32") -> dict:
    return dict(
        source=str(source), num_samples=len(dataset) if hasattr(dataset, "__len__") else None,
        samples_per_shard=None if hasattr(dataset, "shard_clips") else samples_per_shard,
        num_frames=dataset.num_frames, height=dataset.height, width=dataset.width, fps=dataset.fps,
        text_features=bool(text_features), max_sequence_length=max_sequence_length if text_features else None,
        latent_dtype=latent_dtype, **vae_fingerprint(vae),
    )


@torch.no_grad()
def extract_latent_shards(dataset, vae, folder, *, text_components=None, samples_per_shard: int = 256,
                          batch_size: int = 8, max_sequence_length: int = 128, latent_dtype: str = "float32",
                          source: str = "", process_index: int = 0, num_processes: int = 1, wait=None,
                          show_progress: bool = True) -> dict:
    """Write this process's missing shards of ``dataset`` (a :class:`~diffusers_neodragon.data.captioned_videos.
    CaptionedClips`) to ``folder``; then ``wait()`` (all processes) and the main process writes the index.
    Returns ``{"written": [...], "skipped": [...], "num_shards": n}`` (shard numbers of this process)."""
    from pathlib import Path  # noqa: PLC0415

    folder = Path(folder)
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}.")
    if latent_dtype not in LATENT_DTYPES:
        raise ValueError(f"latent_dtype must be one of {sorted(LATENT_DTYPES)}, got {latent_dtype!r}.")
    settings = extraction_settings(dataset, vae, samples_per_shard, text_components is not None, max_sequence_length,
                                   source, latent_dtype)
    if process_index == 0:
        check_settings(folder, settings)
    if wait is not None:
        wait()
    if process_index != 0:
        check_settings(folder, settings)
    if hasattr(dataset, "shard_clips"):  # WebDataset tar shards: latent shard i holds the clips of input tar i
        num_shards = len(dataset.all_shards)
        mine = list(range(process_index, num_shards, num_processes))
        clips_of = dataset.shard_clips
    else:
        num_shards = math.ceil(len(dataset) / samples_per_shard)
        mine = list(range(process_index, num_shards, num_processes))

        def clips_of(number):
            for i in range(number * samples_per_shard, min((number + 1) * samples_per_shard, len(dataset))):
                yield dataset[i]

    written, skipped = [], []
    for number in tqdm(mine, desc="Extracting latents", disable=not show_progress):
        if (folder / shard_name(number)).is_file():
            skipped.append(number)
            continue
        out, captions, names = encode_clips(clips_of(number), dataset.collate_fn, vae, text_components, batch_size,
                                            max_sequence_length, LATENT_DTYPES[latent_dtype])
        write_shard(folder, number, out, captions, names)
        written.append(number)
    if wait is not None:
        wait()
    if process_index == 0:
        write_index(folder, num_shards)
    return {"written": written, "skipped": skipped, "num_shards": num_shards}


@torch.no_grad()
def encode_clips(clips, collate_fn, vae, text_components, batch_size: int, max_sequence_length: int,
                 latent_dtype: torch.dtype) -> tuple[dict, list[str], list[str]]:
    """The tensors of one shard (latents, and text features when ``text_components`` are given), its captions and
    clip names, from an iterable of clips encoded ``batch_size`` at a time (none: no tensors)."""
    tensors = {k: [] for k in ("latents", "prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds")}
    captions, names, pending = [], [], []

    def flush():
        batch = collate_fn(pending)
        tensors["latents"].append(encode_videos(vae, batch["video"]).to(latent_dtype).cpu())
        if text_components is not None:
            embeds, mask, pooled = encode_prompts(text_components, batch["caption"], vae.device, max_sequence_length)
            tensors["prompt_embeds"].append(embeds.cpu())
            tensors["prompt_attention_mask"].append(mask.cpu())
            tensors["pooled_prompt_embeds"].append(pooled.cpu())
        captions.extend(batch["caption"])
        names.extend(batch["name"])
        pending.clear()

    for clip in clips:
        pending.append(clip)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    out = {k: torch.cat(v) for k, v in tensors.items() if v}
    if "prompt_embeds" in out:  # trim the common padding of this shard (masked tokens)
        keep = max(int(out["prompt_attention_mask"].sum(1).max()), 1)
        out["prompt_embeds"] = out["prompt_embeds"][:, :keep]
        out["prompt_attention_mask"] = out["prompt_attention_mask"][:, :keep]
    return out, captions, names
