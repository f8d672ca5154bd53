"""Input handling found in review: BPE tokenizers whose unknown token is their end-of-text token, the position grid's
size limit checked before any model runs, and text encoders the pipeline can run without."""

import json

import pytest
import torch
from transformers import CLIPTokenizer

from diffusers_neodragon import NeodragonPipeline
from tests.tiny_components import pipeline


def _clip_tokenizer(folder):
    """A CLIP BPE tokenizer whose vocabulary spells "a" and "red" (its unknown token is <|endoftext|>, as CLIP's)."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "r": 3, "e": 4, "d</w>": 5}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def test_clip_end_of_text_is_not_reported_as_an_unknown_word(tmp_path):
    tokenizer = _clip_tokenizer(tmp_path)
    assert tokenizer.unk_token_id == tokenizer.eos_token_id
    pipe = pipeline(with_first_frame=False, with_super_resolution=False)
    dropped = {"unknown": {}, "truncated": {}}
    pipe._tokenize(tokenizer, "tokenizer", ["a red"], 8, dropped)
    assert dropped["unknown"] == {}
    pipe._tokenize(tokenizer, "tokenizer", ["a red z"], 8, dropped)
    assert dropped["unknown"] == {"z": ["tokenizer"]}


def test_a_size_beyond_the_position_grid_is_refused_before_any_model_runs():
    pipe = pipeline(with_first_frame=False, with_super_resolution=False)
    largest = pipe.max_size
    assert largest == pipe.transformer.config.pos_embed_max_size * pipe.transformer.config.patch_size * 8
    calls = []
    pipe.text_encoder_3.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match=f"at most {largest}"):
        pipe("a red circle", mode="monolithic", height=largest + pipe.size_multiple, width=64, num_frames=1)
    assert calls == []


def test_save_and_load_without_the_token_text_encoder(tmp_path):
    """Given prompt embeddings the pipeline runs without text_encoder_3/tokenizer_3; such a folder round-trips."""
    pipe = pipeline(with_first_frame=False, with_super_resolution=False)
    embeds, _, pooled, _, mask, _ = pipe.encode_prompt("a red circle", do_classifier_free_guidance=False)
    pipe.text_encoder_3 = pipe.tokenizer_3 = None
    pipe.save_pretrained(tmp_path)
    loaded = NeodragonPipeline.from_pretrained(tmp_path)
    assert loaded.text_encoder_3 is None and loaded.tokenizer_3 is None
    kwargs = dict(mode="monolithic", height=64, width=64, num_frames=1, num_inference_steps=1, output_type="latent",
                  prompt_embeds=embeds, pooled_prompt_embeds=pooled, prompt_attention_mask=mask, guidance_scale=0.0)
    expected = pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames
    torch.testing.assert_close(loaded(generator=torch.Generator().manual_seed(0), **kwargs).frames, expected)
    with pytest.raises(ValueError, match="text_encoder_3"):
        loaded("a red circle", **{k: v for k, v in kwargs.items() if "prompt" not in k})
