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
import os
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

    ``latents`` [N, C, T, h, w]; ``foreground`` [N, 1, T, h, w] (uint8, the objects' latent cells; None for
    latent shards of real footage);
    ``caption_ids`` [N] index ``embeds`` [K, L, D] / ``mask`` [K, L] / ``pooled``
    [K, P], whose row 0 is the empty caption (the CFG-dropout replacement).
    """

    def __init__(self, latents, foreground, captions, caption_ids, embeds, mask, pooled):
        self.latents, self.foreground, self.captions, self.caption_ids = latents, foreground, captions, caption_ids
        self.embeds, self.mask, self.pooled = embeds, mask, pooled

    def to(self, device):
        for name in ("latents", "foreground", "caption_ids", "embeds", "mask", "pooled"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device))
        return self


def cache_metadata(args, vae) -> dict:
    """What the cached latents depend on: the data settings and the VAE (its config and a hash of its weights, so
    that a retrained VAE with the same config never reuses stale latents)."""
    return dict(
        train_samples=args.train_samples, num_frames=args.num_frames, height=args.height, width=args.width,
        seed=args.seed, max_sequence_length=args.max_sequence_length,
        **vae_fingerprint(vae), **({"data": args.data_source} if getattr(args, "data_source", None) else {}),
    )


def vae_fingerprint(vae) -> dict:
    """The VAE's config and a hash of its weights: latents made by another VAE are never reused."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    # the config without its bookkeeping (``_name_or_path`` is the folder it came from: the same VAE saved into the
    # next run's folder must still match)
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    return dict(vae=json.dumps(config, sort_keys=True, default=str), vae_weights_sha256=digest.hexdigest())


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


def build_latent_cache(args, vae, text_components, accelerator, dataset=None) -> CachedLatents:
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
        latents, foreground, captions = encode_training_set(args, vae, accelerator, dataset)
        if path is not None and accelerator.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            header = {"settings": json.dumps(metadata), "captions": json.dumps(captions)}
            partial = path.with_name(path.name + ".partial")  # renamed when complete: readers never see half
            save_file({"latents": latents.contiguous(), "foreground": foreground.contiguous()}, str(partial),
                      metadata=header)
            os.replace(partial, path)
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


def encode_training_set(args, vae, accelerator, dataset=None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Latents [N, C, T, h, w], object masks [N, 1, T, h, w] (both on the CPU) and captions of the whole training
    set. Process r encodes the contiguous shard r (the last index repeated to an equal length), so the gathered
    shards are the set in order. ``dataset`` (default: the Shapes training set) yields ``video`` and ``caption`` and
    has a ``collate_fn``."""
    if dataset is None:
        dataset = shapes_dataset(args.train_samples, args.num_frames, args.height, args.width, args.seed, "train")
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



def latents_from_shards(folder, text_components, device, max_sequence_length, vae=None) -> CachedLatents:
    """A finished ``training/extract_latents.py`` folder as :class:`CachedLatents` (no object masks). Stored text
    features are used when the shards hold them (row 0 of the table, the empty caption, is encoded here), else the
    captions are encoded now; ``vae`` (optional) is checked against the one that made the latents."""
    from diffusers_neodragon.data.latent_shards import LatentShards  # noqa: PLC0415

    shards = LatentShards(folder)
    if vae is not None and shards.settings.get("vae_weights_sha256") != vae_fingerprint(vae)["vae_weights_sha256"]:
        raise ValueError(f"{folder} was extracted with another VAE than this run's: extract it again with this "
                         "pipeline's VAE (training/extract_latents.py).")
    tensors = shards.load()
    captions = shards.captions
    if not shards.has_text_features:
        ids, embeds, mask, pooled = text_table(text_components, captions, device, max_sequence_length)
        return CachedLatents(tensors["latents"], None, captions, ids, embeds, mask, pooled).to(device)
    if shards.settings.get("max_sequence_length") != max_sequence_length:
        raise ValueError(f"{folder}'s text features were made with max_sequence_length "
                         f"{shards.settings.get('max_sequence_length')}, this run uses {max_sequence_length}: pass "
                         "the same --max_sequence_length or extract again.")
    with torch.no_grad():
        empty = encode_prompts(text_components, [""], device, max_sequence_length)
    stored = [tensors[k] for k in ("prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds")]
    if stored[0].shape[-1] != empty[0].shape[-1] or stored[2].shape[-1] != empty[2].shape[-1]:
        raise ValueError(f"{folder}'s text features (width {stored[0].shape[-1]}, pooled {stored[2].shape[-1]}) do not "
                         "come from this run's text encoders: extract again with them, or without --text_features.")
    keep = max(int(stored[1].sum(1).max()), int(empty[1].sum()), 1)

    def fit(tensor, length):
        pad = [0, 0] * (tensor.ndim - 2) + [0, max(0, length - tensor.shape[1])]
        return torch.nn.functional.pad(tensor, pad)[:, :length]

    embeds = torch.cat([fit(empty[0].cpu().float(), keep), fit(stored[0].float(), keep)])
    mask = torch.cat([fit(empty[1].cpu(), keep), fit(stored[1].to(empty[1].dtype), keep)])
    pooled = torch.cat([empty[2].cpu().float(), stored[2].float()])
    ids = torch.arange(1, len(captions) + 1)
    return CachedLatents(tensors["latents"].float(), None, captions, ids, embeds, mask, pooled).to(device)


def check_latent_shape(latents, vae, args) -> None:
    """Latent shards must be of this run's --num_frames and --resolution (``args.latents_dir`` names the folder)."""
    spatial, temporal = vae.config.spatial_downsample_scale, vae.config.temporal_downsample_scale
    expected = ((args.num_frames - 1) // temporal + 1, args.height // spatial, args.width // spatial)
    if tuple(latents.shape[2:]) != expected:
        raise ValueError(f"{args.latents_dir} holds latents of shape {tuple(latents.shape[2:])} (T, h, w); "
                         f"--num_frames {args.num_frames} --resolution {args.height}x{args.width} needs {expected}: "
                         "pass the settings of the extraction (its settings.json).")
