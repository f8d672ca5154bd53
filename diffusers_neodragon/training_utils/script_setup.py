# SPDX-License-Identifier: Apache-2.0
"""The parts every training script sets up the same way: the common command-line options, the ``Accelerator``,
the optimiser and learning-rate schedule, and checkpoints that hold each trained model as a ``from_pretrained``
folder. A script adds only the options and the loop that are its own."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from .hub import create_hub_repo
from .run_control import resolve_trackers
from .sharding import full_model, keep_fsdp_forward_inputs, save_ema


SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    output_dir: str,
    tracker_project_name: str,
    learning_rate: float,
    train_batch_size: int,
    max_train_steps: int,
    checkpointing_steps: int,
    lr_warmup_steps: int = 100,
    adam_beta2: float = 0.999,
    adam_weight_decay: float = 1e-4,
    max_grad_norm: float = 1.0,
) -> argparse.ArgumentParser:
    """Optimisation, precision, seed, checkpoint, tracker, output and Hub options, with the script's defaults."""
    group = parser.add_argument_group("optimisation")
    group.add_argument("--train_batch_size", type=int, default=train_batch_size, help="Per device.")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1)
    group.add_argument("--max_train_steps", type=int, default=max_train_steps)
    group.add_argument("--max_train_seconds", type=float, default=None,
                       help="Also stop (and finish normally) once training has run this long.")
    group.add_argument("--learning_rate", type=float, default=learning_rate)
    group.add_argument("--lr_scheduler", type=str, default="constant_with_warmup")
    group.add_argument("--lr_warmup_steps", type=int, default=lr_warmup_steps)
    group.add_argument("--adam_beta1", type=float, default=0.9)
    group.add_argument("--adam_beta2", type=float, default=adam_beta2)
    group.add_argument("--adam_weight_decay", type=float, default=adam_weight_decay)
    group.add_argument("--adam_epsilon", type=float, default=1e-8)
    group.add_argument("--max_grad_norm", type=float, default=max_grad_norm, help="0: no clipping.")
    group.add_argument("--gradient_checkpointing", action="store_true")
    group.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"])
    group.add_argument("--allow_tf32", action=argparse.BooleanOptionalAction, default=True,
                       help="TF32 matmuls/convolutions on Ampere+ GPUs.")
    group.add_argument("--seed", type=int, default=0)
    group = parser.add_argument_group("checkpoints, logging and output")
    group.add_argument("--output_dir", type=str, default=output_dir)
    group.add_argument("--checkpointing_steps", type=int, default=checkpointing_steps, help="0: no checkpoints.")
    group.add_argument("--checkpoints_total_limit", type=int, default=None)
    group.add_argument("--resume_from_checkpoint", type=str, default=None, help='A checkpoint folder or "latest".')
    group.add_argument("--report_to", type=str, default="tensorboard", help='"tensorboard", "wandb", "all" or "none".')
    group.add_argument("--logging_dir", type=str, default="logs")
    group.add_argument("--tracker_project_name", type=str, default=tracker_project_name)
    group.add_argument("--save_dtype", type=str, default="fp32", choices=list(SAVE_DTYPES))
    group.add_argument("--push_to_hub", action="store_true")
    group.add_argument("--hub_model_id", type=str, default=None)
    group.add_argument("--hub_token", type=str, default=None)
    return parser


def parse_with_command(parser: argparse.ArgumentParser, input_args: Sequence[str] | None) -> argparse.Namespace:
    """Parse, keeping the command line as given (``args.command_args``) for the model card."""
    args = parser.parse_args(input_args)
    args.command_args = list(sys.argv[1:] if input_args is None else input_args)
    return args


