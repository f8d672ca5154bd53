"""The official ContextAdapter (``SkipMLP``: ``network_layers.*`` tensors, ``input_dims``/``layer_depths`` config)
→ :class:`ContextAdapter`. The model knows nothing of this layout; the mapping lives here."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..models.context_adapter import ContextAdapter
from .safetensors_folders import load_safetensors_folder, read_json
from .state_dict_checks import build_and_load, check_config_keys


_OFFICIAL_KEY = re.compile(r"^network_layers\.(\d+)\.(\d+)\.(weight|bias)$")


def convert_official_context_adapter_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Rename an official Neodragon ``ContextAdapter`` (``SkipMLP``) state dict to this class's keys.

    The official layout is ``network_layers.{k}.1.{weight,bias}`` for the ``n`` hidden layers (index 1 of each
    ``[pre-act, Linear, act]`` Sequential) and ``network_layers.{n}.0.{weight,bias}`` for the output layer. The number
    of hidden layers is read from the keys. Raises ``ValueError`` naming every missing and unexpected key.
    """
    indices = [int(m.group(1)) for m in map(_OFFICIAL_KEY.match, state_dict) if m is not None]
    if not indices:
        raise ValueError(
            "No official ContextAdapter keys (`network_layers.{k}.{i}.{weight,bias}`) found; got keys "
            f"{sorted(state_dict)[:8]}{' ...' if len(state_dict) > 8 else ''}."
        )
    num_hidden = max(indices)
    mapping = {}
    for k in range(num_hidden):
        for p in ("weight", "bias"):
            mapping[f"network_layers.{k}.1.{p}"] = f"layers.{k}.{p}"
    for p in ("weight", "bias"):
        mapping[f"network_layers.{num_hidden}.0.{p}"] = f"proj_out.{p}"

    missing = sorted(set(mapping) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(mapping))
    if missing or unexpected:
        raise ValueError(
            "State dict does not match the official ContextAdapter layout "
            f"({num_hidden} hidden layers inferred): missing keys {missing}, unexpected keys {unexpected}."
        )
    return {mapping[key]: value for key, value in state_dict.items()}


def convert_official_context_adapter_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Translate an official ``SkipMLP`` config (``input_dims``, ``output_dims``, ``layer_depths``, …) into this
    class's ``__init__`` arguments; raises ``ValueError`` for official settings this class does not implement."""
    defaults = {
        "skips": None,
        "use_biases": True,
        "pre_activation": False,
        "out_activation_fn": "linear",
    }
    settings = {**defaults, **{k: v for k, v in config.items() if k in defaults}}
    layer_depths: tuple[int, ...] = tuple(config.get("layer_depths", (4096, 4096, 4096, 4096)))
    unsupported = []
    if settings["skips"] is not None and not all(settings["skips"]):
        unsupported.append(f"skips={settings['skips']} (only all-True is supported)")
    if not settings["use_biases"]:
        unsupported.append("use_biases=False")
    if settings["pre_activation"]:
        unsupported.append("pre_activation=True")
    if str(settings["out_activation_fn"]).lower() != "linear":
        unsupported.append(f"out_activation_fn={settings['out_activation_fn']!r} (only 'linear')")
    if unsupported:
        raise ValueError(f"Official ContextAdapter config uses unsupported settings: {', '.join(unsupported)}.")
    return {
        "in_features": int(config.get("input_dims", 4096)),
        "out_features": int(config.get("output_dims", 1536)),
        "hidden_features": layer_depths,
        "activation": str(config.get("activation_fn", "gelu")).lower(),
    }


_ADAPTER_KEYS = ("input_dims", "output_dims", "layer_depths", "skips", "use_biases", "pre_activation",
                 "activation_fn", "out_activation_fn")


def load_official_context_adapter(folder: os.PathLike, dtype: torch.dtype | None = None) -> ContextAdapter:
    """Load an official ``context_adapter*/`` folder (``SkipMLP`` config and ``network_layers.*`` tensors)."""
    folder = Path(folder)
    config = read_json(folder / "config.json")
    check_config_keys("ContextAdapter", config, _ADAPTER_KEYS)
    kwargs = convert_official_context_adapter_config(config)
    skips = config.get("skips")
    if skips is not None and len(skips) != len(kwargs["hidden_features"]):
        raise ValueError(
            f"ContextAdapter config: {len(skips)} skips for {len(kwargs['hidden_features'])} layer depths."
        )
    state = convert_official_context_adapter_state_dict(load_safetensors_folder(folder))
    return build_and_load(ContextAdapter, kwargs, state, f"ContextAdapter checkpoint {folder}", dtype)
