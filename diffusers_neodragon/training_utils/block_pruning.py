# SPDX-License-Identifier: Apache-2.0
"""MMDiT block pruning (Neodragon's operation 3): block importance, the choice of blocks to keep, the pruned model.

Importance (SANA-1.5's block importance, split by modality as in Neodragon): for block k,
``BI_k = 1 - E[cos(z_k, z_{k+1})]`` between each token's input and output, separately for the visual tokens (BI_v)
and the valid text tokens (BI_t). The mean runs over every token of every model call seen while the hooks are on
(so over the batch rows, CFG's unconditional rows included, steps, pyramid stages and latent frames of the calls that
were sampled). A block that only rescales tokens scores 0; one that turns them scores > 0. The final,
context-pre-only block computes only the noisy clip's visual tokens and no text output: its BI_v compares those
tokens, its BI_t is undefined (``None``).

Pruning keeps a subset of blocks in their order. The kept last block must be context-pre-only. When the teacher's
last block is dropped, the new last block is *converted exactly*: a context-pre-only block reads the text through an
``AdaLayerNormContinuous`` (scale, shift) where a full block has an ``AdaLayerNormZero`` whose (shift_msa,
scale_msa) rows produce the same normalised text, and the full block's text output (``to_add_out``, ``ff_context``)
is discarded by the model anyway. So the pruned model computes exactly the teacher with the dropped blocks skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


class BlockImportance:
    """Forward hooks on every ``transformer.transformer_blocks`` entry accumulating the cosine between each token's
    input and output (visual and text apart); use as a context manager around the sampling calls to measure."""

    def __init__(self, transformer):
        self.blocks = transformer.transformer_blocks
        n = len(self.blocks)
        self.visual_sum, self.visual_count = [0.0] * n, [0] * n
        self.text_sum, self.text_count = [0.0] * n, [0] * n
        self.calls = 0
        self._handles = []

    def __enter__(self):
        self._handles = [block.register_forward_hook(self._hook(i)) for i, block in enumerate(self.blocks)]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, index: int):
        def hook(module, args, output):
            img_in, txt_in, _, layout, last_only = args[:5]
            img_out, txt_out = output
            if index == 0:
                self.calls += 1
            if last_only:  # the final block returns only the noisy clip's tokens
                img_in = img_in[:, -img_out.shape[1] :]
            cos = F.cosine_similarity(img_in.float(), img_out.float(), dim=-1)
            self.visual_sum[index] += float(cos.sum())
            self.visual_count[index] += cos.numel()
            if txt_out is None:
                return
            cos = F.cosine_similarity(txt_in.float(), txt_out.float(), dim=-1)  # [B, L]
            valid = torch.ones_like(cos, dtype=torch.bool)
            if layout.key_padding is not None:  # [B, 1, 1, S]: the text part marks the real tokens
                valid = layout.key_padding[:, 0, 0, : cos.shape[1]].expand_as(cos)
            self.text_sum[index] += float(cos[valid].sum())
            self.text_count[index] += int(valid.sum())

        return hook

    def result(self) -> dict:
        """``{"bi_visual": [...], "bi_text": [... or None], "calls": int}`` (BI = 1 - mean cosine)."""
        if self.calls == 0:
            raise RuntimeError("No transformer call was seen while the importance hooks were on.")

        def bi(total, count):
            return None if count == 0 else 1.0 - total / count

        return {
            "bi_visual": [bi(s, c) for s, c in zip(self.visual_sum, self.visual_count)],
            "bi_text": [bi(s, c) for s, c in zip(self.text_sum, self.text_count)],
            "calls": self.calls,
        }


CRITERIA = ("visual", "text", "mean", "max")


def combined_importance(bi_visual: Sequence[float], bi_text: Sequence[float | None], criterion: str = "mean"):
    """One importance per block from BI_v and BI_t.

    Each modality is first divided by its largest value over the blocks, so that both count alike whatever their
    scales (text tokens change far less than visual ones). ``visual`` / ``text`` use one modality, ``mean`` the
    average of the two, ``max`` the larger (a block important for either modality is kept). Where BI_t is
    undefined (the context-pre-only last block has no text output) the visual value stands in for it.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if len(bi_visual) != len(bi_text):
        raise ValueError(f"{len(bi_visual)} visual but {len(bi_text)} text importances")

    def normalised(values):
        defined = [v for v in values if v is not None]
        top = max(defined, default=0.0)
        return [None if v is None else (v / top if top > 0 else 0.0) for v in values]

    visual = normalised(list(bi_visual))
    text = [v if t is None else t for v, t in zip(visual, normalised(list(bi_text)))]
    if criterion == "visual":
        return visual
    if criterion == "text":
        return text
    if criterion == "mean":
        return [(v + t) / 2 for v, t in zip(visual, text)]
    return [max(v, t) for v, t in zip(visual, text)]


