"""Shared fixtures of the training tests: a scheduler, tiny Shapes stand-in text encoders, random latents."""

import pytest
import torch

from diffusers_neodragon import PyramidalDMDScheduler
from diffusers_neodragon.data.shapes_text_encoders import build_shapes_text_encoders


WORDS = "a small large red blue green circle square moving left right on background".split()
CAPTIONS = [
    "a small red circle moving left on a blue background",
    "a large green square moving right on a red background",
]
TINY_TEXT_ENCODERS = dict(seed=3, t5_dim=32, t5_heads=2, t5_layers=1, clip_dim=16, clip_heads=2, clip_projection_dim=8,
                          t5_max_length=24, clip_max_length=16)


@pytest.fixture(scope="module")
def scheduler():
    return PyramidalDMDScheduler()


@pytest.fixture(scope="module")
def text_components():
    return build_shapes_text_encoders(WORDS, **TINY_TEXT_ENCODERS)


def latents(batch=2, frames=4, size=8, seed=0):
    return torch.randn(batch, 4, frames, size, size, generator=torch.Generator().manual_seed(seed))


def save_t5_reading_pipeline(folder) -> None:
    """A tiny monolithic pipeline whose transformer reads the T5 stand-in (width 32) through its context_embedder:
    the teacher of text-encoder distillation."""
    from diffusers_neodragon import NeodragonPipeline
    from diffusers_neodragon.data.shapes import shapes_vocabulary
    from tests.tiny_components import tiny_asymmetric_vae, tiny_transformer

    NeodragonPipeline(
        transformer=tiny_transformer(seed=0, context_embedder_dim=32), scheduler=PyramidalDMDScheduler(),
        vae=tiny_asymmetric_vae(seed=1), context_adapter=None, mode="monolithic", default_height=64,
        default_width=64, default_num_frames=9, default_negative_prompt="",
        **build_shapes_text_encoders(shapes_vocabulary(), **TINY_TEXT_ENCODERS),
    ).save_pretrained(folder)
