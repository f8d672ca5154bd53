"""Strict checks of state dicts and configs, and building a model from a checked state dict.

Nothing is loaded loosely: a ``ValueError`` names every missing, unexpected or mis-shaped tensor, every config entry
a converter does not know, and every tensor stored under two names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from accelerate import init_empty_weights

from .safetensors_folders import format_keys


def expected_layout(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Key → shape of everything ``model.state_dict()`` holds."""
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def check_state_dict(what: str, state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]):
    """Raise a ``ValueError`` naming every missing, unexpected and mis-shaped tensor of ``state_dict``."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs expected {tuple(expected[key])}"
        for key in sorted(expected)
        if key in state_dict and tuple(state_dict[key].shape) != tuple(expected[key])
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {format_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {format_keys(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {format_keys(mismatched)}")
    if problems:
        raise ValueError(f"{what} does not match the expected layout; " + "; ".join(problems) + ".")


def config_entries(config: Mapping[str, Any]) -> dict[str, Any]:
    """Drop bookkeeping entries (``_class_name``, ``_diffusers_version``, ``_use_default_values``, ...)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def check_config_keys(what: str, config: Mapping[str, Any], known: Iterable[str]) -> None:
    """Refuse config entries a converter does not know (a different version of the original code made them)."""
    unknown = sorted(set(config_entries(config)) - set(known))
    if unknown:
        raise ValueError(
            f"{what} config has entries this converter does not know: {unknown}. The checkpoint was made with a "
            "different version of the original code; refusing to guess what they change."
        )


def rename_keys(state: Mapping[str, torch.Tensor], rules, what: str) -> dict[str, torch.Tensor]:
    """Apply ``(compiled regex, replacement)`` renames; a renamed key that collides with one already present is an
    error (the checkpoint holds both spellings)."""
    renamed: dict[str, torch.Tensor] = {}
    collisions = []
    for key, value in state.items():
        new = key
        for pattern, replacement in rules:
            new = pattern.sub(replacement, new)
        if new in renamed or (new != key and new in state):
            collisions.append(f"{key} -> {new}")
        renamed[new] = value
    if collisions:
        raise ValueError(f"The {what} checkpoint holds the same tensor under two names: {format_keys(collisions)}.")
    return renamed


def build_and_load(cls, kwargs: dict[str, Any], state_dict: dict[str, torch.Tensor], what: str, dtype):
    """``cls(**kwargs)`` built without allocating its parameters (``accelerate.init_empty_weights``), the checked
    tensors assigned in place of the empty ones (``load_state_dict(strict=True, assign=True)``), then cast."""
    with init_empty_weights():
        model = cls(**kwargs)
    check_state_dict(what, state_dict, expected_layout(model))
    model.load_state_dict(state_dict, strict=True, assign=True)
    leftovers = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if leftovers:  # defensive: strict loading should have replaced every empty tensor
        raise RuntimeError(f"{what}: tensors {leftovers} were not restored from the checkpoint.")
    # nn.Module.to: ModelMixin.to would warn about fp32-kept modules, of which these classes have none.
    return torch.nn.Module.to(model, dtype=dtype or torch.float32).eval()
