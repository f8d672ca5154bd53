import inspect

import pytest
import torch
from diffusers.models.embeddings import get_2d_sincos_pos_embed

from diffusers_neodragon.models.transformers.transformer_neodragon import (
    JointAttentionLayout,
    NeodragonTransformer3DModel,
    apply_temporal_rope,
    sincos_2d_crop,
    temporal_rope_frequencies,
)
from tests.reference_utils import import_reference
from tests.tiny_components import tiny_transformer, transformer_config


# Three blocks (the last one context-pre-only), a pooled width unlike the model width, a position table to crop.
TINY = dict(num_layers=3, pooled_projection_dim=12, sample_size=32)


def tiny_model(seed=0, **overrides):
    return tiny_transformer(seed, std=0.3, **{**TINY, **overrides})


def inputs(batch=2, text_len=5, seed=1, channels=4):
    g = torch.Generator().manual_seed(seed)
    history = [torch.randn(batch, channels, 3, 4, 4, generator=g), torch.randn(batch, channels, 1, 8, 8, generator=g)]
    return dict(
        hidden_states=torch.randn(batch, channels, 1, 8, 8, generator=g),
        encoder_hidden_states=torch.randn(batch, text_len, 16, generator=g),
        pooled_projections=torch.randn(batch, 12, generator=g),
        timestep=torch.tensor([1000.0, 386.0][:batch]),
        history=history,
    )


