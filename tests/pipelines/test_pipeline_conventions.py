"""diffusers' pipeline conventions: precomputed embeddings, callback-controlled properties, honest optional
components, the safety checker, and bad input refused (or reported) before any work."""

import logging

import numpy as np
import pytest
import torch

from diffusers_neodragon import NeodragonPipeline
from tests.tiny_components import (
    components,
    context_embedder_components,
    pipeline,
    safety_checker,
    single_clip_components,
)


SIZE = dict(height=64, width=64)
MONO = dict(mode="monolithic", num_inference_steps=[2, 1, 1], video_num_inference_steps=1, num_frames=17,
            super_resolution=False, **SIZE)
PROMPT = "a red circle moving left"


@pytest.fixture(scope="module")
def pipe():
    return pipeline()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    if pipe.first_frame_pipeline is not None:
        pipe.first_frame_pipeline.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------------------ prompt embeddings


@pytest.mark.parametrize("guidance", [1.0, 6.0])
def test_encode_prompt_then_call_with_the_embeddings_equals_calling_with_the_prompt(pipe, guidance):
    kwargs = dict(MONO, guidance_scale=guidance, video_guidance_scale=guidance, output_type="latent")
    prompts = [PROMPT, "a blue square moving up on a green background"]
    expected = pipe(prompts, negative_prompt="a dog", generator=gen(), **kwargs).frames
    with torch.no_grad():  # as __call__ runs it
        embeds = pipe.encode_prompt(prompts, negative_prompt="a dog", do_classifier_free_guidance=guidance > 1)
    names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds",
             "prompt_attention_mask", "negative_prompt_attention_mask")
    embeds = dict(zip(names, embeds, strict=True))
    assert embeds["prompt_embeds"].shape[0] == 2 and embeds["pooled_prompt_embeds"].shape == (2, 16)
    assert (embeds["negative_prompt_embeds"] is None) == (guidance <= 1)

    def forbid(*args, **kw):
        raise AssertionError("a text encoder ran although the embeddings were given")

    encoders = [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3]
    for encoder in encoders:
        encoder.forward = forbid
    try:
        got = pipe(generator=gen(), **embeds, **kwargs).frames
    finally:
        for encoder in encoders:
            del encoder.forward
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_prompt_embeds_with_a_negative_prompt_of_another_length(pipe):
    """Given embeddings with a negative prompt encoded by the call: padded to one length and masked."""
    kwargs = dict(MONO, guidance_scale=5.0, video_guidance_scale=5.0, output_type="latent")
    expected = pipe(PROMPT, negative_prompt="a dog", generator=gen(), **kwargs).frames
    with torch.no_grad():
        embeds, _, pooled, _, mask, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)
    assert mask is None  # a single prompt has no padding
    got = pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, negative_prompt="a dog", generator=gen(),
               **kwargs).frames
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_encode_prompt_works_without_the_denoising_components():
    parts = components(with_first_frame=False)
    only_text = NeodragonPipeline(**{k: (v if "text" in k or "token" in k or k == "context_adapter" else None)
                                     for k, v in parts.items()})
    ours = NeodragonPipeline(**parts)
    for a, b in zip(only_text.encode_prompt(PROMPT, num_videos_per_prompt=2),
                    ours.encode_prompt(PROMPT, num_videos_per_prompt=2), strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.shape[0] == 2
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt=None), "Pass `prompt`"),
        (dict(prompt_embeds="E"), "either `prompt` or `prompt_embeds`"),
        (dict(prompt=None, prompt_embeds="E"), "needs `pooled_prompt_embeds`"),
        (dict(prompt=None, prompt_embeds=torch.zeros(1, 3, 15), pooled_prompt_embeds="P"), r"\[batch, tokens, 16\]"),
        (dict(prompt=None, prompt_embeds="E", pooled_prompt_embeds=torch.zeros(1, 15)), r"\[1, 16\]"),
        (dict(prompt=None, prompt_embeds="E", pooled_prompt_embeds="P", prompt_attention_mask=torch.ones(1, 4)),
         "`prompt_attention_mask` must be a tensor"),
        (dict(negative_prompt="a dog", negative_prompt_embeds="E"), "either `negative_prompt` or"),
        (dict(negative_prompt_embeds=torch.zeros(2, 3, 16), negative_pooled_prompt_embeds=torch.zeros(2, 16)),
         "has batch 2 but the prompts number 1"),
        (dict(pooled_prompt_embeds="P"), "need `prompt_embeds`"),
        (dict(negative_pooled_prompt_embeds="P"), "need `negative_prompt_embeds`"),
        (dict(prompt=None, prompt_embeds="E", pooled_prompt_embeds="P", mode="hybrid"), "from the `prompt` text"),
    ],
)
def test_check_inputs_validates_the_embeddings(pipe, kwargs, message):
    given = {"E": torch.zeros(1, 3, 16), "P": torch.zeros(1, 16)}
    kwargs = {k: given.get(v, v) if isinstance(v, str) and k != "negative_prompt" else v for k, v in kwargs.items()}
    call = {**MONO, "prompt": PROMPT, **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe(**call)


# ----------------------------------------------------------------------------- properties and callbacks


def _per_step_latents(pipe, callback=None, **kwargs):
    seen = []

    def record(p, step, t, tensors):
        seen.append(tensors["latents"].clone())
        if callback is not None:
            callback(p, step)
        return {}

    pipe(PROMPT, generator=gen(), callback_on_step_end=record, output_type="latent", **MONO, **kwargs)
    return seen


def test_a_callback_changing_guidance_changes_only_the_later_steps(pipe):
    scales = dict(guidance_scale=4.0, video_guidance_scale=3.0)
    baseline = _per_step_latents(pipe, **scales)
    observed = []

    def change(p, step):
        observed.append((p.guidance_scale, p.video_guidance_scale, p.do_classifier_free_guidance, p.num_timesteps))
        if step == 1:
            p._guidance_scale = 9.0
        if step == 4:
            p._video_guidance_scale = 1.0  # CFG off from here: the positive rows alone

    changed = _per_step_latents(pipe, change, **scales)
    assert observed[0] == (4.0, 3.0, True, 4 + 3 * 2) and observed[2][0] == 9.0 and observed[-1][1] == 1.0
    assert not observed[-1][2]
    for step, (a, b) in enumerate(zip(baseline, changed, strict=True)):
        if step <= 1:
            torch.testing.assert_close(b, a, rtol=0, atol=0)
        else:
            assert not torch.equal(a, b), step


def test_a_callback_turning_cfg_on_where_the_call_encoded_a_negative_prompt(pipe):
    """First frame without CFG, later frames with: raising the first frame's scale mid-way takes effect."""
    scales = dict(guidance_scale=1.0, video_guidance_scale=3.0)
    baseline = _per_step_latents(pipe, **scales)
    changed = _per_step_latents(pipe, lambda p, step: setattr(p, "_guidance_scale", 5.0) if step == 0 else None,
                                **scales)
    torch.testing.assert_close(changed[0], baseline[0], rtol=0, atol=0)
    assert not torch.equal(changed[1], baseline[1])


def test_a_callback_setting_interrupt_stops_the_denoising(pipe):
    calls = []
    original = pipe.transformer.forward
    pipe.transformer.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        def stop(p, step, t, tensors):
            if step == 2:
                p._interrupt = True
            assert p.interrupt == (step == 2)
            return {}

        out = pipe(PROMPT, generator=gen(), callback_on_step_end=stop, output_type="np", **MONO)
    finally:
        del pipe.transformer.forward
    assert len(calls) == 3  # steps 0, 1, 2 ran; the remaining 7 were skipped
    assert out.frames.shape == (1, 17, 64, 64, 3)  # what was generated is still decoded
    pipe(PROMPT, generator=gen(), output_type="latent", **MONO)
    assert pipe.interrupt is False  # every call starts uninterrupted


# ------------------------------------------------------------------------------------- optional components


def _optional_cases():
    return {
        "text_encoder": lambda: single_clip_components(with_first_frame=False),
        "context_adapter": lambda: context_embedder_components(with_first_frame=False),
        "first_frame_pipeline": lambda: components(with_first_frame=False),
        "super_resolution": lambda: components(with_first_frame=False, with_super_resolution=False),
        "safety_checker": lambda: components(with_first_frame=False),
    }


def test_optional_components_are_the_honest_list():
    assert set(NeodragonPipeline._optional_components) == {
        "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3",
        "context_adapter", "first_frame_pipeline", "super_resolution", "safety_checker", "feature_extractor",
    }


@pytest.mark.parametrize("missing", sorted(_optional_cases()))
def test_save_and_load_with_an_optional_component_set_to_none(tmp_path, missing):
    parts = _optional_cases()[missing]()
    pipe = quiet(NeodragonPipeline(**parts))
    assert getattr(pipe, missing) is None
    kwargs = dict(MONO, guidance_scale=3.0, output_type="np", super_resolution=None)
    expected = pipe(PROMPT, generator=gen(), **kwargs).frames
    pipe.save_pretrained(tmp_path)
    loaded = quiet(NeodragonPipeline.from_pretrained(tmp_path))
    assert getattr(loaded, missing) is None
    np.testing.assert_array_equal(loaded(PROMPT, generator=gen(), **kwargs).frames, expected)


def test_text_encoder_2_may_be_the_absent_one(tmp_path):
    parts = single_clip_components(with_first_frame=False)
    parts.update(text_encoder=parts["text_encoder_2"], tokenizer=parts["tokenizer_2"], text_encoder_2=None,
                 tokenizer_2=None)
    pipe = quiet(NeodragonPipeline(**parts))
    video = pipe(PROMPT, generator=gen(), output_type="latent", **MONO).frames
    assert torch.isfinite(video).all()


@pytest.mark.parametrize(
    "change, call, message",
    [
        (dict(vae=None), {}, "no `vae` component"),
        (dict(transformer=None), {}, "no `transformer` component"),
        (dict(scheduler=None), {}, "no `scheduler` component"),
        (dict(text_encoder_3=None), {}, "no `text_encoder_3` component"),
        (dict(tokenizer_3=None), {}, "no `tokenizer_3` component"),
        (dict(tokenizer=None), {}, "no `tokenizer` component"),
        (dict(text_encoder=None), {}, "pooled_projection_dim \\(16\\); this pipeline's give 8"),
        (dict(text_encoder=None, text_encoder_2=None), {}, "give 0"),
        (dict(context_adapter=None), {}, "needs the `context_adapter`"),
    ],
)
def test_a_missing_required_component_is_named_in_a_value_error(change, call, message):
    parts = components(with_first_frame=False)
    parts.update(change)
    pipe = quiet(NeodragonPipeline(**parts))
    with pytest.raises(ValueError, match=message):
        pipe(PROMPT, generator=gen(), output_type="np", **MONO, **call)


def test_without_text_encoders_the_pipeline_runs_from_embeddings():
    pipe = pipeline(with_first_frame=False)
    no_cfg = dict(MONO, guidance_scale=1.0, video_guidance_scale=1.0, output_type="latent")
    with torch.no_grad():
        embeds, _, pooled, _, mask, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)
    expected = pipe(PROMPT, generator=gen(), **no_cfg).frames
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3"):
        setattr(pipe, name, None)
    got = pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, prompt_attention_mask=mask, generator=gen(),
               **no_cfg).frames
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no `text_encoder_3`, `tokenizer_3` component"):  # CFG: a negative prompt
        pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, generator=gen(), **dict(no_cfg, guidance_scale=3.0))