def keep_after_dropping(importance: Sequence[float], num_drop: int, protect: Sequence[int] = ()) -> list[int]:
    """Indices of the blocks kept when the ``num_drop`` least important are removed (ties: the later block goes),
    never dropping a block of ``protect``."""
    n = len(importance)
    candidates = [i for i in range(n) if i not in set(protect)]
    if not 0 <= num_drop <= len(candidates) or num_drop >= n:
        raise ValueError(f"Cannot drop {num_drop} of {n} blocks ({len(candidates)} may be dropped, >= 1 must stay).")
    if any(v is None or math.isnan(v) for v in importance):
        raise ValueError(f"Every block needs an importance to rank it, got {list(importance)}")
    order = sorted(candidates, key=lambda i: (importance[i], -i))
    dropped = set(order[:num_drop])
    return [i for i in range(n) if i not in dropped]


def check_keep(keep: Sequence[int], num_layers: int) -> list[int]:
    """``keep`` as a validated list: strictly increasing block indices of a ``num_layers``-block model, >= 1."""
    keep = [int(i) for i in keep]
    if not keep:
        raise ValueError("Keep at least one block.")
    if any(b <= a for a, b in zip(keep, keep[1:])):
        raise ValueError(f"The kept blocks must be strictly increasing (the blocks keep their order), got {keep}")
    if keep[0] < 0 or keep[-1] >= num_layers:
        raise ValueError(f"Block indices must lie in [0, {num_layers - 1}], got {keep}")
    return keep


def context_pre_only_state(block_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict of a full joint block turned into that of a context-pre-only final block computing the same
    visual output: the text AdaLayerNormZero's (shift_msa, scale_msa) rows become AdaLayerNormContinuous's
    (scale, shift); the text-output weights go (the final block's text output is never used)."""
    out = {}
    for key, value in block_state.items():
        if key.startswith(("attn.to_add_out.", "ff_context.", "norm2_context.")):
            continue
        if key.startswith("norm1_context.linear."):
            shift, scale = value.chunk(6, dim=0)[:2]
            value = torch.cat([scale, shift], dim=0)
        out[key] = value
    return out


def prune_transformer(transformer, keep: Sequence[int]):
    """A new model of the same class holding the blocks ``keep`` of ``transformer`` (in order), everything else
    copied, ``num_layers`` = len(keep) and ``block_origin`` = keep (indices in ``transformer``)."""
    num_layers = transformer.config.num_layers
    keep = check_keep(keep, num_layers)
    config = {k: v for k, v in transformer.config.items() if not k.startswith("_")}
    config.update(num_layers=len(keep), block_origin=list(keep))
    pruned = type(transformer).from_config(config)
    state = transformer.state_dict()
    new_state = {k: v for k, v in state.items() if not k.startswith("transformer_blocks.")}
    for new_index, old_index in enumerate(keep):
        prefix = f"transformer_blocks.{old_index}."
        block = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if new_index == len(keep) - 1 and old_index != num_layers - 1:
            block = context_pre_only_state(block)
        new_state.update({f"transformer_blocks.{new_index}.{k}": v for k, v in block.items()})
    pruned.load_state_dict(new_state, strict=True)
    parameter = next(transformer.parameters())
    pruned = pruned.to(parameter.device)
    return pruned if parameter.dtype == torch.float32 else pruned.to(parameter.dtype)
