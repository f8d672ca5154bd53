import copy

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline

from diffusers_neodragon import NeodragonPipeline, NeodragonPipelineOutput
from diffusers_neodragon.utils.cuda_graphs import CUDAGraphRunner, module_cuda_graph_runner
from diffusers_neodragon.utils.shared_weights import bytes_held
from tests.tiny_components import components, pipeline


SIZE = dict(height=64, width=64)


@pytest.fixture(scope="module")
def pipe():
    return pipeline()


def run(pipe, seed=0, **kwargs):
    kwargs = {**SIZE, "num_frames": 9, "output_type": "np", **kwargs}
    return pipe("a red circle moving left", generator=torch.Generator().manual_seed(seed), **kwargs).frames


def first_frame_image(size=64, seed=0):
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("num_frames", [9, 17])
@pytest.mark.parametrize("mode", ["hybrid", "monolithic"])
def test_text_to_video_is_deterministic_per_seed(pipe, mode, num_frames):
    kwargs = dict(mode=mode, num_frames=num_frames, num_inference_steps=2, super_resolution=False)
    video = run(pipe, **kwargs)
    assert video.shape == (1, num_frames, 64, 64, 3)
    assert np.isfinite(video).all() and 0 <= video.min() and video.max() <= 1
    np.testing.assert_array_equal(run(pipe, **kwargs), video)
    assert np.abs(run(pipe, seed=1, **kwargs) - video).max() > 1e-3


@pytest.mark.parametrize("mode", ["hybrid", "monolithic"])
def test_image_to_video(pipe, mode):
    image = first_frame_image()
    kwargs = dict(mode=mode, image=image, video_num_inference_steps=[1, 2, 1], super_resolution=False)
    video = run(pipe, num_frames=17, **kwargs)
    assert video.shape == (1, 17, 64, 64, 3)
    np.testing.assert_array_equal(run(pipe, num_frames=17, **kwargs), video)
    latents = run(pipe, num_frames=17, output_type="latent", **kwargs)
    other = run(pipe, num_frames=17, output_type="latent", **dict(kwargs, image=first_frame_image(seed=3)))
    assert not torch.allclose(other, latents)


def test_the_first_frame_comes_from_the_image(pipe):
    """Frame 0 is the VAE round trip of the (resized) image; the latent frame 0 equals its encoding."""
    image = first_frame_image(size=96)
    latents = run(pipe, image=image, output_type="latent", num_frames=9, mode="hybrid")
    pixels = pipe.video_processor.preprocess(image, height=64, width=64)
    # The noise is drawn before the image is encoded: replay that draw so the posterior sample matches.
    generator = torch.Generator().manual_seed(0)
    torch.randn((1, 4, 2, 8, 8), generator=generator)
    expected = pipe._encode_first_frame(pixels, 1, generator, "cpu", torch.float32)
    torch.testing.assert_close(latents[:, :, :1], expected)


def test_the_text_to_image_first_frame_is_resized_on_its_device_as_pillow_would(pipe):
    """The first frame stays a tensor, and its pixels equal the reference's path: the image pipeline's PIL output
    resized by Pillow's Lanczos and preprocessed."""
    first_frame_kwargs = {"num_inference_steps": 1, "timesteps": [999], "guidance_scale": 0.0}
    pil = pipe.first_frame_pipeline(prompt=["a red circle"], generator=torch.Generator().manual_seed(0),
                                    height=128, width=128, output_type="pil", **first_frame_kwargs).images
    through_pil = pipe.video_processor.preprocess(pil, height=64, width=64)
    pixels = pipe._first_frame_pixels(["a red circle"], 64, 64, torch.Generator().manual_seed(0), first_frame_kwargs)
    assert pixels.dtype == torch.float32 and pixels.shape == (1, 3, 64, 64)
    assert torch.equal(pixels, through_pil)
    assert len(set(pixels.flatten().tolist())) > 100  # a real image, not a flat one


