"""The text-distillation loss and token paths against hand-computed values; the target-token cache."""

from types import SimpleNamespace

import pytest
import torch

from diffusers_neodragon.training_utils.text_distillation import (
    TokenAgreement,
    dt5_is_trained,
    text_stream_tokens,
    token_distillation_loss,
    token_errors,
)
from diffusers_neodragon.training_utils.token_shards import TokenShards, token_shards_ready, write_token_shards


# Row 0: token 0 equal to its target (mse 0, cos 1), token 1 orthogonal (mse (1 + 1) / 2 = 1, cos 0), token 2 padded
# (a huge error that must not count). Row 1: token 0 = 2x its target (mse (1 + 0) / 2 = 0.5, cos 1), rest padded.
PREDICTION = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [100.0, -100.0]], [[2.0, 0.0], [5.0, 5.0], [5.0, 5.0]]])
TARGET = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_loss_is_the_weighted_mse_plus_cosine_distance_over_valid_tokens():
    mse, cosine = token_errors(PREDICTION, TARGET, MASK)
    torch.testing.assert_close(mse, torch.tensor([0.0, 1.0, 0.5]))
    torch.testing.assert_close(cosine, torch.tensor([1.0, 0.0, 1.0]))
    loss, terms = token_distillation_loss(PREDICTION, TARGET, MASK)  # defaults 1.0 and 0.1
    # mean mse 1.5 / 3 = 0.5; mean distance (0 + 1 + 0) / 3 = 1/3; 0.5 + 0.1 / 3
    torch.testing.assert_close(loss, torch.tensor(0.5 + 0.1 / 3))
    assert terms == pytest.approx({"mse": 0.5, "cosine_distance": 1 / 3})
    loss, _ = token_distillation_loss(PREDICTION, TARGET, MASK, mse_weight=0.0, cd_weight=3.0)
    torch.testing.assert_close(loss, torch.tensor(1.0))


def test_loss_without_mask_counts_every_token_and_has_gradients():
    prediction = PREDICTION[:1, :2].clone().requires_grad_(True)
    loss, _ = token_distillation_loss(prediction, TARGET[:1, :2])
    torch.testing.assert_close(loss.detach(), torch.tensor(0.5 + 0.1 * 0.5))
    loss.backward()
    assert prediction.grad.abs().sum() > 0


def test_loss_rejects_mismatched_shapes_and_empty_masks():
    with pytest.raises(ValueError, match="differ in shape"):
        token_distillation_loss(PREDICTION, TARGET[:, :2], MASK)
    with pytest.raises(ValueError, match="keeps no token"):
        token_distillation_loss(PREDICTION, TARGET, torch.zeros_like(MASK))


def test_agreement_averages_over_tokens_not_batches():
    agreement = TokenAgreement()
    agreement.update(PREDICTION[:1], TARGET[:1], MASK[:1])  # 2 tokens: mse 0, 1; cos 1, 0
    agreement.update(PREDICTION[1:], TARGET[1:], MASK[1:])  # 1 token: mse 0.5, cos 1
    assert agreement.result() == pytest.approx({"mse": 0.5, "cosine": 2 / 3, "tokens": 3})


def test_text_stream_tokens_chains_encoder_adapter_and_embedder():
    def encoder(ids, attention_mask):
        features = ids.float().unsqueeze(-1).expand(-1, -1, 2) * attention_mask[..., None]
        return SimpleNamespace(last_hidden_state=features)

    adapter = lambda x: x + 1.0  # noqa: E731
    embedder = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        embedder.weight.copy_(torch.tensor([[1.0, 10.0]]))
    ids, mask = torch.tensor([[3, 4]]), torch.tensor([[1, 0]])
    assert text_stream_tokens(encoder, ids, mask).tolist() == [[[3.0, 3.0], [0.0, 0.0]]]
    assert text_stream_tokens(encoder, ids, mask, adapter).tolist() == [[[4.0, 4.0], [1.0, 1.0]]]
    assert text_stream_tokens(encoder, ids, mask, context_embedder=embedder).tolist() == [[[33.0], [0.0]]]
    assert text_stream_tokens(encoder, ids, mask, adapter, embedder).tolist() == [[[44.0], [11.0]]]


def test_which_modes_train_dt5():
    assert [dt5_is_trained(m, True) for m in ("RM", "EM", "TDT5", "LORA")] == [False, False, True, False]
    assert [dt5_is_trained(m, False) for m in ("RM", "EM", "TDT5", "LORA")] == [True, True, True, False]
    with pytest.raises(ValueError, match="mode"):
        dt5_is_trained("XX", True)


def test_token_shards_round_trip_variable_lengths(tmp_path):
    items = [torch.arange(2 * (i % 3 + 1), dtype=torch.float32).reshape(-1, 2) + i for i in range(7)]
    calls = []

    def compute(indices):
        calls.append(list(indices))
        return [items[i] for i in indices]

    assert not token_shards_ready(tmp_path, "v1")
    write_token_shards(tmp_path, 7, compute, "v1", shard_size=3, batch_size=2, dtype=torch.float16)
    assert calls == [[0, 1], [2], [3, 4], [5], [6]]  # batches never cross a shard
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == [f"shard-0000{i}.safetensors" for i in range(3)]
    assert token_shards_ready(tmp_path, "v1") and not token_shards_ready(tmp_path, "v2")
    shards = TokenShards(tmp_path)
    assert len(shards) == 7
    for i in range(7):
        assert torch.equal(shards[i], items[i]) and shards[i].dtype == torch.float32
    with pytest.raises(IndexError):
        shards[7]
    (tmp_path / "shard-00001.safetensors").unlink()
    assert not token_shards_ready(tmp_path, "v1")
