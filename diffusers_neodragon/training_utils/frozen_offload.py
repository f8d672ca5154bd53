# SPDX-License-Identifier: Apache-2.0
"""Frozen text encoders off the accelerator while a run does not need them.

Once a script has encoded its captions into a cache, its text encoders only serve the main process's validation
videos and the saved pipeline; a Pyramid-Flow T5-XXL would still hold 8.8 GiB (bf16) of every GPU for the whole run.
:class:`IdleOnCpu` keeps them in CPU memory and brings them to the device only around their use (``in_use``), on
whichever process uses them: no collective is involved, unlike sharding them, which would make every process call
them in lockstep. On a CPU run it does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch


logger = logging.getLogger(__name__)


class IdleOnCpu:
    """``modules`` (``None`` entries skipped) parked in CPU memory while idle, on ``device`` inside ``in_use()``."""

    def __init__(self, modules: Iterable[torch.nn.Module | None], device: str | torch.device):
        self.modules = [m for m in modules if isinstance(m, torch.nn.Module)]
        self.device = torch.device(device)
        self.parked = False
        self.announced = False

    def _move(self, device: torch.device) -> None:
        for module in self.modules:
            module.to(device)

    def park(self) -> IdleOnCpu:
        """Move the modules to the CPU and release the accelerator memory they held."""
        if self.device.type == "cpu" or self.parked:
            return self
        self._move(torch.device("cpu"))
        self.parked = True
        if not self.announced:  # once: later parks follow each validation
            size = sum(p.numel() * p.element_size() for m in self.modules for p in m.parameters())
            logger.info(f"{len(self.modules)} idle module(s) parked in CPU memory: {size / 2**20:.1f} MiB off "
                        f"{self.device}")
            self.announced = True
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return self

    @contextmanager
    def in_use(self) -> Iterator[None]:
        """The modules on the device for the block (if parked), parked again after it, also when it raises."""
        if not self.parked:
            yield
            return
        self._move(self.device)
        self.parked = False
        try:
            yield
        finally:
            self.park()


__all__ = ["IdleOnCpu"]
