"""Transformer initialisation for training."""


import torch

from diffusers_neodragon.training_utils import (
    encode_prompts,
    freeze_unused_parameters,
    initialize_transformer_weights,
)
from tests.tiny_components import tiny_transformer
from tests.training.conftest import CAPTIONS


def test_transformer_init_predicts_zero(text_components):
    model = tiny_transformer(seed=None, std=None, context_embedder_dim=32)
    initialize_transformer_weights(model)
    embeds, mask, pooled = encode_prompts(text_components, CAPTIONS, max_sequence_length=16)
    out = model(torch.randn(2, 4, 1, 8, 8), embeds, pooled, torch.tensor([500.0, 10.0]),
                history=[torch.randn(2, 4, 1, 4, 4)], encoder_attention_mask=mask).sample
    assert torch.equal(out, torch.zeros_like(out))
    assert model.transformer_blocks[0].attn.to_q.weight.std() > 0


def test_freeze_unused_parameters_leaves_exactly_the_parameters_that_get_gradients(text_components):
    """DDP needs every trainable parameter in the graph; the frozen ones must be the only ones outside it."""
    model = tiny_transformer(seed=None, std=None, context_embedder_dim=32)
    frozen = freeze_unused_parameters(model)
    assert frozen == ["transformer_blocks.1.attn.add_q_proj.weight", "transformer_blocks.1.attn.add_q_proj.bias",
                      "transformer_blocks.1.attn.norm_add_q.weight"]
    embeds, mask, pooled = encode_prompts(text_components, CAPTIONS, max_sequence_length=16)
    for history in (None, [torch.randn(2, 4, 1, 4, 4)]):
        model.zero_grad(set_to_none=True)
        out = model(torch.randn(2, 4, 1, 8, 8), embeds, pooled, torch.tensor([500.0, 10.0]), history=history,
                    encoder_attention_mask=mask).sample
        out.square().mean().backward()
        without_grad = {n for n, p in model.named_parameters() if p.grad is None}
        assert without_grad == set(frozen)
        assert all(not p.requires_grad for n, p in model.named_parameters() if n in without_grad)
