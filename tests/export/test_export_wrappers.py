"""The NPU-friendly formulations in the export wrappers equal the models (pure torch, no ONNX needed)."""

import pytest
import torch

from diffusers_neodragon.export import wrappers as W
from diffusers_neodragon.export.specs import ExportSize, pipeline_specs


TEXT_LEN = 16


def _text(width, valid=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(1, TEXT_LEN, width, generator=g)
    mask = torch.zeros(1, TEXT_LEN, dtype=torch.long)
    mask[:, :valid] = 1
    return text, mask, torch.randn(1, 16, generator=g)


@pytest.mark.parametrize("num_latent_frames", [2, 4])
def test_padded_stage_graphs_equal_the_transformer_for_every_history(tiny_pipe, num_latent_frames):
    """Every (stage, history length) call of the generation loop, through the padded fixed-shape stage wrapper with
    the additive float mask, host RoPE and host timestep projection, equals the model's own forward (bool prefix
    mask + unmasked fused attention, trimmed text)."""
    transformer, scheduler = tiny_pipe.transformer, tiny_pipe.scheduler
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, num_latent_frames, 8, 8, generator=g)
    text, mask, pooled = _text(16)
    params = W.timestep_projection_params(transformer)
    for stage in range(3):
        layout = W.stage_layout(stage, 3, num_latent_frames, 8, 8, TEXT_LEN, 2, 4)
        wrapper = W.TransformerStageWrapper(transformer, layout)
        for u in range(num_latent_frames):
            history = scheduler.pyramid(latents[:, :, :u]) if u else None
            conditions = scheduler.history_conditions(history, stage)
            x = torch.randn(1, 4, 1, layout.noisy_height, layout.noisy_width, generator=g)
            t = torch.tensor([731.0])
            with torch.no_grad():
                want = transformer(x, text[:, :5], pooled, t, history=conditions).sample
                slots, valid = W.pack_history(layout, conditions)
                attention = W.stage_attention_inputs(layout, valid, mask, 8, transformer.config.rope_theta)
                got = wrapper(x, **slots, encoder_hidden_states=text, pooled_projections=pooled,
                              timestep_proj=W.timestep_projection(t, params), **attention)
            torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5, msg=f"stage {stage}, {u} history frames")


def test_stage_layouts_hold_the_largest_history():
    layouts = [W.stage_layout(s, 3, 7, 40, 64, 128, 2, 16) for s in range(3)]
    assert [[(slot.level, slot.frames) for slot in layout.slots] for layout in layouts] == [
        [(0, 6)], [(0, 5), (1, 1)], [(0, 4), (1, 1), (2, 1)]]
    # The released 320x512 shapes: 5x8, 10x16, 20x32 tokens per frame; stage 2 = 128 + 4*40 + 160 + 640 + 640.
    assert [layout.seq_len for layout in layouts] == [128 + 7 * 40, 128 + 5 * 40 + 2 * 160, 1728]


def test_attention_bias_masks_padding_and_keeps_rows_finite():
    layout = W.stage_layout(1, 3, 3, 8, 8, 4, 2, 4)  # slots: 1 frame @ level 0 (1 token), 1 @ level 1 (4 tokens)
    inputs = W.stage_attention_inputs(layout, {"history_0": 0, "history_1": 1}, torch.tensor([1, 1, 0, 0]), 8, 1e4)
    bias = inputs["attention_bias"][0, 0]
    allowed = bias == 0
    # order: text(4) | history_0 (1 padded token) | history_1 (4 tokens, frame 0) | noisy (4 tokens, frame 1)
    assert not allowed[:, 4][torch.arange(13) != 4].any()  # the padded token is nobody's key ...
    assert allowed[4].tolist() == [i == 4 for i in range(13)]  # ... and sees only itself
    assert not allowed[:, 2:4][[0, 1, *range(5, 13)]].any()  # padded text is no key of a valid token
    assert allowed[9:, :].sum(1).tolist() == [2 + 4 + 4] * 4  # the noisy clip sees every valid token
    assert allowed[5:9, 9:].sum() == 0  # history does not see the future
    assert torch.isfinite(bias).all() and inputs["rope_cos"].shape == (9, 1, 4)


def test_decoder_step_streams_like_the_model(tiny_pipe):
    """Zero memories at the first step + keeping its last frame, then the memories carried: the model's decode."""
    vae = tiny_pipe.vae
    z = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    step = W.decoder_step_wrapper(vae)
    shapes = W.decoder_memory_shapes(vae, 8, 8)
    memories = {f"memory_{k}": torch.zeros(shape) for k, shape in enumerate(shapes)}
    frames = []
    with torch.no_grad():
        want = vae.decode(z).sample
        for i in range(z.shape[2]):
            video, *new = step(z[:, :, i : i + 1], **memories)
            memories = {f"memory_{k}": m for k, m in enumerate(new)}
            frames.append(video[:, :, vae.decoder.frames_to_trim :] if i == 0 else video)
    torch.testing.assert_close(torch.cat(frames, dim=2), want, atol=1e-6, rtol=1e-5)


def test_pipeline_specs_cover_every_component(tiny_pipe):
    specs = pipeline_specs(tiny_pipe, ExportSize(64, 64, 17))
    assert [s.name for s in specs] == [
        "text_encoder", "pooled_text", "transformer_stage_0", "transformer_stage_1", "transformer_stage_2",
        "decoder_step", "vae_encoder", "super_resolution", "t2i_text_encoder", "t2i_text_encoder_2", "t2i_unet",
        "t2i_vae_decoder"]
    text = specs[0]
    assert text.input_shapes() == {"input_ids": [1, 128], "attention_mask": [1, 128]}
    assert text.input_dtypes() == {"input_ids": "int32", "attention_mask": "int32"}
    with pytest.raises(ValueError, match="unknown components"):
        pipeline_specs(tiny_pipe, ExportSize(64, 64, 17), components=["nope"])