# ---------------------------------------------------------------------------------------- safety checker


def _checked_pipeline(weight):
    checker, processor = safety_checker()
    with torch.no_grad():  # a cosine is in [-1, 1]: a threshold weight of -2 flags everything, +2 nothing
        checker.concept_embeds_weights.fill_(weight)
        checker.special_care_embeds_weights.fill_(weight)
    return quiet(NeodragonPipeline(**components(with_first_frame=False), safety_checker=checker,
                                   feature_extractor=processor))


def test_the_safety_checker_blacks_out_flagged_frames():
    kwargs = dict(MONO, num_frames=9, output_type="np", num_videos_per_prompt=2)
    plain = quiet(pipeline(with_first_frame=False))
    expected = plain(PROMPT, generator=gen(), **kwargs)
    assert expected.nsfw_content_detected is None
    clean = _checked_pipeline(2.0)(PROMPT, generator=gen(), **kwargs)
    assert clean.nsfw_content_detected == [[False] * 9] * 2
    np.testing.assert_array_equal(clean.frames, expected.frames)
    flagged = _checked_pipeline(-2.0)(PROMPT, generator=gen(), **kwargs)
    assert flagged.nsfw_content_detected == [[True] * 9] * 2
    assert not flagged.frames.any()
    assert _checked_pipeline(-2.0)(PROMPT, generator=gen(), output_type="latent", **MONO).nsfw_content_detected is None


