"""training_utils.sharding in one process: gradient checkpointing through the models' own switch (QuickSRNet's gives
the same gradients), a clear error for a model without one, and the EMA / whole-model helpers reducing to the plain
operations. The sharded (FSDP2) paths run in tests/training/test_distributed.py."""

import pytest
import torch
from diffusers.training_utils import EMAModel

from diffusers_neodragon import QuickSRNet
from diffusers_neodragon.training_utils.sharding import (
    enable_gradient_checkpointing,
    full_model,
    shard_frozen_model,
    update_ema,
    whole_model,
)


def test_quicksrnet_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = QuickSRNet(num_channels=8, num_intermediate_layers=2)
    torch.nn.init.normal_(model.conv_out.weight, std=0.1)
    sample = torch.randn(2, 3, 8, 8)

    def grads():
        model.zero_grad()
        model(sample).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    enable_gradient_checkpointing(model)
    assert model.gradient_checkpointing
    for a, b in zip(plain, grads()):
        torch.testing.assert_close(a, b)


def test_a_model_without_checkpointing_is_an_error():
    with pytest.raises(ValueError, match="gradient checkpointing"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))


def test_ema_and_whole_model_in_one_process():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = QuickSRNet(num_channels=4, num_intermediate_layers=1)
    ema = EMAModel(model.parameters(), decay=0.5, model_cls=QuickSRNet, model_config=model.config)
    reference = EMAModel(model.parameters(), decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    update_ema(ema, model)
    reference.step(model.parameters())
    for a, b in zip(ema.shadow_params, reference.shadow_params):
        torch.testing.assert_close(a, b)
    assert full_model(accelerator, model) is model
    averaged = full_model(accelerator, model, ema=ema)
    assert averaged is not model
    for p, shadow in zip(averaged.parameters(), ema.shadow_params):
        torch.testing.assert_close(p, shadow)
    with pytest.raises(ValueError, match="EMA holds"):
        update_ema(EMAModel(list(model.parameters())[:1]), model)


def test_frozen_models_stay_whole_in_one_process_and_must_be_frozen():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = QuickSRNet(num_channels=4, num_intermediate_layers=1)
    with pytest.raises(ValueError, match="frozen model"):
        shard_frozen_model(accelerator, model)
    model.requires_grad_(False)
    assert shard_frozen_model(accelerator, model) is model
    assert whole_model(model) is model
