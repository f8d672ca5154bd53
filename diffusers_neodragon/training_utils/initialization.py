# SPDX-License-Identifier: Apache-2.0
"""Transformer initialisation for training: Pyramid-Flow's from-scratch init and the freezing DDP needs."""

from __future__ import annotations

import torch


@torch.no_grad()
def initialize_transformer_weights(transformer: torch.nn.Module) -> torch.nn.Module:
    """Pyramid-Flow's from-scratch initialisation of the MMDiT (SD3/DiT style).

    Xavier-uniform on every Linear and Conv (the patch-embedding conv on its flattened [out, in·k·k] weight), zero
    biases; the timestep and pooled-text embedders N(0, 0.02); adaLN modulations (every block's ``norm1`` and
    ``norm1_context``, ``norm_out``) and ``proj_out`` zeroed, so each block starts as the identity and the model
    predicts zero velocity. Norm weights keep their defaults (ones).
    """
    for module in transformer.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)):
            weight = module.weight
            torch.nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    for module in transformer.time_text_embed.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.02)
    zeroed = [transformer.norm_out.linear, transformer.proj_out]
    for block in transformer.transformer_blocks:
        zeroed += [block.norm1.linear, block.norm1_context.linear]
    for module in zeroed:
        torch.nn.init.zeros_(module.weight)
        if module.bias is not None:
            torch.nn.init.zeros_(module.bias)
    return transformer


def freeze_unused_parameters(transformer: torch.nn.Module) -> list[str]:
    """Stop training the last block's text-query projection (``add_q_proj``, ``norm_add_q``), which cannot change
    the output: that block is context-pre-only, so its text outputs are discarded (the model skips those queries).

    Kept in the checkpoint for compatibility with the official layout. Returns the frozen names. Needed for
    multi-GPU training: DDP requires every trainable parameter to receive a gradient.
    """
    attention = transformer.transformer_blocks[-1].attn
    frozen = []
    for prefix, module in (("add_q_proj", attention.add_q_proj), ("norm_add_q", attention.norm_add_q)):
        for name, parameter in module.named_parameters():
            parameter.requires_grad_(False)
            frozen.append(f"transformer_blocks.{len(transformer.transformer_blocks) - 1}.attn.{prefix}.{name}")
    return frozen

