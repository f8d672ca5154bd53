"""Latent shards: a dataset encoded once (``training/extract_latents.py``) so that training never decodes or
re-encodes videos, the way Pyramid-Flow's real-scale runs train.

Layout of a latents folder::

    settings.json             what the latents depend on (frames, size, fps, the VAE's fingerprint, text features)
    shards/00000.safetensors  ``latents`` [n, C, T, h, w] (normalised), optionally ``prompt_embeds`` [n, L, D],
                              ``prompt_attention_mask`` [n, L], ``pooled_prompt_embeds`` [n, P]; captions and clip
                              names in the safetensors metadata
    index.jsonl               one line per sample: {"shard", "index", "caption", "name"} (written last)

Shards are written atomically (a temporary name, then a rename), so a shard file that exists is complete and an
interrupted extraction resumes by skipping the shards already there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


SETTINGS = "settings.json"
INDEX = "index.jsonl"
TEXT_KEYS = ("prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds")


def shard_name(number: int) -> str:
    return f"shards/{number:05d}.safetensors"


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_shard(folder, number: int, tensors: dict, captions: list[str], names: list[str]) -> Path:
    """Write shard ``number`` (temporary name, then rename: a shard that exists is whole)."""
    path = Path(folder) / shard_name(number)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    metadata = {"captions": json.dumps(list(captions)), "names": json.dumps(list(names))}
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def check_settings(folder, settings: dict) -> None:
    """Record ``settings`` in a new folder; refuse a folder made with other settings (resuming it would mix
    latents of two VAEs or sizes)."""
    path = Path(folder) / SETTINGS
    if path.is_file():
        found = json.loads(path.read_text(encoding="utf-8"))
        if found != json.loads(json.dumps(settings)):
            changed = sorted(k for k in set(found) | set(settings) if found.get(k) != settings.get(k))
            raise ValueError(f"{folder} holds latents made with other settings ({', '.join(changed)} differ): give "
                             "another --output_dir or the same settings to resume.")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=1, sort_keys=True))


def write_index(folder, num_shards: int) -> Path:
    """index.jsonl from the shards' metadata; every shard must be there."""
    folder = Path(folder)
    lines = []
    for number in range(num_shards):
        path = folder / shard_name(number)
        if not path.is_file():
            raise ValueError(f"Shard {path} is missing: run the extraction again to finish it.")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        for i, (caption, name) in enumerate(zip(json.loads(meta["captions"]), json.loads(meta["names"]))):
            lines.append(json.dumps({"shard": shard_name(number), "index": i, "caption": caption, "name": name}))
    atomic_write_text(folder / INDEX, "\n".join(lines) + "\n")
    return folder / INDEX


class LatentShards:
    """A finished latents folder: its settings, its samples (``index.jsonl`` order) and their tensors."""

    def __init__(self, folder):
        self.folder = Path(folder)
        index = self.folder / INDEX
        if not index.is_file():
            raise ValueError(f"{self.folder} has no {INDEX}: give a folder written by training/extract_latents.py "
                             "(an unfinished extraction writes it when it completes).")
        self.settings = json.loads((self.folder / SETTINGS).read_text(encoding="utf-8"))
        self.samples = [json.loads(line) for line in index.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not self.samples:
            raise ValueError(f"{index} lists no sample.")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def captions(self) -> list[str]:
        return [s["caption"] for s in self.samples]

    @property
    def has_text_features(self) -> bool:
        return bool(self.settings.get("text_features"))

    def load(self) -> dict:
        """All samples' tensors in index order: ``latents`` [N, C, T, h, w] and, when extracted, the text features
        (token features padded with masked zeros to the longest shard's length)."""
        shards = {}
        for sample in self.samples:
            if sample["shard"] not in shards:
                with safe_open(str(self.folder / sample["shard"]), framework="pt") as f:
                    shards[sample["shard"]] = {k: f.get_tensor(k) for k in f.keys()}
        keys = ["latents", *(TEXT_KEYS if self.has_text_features else ())]
        length = max((s["prompt_embeds"].shape[1] for s in shards.values()), default=0) if self.has_text_features \
            else 0
        out = {}
        for key in keys:
            rows = [shards[s["shard"]][key][s["index"]] for s in self.samples]
            if key in ("prompt_embeds", "prompt_attention_mask"):
                rows = [torch.nn.functional.pad(r, (0, 0, 0, length - r.shape[0]) if r.ndim == 2
                                                else (0, length - r.shape[0])) for r in rows]
            out[key] = torch.stack(rows)
        return out
