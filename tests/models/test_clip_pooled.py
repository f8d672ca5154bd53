"""A tiny CLIPTextModelWithProjection fed by our offline word-level tokenizer pools at the EOS, as the real CLIPs do,
so pipeline tests can use tiny random CLIPs for the pooled prompt embedding."""

import torch
from transformers import CLIPTextModelWithProjection

from tests.tiny_components import clip_encoder, clip_tokenizer


def test_text_embeds_are_projection_of_eos_hidden_state():
    tok = clip_tokenizer()
    # CLIP pools at argmax(input_ids) when eos_token_id == 2 (legacy configs); ours must not take that path.
    assert tok.eos_token_id != 2
    # Two layers, so that the EOS position also carries what attention gathered in the first.
    model = clip_encoder(CLIPTextModelWithProjection, tok, num_hidden_layers=2)
    prompts = ["a red circle moving left", "square", "a green triangle moving down on a blue background"]
    enc = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=enc.input_ids)  # the pipeline passes ids only, as SD3 / Neodragon do
        masked = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    eos = enc.attention_mask.sum(1) - 1
    assert (enc.input_ids[torch.arange(3), eos] == tok.eos_token_id).all()
    expected = model.text_projection(out.last_hidden_state[torch.arange(3), eos])
    assert out.text_embeds.shape == (3, model.config.projection_dim)
    torch.testing.assert_close(out.text_embeds, expected)
    # Causal attention: padding after the EOS cannot change the pooled vector, with or without the mask.
    torch.testing.assert_close(masked.text_embeds, out.text_embeds, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out.text_embeds[0], out.text_embeds[1])
