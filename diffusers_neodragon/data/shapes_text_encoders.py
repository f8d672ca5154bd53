# SPDX-License-Identifier: Apache-2.0
"""Frozen, randomly initialised stand-ins for T5 and the two CLIP text encoders, over the Shapes vocabulary.

The Shapes world's base model reads them as Pyramid-Flow's reads T5-XXL and CLIP-L/G; they are built offline (no
download) and deterministically from a seed, so any machine rebuilds the same encoders.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .vocab_tokenizer import build_word_level_tokenizer


def build_shapes_text_encoders(
    vocabulary: Iterable[str],
    seed: int = 0,
    t5_dim: int = 256,
    t5_layers: int = 2,
    t5_heads: int = 4,
    t5_ff_dim: int | None = None,
    clip_dim: int = 64,
    clip_layers: int = 1,
    clip_heads: int = 2,
    clip_projection_dim: int | None = None,
    t5_max_length: int = 64,
    clip_max_length: int = 32,
) -> dict:
    """Frozen, randomly initialised stand-ins for the text encoders of the Shapes world's base model.

    The real encoders (T5-XXL, CLIP-L, CLIP-G) cannot be downloaded here, and a closed world of templated captions
    does not need language understanding: a random, frozen encoder over a word-level vocabulary is still a fixed,
    deterministic function that maps different captions to different embeddings, and the transformer learns to read
    it (its ``context_embedder`` plays the role it plays for T5-XXL in Pyramid-Flow).

    Returns the pipeline components ``text_encoder_3`` (transformers ``T5EncoderModel``, the "teacher" T5 of width
    ``t5_dim`` that the transformer's ``context_embedder`` reads) + ``tokenizer_3`` (T5-like word-level tokenizer),
    and ``text_encoder`` / ``text_encoder_2`` (``CLIPTextModelWithProjection``; their ``text_embeds`` concatenated
    form the pooled vector of size ``2 * clip_projection_dim``) + ``tokenizer`` / ``tokenizer_2`` (CLIP-like, with
    ``<|startoftext|>`` / ``<|endoftext|>``); the tokenizers' config names the ``"shapes"`` prompt normaliser
    (:mod:`~diffusers_neodragon.data.shapes_prompts`). Everything is in eval mode with ``requires_grad`` off. The same
    arguments always give the same weights (the global RNG is left untouched).
    """
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel  # noqa: PLC0415

    words = list(vocabulary)
    if t5_dim % t5_heads or clip_dim % clip_heads:
        raise ValueError("`t5_dim` must be divisible by `t5_heads` and `clip_dim` by `clip_heads`.")
    clip_projection_dim = clip_projection_dim or clip_dim
    # Every tokenizer names the Shapes prompt normaliser, so pipelines rewrite user phrasings into the captions' form.
    tokenizer_3 = build_word_level_tokenizer(words, model_max_length=t5_max_length, prompt_normalizer="shapes")
    clip_tokenizers = [
        build_word_level_tokenizer(
            words, model_max_length=clip_max_length, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
            prompt_normalizer="shapes",
        )
        for _ in range(2)
    ]
    t5_config = T5Config(
        vocab_size=len(tokenizer_3),
        d_model=t5_dim,
        d_kv=t5_dim // t5_heads,
        d_ff=t5_ff_dim or 2 * t5_dim,
        num_layers=t5_layers,
        num_heads=t5_heads,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=tokenizer_3.pad_token_id,
        eos_token_id=tokenizer_3.eos_token_id,
        decoder_start_token_id=tokenizer_3.pad_token_id,
        is_encoder_decoder=False,
        use_cache=False,
    )

    def clip_config(tokenizer):
        return CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=clip_dim,
            intermediate_size=4 * clip_dim,
            num_hidden_layers=clip_layers,
            num_attention_heads=clip_heads,
            projection_dim=clip_projection_dim,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder_3 = T5EncoderModel(t5_config)
        torch.manual_seed(seed + 1)
        text_encoder = CLIPTextModelWithProjection(clip_config(clip_tokenizers[0]))
        torch.manual_seed(seed + 2)
        text_encoder_2 = CLIPTextModelWithProjection(clip_config(clip_tokenizers[1]))
    for model in (text_encoder_3, text_encoder, text_encoder_2):
        model.eval().requires_grad_(False)
    return dict(
        text_encoder=text_encoder,
        tokenizer=clip_tokenizers[0],
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizers[1],
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )

