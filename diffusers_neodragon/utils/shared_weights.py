"""Weights two models have in common, held once.

The hybrid pipeline's first-frame SSD-1B and its video DiT read the prompt with the same frozen CLIP-L and CLIP-G
(every model that uses them ships the same weights), and the release stores each twice: 1.3 GiB of a full-size
pipeline's GPU memory in bfloat16. Sharing storage rather than modules keeps each model's own config and forward
(SDXL's ``CLIPTextModel`` beside our ``CLIPTextModelWithProjection``), so nothing they compute changes."""

import torch
from torch import nn


def share_equal_tensors(source: nn.Module, target: nn.Module) -> int:
    """Point every parameter and buffer of ``target`` that has a namesake in ``source`` with the same shape, dtype,
    device and values at ``source``'s tensor. Returns the bytes no longer held twice.

    A namesake has the same qualified name up to a wrapper's prefix (``text_model.encoder...`` in a
    ``CLIPTextModelWithProjection`` and ``encoder...`` in transformers 5's ``CLIPTextModel``), and only a unique one
    counts. Values are compared exactly, so a model whose weights differ (fine-tuned, quantised differently, another
    checkpoint) keeps its own; tensors not yet materialised (meta) are left alone. Later ``to()`` calls move the
    shared tensors once for both models; a weight changed in place (training, fusing an adapter) changes in both."""
    named = {"_parameters": dict(source.named_parameters(remove_duplicate=False)),
             "_buffers": dict(source.named_buffers(remove_duplicate=False))}
    saved = 0
    for module_name, module in target.named_modules(remove_duplicate=False):
        for kind, tensors in named.items():
            slots = getattr(module, kind)
            for key, tensor in list(slots.items()):
                mine = _namesake(f"{module_name}.{key}" if module_name else key, tensors)
                if tensor is None or mine is None or mine is tensor or not _same_values(mine, tensor):
                    continue
                slots[key] = mine
                saved += tensor.numel() * tensor.element_size()
    return saved


def _namesake(name: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """``tensors[name]``, else the one entry whose name is ``name`` under a prefix or a suffix of ``name``."""
    if name in tensors:
        return tensors[name]
    parts = name.split(".")
    found = {k for k in tensors if k.endswith("." + name)}
    found |= {".".join(parts[i:]) for i in range(1, len(parts)) if ".".join(parts[i:]) in tensors}
    return tensors[found.pop()] if len(found) == 1 else None


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    if (a.shape, a.dtype, a.device) != (b.shape, b.dtype, b.device) or a.device.type == "meta":
        return False
    with torch.no_grad():
        return torch.equal(a, b)


def bytes_held(*models: nn.Module) -> int:
    """Bytes of the distinct tensors (parameters and buffers) of ``models``, each storage counted once."""
    storages = {}
    for model in models:
        for tensor in (*model.parameters(), *model.buffers()):
            storage = tensor.untyped_storage()
            storages[(storage.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())