def dense_forward(model, **kw):
    """The reference rule on every token with one dense mask and no pruning of the final block's queries."""
    original = model._layout

    def dense_layout(clips, text_mask, num_text, device):
        layout = original(clips, text_mask, num_text, device)
        seq = layout.num_text + sum(c.shape[2] * (c.shape[3] // 2) * (c.shape[4] // 2) for c in clips)
        tpos = [0] * num_text
        frame = 0
        for clip in clips:
            for _ in range(clip.shape[2]):
                tpos += [frame] * ((clip.shape[3] // 2) * (clip.shape[4] // 2))
                frame += 1
        tpos = torch.tensor(tpos)
        mask = (tpos[:, None] >= tpos[None, :])[None, None]
        if text_mask is not None:
            group = torch.cat([text_mask.bool(), torch.ones(text_mask.shape[0], seq - num_text, dtype=torch.bool)], 1)
            mask = mask & (group[:, None, :, None] == group[:, None, None, :])
        return JointAttentionLayout(0, mask, None, layout.rope, layout.num_text, layout.num_last)

    model._layout = dense_layout
    try:
        return model(**kw).sample
    finally:
        model._layout = original


def test_full_size_parameter_count():
    with torch.device("meta"):
        model = NeodragonTransformer3DModel()
    assert sum(p.numel() for p in model.parameters()) == 1_512_155_200
    with torch.device("meta"):
        upstream = NeodragonTransformer3DModel(num_layers=24, context_embedder_dim=4096)
    assert sum(p.numel() for p in upstream.parameters()) == 2_028_334_144


def test_output_shape_and_only_last_block_is_context_pre_only():
    model = tiny_model()
    out = model(**inputs()).sample
    assert out.shape == (2, 4, 1, 8, 8)
    assert [b.context_pre_only for b in model.transformer_blocks] == [False, False, True]
    assert not hasattr(model.transformer_blocks[-1].attn, "to_add_out")
    assert not hasattr(model.transformer_blocks[-1], "ff_context")


def test_split_attention_equals_dense_reference_rule():
    model = tiny_model()
    kw = inputs()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    for text_mask in (None, mask):
        fast = model(**kw, encoder_attention_mask=text_mask).sample
        dense = dense_forward(model, **kw, encoder_attention_mask=text_mask)
        torch.testing.assert_close(fast, dense, atol=1e-5, rtol=1e-5)


def test_padded_text_changes_nothing_and_can_be_dropped():
    model = tiny_model()
    kw = inputs(batch=1)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    out = model(**kw, encoder_attention_mask=mask).sample
    changed = dict(kw, encoder_hidden_states=kw["encoder_hidden_states"].clone())
    changed["encoder_hidden_states"][:, 3:] = 100.0
    torch.testing.assert_close(model(**changed, encoder_attention_mask=mask).sample, out, atol=1e-5, rtol=1e-5)
    trimmed = dict(kw, encoder_hidden_states=kw["encoder_hidden_states"][:, :3])
    torch.testing.assert_close(model(**trimmed).sample, out, atol=1e-5, rtol=1e-5)


def test_later_frames_do_not_change_earlier_frames():
    model = tiny_model()
    kw = inputs()
    kw["hidden_states"] = torch.randn(2, 4, 3, 8, 8)  # a 3-frame noisy clip: outputs per frame
    out = model(**kw).sample
    kw["hidden_states"] = kw["hidden_states"].clone()
    kw["hidden_states"][:, :, 2] += 1.0
    out2 = model(**kw).sample
    torch.testing.assert_close(out2[:, :, :2], out[:, :, :2])
    assert not torch.allclose(out2[:, :, 2], out[:, :, 2])


def test_history_matters_and_order_matters():
    model = tiny_model()
    kw = inputs()
    out = model(**kw).sample
    assert not torch.allclose(model(**dict(kw, history=None)).sample, out)
    swapped = [kw["history"][0].flip(2), kw["history"][1]]
    assert not torch.allclose(model(**dict(kw, history=swapped)).sample, out)


def test_sincos_crop_equals_slicing_the_sd3_table():
    full = get_2d_sincos_pos_embed(64, 24, base_size=8).reshape(24, 24, 64)
    crop = sincos_2d_crop(64, 24, 8, top=5, left=7, height=4, width=6)
    torch.testing.assert_close(crop, full[5:9, 7:13].reshape(-1, 64).float())


def test_history_clip_gets_the_resized_crop_of_the_noisy_grid():
    embed = tiny_model().pos_embed
    crop = embed.spatial_embedding((4, 4), (4, 4), "cpu")
    lower = embed.spatial_embedding((2, 2), (4, 4), "cpu")
    expected = torch.nn.functional.interpolate(
        crop.reshape(1, 4, 4, -1).permute(0, 3, 1, 2), size=(2, 2), mode="bilinear"
    ).permute(0, 2, 3, 1).reshape(4, -1)
    torch.testing.assert_close(lower, expected)
    top = (32 - 4) // 2
    torch.testing.assert_close(crop, sincos_2d_crop(16, 32, 16, top, top, 4, 4))


def test_temporal_rope_is_relative_and_identity_at_frame_zero():
    q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)
    cos, sin = temporal_rope_frequencies(torch.tensor([0, 3]), 8, 10000.0)
    torch.testing.assert_close(apply_temporal_rope(q[:, :1], cos[:1], sin[:1]), q[:, :1])
    shifted = temporal_rope_frequencies(torch.tensor([5, 8]), 8, 10000.0)
    dot = (apply_temporal_rope(q, cos, sin)[:, 0] * apply_temporal_rope(k, cos, sin)[:, 1]).sum()
    dot_shifted = (apply_temporal_rope(q, *shifted)[:, 0] * apply_temporal_rope(k, *shifted)[:, 1]).sum()
    torch.testing.assert_close(dot, dot_shifted, atol=1e-5, rtol=1e-5)


def test_context_embedder_and_bad_inputs():
    model = tiny_model(context_embedder_dim=20)
    kw = inputs()
    kw["encoder_hidden_states"] = torch.randn(2, 5, 20)
    assert model(**kw).sample.shape == (2, 4, 1, 8, 8)
    with pytest.raises(ValueError, match="multiples of patch_size"):
        model(**dict(kw, hidden_states=torch.randn(2, 4, 1, 7, 8)))
    with pytest.raises(ValueError, match=r"\[B=2, 4, T, H, W\]"):
        model(**dict(kw, hidden_states=torch.randn(2, 3, 1, 8, 8)))
    with pytest.raises(ValueError, match="encoder_attention_mask"):
        model(**kw, encoder_attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="block_origin"):
        NeodragonTransformer3DModel(**transformer_config(**TINY, block_origin=[0, 1]))


def test_save_load_round_trip_and_gradient_checkpointing(tmp_path):
    model = tiny_model(block_origin=[0, 2, 5])
    model.save_pretrained(tmp_path)
    loaded = NeodragonTransformer3DModel.from_pretrained(tmp_path).eval()
    assert loaded.config.block_origin == [0, 2, 5]
    kw = inputs()
    torch.testing.assert_close(loaded(**kw).sample, model(**kw).sample, atol=0, rtol=0)
    assert not any("pos_embed.pos_embed" in k for k in loaded.state_dict())

    model.train()
    model.enable_gradient_checkpointing()
    model(**kw).sample.square().mean().backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    # The final block's text queries feed outputs nobody reads (the reference discards them too).
    assert no_grad == {
        "transformer_blocks.2.attn.add_q_proj.weight", "transformer_blocks.2.attn.add_q_proj.bias",
        "transformer_blocks.2.attn.norm_add_q.weight",
    }


@pytest.mark.parametrize("with_padding", [False, True])
def test_matches_official_pyramid_mmdit(with_padding):
    reference = import_reference("pyramid_mmdit")
    torch.manual_seed(0)
    official = reference.PyramidMMDiT(**transformer_config(**TINY), caption_projection_dim=16).eval()
    with torch.no_grad():
        for param in official.parameters():
            param.normal_(0, 0.3)
    ours = NeodragonTransformer3DModel(**transformer_config(**TINY)).eval()
    state = {k: v for k, v in official.state_dict().items() if k != "pos_embed.pos_embed"}
    ours.load_state_dict(state, strict=True)
    kw = inputs()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]) if with_padding else torch.ones(2, 5, dtype=torch.long)
    expected = official(
        sample=[kw["history"] + [kw["hidden_states"]]],
        encoder_hidden_states=kw["encoder_hidden_states"],
        encoder_attention_mask=mask,
        pooled_projections=kw["pooled_projections"],
        timestep_ratio=kw["timestep"],
    )[0]
    got = ours(**kw, encoder_attention_mask=mask if with_padding else None).sample
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_cuda_graphs_are_a_passthrough_off_the_gpu():
    model = tiny_model()
    with torch.no_grad():
        expected = model(**inputs()).sample
        assert model.enable_cuda_graphs() is model
        for _ in range(3):  # eager, capture, replay on CUDA; always eager here
            torch.testing.assert_close(model(**inputs()).sample, expected, rtol=0, atol=0)
    assert model._cuda_graphs.graphs == {}
    model.enable_cuda_graphs(False)
    assert model._cuda_graphs is None


def _reference_rule_inputs(model, kw, text_mask):
    """The precomputed-layout arguments that describe ``kw``'s own layout (additive bias from the reference rule)."""
    frame_ids, frame = [], 0
    for clip in [*kw["history"], kw["hidden_states"]]:
        for _ in range(clip.shape[2]):
            frame_ids += [frame] * ((clip.shape[3] // 2) * (clip.shape[4] // 2))
            frame += 1
    frame_ids = torch.tensor(frame_ids)
    num_text = kw["encoder_hidden_states"].shape[1]
    tpos = torch.cat([torch.zeros(num_text, dtype=torch.long), frame_ids])
    valid = torch.cat([text_mask.bool(), torch.ones(text_mask.shape[0], len(frame_ids), dtype=torch.bool)], 1)
    allowed = (tpos[:, None] >= tpos[None, :]) & (valid[:, :, None] == valid[:, None, :])
    bias = torch.zeros(allowed.shape).masked_fill(~allowed, -1e4)[:, None]
    rope = temporal_rope_frequencies(frame_ids, model.config.attention_head_dim, model.config.rope_theta)
    return dict(attention_bias=bias, rotary_emb=rope, timestep_proj=model.timestep_projection(kw["timestep"]))


def test_precomputed_layout_arguments_equal_the_models_own_layout():
    """What the static-shape export passes (additive bias, RoPE tables, timestep projection) gives the same
    velocity as the model's own causal rule, padding mask and timestep."""
    model = tiny_model()
    kw = inputs()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        want = model(**kw, encoder_attention_mask=mask).sample
        given = _reference_rule_inputs(model, kw, mask)
        got = model(**{**kw, "timestep": None}, **given).sample
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="exactly one of `timestep` and `timestep_proj`"):
        model(**kw, timestep_proj=given["timestep_proj"])
    with pytest.raises(ValueError, match="no `encoder_attention_mask`"):
        model(**kw, encoder_attention_mask=mask, attention_bias=given["attention_bias"])
    with pytest.raises(ValueError, match="attention_bias must be"):
        model(**kw, attention_bias=given["attention_bias"][..., 1:])
    with pytest.raises(ValueError, match="rotary_emb covers"):
        model(**kw, rotary_emb=tuple(r[1:] for r in given["rotary_emb"]))


def test_unpatchify_equals_the_rank_7_form_bitwise():
    model = tiny_model()
    b, c, t, h, w, p = 2, 4, 3, 8, 12, 2
    tokens = torch.randn(b, t * (h // p) * (w // p), p * p * c)
    want = tokens.reshape(b, t, h // p, w // p, p, p, c).permute(0, 6, 1, 2, 4, 3, 5).reshape(b, c, t, h, w)
    torch.testing.assert_close(model.unpatchify(tokens, (b, c, t, h, w)), want, rtol=0, atol=0)


def test_fused_qkv_projections_equal_the_separate_ones_and_unfuse_restores_the_checkpoint(tmp_path):
    model = tiny_model()
    kw = inputs()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        expected = [model(**kw).sample, model(**kw, encoder_attention_mask=mask).sample]
        assert model.fuse_qkv_projections() is model
        model.fuse_qkv_projections()  # a second call changes nothing
        fused = model.state_dict()
        assert "transformer_blocks.0.attn.to_qkv.weight" in fused
        assert "transformer_blocks.0.attn.to_q.weight" not in fused
        assert "transformer_blocks.2.attn.to_kv.weight" in fused and "transformer_blocks.2.attn.to_q.weight" in fused
        assert sum(t.numel() for t in fused.values()) == sum(t.numel() for t in state.values())  # nothing held twice
        # one multiply instead of three: equal up to float32 rounding of a different summation order
        got = [model(**kw).sample, model(**kw, encoder_attention_mask=mask).sample]
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="unfuse_qkv_projections"):
            model.save_pretrained(tmp_path)
        model.unfuse_qkv_projections()
    assert list(model.state_dict()) == list(state)  # the checkpoint layout, in its order, bit for bit
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    model.save_pretrained(tmp_path)
    assert NeodragonTransformer3DModel.from_pretrained(tmp_path) is not None
    # pipelines hand `variant` only to a save_pretrained whose signature names it
    assert "variant" in inspect.signature(model.save_pretrained).parameters


def test_fusing_refuses_layers_that_are_not_plain_linears():
    from diffusers_neodragon.utils.float8_weights import quantize_weights_float8

    model = tiny_model()
    quantize_weights_float8(model, min_numel=1)
    with pytest.raises(ValueError, match="plain nn.Linear"):
        model.fuse_qkv_projections()
