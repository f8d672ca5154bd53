"""Prompt encoding for training equals what the pipeline feeds the model."""


import torch

from diffusers_neodragon import CausalVideoVAE, NeodragonPipeline, NeodragonTransformer3DModel, PyramidalDMDScheduler
from diffusers_neodragon.training_utils import (
    encode_prompts,
)
from tests.training.conftest import CAPTIONS


def test_encode_prompts_matches_the_pipeline(text_components):
    transformer = NeodragonTransformer3DModel(in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
                                              pooled_projection_dim=16, context_embedder_dim=32, sample_size=8,
                                              pos_embed_max_size=16)
    vae = CausalVideoVAE(latent_channels=4, encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                         encoder_layers_per_block=(1,) * 4, decoder_layers_per_block=(1,) * 4, norm_num_groups=4)
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
