"""Prompt encoding for training equals what the pipeline feeds the model."""


import torch

from diffusers_neodragon import NeodragonPipeline, PyramidalDMDScheduler
from diffusers_neodragon.training_utils import (
    encode_prompts,
)
from tests.tiny_components import tiny_causal_vae, tiny_transformer
from tests.training.conftest import CAPTIONS


def test_encode_prompts_matches_the_pipeline(text_components):
    transformer = tiny_transformer(num_layers=1, context_embedder_dim=32)
    vae = tiny_causal_vae()
    pipe = NeodragonPipeline(transformer=transformer, scheduler=PyramidalDMDScheduler(), vae=vae, mode="monolithic",
                             **text_components)
    texts = CAPTIONS + [""]
    ours = encode_prompts(text_components, texts, max_sequence_length=20)
    embeds, _, pooled, _, mask, _ = pipe.encode_prompt(
        texts, do_classifier_free_guidance=False, max_sequence_length=20, device="cpu", dtype=torch.float32)
    theirs = (embeds, mask, pooled)
    keep = theirs[0].shape[1]
    torch.testing.assert_close(ours[0][:, :keep], theirs[0])
    torch.testing.assert_close(ours[1][:, :keep], theirs[1])
    assert ours[1][:, keep:].sum() == 0
    torch.testing.assert_close(ours[2], theirs[2])