def setup_accelerator(args):
    """``(accelerator, hub repo id or None)``: mixed precision, accumulation, trackers and the project folder from
    the common options; TF32 and the seed set; the output folder (and Hub repository) made on the main process."""
    from accelerate import Accelerator  # noqa: PLC0415
    from accelerate.utils import DistributedType, ProjectConfiguration, set_seed  # noqa: PLC0415

    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=resolve_trackers(args.report_to),
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
    )
    keep_fsdp_forward_inputs(accelerator)
    is_deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if is_deepspeed and not accelerator.state.deepspeed_plugin.zero3_init_flag:
        # accelerate registers its ZeRO-3 config with transformers even with zero3_init_flag off, and transformers
        # then builds every model partitioned (zero.Init): the frozen text encoders would hold empty weights outside
        # the engine. The trained model is partitioned by the engine at ``prepare``.
        from transformers.integrations import unset_hf_deepspeed_config  # noqa: PLC0415

        unset_hf_deepspeed_config()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    set_seed(args.seed)
    repo_id = None
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        repo_id = create_hub_repo(args)
    return accelerator, repo_id


def build_optimizer(parameters: Iterable[torch.nn.Parameter], args, accelerator, learning_rate: float | None = None):
    """AdamW over the parameters that require a gradient (fused on CUDA), with the common options."""
    trainable = [p for p in parameters if p.requires_grad]
    if not trainable:
        raise ValueError("Nothing to train: every parameter is frozen.")
    fused = {"fused": True} if accelerator.device.type == "cuda" else {}
    return torch.optim.AdamW(
        trainable, lr=args.learning_rate if learning_rate is None else learning_rate,
        betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.adam_weight_decay, eps=args.adam_epsilon, **fused,
    )


def build_lr_scheduler(optimizer, args, accelerator):
    """``--lr_scheduler`` with warm-up, counted in optimiser steps of every process (accelerate steps it per
    process)."""
    from diffusers.optimization import get_scheduler  # noqa: PLC0415

    return get_scheduler(
        args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )


def register_folder_checkpoints(accelerator, folders: Sequence[tuple[str, type]], emas: dict | None = None,
                                model_of=None) -> None:
    """Make ``accelerator.save_state`` write each prepared model as a ``from_pretrained`` folder (safetensors) and
    ``load_state`` read it back, instead of accelerate's own weight files.

    ``folders``: ``(subfolder, model class)`` for the models passed to ``accelerator.prepare``, in that order.
    ``emas``: ``{subfolder: EMAModel}`` saved and restored beside them. ``model_of``: maps an unwrapped prepared
    module to the model saved (e.g. a training wrapper's inner model); default: the module itself.
    Only the optimiser, schedule and RNG states stay in accelerate's format (local training state, never published);
    under FSDP accelerate also writes (and on resume reads) the sharded weights, and the folders hold the whole ones.
    Call ``save_state`` on every process (gathering sharded weights is collective).
    """
    emas = emas or {}
    model_of = model_of or (lambda module: module)

    def save_hook(models, weights, folder):
        # Every process: under FSDP gathering the whole weights is collective; the main process writes.
        for (name, _), model in zip(folders, models):
            whole = full_model(accelerator, model, model_of)
            if accelerator.is_main_process:
                whole.save_pretrained(os.path.join(folder, name))
        for name, ema in emas.items():
            save_ema(ema, os.path.join(folder, name), accelerator.is_main_process)
        weights.clear()  # nothing left for accelerate to write in its own format (FSDP: it wrote its shards already)

    def load_hook(models, folder):
        # Under FSDP ``models`` is empty: accelerate has loaded the sharded weights it saved beside the folders.
        for (name, cls), model in zip(folders, list(models)):
            target = model_of(accelerator.unwrap_model(model))
            loaded = cls.from_pretrained(folder, subfolder=name, torch_dtype=torch.float32)
            target.register_to_config(**loaded.config)
            target.load_state_dict(loaded.state_dict())
            del loaded
        models.clear()
        for name, ema in emas.items():
            from diffusers.training_utils import EMAModel  # noqa: PLC0415

            loaded = EMAModel.from_pretrained(os.path.join(folder, name), ema.model_cls, foreach=ema.foreach)
            ema.load_state_dict(loaded.state_dict())  # whole tensors: update_ema splits them again under FSDP
            ema.to(accelerator.device)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
