# SPDX-License-Identifier: Apache-2.0
"""A cache of variable-length token features per text, in safetensors shards: what a frozen teacher's text path
gives for a fixed prompt list, computed once and read back by prompt index.

Layout: ``index.json`` (``fingerprint``, ``num_items``, ``shard_size``, ``width``, ``dtype``) and
``shard-00000.safetensors`` … each holding ``tokens`` [sum of lengths, width] (valid tokens only, no padding) and
``offsets`` [n + 1] (item i of the shard is ``tokens[offsets[i]:offsets[i + 1]]``). The fingerprint names what the
features were computed from (teacher, prompts, settings); a cache with another fingerprint is rebuilt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


INDEX = "index.json"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def token_shards_ready(folder: str | os.PathLike, fingerprint: str) -> bool:
    """Whether ``folder`` holds a complete cache made from ``fingerprint``."""
    path = Path(folder) / INDEX
    if not path.is_file():
        return False
    index = json.loads(path.read_text())
    shards = -(-index["num_items"] // index["shard_size"])
    return index.get("fingerprint") == fingerprint and all(
        (Path(folder) / _shard_name(i)).is_file() for i in range(shards))


def write_token_shards(
    folder: str | os.PathLike,
    num_items: int,
    compute: Callable[[Sequence[int]], list[torch.Tensor]],
    fingerprint: str,
    shard_size: int = 4096,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Fill ``folder`` with the features ``compute(indices)`` returns ([length_i, width] each) for items
    ``0 .. num_items - 1``, ``batch_size`` at a time; the index is written last, so a cache interrupted midway is
    never taken for a complete one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INDEX).unlink(missing_ok=True)
    if num_items < 1 or shard_size < 1 or batch_size < 1:
        raise ValueError("`num_items`, `shard_size` and `batch_size` must be positive.")
    width = None
    for shard, start in enumerate(range(0, num_items, shard_size)):
        stop = min(start + shard_size, num_items)
        pieces = []
        for first in range(start, stop, batch_size):
            pieces += [t.detach().to("cpu", dtype) for t in compute(range(first, min(first + batch_size, stop)))]
        if len(pieces) != stop - start or any(p.ndim != 2 for p in pieces):
            raise ValueError("`compute` must return one [length, width] tensor per index.")
        width = pieces[0].shape[1] if width is None else width
        lengths = torch.tensor([0] + [p.shape[0] for p in pieces])
        save_file({"tokens": torch.cat(pieces).contiguous(), "offsets": lengths.cumsum(0)},
                  str(folder / _shard_name(shard)))
    index = {"fingerprint": fingerprint, "num_items": num_items, "shard_size": shard_size, "width": int(width),
             "dtype": str(dtype).removeprefix("torch.")}
    (folder / INDEX).write_text(json.dumps(index, indent=2))
    return folder


class TokenShards:
    """Reads a cache written by :func:`write_token_shards`: ``shards[i]`` -> [length_i, width] (float32)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index_path = self.folder / INDEX
        if not index_path.is_file():
            raise FileNotFoundError(f"{self.folder} holds no token cache ({INDEX} missing).")
        self.index = json.loads(index_path.read_text())
        self._open: dict[int, tuple] = {}

    def __len__(self) -> int:
        return self.index["num_items"]

    def _shard(self, number: int):
        if number not in self._open:
            handle = safe_open(str(self.folder / _shard_name(number)), framework="pt")
            self._open[number] = (handle, handle.get_tensor("offsets").tolist())
        return self._open[number]

    def __getitem__(self, item: int) -> torch.Tensor:
        if not 0 <= item < len(self):
            raise IndexError(f"Item {item} is outside the cache's {len(self)} items.")
        handle, offsets = self._shard(item // self.index["shard_size"])
        local = item % self.index["shard_size"]
        return handle.get_slice("tokens")[offsets[local]:offsets[local + 1]].float()
