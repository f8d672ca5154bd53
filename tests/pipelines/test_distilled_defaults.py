"""A step-distilled student's saved defaults (its steps per stage, no CFG) and the hybrid setting with a nested
multi-step NeodragonPipeline (the teacher) making latent frame 0."""

import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from diffusers_neodragon import NeodragonPipeline
from tests.tiny_components import components


PROMPT = "a red circle moving left"


def student(teacher=None, **config):
    parts = components(0, with_first_frame=False, with_super_resolution=False)
    if teacher is not None:
        parts.update(vae=teacher.vae, first_frame_pipeline=teacher)
    pipe = NeodragonPipeline(**parts, default_height=64, default_width=64, default_num_frames=17, **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def teacher_pipeline():
    pipe = NeodragonPipeline(**components(1, with_first_frame=False, with_super_resolution=False), mode="monolithic",
                             default_height=64, default_width=64, default_num_frames=17,
                             default_num_inference_steps=2, default_video_num_inference_steps=[2, 1, 1])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def steps_of(pipe, **kwargs):
    calls = []
    pipe(PROMPT, output_type="latent", generator=torch.Generator().manual_seed(0),
         callback_on_step_end=lambda p, i, t, kw: calls.append(p.do_classifier_free_guidance) or {}, **kwargs)
    return pipe.num_timesteps, calls


def test_config_steps_are_the_defaults_of_a_call(tmp_path):
    """default_(video_)num_inference_steps replace the mode's steps (a call's own still win) and survive saving."""
    pipe = student(mode="monolithic", default_num_inference_steps=1, default_video_num_inference_steps=[1, 1, 1],
                   default_guidance_scale=0.0, default_video_guidance_scale=0.0)
    pipe.save_pretrained(tmp_path)
    loaded = NeodragonPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    total, cfg = steps_of(loaded)
    assert total == 3 + 3 * 2 and cfg == [False] * 9  # 3 latent frames, 1-1-1 each, no CFG
    assert steps_of(loaded, video_num_inference_steps=2)[0] == 3 + 6 * 2
    plain = student(mode="monolithic")
    assert steps_of(plain, num_frames=9)[0] == 60 + 30  # the monolithic mode's 20-20-20 / 10-10-10


def test_hybrid_with_a_nested_teacher_first_frame(tmp_path):
    """Frame 0 is the nested teacher's own monolithic sample (its configured steps, CFG), handed over as latents;
    later frames are the student's; the folder saves and loads (also through DiffusionPipeline) bit-exactly."""
    teacher = teacher_pipeline()
    pipe = student(teacher, mode="hybrid", default_video_num_inference_steps=1, default_video_guidance_scale=0.0)
    latents = pipe(PROMPT, output_type="latent", generator=torch.Generator().manual_seed(0)).frames
    assert latents.shape == (1, 4, 3, 8, 8) and pipe.num_timesteps == 2 * 3
    generator = torch.Generator().manual_seed(0)
    randn_tensor((1, 4, 3, 8, 8), generator=generator)  # the student's own noise is drawn first
    first = teacher(PROMPT, num_frames=1, output_type="latent", generator=generator).frames
    assert teacher.num_timesteps == 6  # 2-2-2 from its config
    torch.testing.assert_close(latents[:, :, :1], first)

    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "first_frame_pipeline" / "model_index.json").is_file()
    for loader in (NeodragonPipeline, DiffusionPipeline):
        loaded = loader.from_pretrained(tmp_path)
        assert type(loaded.first_frame_pipeline) is NeodragonPipeline and loaded.config.mode == "hybrid"
        loaded.set_progress_bar_config(disable=True)
        loaded.first_frame_pipeline.set_progress_bar_config(disable=True)
        again = loaded(PROMPT, output_type="latent", generator=torch.Generator().manual_seed(0)).frames
        torch.testing.assert_close(again, latents, rtol=0, atol=0)
        video = loaded(PROMPT, num_frames=9, output_type="np", generator=torch.Generator().manual_seed(0)).frames
        assert video.shape == (1, 9, 64, 64, 3)


def test_nested_first_frame_kwargs_cannot_override_what_the_call_fixes():
    """``first_frame_kwargs`` tune the nested teacher's sampler (steps, CFG); the prompt, size, frame count, generator
    and output type of frame 0 come from the call, and a clash is named instead of a duplicate-keyword TypeError."""
    pipe = student(teacher_pipeline(), mode="hybrid", default_video_num_inference_steps=1)
    with pytest.raises(ValueError, match=r"cannot set \['height', 'num_frames'\]"):
        pipe(PROMPT, output_type="latent", first_frame_kwargs={"height": 32, "num_frames": 2})
    latents = pipe(PROMPT, output_type="latent", first_frame_kwargs={"num_inference_steps": 1}).frames
    assert pipe.first_frame_pipeline.num_timesteps == 3  # 1-1-1 from first_frame_kwargs
    assert latents.shape == (1, 4, 3, 8, 8)


def test_cuda_graphs_cover_a_nested_first_frame_transformer():
    """The teacher's multi-step first frame is most of a hybrid student's DiT calls: its transformer is replayed
    from graphs too, and turned back to eager with the student's."""
    teacher = teacher_pipeline()
    pipe = student(teacher, mode="hybrid")
    expected = pipe(PROMPT, output_type="latent", generator=torch.Generator().manual_seed(0)).frames
    pipe.enable_cuda_graphs()
    assert teacher.transformer._cuda_graphs is not None and pipe.transformer._cuda_graphs is not None
    graphed = pipe(PROMPT, output_type="latent", generator=torch.Generator().manual_seed(0)).frames
    torch.testing.assert_close(graphed, expected, rtol=0, atol=0)  # CPU: the runners pass calls through
    pipe.enable_cuda_graphs(False)
    assert teacher.transformer._cuda_graphs is None and pipe.transformer._cuda_graphs is None
