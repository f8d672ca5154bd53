import pytest
import torch
from transformers import AutoTokenizer

from diffusers_neodragon.data.vocab_tokenizer import build_word_level_tokenizer


WORDS = ["a", "red", "blue", "circle", "square", "moving", "left", "on", "background", ",", "."]


def _t5_like():
    return build_word_level_tokenizer(WORDS, model_max_length=16)


def _clip_like(max_length=8):
    return build_word_level_tokenizer(WORDS, max_length, bos_token="<|startoftext|>", eos_token="<|endoftext|>")


def test_t5_like_special_ids_and_right_padding():
    tok = _t5_like()
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.bos_token_id) == (0, 1, 2, None)
    enc = tok(["a red circle"], padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    assert set(enc) == {"input_ids", "attention_mask"}
    assert enc.input_ids.shape == enc.attention_mask.shape == (1, 16)
    assert tok.convert_ids_to_tokens(enc.input_ids[0, :4]) == ["a", "red", "circle", "</s>"]
    assert torch.equal(enc.input_ids[0, 4:], torch.zeros(12, dtype=torch.long))
    assert enc.attention_mask[0].tolist() == [1] * 4 + [0] * 12
    # model_max_length is the default max_length.
    assert tok("a red circle", padding="max_length")["input_ids"] == enc.input_ids[0].tolist()


def test_truncation_keeps_eos():
    tok = _t5_like()
    ids = tok(["a red circle moving left"], max_length=4, truncation=True, padding="max_length")["input_ids"][0]
    assert tok.convert_ids_to_tokens(ids) == ["a", "red", "circle", "</s>"]
    clip = _clip_like()
    ids = clip(["a red circle moving left"], max_length=4, truncation=True, padding="max_length")["input_ids"][0]
    assert clip.convert_ids_to_tokens(ids) == ["<|startoftext|>", "a", "red", "<|endoftext|>"]


def test_clip_like_bos_eos_and_padding():
    clip = _clip_like()
    enc = clip(["a red circle", "blue square"], padding="max_length", truncation=True, return_tensors="pt")
    assert enc.input_ids.shape == (2, 8)
    tokens = clip.convert_ids_to_tokens(enc.input_ids[0, :5])
    assert tokens == ["<|startoftext|>", "a", "red", "circle", "<|endoftext|>"]
    assert (enc.input_ids[:, 0] == clip.bos_token_id).all()
    eos_positions = enc.attention_mask.sum(1) - 1
    assert (enc.input_ids[torch.arange(2), eos_positions] == clip.eos_token_id).all()
    assert (enc.input_ids[enc.attention_mask == 0] == clip.pad_token_id).all()


def test_lowercase_punctuation_and_unknown_words():
    tok = _t5_like()
    tokens = tok.convert_ids_to_tokens(tok("A RED circle, moving UP.")["input_ids"])
    assert tokens == ["a", "red", "circle", ",", "moving", "<unk>", ".", "</s>"]


def test_save_and_auto_tokenizer_round_trip(tmp_path):
    clip = _clip_like()
    clip.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.model_max_length == 8 and loaded.padding_side == "right"
    assert loaded.get_vocab() == clip.get_vocab()
    prompts = ["a red circle moving left on a blue background .", "square"]
    kwargs = dict(padding="max_length", truncation=True, return_tensors="pt")
    for key, value in clip(prompts, **kwargs).items():
        assert torch.equal(value, loaded(prompts, **kwargs)[key]), key


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="split"):
        build_word_level_tokenizer(["red circle"], 8)
    with pytest.raises(ValueError, match="distinct"):
        build_word_level_tokenizer(WORDS, 8, pad_token="</s>")
    with pytest.raises(ValueError, match="empty"):
        build_word_level_tokenizer([], 8)
    with pytest.raises(ValueError, match="model_max_length"):
        build_word_level_tokenizer(WORDS, 1)
    with pytest.raises(ValueError, match="special token"):
        build_word_level_tokenizer(WORDS + ["<unk>"], 8)


def test_known_words_lists_a_word_level_vocabulary_only():
    from diffusers_neodragon.data.vocab_tokenizer import known_words

    tokenizer = build_word_level_tokenizer(["Red", "circle", "red", "left"], model_max_length=8, bos_token="<s>")
    assert known_words(tokenizer) == ["red", "circle", "left"]
    assert known_words(object()) is None
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(BPE(vocab={"a": 0, "<unk>": 1}, merges=[], unk_token="<unk>"))
    bpe = PreTrainedTokenizerFast(tokenizer_object=bpe)
    assert known_words(bpe) is None