def test_the_safety_checker_flags_per_frame():
    pipe = _checked_pipeline(2.0)
    original = pipe.safety_checker.forward

    def flag_frame_12(clip_input, images):
        images, flags = original(clip_input=clip_input, images=images)
        return images, [i == 12 for i in range(len(flags))]  # video 1, frame 3 (9 frames per video)

    pipe.safety_checker.forward = flag_frame_12
    kwargs = dict(MONO, num_frames=9, output_type="np", num_videos_per_prompt=2)
    out = pipe(PROMPT, generator=gen(), **kwargs)
    assert out.nsfw_content_detected[1][3] and sum(map(sum, out.nsfw_content_detected)) == 1
    assert not out.frames[1, 3].any() and out.frames[1, 2].any() and out.frames[0, 3].any()


def test_safety_checker_flag_warning_and_save_load(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        NeodragonPipeline(**components(with_first_frame=False), requires_safety_checker=True)
    assert "disabled the safety checker" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        pipe = NeodragonPipeline(**components(with_first_frame=False))
    assert "safety checker" not in caplog.text and pipe.config.requires_safety_checker is False
    with pytest.raises(ValueError, match="needs the `feature_extractor`"):
        NeodragonPipeline(**components(with_first_frame=False), safety_checker=safety_checker()[0])
    pipe = _checked_pipeline(-2.0)
    pipe.register_to_config(requires_safety_checker=True)
    pipe.save_pretrained(tmp_path)
    loaded = quiet(NeodragonPipeline.from_pretrained(tmp_path))
    assert type(loaded.safety_checker).__name__ == "StableDiffusionSafetyChecker"
    assert loaded.config.requires_safety_checker is True
    out = loaded(PROMPT, generator=gen(), output_type="np", **dict(MONO, num_frames=9))
    assert out.nsfw_content_detected == [[True] * 9]


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(guidance_scale=float("nan")), "`guidance_scale` must be a finite number"),
        (dict(guidance_scale=float("inf")), "`guidance_scale` must be a finite number"),
        (dict(video_guidance_scale=1e30), "`video_guidance_scale` must be at most 100"),
        (dict(video_guidance_scale=101), "`video_guidance_scale` must be at most 100"),
        (dict(guidance_scale=True), "`guidance_scale` must be a finite number"),
        (dict(generator=42), "`generator` must be a torch.Generator or a list of them"),
        (dict(generator=[42]), "`generator` must be a torch.Generator or a list of them"),
    ],
)
def test_check_inputs_rejects_non_finite_numbers_and_bad_generators(kwargs, message):
    pipe = pipeline(with_first_frame=False)

    def forbid(*args, **kw):
        raise AssertionError("a model ran before the input was validated")

    for module in (pipe.transformer, pipe.vae, pipe.text_encoder_3, pipe.text_encoder):
        module.forward = forbid
    with pytest.raises(ValueError, match=message):
        pipe(**{"prompt": PROMPT, **MONO, **kwargs})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_generators_on_another_device():
    pipe = pipeline(with_first_frame=False).to("cuda")
    out = pipe(PROMPT, generator=torch.Generator().manual_seed(0), output_type="latent", **MONO).frames
    assert out.device.type == "cuda" and torch.isfinite(out).all()  # a CPU generator serves the GPU, as diffusers'
    pipe.to("cpu")
    with pytest.raises(ValueError, match="cannot draw the noise of a pipeline running on cpu"):
        pipe(PROMPT, generator=torch.Generator("cuda").manual_seed(0), output_type="latent", **MONO)