def test_output_types_super_resolution_and_tuple(pipe):
    kwargs = dict(mode="monolithic", num_inference_steps=1, video_num_inference_steps=1)
    pil = run(pipe, output_type="pil", **kwargs)
    assert len(pil) == 1 and len(pil[0]) == 9 and pil[0][0].size == (128, 128)  # QuickSRNet 2x by default
    pt = run(pipe, output_type="pt", super_resolution=False, **kwargs)
    assert pt.shape == (1, 9, 3, 64, 64)
    latent = run(pipe, output_type="latent", **kwargs)
    assert latent.shape == (1, 4, 2, 8, 8)
    out = pipe("a cat", num_frames=1, return_dict=False, output_type="np", **SIZE, **kwargs)
    assert isinstance(out, tuple) and out[0].shape == (1, 1, 128, 128, 3)
    assert isinstance(pipe("a cat", num_frames=1, output_type="np", **SIZE, **kwargs), NeodragonPipelineOutput)


@pytest.mark.parametrize("chunk", [1, 2])
def test_decode_chunk_size_streams_decode_and_super_resolution_to_the_same_video(pipe, chunk):
    kwargs = dict(mode="monolithic", num_inference_steps=1, video_num_inference_steps=1, num_frames=17,
                  num_videos_per_prompt=2, output_type="pt")
    whole = run(pipe, decode_chunk_size=None, **kwargs)
    assert whole.shape == (2, 17, 3, 128, 128)
    torch.testing.assert_close(run(pipe, decode_chunk_size=chunk, **kwargs), whole, atol=1e-5, rtol=0)


def test_the_decode_streams_by_default(pipe, monkeypatch):
    """By default the VAE never decodes the whole clip at once (its feature maps set the pipeline's peak memory),
    and the video is the same."""
    kwargs = dict(mode="monolithic", num_inference_steps=1, video_num_inference_steps=1, num_frames=17,
                  output_type="pt")
    whole = run(pipe, decode_chunk_size=None, **kwargs)
    monkeypatch.setattr(pipe.vae, "decode", lambda *a, **k: pytest.fail("the whole clip was decoded at once"))
    torch.testing.assert_close(run(pipe, **kwargs), whole, atol=1e-5, rtol=0)


def test_float8_weights_halve_the_models_and_stay_close(pipe):
    pipe = pipeline()
    kwargs = dict(mode="hybrid", output_type="pt", super_resolution=False)
    before = run(pipe, **kwargs)
    bytes_before = sum(p.numel() * p.element_size() for p in pipe.transformer.parameters())
    pipe.enable_cuda_graphs()
    saved = pipe.enable_float8_weights(min_numel=0)
    assert isinstance(pipe.transformer._cuda_graphs, CUDAGraphRunner)  # graphs stay on (captured anew)
    unet = pipe.first_frame_pipeline.unet
    assert module_cuda_graph_runner(unet) is not None
    for model in (pipe.transformer, pipe.text_encoder_2, unet):
        assert any(b.dtype == torch.float8_e4m3fn for b in model.buffers()), type(model).__name__
    for model in (pipe.vae, pipe.text_encoder_3):
        assert not any(b.dtype == torch.float8_e4m3fn for b in model.buffers()), type(model).__name__
    assert 0 < saved < bytes_before * 10
    after = run(pipe, **kwargs)
    # Not equal (every weight rounded to 3 mantissa bits), but the same video up to that rounding's effect.
    assert not torch.equal(after, before)
    assert (after - before).abs().mean() < 0.05 * before.std()


def test_fused_qkv_projections_give_the_same_video_and_unfuse_restores_the_weights():
    pipe = pipeline()
    kwargs = dict(mode="hybrid", output_type="pt", super_resolution=False)
    before = run(pipe, **kwargs)
    state = {name: t.clone() for name, t in pipe.transformer.state_dict().items()}
    pipe.enable_cuda_graphs()
    assert pipe.fuse_qkv_projections(first_frame=True) is pipe
    assert isinstance(pipe.transformer._cuda_graphs, CUDAGraphRunner)  # graphs stay on (captured anew)
    assert any(name.endswith("to_qkv.weight") for name in pipe.transformer.state_dict())
    assert pipe.first_frame_pipeline.fusing_unet  # the first-frame UNet through diffusers
    assert any("to_qkv" in name for name, _ in pipe.first_frame_pipeline.unet.named_modules())
    torch.testing.assert_close(run(pipe, **kwargs), before, atol=1e-5, rtol=0)
    pipe.unfuse_qkv_projections()
    assert not pipe.first_frame_pipeline.fusing_unet
    assert all(torch.equal(t, state[name]) for name, t in pipe.transformer.state_dict().items())
    assert list(pipe.transformer.state_dict()) == list(state)

    pipe.fuse_qkv_projections().enable_float8_weights(min_numel=0)  # float8 after fusing quantises the fused layers
    assert type(pipe.transformer.transformer_blocks[0].attn.to_qkv).__name__ == "Float8WeightLinear"
    assert (run(pipe, **kwargs) - before).abs().mean() < 0.05 * before.std()
    quantised = pipeline()  # not the other way round: refused before anything is fused
    quantised.enable_float8_weights(min_numel=0)
    quantised.enable_cuda_graphs()
    with pytest.raises(ValueError, match="plain nn.Linear"):
        quantised.fuse_qkv_projections(first_frame=True)
    assert not getattr(quantised.first_frame_pipeline, "fusing_unet", False)
    assert isinstance(quantised.transformer._cuda_graphs, CUDAGraphRunner)  # left as it was


