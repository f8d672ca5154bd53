"""The embedded model's output is bitwise stable: refactors of the library must not change a single bit.

The checksums were recorded before the restructure into ``loaders/``, ``training_utils/`` and
``models/{transformers,autoencoders}/`` (torch 2.13 CPU, one thread). A deliberate change of the sampler or of the
weights updates them, and says so in its commit.
"""

import hashlib

import pytest
import torch

from diffusers_neodragon import NeodragonPipeline
from diffusers_neodragon.pretrained import shapes_model_path


PROMPT = "a red circle moving left on a blue background"
EXPECTED = {
    "pt": "3d0be479055819cf1c8f73db595f1b169b5ce60dc7c93b95a5f06fb3143eedcf",
    "latent": "ec682ca7a44d4ce7bb704bbe86de24672fe8bd97585877fc904c48d7848696c6",
}


@pytest.fixture(scope="module")
def pipe():
    pipe = NeodragonPipeline.from_pretrained(shapes_model_path(), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("output_type", sorted(EXPECTED))
def test_short_generation_is_bitwise_unchanged(pipe, output_type):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reductions split over threads may round differently
    try:
        frames = pipe(
            PROMPT, num_frames=9, num_inference_steps=2, video_num_inference_steps=2,
            generator=torch.Generator().manual_seed(0), output_type=output_type,
        ).frames
    finally:
        torch.set_num_threads(threads)
    assert frames.dtype == torch.float32
    assert hashlib.sha256(frames.numpy().tobytes()).hexdigest() == EXPECTED[output_type]