def test_unknown_words_are_reported_with_the_words_the_model_knows(pipe, caplog):
    with caplog.at_level(logging.WARNING):
        pipe("a purple elephant moving left", generator=gen(), output_type="latent", **MONO)
    warnings = [r.getMessage() for r in caplog.records if "vocabulary" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "['elephant', 'purple']" in warnings[0] and "tokenizer_3" in warnings[0]
    assert "The model knows only these words: a, an, the, red, green" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        pipe(PROMPT, generator=gen(), output_type="latent", **MONO)
    assert not caplog.records


def test_prompts_are_rewritten_only_when_a_tokenizer_names_a_normaliser(monkeypatch):
    """Real checkpoints' tokenizers name no normaliser: prompts reach them as typed. One that names the Shapes
    normaliser (here only tokenizer_3) has every text of the call rewritten before any tokenizer reads it."""
    from diffusers_neodragon.data import vocab_tokenizer

    pipe = pipeline(with_first_frame=False)
    typed, caption = "The red circle moves to the left", "a large red circle moving left"
    as_typed, as_caption = pipe.encode_prompt(typed), pipe.encode_prompt(caption)
    # Embeds and pooled: as typed, "the" and "moves" are other tokens.
    assert not torch.equal(as_typed[0], as_caption[0]) and not torch.equal(as_typed[2], as_caption[2])
    pipe.tokenizer_3.init_kwargs["prompt_normalizer"] = "shapes"
    for got, want in zip(pipe.encode_prompt(typed), pipe.encode_prompt(caption)):
        assert (got is None and want is None) or torch.equal(got, want)
    monkeypatch.setitem(vocab_tokenizer.PROMPT_NORMALIZERS, "other", lambda text: None)
    pipe.tokenizer.init_kwargs["prompt_normalizer"] = "other"
    with pytest.raises(ValueError, match=r"different prompt normalisers \(\[\['tokenizer'\], \['tokenizer_3'\]\]\)"):
        pipe.encode_prompt(typed)


def test_truncated_text_is_reported_per_tokenizer(pipe, caplog):
    long_prompt = "a red circle moving left on a blue background the cat the dog the green square"
    with caplog.at_level(logging.WARNING):
        pipe(long_prompt, generator=gen(), output_type="latent", max_sequence_length=6, **MONO)
    messages = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(messages) == 2, messages
    t5 = next(m for m in messages if "tokenizer_3" in m)
    clip = next(m for m in messages if "tokenizer (12 tokens)" in m)
    assert "'on a blue background the cat the dog the green square'" in t5  # 5 words + </s> kept
    assert "'cat the dog the green square'" in clip and "tokenizer_2 (12 tokens)" in clip  # <bos> + 10 words + <eos>
