"""The Shapes prompt normaliser: training captions pass unchanged, user phrasings become the caption they mean, and
words it cannot use are returned rather than dropped silently; tokenizers switch it on through their saved config."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from diffusers_neodragon.data.shapes import fixed_prompt_set, parse_caption, sample_scene
from diffusers_neodragon.data.shapes_prompts import normalize_shapes_prompt
from diffusers_neodragon.data.vocab_tokenizer import build_word_level_tokenizer, prompt_normalizer


def test_every_training_caption_is_unchanged():
    rng = np.random.default_rng(0)
    captions = [sample_scene(rng, split, two_objects_prob=0.5).caption for split in ("train", "heldout")
                for _ in range(300)]
    captions += fixed_prompt_set("seen", 200) + fixed_prompt_set("heldout", 200) + [""]
    assert any(" and " in c for c in captions) and any("standing still" in c for c in captions)
    for caption in captions:
        assert normalize_shapes_prompt(caption).text == caption
        assert normalize_shapes_prompt(caption).ignored == ()


CANONICAL = "a large red circle moving left on a blue background"


@pytest.mark.parametrize("phrasing", [
    "a red circle moving left on a blue background",  # no size word: large
    "The red circle moving left on the blue background",
    "an large red circle moving left on a blue background",
    "A LARGE RED CIRCLE MOVING LEFT ON A BLUE BACKGROUND.",
    "a large red circle, moving left, on a blue background!",
    "red large circle moving left on blue background",
    "a big red circle moving to the left on a blue background",
    "a red circle moving towards the left on a blue background",
    "a red circle moves leftwards on a blue background",
    "a red circle heading leftward against a blue backdrop",
    "a left-moving red circle on a blue background",
    "a red circle on a blue background moving left",
    "on a blue background, a red circle goes left",
    "red circle, left, blue background",
    "background: blue. a red circle moving left",
    "  a   red\tcircle moving left on a blue background  ",
])
def test_user_phrasings_become_the_caption_they_mean(phrasing):
    assert normalize_shapes_prompt(phrasing).text == CANONICAL
    assert normalize_shapes_prompt(phrasing).ignored == ()


@pytest.mark.parametrize("phrasing, caption", [
    ("a small green square standing still on a black background",
     "a small green square standing still on a black background"),
    ("a tiny green square on a black background", "a small green square standing still on a black background"),
    ("a green square that is not moving on a black background",
     "a large green square standing still on a black background"),
    ("a stationary little green square on black background",
     "a small green square standing still on a black background"),
    ("a red circle moving up and a blue rhombus moving down on a white background",
     "a large red circle moving up and a large blue diamond moving down on a white background"),
    ("the red circle going up with a small blue diamond going down, white background",
     "a large red circle moving up and a small blue diamond moving down on a white background"),
    ("a yellow triangle drifting rightwards", "a large yellow triangle moving right"),  # no background: none invented
])
def test_other_attributes_motions_and_two_objects(phrasing, caption):
    result = normalize_shapes_prompt(phrasing)
    assert result.text == caption and result.ignored == ()
    if "background" in caption:
        parse_caption(result.text)  # the Shapes world's own parser reads it


@pytest.mark.parametrize("phrasing, caption, ignored", [
    ("a fluffy red circle moving quickly left on a blue background", CANONICAL, ("fluffy", "quickly")),
    ("a red blue circle moving left on a blue background", CANONICAL, ("blue",)),
    ("a red circle moving on a blue background", "a large red circle standing still on a blue background",
     ("moving",)),
    ("a purple elephant", "", ("purple", "elephant")),
    ("hello world", "", ("hello", "world")),
])
def test_words_it_cannot_use_are_returned(phrasing, caption, ignored):
    result = normalize_shapes_prompt(phrasing)
    assert (result.text, result.ignored) == (caption, ignored)


def test_bad_input_is_a_value_error():
    with pytest.raises(ValueError, match="must be a string"):
        normalize_shapes_prompt(None)
    with pytest.raises(ValueError, match="Unknown `prompt_normalizer` 'shape'"):
        build_word_level_tokenizer(["a"], 8, prompt_normalizer="shape")


def test_tokenizer_config_names_the_normaliser_and_keeps_it(tmp_path):
    assert prompt_normalizer(build_word_level_tokenizer(["a"], 8)) is None
    tokenizer = build_word_level_tokenizer(["a"], 8, prompt_normalizer="shapes")
    assert prompt_normalizer(tokenizer) is normalize_shapes_prompt
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert prompt_normalizer(loaded) is normalize_shapes_prompt
    loaded.init_kwargs["prompt_normalizer"] = "future"
    with pytest.raises(ValueError, match="names the prompt normaliser 'future'.*remove `prompt_normalizer`"):
        prompt_normalizer(loaded)
