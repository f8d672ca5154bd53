import argparse

import pytest
import torch
from accelerate import Accelerator

from diffusers_neodragon.training_utils import add_common_arguments, build_optimizer, parse_with_command


def _parser():
    return add_common_arguments(
        argparse.ArgumentParser(), output_dir="out", tracker_project_name="t", learning_rate=1e-3, train_batch_size=4,
        max_train_steps=10, checkpointing_steps=5, adam_beta2=0.95,
    )


def test_common_arguments_take_the_script_defaults_and_keep_the_command():
    args = parse_with_command(_parser(), ["--learning_rate", "0.5"])
    assert (args.learning_rate, args.train_batch_size, args.adam_beta2, args.output_dir) == (0.5, 4, 0.95, "out")
    assert args.command_args == ["--learning_rate", "0.5"]


def test_build_optimizer_trains_only_what_requires_grad_and_refuses_nothing():
    args = parse_with_command(_parser(), [])
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    optimizer = build_optimizer(model.parameters(), args, accelerator)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 2
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="Nothing to train"):
        build_optimizer(model.parameters(), args, accelerator)