def pipeline_with_release_clips():
    """A hybrid pipeline whose first-frame CLIPs hold our CLIPs' weights, as the official release's do; and the
    bytes its construction saved."""
    parts = components()
    first_frame = parts["first_frame_pipeline"]
    for name in ("text_encoder", "text_encoder_2"):  # SDXL's CLIP-L has no projection nor (transformers 5) prefix
        ours = parts[name].state_dict()
        for key, tensor in getattr(first_frame, name).state_dict().items():
            tensor.copy_(next(v for k, v in ours.items() if k == key or k.endswith("." + key)))
    encoders = [*(parts[n] for n in ("text_encoder", "text_encoder_2")),
                *(getattr(first_frame, n) for n in ("text_encoder", "text_encoder_2"))]
    held = bytes_held(*encoders)
    pipe = NeodragonPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    first_frame.set_progress_bar_config(disable=True)
    return pipe, held - bytes_held(*encoders)


def test_first_frame_clips_equal_to_ours_are_held_once_and_compute_the_same(tmp_path):
    pipe, saved = pipeline_with_release_clips()
    first_frame = pipe.first_frame_pipeline
    assert saved == bytes_held(first_frame.text_encoder) + bytes_held(first_frame.text_encoder_2)
    embedding = pipe.text_encoder.get_input_embeddings().weight
    assert first_frame.text_encoder.get_input_embeddings().weight is embedding
    kwargs = dict(mode="hybrid", super_resolution=False)
    shared = run(pipe, **kwargs)
    for name in ("text_encoder", "text_encoder_2"):  # copies of their own again: the same video
        setattr(first_frame, name, copy.deepcopy(getattr(first_frame, name)))
    assert first_frame.text_encoder.get_input_embeddings().weight is not embedding
    np.testing.assert_array_equal(run(pipe, **kwargs), shared)
    pipe.save_pretrained(tmp_path)  # each folder complete; loading shares again
    loaded = NeodragonPipeline.from_pretrained(tmp_path)
    assert (loaded.first_frame_pipeline.text_encoder_2.text_projection.weight
            is loaded.text_encoder_2.text_projection.weight)
    other = pipeline()  # different weights (the tiny default pipeline's) stay apart
    assert other.first_frame_pipeline.text_encoder.get_input_embeddings().weight is not \
        other.text_encoder.get_input_embeddings().weight


def test_float8_weights_keep_shared_weights_shared():
    pipe, _ = pipeline_with_release_clips()
    encoders = [pipe.text_encoder_2, pipe.first_frame_pipeline.text_encoder_2]
    held = bytes_held(*encoders)
    pipe.enable_float8_weights(min_numel=0)
    ours, theirs = (e.text_model.encoder.layers[0].mlp.fc1 for e in encoders)  # both with projection
    assert ours.weight_float8.dtype == torch.float8_e4m3fn and theirs.weight_float8 is ours.weight_float8
    assert bytes_held(*encoders) < 0.6 * held  # each shared weight quantised once, not once per model


def test_float8_matmuls_multiply_the_transformer_in_float8_in_bfloat16():
    from diffusers_neodragon.utils.float8_weights import Float8WeightLinear

    pipe = pipeline().to(dtype=torch.bfloat16)
    kwargs = dict(mode="monolithic", num_inference_steps=1, video_num_inference_steps=1, super_resolution=False,
                  output_type="pt")
    before = run(pipe, **kwargs).float()
    pipe.enable_float8_weights(min_numel=0, float8_matmuls=True)
    swapped = [m for m in pipe.transformer.modules() if isinstance(m, Float8WeightLinear)]
    assert swapped and all(m.float8_matmul for m in swapped)  # the tiny widths are multiples of 16
    unet_layers = [m for m in pipe.first_frame_pipeline.unet.modules() if isinstance(m, Float8WeightLinear)]
    assert unet_layers and not any(m.float8_matmul for m in unet_layers)  # only the transformer multiplies in float8
    after = run(pipe, **kwargs).float()
    assert bool(after.isfinite().all()) and not torch.equal(after, before)
    assert (after - before).abs().mean() < 0.05 * before.std()


def test_batches_of_prompts_and_videos_per_prompt(pipe):
    kwargs = dict(mode="monolithic", num_inference_steps=1, video_num_inference_steps=1, super_resolution=False,
                  num_frames=9, output_type="np", **SIZE)
    generators = [torch.Generator().manual_seed(s) for s in range(4)]
    video = pipe(["a red circle", "a blue square"], num_videos_per_prompt=2, generator=generators, **kwargs).frames
    assert video.shape == (4, 9, 64, 64, 3)
    # Each video follows its own generator: video 2 alone with generator 2 and the same prompt is identical.
    single = pipe("a blue square", generator=torch.Generator().manual_seed(2), **kwargs).frames
    np.testing.assert_allclose(video[2], single[0], atol=1e-5)


def test_classifier_free_guidance_uses_the_negative_prompt(pipe):
    kwargs = dict(mode="monolithic", num_inference_steps=1, video_num_inference_steps=1, super_resolution=False)
    a = run(pipe, guidance_scale=7.0, video_guidance_scale=5.0, negative_prompt="a dog", **kwargs)
    b = run(pipe, guidance_scale=7.0, video_guidance_scale=5.0, negative_prompt="a green square", **kwargs)
    c = run(pipe, guidance_scale=1.0, video_guidance_scale=1.0, **kwargs)
    assert np.abs(a - b).max() > 1e-3 and np.abs(a - c).max() > 1e-3


def test_callback_on_step_end_sees_and_replaces_latents(pipe):
    seen = []

    def callback(p, step, timestep, tensors):
        seen.append((step, float(timestep), tuple(tensors["latents"].shape)))
        return {"latents": torch.zeros_like(tensors["latents"])} if step == len(seen) - 1 else {}

    latents = run(pipe, mode="monolithic", num_inference_steps=[2, 1, 1], video_num_inference_steps=[1, 1, 1],
                  output_type="latent", callback_on_step_end=callback)
    assert [s[0] for s in seen] == list(range(7))
    assert seen[0][1] == 1000.0 and seen[0][2] == (1, 4, 1, 2, 2) and seen[-1][2] == (1, 4, 1, 8, 8)
    assert torch.count_nonzero(latents) == 0  # the last replacement is what the pipeline returns


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt=""), "must not be empty"),
        (dict(prompt=["a cat", 3]), "non-empty string or a non-empty list of strings"),
        (dict(num_frames=10), r"8k\+1"),
        (dict(num_frames=0), r"8k\+1"),
        (dict(height=96), "`height` must be a positive multiple of 64"),
        (dict(width=0), "`width` must be a positive multiple of 64"),
        (dict(video_num_inference_steps=[1, 1]), "list of 3 positive ints"),
        (dict(video_num_inference_steps=0), "list of 3 positive ints"),
        (dict(num_inference_steps=[1, -1, 1], mode="monolithic"), "`num_inference_steps` must be"),
        (dict(guidance_scale=-1.0), "`guidance_scale` must be a finite number >= 0"),
        (dict(mode="fast"), "`mode` must be one of"),
        (dict(output_type="gif"), "`output_type` must be one of"),
        (dict(num_videos_per_prompt=0), "`num_videos_per_prompt` must be a positive int"),
        (dict(image="frame.png"), "must be a PIL image, a tensor, a numpy array"),
        (dict(image=torch.rand(1, 4, 64, 64)), "must be RGB"),
        (dict(image=[first_frame_image(), first_frame_image()]), "Got 2 images for 1 prompts"),
        (dict(negative_prompt=["a", "b"]), "`negative_prompt` has 2 entries"),
        (dict(generator=[torch.Generator(), torch.Generator()]), "Got 2 generators for a batch of 1"),
        (dict(latents=torch.randn(1, 4, 1, 8, 8)), "`latents` .* must have shape"),
        (dict(callback_on_step_end_tensor_inputs=["noise"]), "are not among"),
        (dict(max_sequence_length=0), "`max_sequence_length` must be a positive int"),
        (dict(decode_chunk_size=0), "`decode_chunk_size` must be a positive int"),
        (dict(history_noise=1.0), r"`history_noise` must be a number in \[0, 1\)"),
        (dict(history_noise=-0.1), r"`history_noise` must be a number in \[0, 1\)"),
        (dict(super_resolution=True, _no_sr=True), "has no super_resolution component"),
        (dict(mode="hybrid", _no_first_frame=True), "has no first_frame_pipeline"),
    ],
)
def test_check_inputs_rejects_bad_input_before_any_model_runs(kwargs, message):
    no_sr, no_first = kwargs.pop("_no_sr", False), kwargs.pop("_no_first_frame", False)
    pipe = pipeline(with_super_resolution=not no_sr, with_first_frame=not no_first)

    def forbid(*args, **kw):
        raise AssertionError("a model ran before the input was validated")

    for module in (pipe.transformer, pipe.vae, pipe.text_encoder_3, pipe.text_encoder):
        module.forward = forbid
    call = dict(prompt="a red circle", num_frames=9, **SIZE)
    call.update(kwargs)
    with pytest.raises(ValueError, match=message):
        pipe(**call)


