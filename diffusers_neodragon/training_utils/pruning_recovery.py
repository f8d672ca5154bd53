# SPDX-License-Identifier: Apache-2.0
"""Recovery of a pruned transformer (Neodragon's two-stage curriculum): the stage record and the stage-2 losses.

Stage 1 trains the pruned weights with plain flow matching on data; stage 2 adds full teacher feature matching:
each kept block's output is matched to the output of the teacher block it came from (``config.block_origin``):
visual tokens by MSE, text tokens by cosine distance, plus flow matching to the teacher's prediction and to the
data. The paper found that stage 2 only works after stage 1 (direct stage 2, or annealing the weights, failed), so a
small JSON record beside the weights (``pruning_recovery.json`` in the transformer folder) says which stages a
pruned transformer went through, and stage 2 refuses weights that skipped stage 1 unless forced.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F


RECORD_NAME = "pruning_recovery.json"
STAGE_2_GUARD = (
    "Stage 2 (teacher feature matching) must follow stage 1 (flow matching on data from the pruned weights): in "
    "Neodragon, stage 2 started directly from pruned weights (or with annealed loss weights) failed to recover. "
)


def read_recovery_record(transformer_folder: str | os.PathLike | None) -> dict | None:
    """The record of a pruned transformer folder, or None (an unpruned model, or pruned by other means)."""
    if transformer_folder is None:
        return None
    path = Path(transformer_folder) / RECORD_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def write_recovery_record(transformer_folder: str | os.PathLike, record: dict) -> Path:
    path = Path(transformer_folder) / RECORD_NAME
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def new_recovery_record(teacher: str, teacher_num_layers: int, block_origin: Sequence[int]) -> dict:
    """The record written at pruning time: no recovery stage yet."""
    return {"teacher": str(teacher), "teacher_num_layers": int(teacher_num_layers),
            "block_origin": [int(i) for i in block_origin], "stages": []}


def with_stage(record: dict, stage: int, **details) -> dict:
    """A copy of ``record`` with one more completed recovery stage (1 or 2) and what describes it."""
    if stage not in (1, 2):
        raise ValueError(f"Recovery stages are 1 and 2, got {stage}")
    return {**record, "stages": [*record.get("stages", []), {"stage": stage, **details}]}


def completed_stages(record: dict | None) -> list[int]:
    return [int(s["stage"]) for s in (record or {}).get("stages", [])]


def check_stage_2_start(record: dict | None, force: bool = False) -> str | None:
    """Raise ValueError unless the weights went through stage 1 (or ``force``); returns the warning to print when
    forced past the guard, else None."""
    if 1 in completed_stages(record):
        return None
    if record is None:
        reason = f"the starting transformer has no {RECORD_NAME} (it was not written by prune_transformer.py)"
    else:
        reason = f"its {RECORD_NAME} lists recovery stages {completed_stages(record)}, without stage 1"
    message = STAGE_2_GUARD + f"Here {reason}."
    if not force:
        raise ValueError(message + " Run stage 1 first, or pass --force to start stage 2 anyway.")
    return message + " Going on because of --force."


class BlockOutputs:
    """Forward hooks keeping each block's ``(visual, text)`` output of the latest call (text None for the
    context-pre-only last block), gradients included; a context manager."""

    def __init__(self, transformer):
        self.blocks = transformer.transformer_blocks
        self.outputs: list[tuple[torch.Tensor, torch.Tensor | None] | None] = [None] * len(self.blocks)
        self._handles = []

    def __enter__(self):
        def hook(index):
            def keep(module, args, output):
                self.outputs[index] = output
            return keep

        self._handles = [b.register_forward_hook(hook(i)) for i, b in enumerate(self.blocks)]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []


def feature_matching_losses(
    student: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    teacher: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    block_origin: Sequence[int],
    text_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(visual MSE, text cosine distance), each averaged over the kept blocks that have the term.

    Kept block j is compared with teacher block ``block_origin[j]``. When one of the two is a context-pre-only
    final block it returned only the noisy clip's visual tokens (the sequence's last ones): the visual term then
    compares those trailing tokens, and a block without text output adds no text term. ``text_mask`` [B, L]
    (1 = real token) leaves padding out of the text term.
    """
    if len(student) != len(block_origin):
        raise ValueError(f"{len(student)} student blocks but block_origin has {len(block_origin)} entries")
    if max(block_origin) >= len(teacher):
        raise ValueError(f"block_origin {list(block_origin)} points past the teacher's {len(teacher)} blocks")
    visual, text = [], []
    for (img_s, txt_s), origin in zip(student, block_origin):
        img_t, txt_t = teacher[origin]
        n = min(img_s.shape[1], img_t.shape[1])
        visual.append(F.mse_loss(img_s[:, -n:].float(), img_t[:, -n:].float()))
        if txt_s is None or txt_t is None:
            continue
        distance = 1 - F.cosine_similarity(txt_s.float(), txt_t.float(), dim=-1)  # [B, L]
        if text_mask is None:
            text.append(distance.mean())
        else:
            weights = text_mask.to(distance.dtype)
            text.append((distance * weights).sum() / weights.sum().clamp_min(1.0))
    zero = visual[0].new_zeros(())
    return torch.stack(visual).mean(), (torch.stack(text).mean() if text else zero)
