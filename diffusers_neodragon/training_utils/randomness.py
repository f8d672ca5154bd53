# SPDX-License-Identifier: Apache-2.0
"""Resumable randomness: every draw of a step is a pure function of (seed, step, process), every epoch's order of
(seed, epoch), so a run resumed from a checkpoint draws exactly what the uninterrupted run drew."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def step_generator(seed: int, step: int, process_index: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator for all the randomness of one (micro-)step, a pure function of (seed, step, process).

    Deriving the noise, timesteps, stage, unit count and caption dropout of step ``k`` from ``(seed, k, rank)``
    makes a run resumed from a checkpoint draw exactly what the uninterrupted run drew, without depending on
    global RNG states.
    """
    state = np.random.SeedSequence([int(seed), int(step), int(process_index)]).generate_state(2, np.uint32)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
    return generator


def uniform(generator: torch.Generator | None, *shape: int) -> torch.Tensor:
    """U(0, 1) of ``shape`` on the generator's device (the global RNG on the CPU when ``generator`` is None)."""
    device = generator.device if generator is not None else "cpu"
    return torch.rand(shape, generator=generator, device=device)


def randint(generator: torch.Generator | None, low: int, high: int) -> int:
    """One integer in [low, high) drawn from ``generator`` (the global RNG when None)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(low, high, (1,), generator=generator, device=device).item())


class EpochShuffleSampler(torch.utils.data.Sampler):
    """Shuffled indices whose order is a pure function of (seed, epoch): resumable without saved RNG state.

    Accelerate's data loaders call ``set_epoch`` on it; combine with ``accelerator.skip_first_batches`` to resume
    mid-epoch.
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True):
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples

