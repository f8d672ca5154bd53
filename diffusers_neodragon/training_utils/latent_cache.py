# SPDX-License-Identifier: Apache-2.0
"""The Shapes training set encoded once: normalised latents, object masks and a text-feature table per distinct
caption, sharded over processes, optionally kept in a safetensors file keyed by the data settings and the VAE.
Shared by the scripts that train on Shapes latents (``train_pyramidal_flow.py``, ``distill_pyramidal_dmd.py``).

``args`` needs ``train_samples``, ``num_frames``, ``height``, ``width``, ``seed``, ``max_sequence_length``,
``encode_batch_size``, ``dataloader_num_workers`` and ``latent_cache_path``.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from accelerate.utils import gather_object
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .losses import latent_foreground_mask
from .prompts import encode_prompts


def shapes_dataset(num_samples, num_frames, height, width, seed, split="train"):
    from diffusers_neodragon.data.shapes import ShapesVideoDataset  # noqa: PLC0415

    return ShapesVideoDataset(num_samples, num_frames=num_frames, height=height, width=width, seed=seed, split=split)


class CachedLatents:
    """Normalised latents of the whole training set plus a table of text features per distinct caption.

    ``latents`` [N, C, T, h, w]; ``foreground`` [N, 1, T, h, w] (uint8, the objects' latent cells);
    ``caption_ids`` [N] index ``embeds`` [K, L, D] / ``mask`` [K, L] / ``pooled``
    [K, P], whose row 0 is the empty caption (the CFG-dropout replacement).
    """

    def __init__(self, latents, foreground, captions, caption_ids, embeds, mask, pooled):
        self.latents, self.foreground, self.captions, self.caption_ids = latents, foreground, captions, caption_ids
        self.embeds, self.mask, self.pooled = embeds, mask, pooled

    def to(self, device):
        for name in ("latents", "foreground", "caption_ids", "embeds", "mask", "pooled"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def cache_metadata(args, vae) -> dict:
    """What the cached latents depend on: the data settings and the VAE (its config and a hash of its weights, so
    that a retrained VAE with the same config never reuses stale latents)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return dict(
        train_samples=args.train_samples, num_frames=args.num_frames, height=args.height, width=args.width,
        seed=args.seed, max_sequence_length=args.max_sequence_length,
        vae=json.dumps(dict(vae.config), sort_keys=True, default=str), vae_weights_sha256=digest.hexdigest(),
    )


@torch.no_grad()
def encode_videos(vae, videos: torch.Tensor) -> torch.Tensor:
    """Clean normalised latents (posterior mean) of videos [B, 3, F, H, W] in [-1, 1]."""
    raw = vae.encode(videos.to(device=vae.device, dtype=vae.dtype)).latent_dist.mode()
    return vae.normalize_latents(raw.float())


@torch.no_grad()
def text_table(text_components, captions, device, max_sequence_length):
    """Distinct captions -> (ids per caption, embeds, mask, pooled), row 0 = "", trimmed to the longest caption."""
    distinct = [""] + sorted(set(captions) - {""})
    index = {c: i for i, c in enumerate(distinct)}
    embeds, mask, pooled = [], [], []
    for start in range(0, len(distinct), 256):
        e, m, p = encode_prompts(text_components, distinct[start : start + 256], device, max_sequence_length)
        embeds.append(e), mask.append(m), pooled.append(p)
    embeds, mask, pooled = torch.cat(embeds), torch.cat(mask), torch.cat(pooled)
    keep = max(int(mask.sum(1).max()), 1)
    ids = torch.tensor([index[c] for c in captions], dtype=torch.long)
    return ids, embeds[:, :keep].contiguous(), mask[:, :keep].contiguous(), pooled


def build_latent_cache(args, vae, text_components, accelerator) -> CachedLatents:
    """Encode the training set once, each process a contiguous shard, gathered in order (or load it from
    ``--latent_cache_path``). Every process checks the file before any encoding starts and only the main process
    writes it after the gather, so no process reads a half-written file."""
    path = Path(args.latent_cache_path) if args.latent_cache_path else None
    metadata = cache_metadata(args, vae)
    latents = foreground = captions = None
    if path is not None and path.is_file():
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if json.loads(header.get("settings", "null")) == metadata and "foreground" in f.keys():
                accelerator.print(f"Loaded the latent cache {path}")
                latents, foreground = f.get_tensor("latents"), f.get_tensor("foreground")
                captions = json.loads(header["captions"])
            else:
                accelerator.print(f"{path} was made with other settings: rebuilding it.")
    if latents is None:
        latents, foreground, captions = encode_training_set(args, vae, accelerator)
        if path is not None and accelerator.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            header = {"settings": json.dumps(metadata), "captions": json.dumps(captions)}
            save_file({"latents": latents.contiguous(), "foreground": foreground.contiguous()}, str(path),
                      metadata=header)
    ids, embeds, mask, pooled = text_table(text_components, captions, accelerator.device, args.max_sequence_length)
    return CachedLatents(latents, foreground, captions, ids, embeds, mask, pooled).to(accelerator.device)


def video_foreground(vae, videos: torch.Tensor) -> torch.Tensor:
    """The objects' cells on the VAE's latent grid [B, 1, T, h, w] (uint8) of videos [B, 3, F, H, W]."""
    mask = latent_foreground_mask(
        videos.to(vae.device), vae.config.temporal_downsample_scale, vae.config.spatial_downsample_scale
    )
    return mask.to(torch.uint8)


def shard_indices(total: int, accelerator) -> list[int]:
    """This process's contiguous shard of ``range(total)``, the last index repeated to an equal length, so that the
    gathered shards are the set in order (cut back to ``total``)."""
    shard = math.ceil(total / accelerator.num_processes)
    start = accelerator.process_index * shard
    return [min(i, total - 1) for i in range(start, start + shard)]


def encode_training_set(args, vae, accelerator) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Latents [N, C, T, h, w], object masks [N, 1, T, h, w] (both on the CPU) and captions of the whole training
    set. Process r encodes the contiguous shard r (the last index repeated to an equal length), so the gathered
    shards are the set in order."""
    dataset = shapes_dataset(
        args.train_samples, args.num_frames, args.height, args.width, args.seed, "train"
    )
    total = len(dataset)
    indices = shard_indices(total, accelerator)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=args.encode_batch_size, shuffle=False,
        num_workers=args.dataloader_num_workers, collate_fn=dataset.collate_fn,
    )
    latents, foreground, captions = [], [], []
    for batch in tqdm(loader, desc="Caching latents", disable=not accelerator.is_local_main_process):
        latents.append(encode_videos(vae, batch["video"]))
        foreground.append(video_foreground(vae, batch["video"]))
        captions += batch["caption"]
    latents, foreground = torch.cat(latents), torch.cat(foreground)
    if accelerator.num_processes > 1:
        latents, foreground = accelerator.gather(latents), accelerator.gather(foreground)
        captions = gather_object(captions)
    return latents[:total].cpu(), foreground[:total].cpu(), list(captions[:total])

