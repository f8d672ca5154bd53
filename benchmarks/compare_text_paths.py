#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""Compare two pipelines' text paths (e.g. a teacher and its distilled student) on the same prompts: the tokens the
transformer's blocks read (token MSE and cosine over valid tokens), the denoiser output of pipeline A's transformer
fed each pipeline's tokens on the same noisy latents (relative L2 difference and cosine), the text paths'
parameters and their CPU latency per prompt.

    python benchmarks/compare_text_paths.py diffusers_neodragon/pretrained/shapes runs/textenc/rm \\
        --prompts shapes-heldout --num-prompts 64
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diffusers_neodragon import NeodragonPipeline
from diffusers_neodragon.training_utils.text_distillation import TokenAgreement, text_stream_tokens, tokenize


def read_prompts(source: str, count: int) -> list[str]:
    if source in ("shapes-heldout", "shapes-seen"):
        from diffusers_neodragon.data.shapes import fixed_prompt_set  # noqa: PLC0415

        return fixed_prompt_set(source.removeprefix("shapes-"), min(count, 200))
    lines = [line.strip() for line in Path(source).read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line][:count]


def text_path(pipe: NeodragonPipeline):
    """``(encoder, adapter, embedder)``: the modules between the prompt and the transformer's blocks."""
    return pipe.text_encoder_3, pipe.context_adapter, pipe.transformer.context_embedder


def parameters(pipe: NeodragonPipeline) -> int:
    return sum(p.numel() for m in text_path(pipe) if m is not None for p in m.parameters())


@torch.no_grad()
def tokens(pipe: NeodragonPipeline, texts: list[str], max_length: int):
    ids, mask = tokenize(pipe.tokenizer_3, [t + pipe.config.prompt_suffix for t in texts], max_length)
    return text_stream_tokens(*text_path(pipe)[:1], ids, mask, *text_path(pipe)[1:]), mask


@torch.no_grad()
def latency_ms(pipe: NeodragonPipeline, texts: list[str], max_length: int, repeats: int = 3) -> float:
    """Milliseconds per prompt of tokenisation + the text path, batch 1, best of ``repeats`` passes."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for text in texts:
            tokens(pipe, [text], max_length)
        best = min(best, (time.perf_counter() - start) / len(texts))
    return best * 1000


@torch.no_grad()
def denoiser_difference(pipe: NeodragonPipeline, tokens_a, tokens_b, mask, texts, seed: int = 0) -> dict:
    """Pipeline A's transformer on the same noisy latents and pooled vectors, fed the token streams of A and B (B's
    tokens bypass A's context_embedder, which they already went through)."""
    transformer = pipe.transformer
    pooled = pipe.encode_prompt(texts, do_classifier_free_guidance=False)[2]
    config = transformer.config
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(len(texts), config.in_channels, 1, 16, 16, generator=generator)
    timestep = torch.full((len(texts),), 500.0)
    embedder, transformer.context_embedder = transformer.context_embedder, None
    try:
        outputs = [transformer(latents, t, pooled, timestep, encoder_attention_mask=mask).sample
                   for t in (tokens_a, tokens_b)]
    finally:
        transformer.context_embedder = embedder
    a, b = (o.flatten(1).float() for o in outputs)
    return {"relative_l2": ((a - b).norm() / a.norm()).item(),
            "cosine": torch.nn.functional.cosine_similarity(a, b, dim=1).mean().item()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline_a", help="reference pipeline folder (e.g. the teacher)")
    parser.add_argument("pipeline_b", help="compared pipeline folder (e.g. the distilled student)")
    parser.add_argument("--prompts", default="shapes-heldout", help='"shapes-heldout", "shapes-seen" or a text file')
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--max-sequence-length", type=int, default=None)
    parser.add_argument("--latency-prompts", type=int, default=16)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    pipes = [NeodragonPipeline.from_pretrained(p, dtype=torch.float32) for p in (args.pipeline_a, args.pipeline_b)]
    texts = read_prompts(args.prompts, args.num_prompts)
    max_length = args.max_sequence_length or min(int(pipes[0].tokenizer_3.model_max_length), 128)
    (tokens_a, mask_a), (tokens_b, mask_b) = (tokens(p, texts, max_length) for p in pipes)
    if not torch.equal(mask_a, mask_b):
        raise ValueError("The two pipelines tokenise the prompts differently: their tokens cannot be compared.")
    agreement = TokenAgreement()
    agreement.update(tokens_b, tokens_a, mask_a)
    keep = int(mask_a.sum(1).max())
    figures = {
        "prompts": len(texts),
        "tokens": agreement.result(),
        "denoiser": denoiser_difference(pipes[0], tokens_a[:, :keep], tokens_b[:, :keep], mask_a[:, :keep], texts),
        "text_path_parameters": {"a": parameters(pipes[0]), "b": parameters(pipes[1])},
        "cpu_latency_ms_per_prompt": {
            name: latency_ms(p, texts[: args.latency_prompts], max_length) for name, p in zip("ab", pipes)},
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
