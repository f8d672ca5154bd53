"""Resumable randomness: per-step generators and epoch shuffling."""


import torch

from diffusers_neodragon.training_utils import (
    EpochShuffleSampler,
    step_generator,
)


def test_step_generator_is_a_pure_function_of_seed_step_and_rank():
    draw = lambda g: torch.rand(4, generator=g)  # noqa: E731
    assert torch.equal(draw(step_generator(0, 3)), draw(step_generator(0, 3)))
    assert not torch.equal(draw(step_generator(0, 3)), draw(step_generator(0, 4)))
    assert not torch.equal(draw(step_generator(0, 3)), draw(step_generator(0, 3, process_index=1)))
    assert not torch.equal(draw(step_generator(0, 3)), draw(step_generator(1, 3)))


def test_epoch_shuffle_sampler():
    sampler = EpochShuffleSampler(10, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and first == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
