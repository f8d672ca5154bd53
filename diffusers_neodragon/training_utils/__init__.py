# SPDX-License-Identifier: Apache-2.0
"""What every training script shares (reachable by tests), one concern per module:

* :mod:`.losses` — flow matching (per sample, optional object term), VAE reconstruction, object masks, PSNR, LPIPS;
* :mod:`.pyramid_batch` — the stage mix, caption dropout, history sampling, one stage's training example
  (all noise/sigma math through :class:`~diffusers_neodragon.PyramidalDMDScheduler`), the model's own frames as history;
* :mod:`.randomness` — per-step generators and epoch shuffling that make a resumed run draw what the original drew;
* :mod:`.initialization` — the transformer's from-scratch init and the parameters DDP must not train;
* :mod:`.checkpoints` — ``checkpoint-<step>`` folders (save, rotate, resume) and a run's trained VAE;
* :mod:`.run_control` — trackers, resuming, the batches of a (resumed) run, when to stop, the end of the loop;
* :mod:`.script_setup` — the common options, the accelerator, optimiser, schedule and folder checkpoints;
* :mod:`.sharding` — FSDP2 (and ZeRO-3) differences: sharded EMA, whole-weight copies, gradient checkpointing,
  gradient clipping;
* :mod:`.hub` — ``--push_to_hub``;
* :mod:`.latent_statistics` — a VAE's latent normalisation constants, and latent noise for robust decoders;
* :mod:`.prompts` — prompt encoding for training (what the pipeline feeds the model, fixed length);
* :mod:`.frozen_offload` — frozen text encoders kept in CPU memory while a run with cached captions does not use them;
* :mod:`.arguments`, :mod:`.reporting` — small argument helpers; parameter counts, card figures, video strips and
  their tracker logs;
* :mod:`.pipeline_folders` — a compression operation's teacher pipeline folder and ``--pipeline_output``.

Each compression operation's own pieces, imported by their module path:

* :mod:`.latent_cache` — the Shapes training set encoded once (latents, caption table), shared by the flow-matching
  and DMD scripts;
* :mod:`.text_distillation`, :mod:`.token_shards` — text-encoder distillation: its loss, teacher/student token
  paths, held-out agreement; the target cache in safetensors shards;
* :mod:`.asymmetric_student`, :mod:`.perceptual`, :mod:`.generated_clips` — decoder distillation: the student built
  around the teacher's encoder; SSIM, encoder-feature and local-weights LPIPS losses; the teacher pipeline's own
  samples as training clips;
* :mod:`.block_pruning`, :mod:`.pruning_recovery` — block importance, pruning, the recovery record and stage-2 losses;
* :mod:`.dmd` — Pyramidal DMD: the DMD surrogate, the Cauchy loss, re-noising a student sample.

Model cards: :func:`diffusers_neodragon.utils.model_cards.write_model_card`. The Shapes world's stand-in text
encoders: :func:`diffusers_neodragon.data.shapes_text_encoders.build_shapes_text_encoders`.
"""

from .arguments import parse_int_list, parse_resolution, training_command
from .checkpoints import (
    CHECKPOINT_PREFIX,
    checkpoint_step,
    list_checkpoints,
    load_vae_folder,
    prune_checkpoints,
    resolve_resume_checkpoint,
    save_checkpoint,
)
from .frozen_offload import IdleOnCpu
from .hub import create_hub_repo, push_folder_to_hub
from .initialization import freeze_unused_parameters, initialize_transformer_weights
from .latent_statistics import compute_latent_statistics, perturb_latents
from .losses import (
    build_lpips,
    flow_matching_loss,
    flow_matching_loss_per_sample,
    foreground_mask,
    gaussian_kl,
    latent_foreground_mask,
    psnr,
    vae_reconstruction_loss,
)
from .pipeline_folders import keep_stored_components, save_pipeline_with, teacher_pipeline_path
from .prompts import TEXT_COMPONENT_NAMES, TEXT_ENCODER_NAMES, TEXT_MODULE_NAMES, encode_prompts, pooled_projection_dim
from .pyramid_batch import (
    CAPTION_DROPOUT_PROBABILITY,
    DEFAULT_SAMPLE_RATIOS,
    HISTORY_CORRUPTION_RATIO,
    PyramidTrainingBatch,
    caption_dropout_mask,
    drop_captions,
    frames_from_true_history,
    pyramid_training_batch,
    sample_num_history,
    sample_stage,
)
from .randomness import EpochShuffleSampler, randint, step_generator, uniform
from .reporting import count_parameters, format_float, log_image, video_strip
from .run_control import (
    backward_and_step,
    finish_training_loop,
    init_trackers,
    resolve_trackers,
    resume_global_step,
    should_stop,
    training_batches,
    training_time_is_up,
    window_mean,
)
from .script_setup import (
    SAVE_DTYPES,
    add_common_arguments,
    build_lr_scheduler,
    build_optimizer,
    parse_with_command,
    register_folder_checkpoints,
    setup_accelerator,
)


__all__ = [
    "CAPTION_DROPOUT_PROBABILITY",
    "CHECKPOINT_PREFIX",
    "DEFAULT_SAMPLE_RATIOS",
    "HISTORY_CORRUPTION_RATIO",
    "SAVE_DTYPES",
    "TEXT_COMPONENT_NAMES",
    "TEXT_ENCODER_NAMES",
    "TEXT_MODULE_NAMES",
    "EpochShuffleSampler",
    "IdleOnCpu",
    "PyramidTrainingBatch",
    "add_common_arguments",
    "backward_and_step",
    "build_lpips",
    "build_lr_scheduler",
    "build_optimizer",
    "caption_dropout_mask",
    "checkpoint_step",
    "compute_latent_statistics",
    "count_parameters",
    "create_hub_repo",
    "drop_captions",
    "encode_prompts",
    "finish_training_loop",
    "flow_matching_loss",
    "flow_matching_loss_per_sample",
    "foreground_mask",
    "format_float",
    "frames_from_true_history",
    "freeze_unused_parameters",
    "gaussian_kl",
    "init_trackers",
    "initialize_transformer_weights",
    "keep_stored_components",
    "latent_foreground_mask",
    "list_checkpoints",
    "load_vae_folder",
    "log_image",
    "parse_int_list",
    "parse_resolution",
    "parse_with_command",
    "perturb_latents",
    "pooled_projection_dim",
    "prune_checkpoints",
    "psnr",
    "push_folder_to_hub",
    "pyramid_training_batch",
    "randint",
    "register_folder_checkpoints",
    "resolve_resume_checkpoint",
    "resolve_trackers",
    "resume_global_step",
    "sample_num_history",
    "sample_stage",
    "save_checkpoint",
    "save_pipeline_with",
    "setup_accelerator",
    "should_stop",
    "step_generator",
    "teacher_pipeline_path",
    "training_batches",
    "training_command",
    "training_time_is_up",
    "uniform",
    "vae_reconstruction_loss",
    "video_strip",
    "window_mean",
]
