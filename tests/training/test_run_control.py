"""Run control: trackers and the time limit."""

import time

import pytest
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


def test_training_batches_resume_where_the_run_stopped():
    """A run stopped after optimiser step k (accumulating 2 batches per step) continues with the batches and micro
    step numbers an uninterrupted run would have used; the epochs reshuffle; nothing past max_train_steps."""
    from accelerate import Accelerator

    from diffusers_neodragon.training_utils import EpochShuffleSampler, training_batches

    accelerator = Accelerator(cpu=True)

    def batches(global_step):
        loader = accelerator.prepare(torch.utils.data.DataLoader(
            range(10), batch_size=2, sampler=EpochShuffleSampler(10, seed=3), drop_last=True))
        return [(step, batch.tolist()) for step, batch in training_batches(loader, accelerator, global_step, 4, 2)]

    full = batches(0)
    # 5 batches an epoch = 3 optimiser steps of 2 (the last one short); 4 steps need 2 epochs
    assert [step for step, _ in full] == list(range(10))
    assert sorted(sum((b for _, b in full[:5]), [])) == list(range(10)) and full[:5] != full[5:]
    assert batches(1) == full[2:] and batches(3) == full[5:]
    assert batches(4) == []
    with pytest.raises(ValueError, match="smaller than one batch"):
        loader = torch.utils.data.DataLoader(range(1), batch_size=2, drop_last=True)
        next(training_batches(loader, accelerator, 0, 4))


def test_init_trackers_leaves_the_hub_token_out():
    import argparse

    from diffusers_neodragon.training_utils import init_trackers

    class Recorder:
        is_main_process = True

        def init_trackers(self, name, config):
            self.name, self.config = name, config

    recorder = Recorder()
    init_trackers(recorder, argparse.Namespace(tracker_project_name="p", hub_token="hf_secret", seed=3, stages=[1]))
    assert recorder.name == "p" and recorder.config == {"tracker_project_name": "p", "seed": 3}