def _same_output(a, b, **kwargs):
    va = run(a, **kwargs)
    vb = run(b, **kwargs)
    np.testing.assert_array_equal(va, vb)


def test_save_and_load_round_trip_bit_exact(tmp_path, pipe):
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "model_index.json").exists()
    assert (tmp_path / "first_frame_pipeline" / "model_index.json").exists()
    assert not list(tmp_path.rglob("*.bin")) and list(tmp_path.rglob("*.safetensors"))
    for loader in (NeodragonPipeline, DiffusionPipeline):
        loaded = loader.from_pretrained(tmp_path)
        assert type(loaded) is NeodragonPipeline
        loaded.set_progress_bar_config(disable=True)
        loaded.first_frame_pipeline.set_progress_bar_config(disable=True)
        _same_output(pipe, loaded, mode="hybrid", num_frames=17)
        _same_output(pipe, loaded, mode="monolithic", num_inference_steps=1, guidance_scale=3.0)


def test_configured_mode_prompt_suffix_and_negative_default(tmp_path):
    pipe = pipeline(with_first_frame=False)
    pipe.register_to_config(mode="monolithic", prompt_suffix=", red", default_negative_prompt="a dog")
    pipe.save_pretrained(tmp_path)
    loaded = NeodragonPipeline.from_pretrained(tmp_path)
    assert loaded.config.mode == "monolithic" and loaded.config.prompt_suffix == ", red"
    loaded.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=1, video_num_inference_steps=1, super_resolution=False)
    # Without a first-frame pipeline the configured monolithic mode is what makes a call without image work.
    suffixed = run(loaded, **kwargs)
    texts = []
    original = loaded._encode_texts
    loaded._encode_texts = lambda t, *a, **k: texts.append(list(t)) or original(t, *a, **k)
    np.testing.assert_array_equal(run(loaded, **kwargs), suffixed)
    assert texts[-1] == ["a dog", "a red circle moving left, red"]


def test_default_size_comes_from_the_config():
    pipe = pipeline(with_first_frame=False, with_super_resolution=False)
    pipe.register_to_config(default_height=64, default_width=128, default_num_frames=9, mode="monolithic")
    video = pipe("a cat", num_inference_steps=1, video_num_inference_steps=1, output_type="np").frames
    assert video.shape == (1, 9, 64, 128, 3)


