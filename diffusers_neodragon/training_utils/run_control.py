# SPDX-License-Identifier: Apache-2.0
"""Run control shared by the training loops: trackers, when to stop, and the end of the loop."""

from __future__ import annotations

import logging
import time

import torch

from .checkpoints import save_checkpoint


logger = logging.getLogger(__name__)


def resolve_trackers(report_to: str | None):
    """``--report_to`` for ``Accelerator(log_with=...)``: None for "none", and None (with a warning) for
    tensorboard when it is not installed, so that a missing optional logger never stops a training run."""
    if report_to in (None, "", "none"):
        return None
    if report_to == "tensorboard":
        from accelerate.utils import is_tensorboard_available  # noqa: PLC0415

        if not is_tensorboard_available():
            logger.warning("tensorboard is not installed: tracker logging is off.")
            return None
    return report_to


def training_time_is_up(max_seconds: float | None, start_time: float, accelerator) -> bool:
    """True once ``max_seconds`` have passed since ``start_time`` (``time.perf_counter()``) on any process."""
    if max_seconds is None:
        return False
    # Every process must agree, or a distributed run would hang.
    flag = torch.tensor(float(time.perf_counter() - start_time > max_seconds), device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="max").item())


def should_stop(accelerator, args, global_step: int, start_time: float) -> bool:
    """True at an optimiser-step boundary (no accumulated gradient is dropped) once ``--max_train_steps`` or
    ``--max_train_seconds`` is reached; the same answer on every process."""
    return accelerator.sync_gradients and (
        global_step >= args.max_train_steps or training_time_is_up(args.max_train_seconds, start_time, accelerator)
    )


def finish_training_loop(script: str, accelerator, args, output_dir, start_step: int, global_step: int,
                         start_time: float) -> None:
    """After the loop: a last checkpoint when the final step was not a checkpoint step (so a stopped run resumes
    where it stopped), and the steps per second."""
    if args.checkpointing_steps and global_step > start_step and global_step % args.checkpointing_steps:
        save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
    seconds = time.perf_counter() - start_time
    accelerator.print(
        f"[{script}] trained steps {start_step}..{global_step} in {seconds:.1f} s "
        f"({(global_step - start_step) / max(seconds, 1e-9):.2f} steps/s)"
    )
