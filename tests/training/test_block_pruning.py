"""Block importance hooks, keep-list choice and the pruned model (training_utils.block_pruning)."""

import pytest
import torch
from torch import nn

from diffusers_neodragon import NeodragonTransformer3DModel
from diffusers_neodragon.training_utils.block_pruning import (
    BlockImportance,
    check_keep,
    combined_importance,
    keep_after_dropping,
    prune_transformer,
)
from tests.tiny_components import tiny_transformer


class Rescale(nn.Module):
    """A block that multiplies every visual and text token by a positive number: cosine 1, BI 0."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, img, txt, temb, layout, last_only=False):
        if last_only:
            return img[:, -layout.num_last :] * self.factor, None
        return img * self.factor, txt * self.factor


class Swap(nn.Module):
    """A block that swaps the two halves of each token: cos(x, swap(x)) is computable by hand."""

    def forward(self, img, txt, temb, layout, last_only=False):
        def swap(x):
            return torch.cat([x[..., x.shape[-1] // 2 :], x[..., : x.shape[-1] // 2]], dim=-1)

        if last_only:
            return swap(img[:, -layout.num_last :]), None
        return swap(img), swap(txt)


def inputs(batch=2, frames=1, history=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, frames, 8, 8, generator=g)
    hist = [torch.randn(batch, 4, 1, 4, 4, generator=g)] if history else None
    text = torch.randn(batch, 5, 16, generator=g)
    pooled = torch.randn(batch, 16, generator=g)
    return dict(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=500.0, history=hist)


def test_importance_of_identity_scaling_and_turning_blocks():
    model = tiny_transformer(num_layers=3)
    model.transformer_blocks = nn.ModuleList([Rescale(1.0), Rescale(3.0), Swap()])
    data = inputs(history=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with BlockImportance(model) as importance, torch.no_grad():
        model(**data, encoder_attention_mask=mask)
    result = importance.result()
    assert result["calls"] == 1
    assert result["bi_visual"][0] == pytest.approx(0.0, abs=1e-6) and result["bi_text"][0] == pytest.approx(0, abs=1e-6)
    assert result["bi_visual"][1] == pytest.approx(0.0, abs=1e-6) and result["bi_text"][1] == pytest.approx(0, abs=1e-6)
    # the last block (context-pre-only): only the noisy clip's tokens; no text output, so BI_t is undefined
    assert result["bi_text"][2] is None
    with torch.no_grad():
        img = model.pos_embed([data["history"][0], data["hidden_states"]])[:, -16:] * 3.0
    half = img.shape[-1] // 2
    cos = (2 * (img[..., :half] * img[..., half:]).sum(-1) / img.pow(2).sum(-1)).mean()
    assert result["bi_visual"][2] == pytest.approx(1 - float(cos), abs=1e-5)
    assert result["bi_visual"][2] > 0.1


def test_text_importance_ignores_padding():
    model = tiny_transformer(num_layers=2)
    model.transformer_blocks = nn.ModuleList([Swap(), Rescale(1.0)])
    data = inputs(batch=1)
    text = data["encoder_hidden_states"]
    mask = torch.tensor([[1, 1, 0, 0, 0]])
    with BlockImportance(model) as importance, torch.no_grad():
        model(**data, encoder_attention_mask=mask)
    # No history: the model drops nothing, but the padded tokens must not count.
    t = model.context_embedder(text) if model.context_embedder is not None else text
    half = t.shape[-1] // 2
    cos = 2 * (t[0, :2, :half] * t[0, :2, half:]).sum(-1) / t[0, :2].pow(2).sum(-1)
    assert importance.result()["bi_text"][0] == pytest.approx(1 - float(cos.mean()), abs=1e-5)


def test_hooks_are_removed_and_need_a_call():
    model = tiny_transformer(num_layers=2)
    with BlockImportance(model) as importance:
        pass
    assert all(not block._forward_hooks for block in model.transformer_blocks)
    with pytest.raises(RuntimeError, match="No transformer call"):
        importance.result()


def test_combined_importance_and_keep_list():
    bi_v = [0.2, 0.1, 0.4, 0.05]
    bi_t = [0.01, 0.04, 0.02, None]
    assert combined_importance(bi_v, bi_t, "visual") == pytest.approx([0.5, 0.25, 1.0, 0.125])
    assert combined_importance(bi_v, bi_t, "text") == pytest.approx([0.25, 1.0, 0.5, 0.125])
    assert combined_importance(bi_v, bi_t, "mean") == pytest.approx([0.375, 0.625, 0.75, 0.125])
    assert combined_importance(bi_v, bi_t, "max") == pytest.approx([0.5, 1.0, 1.0, 0.125])
    assert keep_after_dropping([0.375, 0.625, 0.75, 0.125], 2) == [1, 2]
    assert keep_after_dropping([0.375, 0.625, 0.75, 0.125], 2, protect=[3]) == [2, 3]
    assert keep_after_dropping([0.5, 0.5, 1.0], 1) == [0, 2]  # a tie drops the later block
    with pytest.raises(ValueError, match="criterion"):
        combined_importance(bi_v, bi_t, "sum")
    with pytest.raises(ValueError, match="Cannot drop"):
        keep_after_dropping([1.0, 2.0], 2)
    for bad in ([], [2, 1], [0, 0], [0, 4]):
        with pytest.raises(ValueError):
            check_keep(bad, 4)


class Skip(nn.Module):
    """A dropped block, as the pruned model sees it: identity (the final block's call returns the noisy clip's
    tokens only)."""

    def forward(self, img, txt, temb, layout, last_only=False):
        return (img[:, -layout.num_last :], None) if last_only else (img, txt)


@pytest.mark.parametrize("keep", [[0, 2, 3], [1, 2], [0, 3], [2]])
def test_pruned_model_is_the_teacher_with_the_dropped_blocks_skipped(keep, tmp_path):
    """Keep-lists with and without the last block: when the teacher's last block is dropped, the new last block is
    converted to context-pre-only exactly. Round trip through save_pretrained / from_pretrained with block_origin."""
    teacher = tiny_transformer(num_layers=4, seed=1)
    pruned = prune_transformer(teacher, keep)
    assert pruned.config.num_layers == len(keep) and list(pruned.config.block_origin) == keep
    assert pruned.transformer_blocks[-1].context_pre_only
    assert not any(b.context_pre_only for b in pruned.transformer_blocks[:-1])
    skipped = tiny_transformer(num_layers=4, seed=1)
    for i in range(4):
        if i not in keep:
            skipped.transformer_blocks[i] = Skip()
    data = inputs(history=True, seed=3)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        expected = skipped(**data, encoder_attention_mask=mask).sample
        actual = pruned(**data, encoder_attention_mask=mask).sample
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)

    pruned.save_pretrained(tmp_path / "pruned")
    loaded = NeodragonTransformer3DModel.from_pretrained(tmp_path / "pruned")
    assert list(loaded.config.block_origin) == keep and loaded.config.num_layers == len(keep)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**data, encoder_attention_mask=mask).sample, actual)


def test_pruned_model_has_fewer_parameters_and_keeps_dtype():
    teacher = tiny_transformer(num_layers=4).to(torch.float64)
    pruned = prune_transformer(teacher, [0, 1, 2])
    assert next(pruned.parameters()).dtype == torch.float64
    count = sum(p.numel() for p in teacher.parameters())
    assert sum(p.numel() for p in pruned.parameters()) < count