def test_default_guidance_scales_come_from_the_config_and_survive_save_load(tmp_path):
    pipe = pipeline(with_first_frame=False, with_super_resolution=False)
    kwargs = dict(mode="monolithic", num_inference_steps=1, video_num_inference_steps=1, num_frames=9,
                  output_type="latent")
    explicit = run(pipe, guidance_scale=30.0, video_guidance_scale=9.0, **kwargs)
    assert not np.allclose(explicit, run(pipe, **kwargs))  # the mode's 7 and 5 give another video
    pipe.register_to_config(default_guidance_scale=30.0, default_video_guidance_scale=9.0)
    pipe.save_pretrained(tmp_path)
    loaded = NeodragonPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.default_guidance_scale == 30.0
    torch.testing.assert_close(run(loaded, **kwargs), explicit)
    # A call's own scale still wins over the configured default.
    torch.testing.assert_close(run(loaded, guidance_scale=7.0, video_guidance_scale=5.0, **kwargs),
                               run(pipe.__class__(**pipe.components), **kwargs))


def test_history_noise_mixes_gaussian_noise_into_the_history_the_transformer_sees(pipe):
    """sigma * noise + (1 - sigma) * clean, with the noise redrawn here from the same generator state."""
    from diffusers.utils.torch_utils import randn_tensor

    histories = []
    original = pipe.transformer.forward

    def spy(*args, **kwargs):
        if kwargs.get("history"):
            histories.append([h.clone() for h in kwargs["history"]])
        return original(*args, **kwargs)

    latents = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    kwargs = dict(mode="monolithic", num_inference_steps=1, video_num_inference_steps=1, guidance_scale=1.0,
                  video_guidance_scale=1.0, output_type="latent")
    pipe.transformer.forward = spy
    try:
        clean = run(pipe, num_frames=17, latents=latents, **kwargs)
        clean_history = histories[0]  # latent frame 1, stage 0: the first frame's history clips
        histories.clear()
        noisy = run(pipe, num_frames=17, latents=latents, history_noise=0.4, **kwargs)
        noisy_history = histories[0]
    finally:
        pipe.transformer.forward = original
    torch.testing.assert_close(noisy[:, :, :1], clean[:, :, :1])  # the first frame has no history
    assert not torch.allclose(noisy[:, :, 1:], clean[:, :, 1:])
    # The generator state at the corruption: after the first frame's draws, which a one-frame call makes alike.
    generator = torch.Generator().manual_seed(0)
    pipe("a red circle moving left", **SIZE, num_frames=1, latents=latents[:, :, :1], generator=generator, **kwargs)
    for got, clip in zip(noisy_history, clean_history, strict=True):
        noise = randn_tensor(tuple(clip.shape), generator=generator, dtype=torch.float32)
        torch.testing.assert_close(got, 0.4 * noise + 0.6 * clip)
    torch.testing.assert_close(run(pipe, num_frames=17, latents=latents, history_noise=0.0, **kwargs), clean)


def test_default_history_noise_comes_from_the_config_and_survives_save_load(tmp_path):
    pipe = pipeline(with_first_frame=False, with_super_resolution=False)
    kwargs = dict(mode="monolithic", num_inference_steps=1, video_num_inference_steps=1, num_frames=17,
                  output_type="latent")
    assert pipe.config.default_history_noise == 0.0
    explicit = run(pipe, history_noise=0.3, **kwargs)
    pipe.register_to_config(default_history_noise=0.3)
    pipe.save_pretrained(tmp_path)
    loaded = NeodragonPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(run(loaded, **kwargs), explicit)
    assert not torch.allclose(run(loaded, history_noise=0.0, **kwargs), explicit)


