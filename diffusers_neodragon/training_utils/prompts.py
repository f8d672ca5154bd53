# SPDX-License-Identifier: Apache-2.0
"""Prompt encoding for training: what ``NeodragonPipeline.encode_prompt`` feeds the transformer, padded to a fixed
length so that captions can be encoded once and cached."""

from __future__ import annotations

from collections.abc import Sequence

import torch


TEXT_COMPONENT_NAMES = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")
TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2", "text_encoder_3")
# the modules of load_text_components' dict: what a script moves to its device (the adapter too, or a text-distilled
# pipeline's prompts meet a CPU adapter on the GPU)
TEXT_MODULE_NAMES = (*TEXT_ENCODER_NAMES, "context_adapter")


def pooled_projection_dim(text_components: dict) -> int:
    """Size of the pooled vector the CLIP encoders produce (sum of their projection dims)."""
    return sum(
        text_components[name].config.projection_dim
        for name in ("text_encoder", "text_encoder_2")
        if text_components.get(name) is not None
    )


@torch.no_grad()
def encode_prompts(
    text_components: dict,
    texts: Sequence[str],
    device: str | torch.device = "cpu",
    max_sequence_length: int = 128,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What ``NeodragonPipeline.encode_prompt`` computes, padded to a fixed length.

    Returns (token features [B, L, D] of ``text_encoder_3``, through ``context_adapter`` when the components hold
    one (a text-distilled pipeline, whose adapter stays frozen), their mask [B, L] (1 = real token), pooled
    [B, pooled_dim]) in float32 with ``L = max_sequence_length``. The pipeline trims the common padding instead;
    padded tokens are masked out in the transformer, so both give the same result. Slice to
    ``int(mask.sum(1).max())`` tokens to save attention work.
    """
    texts = list(texts)
    tokens = text_components["tokenizer_3"](
        texts, padding="max_length", max_length=max_sequence_length, truncation=True, return_tensors="pt"
    )
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    embeds = text_components["text_encoder_3"](ids, attention_mask=mask).last_hidden_state
    adapter = text_components.get("context_adapter")
    if adapter is not None:
        embeds = adapter(embeds.to(adapter.dtype))
    pooled = []
    for tokenizer_name, encoder_name in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
        encoder = text_components.get(encoder_name)
        if encoder is None:
            continue
        tokenizer = text_components[tokenizer_name]
        clip_ids = tokenizer(
            texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        pooled.append(encoder(clip_ids.to(device)).text_embeds)
    if not pooled:
        raise ValueError("At least one of text_encoder / text_encoder_2 is needed for the pooled vector.")
    return embeds.float(), mask, torch.cat(pooled, dim=-1).float()



def load_text_components(path: str) -> dict:
    """The frozen text path of a pipeline folder: ``text_encoder``, ``_2`` (CLIP with projection), ``_3`` (T5, or
    the DT5 of a text-distilled pipeline), their tokenizers and the ``context_adapter`` where there is one; what
    :func:`encode_prompts` reads."""
    import json  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel  # noqa: PLC0415

    from diffusers_neodragon import ContextAdapter, DT5Config, DT5EncoderModel  # noqa: PLC0415

    components = {}
    for name, cls in (("text_encoder", CLIPTextModelWithProjection), ("text_encoder_2", CLIPTextModelWithProjection),
                      ("text_encoder_3", T5EncoderModel)):
        if (Path(path) / name).is_dir():
            config = json.loads((Path(path) / name / "config.json").read_text())
            if config.get("model_type") == DT5Config.model_type:
                cls = DT5EncoderModel
            model = cls.from_pretrained(path, subfolder=name, dtype=torch.float32)
            components[name] = model.eval().requires_grad_(False)
            tokenizer = name.replace("text_encoder", "tokenizer")
            components[tokenizer] = AutoTokenizer.from_pretrained(path, subfolder=tokenizer)
    if "text_encoder_3" not in components:
        raise ValueError(f"{path} has no text_encoder_3 / tokenizer_3.")
    if (Path(path) / "context_adapter" / "config.json").is_file():
        adapter = ContextAdapter.from_pretrained(path, subfolder="context_adapter", dtype=torch.float32)
        components["context_adapter"] = adapter.eval().requires_grad_(False)
    return components
