"""The ONNX Runtime pipeline rewrites prompts with the normaliser its tokenizer names, as the torch pipeline does:
a typed phrasing reaches the text graph as the caption it stands for."""

import numpy as np
from transformers import AutoTokenizer

from diffusers_neodragon.export.ort_pipeline import ORTNeodragonPipeline
from diffusers_neodragon.pretrained import shapes_model_path


def text_graph_inputs(prompt: str) -> np.ndarray:
    pipe = ORTNeodragonPipeline.__new__(ORTNeodragonPipeline)  # only encode_text's state: no exported graphs
    pipe.tokenizers = {"tokenizer_3": AutoTokenizer.from_pretrained(f"{shapes_model_path()}/tokenizer_3")}
    pipe.max_sequence_length = 16
    fed = {}

    def run(name, feeds):
        fed[name] = feeds
        return [np.zeros((1, 16, 4), np.float32)] if name == "text_encoder" else [np.zeros((1, 4), np.float32)]

    pipe.run = run
    pipe.encode_text(prompt)
    return fed["text_encoder"]["input_ids"]


def test_a_typed_phrasing_feeds_the_caption_tokens():
    caption = text_graph_inputs("a large red circle moving left on a blue background")
    np.testing.assert_array_equal(text_graph_inputs("The RED circle, moving to the left, on blue background."), caption)
    assert not np.array_equal(text_graph_inputs("a large red square moving left on a blue background"), caption)
