"""The Shapes world's frozen stand-in text encoders."""

import pytest
import torch

from diffusers_neodragon.data.shapes_text_encoders import build_shapes_text_encoders
from diffusers_neodragon.training_utils import (
    encode_prompts,
    pooled_projection_dim,
)
from tests.training.conftest import CAPTIONS, TINY_TEXT_ENCODERS, WORDS


@pytest.fixture(scope="module")
def text_components():
    return build_shapes_text_encoders(WORDS, **TINY_TEXT_ENCODERS)


def test_shapes_text_encoders_are_frozen_deterministic_and_distinct(text_components):
    again = build_shapes_text_encoders(WORDS, seed=3, t5_dim=32, t5_heads=2, t5_layers=1, clip_dim=16, clip_heads=2,
                                       clip_projection_dim=8, t5_max_length=24, clip_max_length=16)
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        assert not any(p.requires_grad for p in text_components[name].parameters())
        assert not text_components[name].training
    assert text_components["tokenizer"].bos_token == "<|startoftext|>"
    assert text_components["tokenizer"].eos_token == "<|endoftext|>"
    assert text_components["text_encoder_3"].config.d_model == 32 and pooled_projection_dim(text_components) == 16
    texts = CAPTIONS + [""]
    e1, m1, p1 = encode_prompts(text_components, texts, max_sequence_length=16)
    e2, m2, p2 = encode_prompts(again, texts, max_sequence_length=16)
    assert torch.equal(e1, e2) and torch.equal(p1, p2) and torch.equal(m1, m2)
    assert (p1[0] - p1[1]).abs().max() > 1e-3 and (p1[0] - p1[2]).abs().max() > 1e-3
    assert (e1[0, :3] - e1[1, :3]).abs().max() > 1e-3
    other = build_shapes_text_encoders(WORDS, seed=4, t5_dim=32, t5_heads=2, t5_layers=1, clip_dim=16, clip_heads=2,
                                       clip_projection_dim=8)
    assert not torch.equal(encode_prompts(other, texts, max_sequence_length=16)[2], p1)
