# SPDX-License-Identifier: Apache-2.0
"""Small argument helpers of the training scripts: resolutions, integer lists, the command line of a run."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence


def parse_resolution(value: str | int | Sequence[int]) -> tuple[int, int]:
    """``128`` -> (128, 128); ``"64x128"`` -> height 64, width 128."""
    if isinstance(value, (tuple, list)):
        height, width = (int(v) for v in value)
    elif isinstance(value, int):
        height = width = value
    else:
        parts = re.split(r"[x,]", str(value).lower().strip())
        if len(parts) == 1:
            height = width = int(parts[0])
        elif len(parts) == 2:
            height, width = int(parts[0]), int(parts[1])
        else:
            raise ValueError(f"A resolution is `N` or `HxW`, got {value!r}.")
    if height < 1 or width < 1:
        raise ValueError(f"A resolution must be positive, got {value!r}.")
    return height, width


def parse_int_list(value: str | Sequence[int]) -> tuple[int, ...]:
    """``"32,64,64"`` -> (32, 64, 64)."""
    if isinstance(value, str):
        return tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    return tuple(int(v) for v in value)


def training_command(script: str, argv: Sequence[str] | None) -> str:
    """The command line that reproduces a run (``accelerate launch <script> <args>``), the ``--hub_token`` value
    masked (the command goes into a model card that may be published)."""
    words = list(argv or [])
    shown = []
    for index, word in enumerate(words):
        if index and words[index - 1] == "--hub_token":
            shown.append("***")
        else:
            shown.append("--hub_token=***" if word.startswith("--hub_token=") else word)
    return "accelerate launch " + shlex.join([script, *shown])