def test_enable_cuda_graphs_wraps_and_restores_the_unet_and_text_encoders():
    pipe = pipeline()
    unet = pipe.first_frame_pipeline.unet
    kwargs = dict(mode="hybrid", num_frames=9, output_type="latent")
    eager = run(pipe, **kwargs)
    assert pipe.enable_cuda_graphs() is pipe
    runner = module_cuda_graph_runner(unet)
    assert isinstance(runner, CUDAGraphRunner) and unet.forward is runner
    assert isinstance(pipe.transformer._cuda_graphs, CUDAGraphRunner)
    assert runner.graph_pool is pipe.transformer._cuda_graphs.graph_pool and runner.clone_outputs  # one pool, copies
    assert runner.weights is unet and pipe.transformer._cuda_graphs.weights is pipe.transformer
    # Every text encoder (ours and the first-frame pipeline's) and the ContextAdapter, each wrapped once.
    encoders = [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3, pipe.context_adapter,
                pipe.first_frame_pipeline.text_encoder, pipe.first_frame_pipeline.text_encoder_2]
    encoders = list({id(m): m for m in encoders if m is not None}.values())
    assert len(encoders) >= 4
    for model in encoders:
        encoder_runner = module_cuda_graph_runner(model)
        assert model.forward is encoder_runner and encoder_runner.weights is model and encoder_runner.clone_outputs
        assert encoder_runner.graph_pool is runner.graph_pool
    # The VAE parts that run at batch 1: the video encoder (its cached, chunked calls stay eager) and the image
    # VAE's decoder of the first-frame pipeline.
    vae_parts = [pipe.vae.encoder, pipe.first_frame_pipeline.vae.decoder]
    for part in vae_parts:
        part_runner = module_cuda_graph_runner(part)
        assert part.forward is part_runner and part_runner.weights is part and part_runner.clone_outputs
        assert part_runner.graph_pool is runner.graph_pool
    pixels = torch.zeros(1, 3, 1, 64, 64)
    eager_when = module_cuda_graph_runner(pipe.vae.encoder).eager_when
    assert eager_when(pixels, {}) and eager_when(pixels, cache={}) and not eager_when(pixels)
    assert module_cuda_graph_runner(pipe.first_frame_pipeline.vae.decoder).eager_when is None
    torch.testing.assert_close(run(pipe, **kwargs), eager, rtol=0, atol=0)  # CPU: a pure passthrough
    assert runner.graphs == {} and pipe.transformer._cuda_graphs.graphs == {}

    # Moving the weights drops the graphs (checked on every CUDA call; called directly here, on the CPU).
    for r in (runner, pipe.transformer._cuda_graphs):
        r.drop_graphs_if_weights_moved()
        r.graphs["key"] = "seen"
        assert not r.drop_graphs_if_weights_moved() and r.graphs == {"key": "seen"}
    pipe.to(dtype=torch.float64)
    for r in (runner, pipe.transformer._cuda_graphs):
        assert r.drop_graphs_if_weights_moved() and r.graphs == {}
    pipe.to(dtype=torch.float32)
    assert module_cuda_graph_runner(unet) is runner and unet.forward is runner

    pipe.enable_cuda_graphs(False)
    for model in (unet, *encoders, *vae_parts):
        assert "forward" not in model.__dict__ and model.forward.__func__ is type(model).forward
    assert pipe.transformer._cuda_graphs is None
    torch.testing.assert_close(run(pipe, **kwargs), eager, rtol=0, atol=0)


def test_enable_cuda_graphs_without_a_first_frame_pipeline():
    pipe = pipeline(with_first_frame=False)
    pipe.enable_cuda_graphs()
    assert isinstance(pipe.transformer._cuda_graphs, CUDAGraphRunner)
    pipe.enable_cuda_graphs(False)
    assert pipe.transformer._cuda_graphs is None


def test_model_cpu_offload_turns_cuda_graphs_off_and_hooks_the_vae_entry_points():
    pipe = pipeline()
    kwargs = dict(mode="hybrid", num_frames=9, output_type="np")
    expected = run(pipe, **kwargs)
    pipe.enable_cuda_graphs()
    pipe.enable_model_cpu_offload(device="cpu")  # the hooks' mechanics, without an accelerator
    unet = pipe.first_frame_pipeline.unet
    assert pipe.transformer._cuda_graphs is None and module_cuda_graph_runner(unet) is None
    assert module_cuda_graph_runner(pipe.text_encoder_3) is None
    assert hasattr(unet, "_hf_hook") and hasattr(pipe.vae, "_hf_hook")
    loads = []
    pre_forward = pipe.vae._hf_hook.pre_forward
    pipe.vae._hf_hook.pre_forward = lambda module, *a, **k: loads.append(module) or pre_forward(module, *a, **k)
    np.testing.assert_array_equal(run(pipe, **kwargs), expected)
    assert len(loads) == 2  # encode (first frame) and decode load the VAE: neither goes through forward()
    with pytest.raises(ValueError, match="offload/device-map hooks"):
        pipe.enable_cuda_graphs()
    pipe.remove_all_hooks()
    assert not hasattr(unet, "_hf_hook") and not hasattr(pipe.transformer, "_hf_hook")
    pipe.enable_cuda_graphs()


