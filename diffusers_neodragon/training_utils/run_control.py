# SPDX-License-Identifier: Apache-2.0
"""Run control shared by the training loops: trackers, when to stop, and the end of the loop."""

from __future__ import annotations

import logging
import math
import time

import torch

from .checkpoints import save_checkpoint
from .sharding import clip_grad_norm


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
    where it stopped), the steps per second and, on a GPU, this process's peak memory (what a machine is sized by)."""
    if args.checkpointing_steps and global_step > start_step and global_step % args.checkpointing_steps:
        save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
    seconds = time.perf_counter() - start_time
    peak = ""
    if accelerator.device.type == "cuda":
        peak = f", peak GPU memory {torch.cuda.max_memory_allocated(accelerator.device) / 2**30:.2f} GiB"
    accelerator.print(
        f"[{script}] trained steps {start_step}..{global_step} in {seconds:.1f} s "
        f"({(global_step - start_step) / max(seconds, 1e-9):.2f} steps/s{peak})"
    )


def init_trackers(accelerator, args) -> None:
    """Start the trackers on the main process with the run's plain (int/float/str/bool) options as their config,
    the Hub token left out (tracker configs get uploaded)."""
    if accelerator.is_main_process:
        config = {k: v for k, v in vars(args).items()
                  if isinstance(v, (int, float, str, bool)) and k not in ("hub_token",)}
        accelerator.init_trackers(args.tracker_project_name, config=config)


def resume_global_step(accelerator, args, output_dir) -> int:
    """Load ``--resume_from_checkpoint`` (a folder or "latest") into the prepared objects; the optimiser step it
    was saved at, or 0 for a fresh run."""
    from .checkpoints import checkpoint_step, resolve_resume_checkpoint  # noqa: PLC0415

    resume_path = resolve_resume_checkpoint(output_dir, args.resume_from_checkpoint)
    if resume_path is None:
        return 0
    accelerator.print(f"Resuming from {resume_path}")
    accelerator.load_state(str(resume_path))
    return checkpoint_step(resume_path)


def training_batches(dataloader, accelerator, global_step: int, max_train_steps: int,
                     gradient_accumulation_steps: int = 1):
    """``(micro_step, batch)`` epoch after epoch from where a run at optimiser step ``global_step`` stopped (the
    batches it had used skipped, each epoch reshuffled through ``dataloader.set_epoch``), until ``max_train_steps``
    would be passed; the caller breaks out earlier when ``should_stop`` says so. ``micro_step`` is the batch's place
    in the run's sequence of batches over all processes (accelerate deals batch k of that sequence to process
    k mod N), counted from the run's start: per-step randomness drawn from it (``step_generator(seed, micro_step)``)
    is the same in a resumed run, and N processes draw for their batches what one process with N-fold gradient
    accumulation draws for the same batches."""
    steps_per_epoch = math.ceil(len(dataloader) / gradient_accumulation_steps)
    if steps_per_epoch == 0:
        raise ValueError("The training set is smaller than one batch: give more samples or a smaller batch.")
    if global_step >= max_train_steps:
        return
    first_epoch = global_step // steps_per_epoch
    resume_batches = (global_step % steps_per_epoch) * gradient_accumulation_steps
    for epoch in range(first_epoch, math.ceil(max_train_steps / steps_per_epoch)):
        dataloader.set_epoch(epoch)
        active, offset = dataloader, 0
        if epoch == first_epoch and resume_batches:
            active, offset = accelerator.skip_first_batches(dataloader, resume_batches), resume_batches
        for batch_index, batch in enumerate(active, start=offset):
            yield (epoch * len(dataloader) + batch_index) * accelerator.num_processes + accelerator.process_index, batch


def backward_and_step(accelerator, loss, model, optimizer, lr_scheduler=None, max_grad_norm: float = 0.0) -> None:
    """One (micro-)step: backward, gradient clipping at the end of an accumulation window, optimiser and schedule
    steps (accelerate's wrapped optimiser skips them until the window is complete), gradients cleared."""
    accelerator.backward(loss)
    if accelerator.sync_gradients and max_grad_norm > 0:
        clip_grad_norm(accelerator, model, max_grad_norm)
    optimizer.step()
    if lr_scheduler is not None:
        lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def window_mean(accelerator, losses: list) -> float:
    """The mean loss of an accumulation window over every process; empties ``losses`` for the next window."""
    value = accelerator.gather(torch.stack(losses).mean().reshape(1)).mean().item()
    losses.clear()
    return value
