"""Run control: trackers and the time limit."""

import time

import torch

from diffusers_neodragon.training_utils import (
    resolve_trackers,
    training_time_is_up,
)


def test_resolve_trackers_and_training_time_is_up():

    class SingleProcess:  # what training_time_is_up needs of an Accelerator, without touching accelerate's state
        device = torch.device("cpu")

        @staticmethod
        def reduce(tensor, reduction):
            return tensor

    assert resolve_trackers("none") is None and resolve_trackers(None) is None
    assert resolve_trackers("wandb") == "wandb"
    accelerator = SingleProcess()
    now = time.perf_counter()
    assert not training_time_is_up(None, now - 1e6, accelerator)
    assert not training_time_is_up(60.0, now, accelerator)
    assert training_time_is_up(60.0, now - 61.0, accelerator)