def test_group_offload_turns_cuda_graphs_off_and_covers_the_first_frame_pipeline():
    pipe = pipeline()
    kwargs = dict(mode="hybrid", num_frames=9, output_type="np")
    expected = run(pipe, **kwargs)
    pipe.enable_cuda_graphs()
    # The hooks' mechanics, without an accelerator: onload to the CPU, where the weights already are.
    pipe.enable_group_offload(torch.device("cpu"), offload_type="leaf_level")
    unet = pipe.first_frame_pipeline.unet
    assert pipe.transformer._cuda_graphs is None and module_cuda_graph_runner(unet) is None
    for model in (pipe.transformer, pipe.vae, pipe.text_encoder_3, unet, pipe.first_frame_pipeline.vae):
        assert any(getattr(m, "_diffusers_hook", None) is not None for m in model.modules()), type(model).__name__
    np.testing.assert_array_equal(run(pipe, **kwargs), expected)
    with pytest.raises(ValueError, match="offload/device-map hooks"):
        pipe.enable_cuda_graphs()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_match_eager_on_cuda():
    pipe = pipeline().to("cuda")

    def generate():
        return pipe("a red circle moving left", generator=torch.Generator("cuda").manual_seed(0), num_frames=17,
                    output_type="latent", mode="hybrid", **SIZE).frames

    eager = generate()
    pipe.enable_cuda_graphs()
    for _ in range(3):  # eager, capture, replay
        # Loose: a kernel picked differently under capture may flip a uint8 pixel of the PIL first frame.
        torch.testing.assert_close(generate(), eager, rtol=1e-3, atol=5e-3)
    unet_runner = module_cuda_graph_runner(pipe.first_frame_pipeline.unet)
    assert unet_runner.num_graphs == 1 and pipe.transformer._cuda_graphs.num_graphs > 0
    assert unet_runner.pool == pipe.transformer._cuda_graphs.pool
    assert module_cuda_graph_runner(pipe.text_encoder_3).num_graphs == 1  # encoders captured too (not eager)
    assert module_cuda_graph_runner(pipe.vae.encoder).num_graphs == 1  # the first frame's encoding
    assert module_cuda_graph_runner(pipe.first_frame_pipeline.vae.decoder).num_graphs == 1


def test_enable_torch_compile_compiles_each_part_once_under_the_cuda_graphs():
    pipe = pipeline()
    kwargs = dict(mode="hybrid", num_frames=9, output_type="latent")
    eager = run(pipe, **kwargs)
    with pytest.raises(ValueError, match="Unknown parts"):
        pipe.enable_torch_compile(parts=["unet"])
    unet, decoder = pipe.first_frame_pipeline.unet, pipe.first_frame_pipeline.vae.decoder
    pipe.enable_cuda_graphs()
    # The eager backend runs Dynamo's capture without a C compiler, as on a CUDA machine, minus Inductor.
    assert pipe.enable_torch_compile(backend="eager") is pipe
    runner = module_cuda_graph_runner(unet)
    assert unet.forward is runner and runner.previous_forward is not None  # the graphs wrap the compiled forward
    for part in (unet, decoder, pipe.vae.encoder):  # the graphs wrap the compiled forwards
        assert hasattr(module_cuda_graph_runner(part).previous_forward, "_torchdynamo_orig_callable")
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(hasattr(block, "_compiled_call_impl") and block._compiled_call_impl is not None
               for block in pipe.transformer.transformer_blocks)
    compiled_decoder = module_cuda_graph_runner(decoder).previous_forward
    compiled_blocks = [block._compiled_call_impl for block in pipe.transformer.transformer_blocks]
    pipe.enable_torch_compile(backend="eager")  # a second call compiles nothing again
    assert module_cuda_graph_runner(decoder).previous_forward is compiled_decoder
    assert [block._compiled_call_impl for block in pipe.transformer.transformer_blocks] == compiled_blocks
    # Traced code may sum in another order: on the CI machine the latents (|x| up to 4.5) moved by 1.7e-4.
    torch.testing.assert_close(run(pipe, **kwargs), eager, rtol=0, atol=2e-3)
