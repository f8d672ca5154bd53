#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""Train a pyramidal flow-matching text-to-video model (Pyramid-Flow's base objective) on the Shapes world or on
real captioned videos: ``--latents_dir`` (shards of ``training/extract_latents.py``), ``--video_folder`` with
``--metadata``, or ``--dataset_name`` (encoded once at the start with ``--cache_latents``, else every batch).

The model has Pyramid-Flow's layout, scaled down: a ``NeodragonTransformer3DModel`` with its own
``context_embedder`` reading a frozen "teacher" T5 (here a small, randomly initialised stand-in, see
``build_shapes_text_encoders``), two frozen CLIP text encoders for the pooled vector, and a frozen causal video VAE
trained by ``train_vae.py``. Objective (``diffusers_neodragon.training_utils.pyramid_training_batch``): per forward
one pyramid stage (mix ``--sample_ratios``), a random number u of clean history frames (the unit trained is latent
frame u; u = 0 is the first frame, without history; ``--first_frame_prob`` trains it more often), history
corrupted with sigma_c ~ U(0, ``--corrupt_ratio``) per sample, uniform stage-local timesteps, target = start - end,
per-sample MSE; 10% caption dropout for CFG. ``--transformer_path`` continues a saved transformer;
``--generated_history_prob`` trains it on histories it sampled itself.

Recovery of a pruned transformer (``training/prune_transformer.py``, Neodragon's two-stage curriculum): stage 1 is
this script started from the pruned folder; stage 2 adds ``--teacher_path`` (the unpruned model): each kept block's
output is matched to that of the teacher block it came from (``block_origin``; visual-token MSE, text-token cosine
distance) and the prediction to the teacher's as well as to the data, weighted by ``--feature_loss_weights``;
``--guidance_loss_weight`` also matches the guidance direction (caption minus empty caption) that CFG amplifies.
Stage 2 refuses weights that did not go through stage 1 (``pruning_recovery.json`` beside them) unless ``--force``.

Defaults are the values of the embedded model's recipe (``training/recipes/shapes_default.sh``): stage mix 1:2:3,
history corruption up to 0.5, the first frame trained 30 % of the time, cached latents, EMA 0.995, CFG 7 / 5 in the
saved pipeline. Pyramid-Flow's own values are ``--sample_ratios 1,2,1 --corrupt_ratio 0.333 --no-use_ema``.

The output folder is a complete ``NeodragonPipeline`` (mode "monolithic", default size = the training size):

    pipe = NeodragonPipeline.from_pretrained(output_dir)

Example (one GPU, ~10 minutes on an H100):

    accelerate launch training/train_pyramidal_flow.py --vae_path runs/shapes-vae/vae --output_dir runs/shapes-base \\
        --mixed_precision bf16 --max_train_seconds 600
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import os
import time
from pathlib import Path

import numpy as np
import torch
from accelerate.logging import get_logger
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from diffusers_neodragon import (
    NeodragonPipeline,
    NeodragonTransformer3DModel,
    PyramidalDMDScheduler,
)
from diffusers_neodragon.data.shapes_text_encoders import build_shapes_text_encoders
from diffusers_neodragon.pipelines.neodragon.mode_defaults import MODE_DEFAULTS, first_given
from diffusers_neodragon.training_utils import (
    CAPTION_DROPOUT_PROBABILITY,
    HISTORY_CORRUPTION_RATIO,
    SAVE_DTYPES,
    TEXT_COMPONENT_NAMES,
    TEXT_MODULE_NAMES,
    EpochShuffleSampler,
    IdleOnCpu,
    add_common_arguments,
    backward_and_step,
    build_lr_scheduler,
    build_optimizer,
    caption_dropout_mask,
    count_parameters,
    encode_prompts,
    finish_training_loop,
    flow_matching_loss,
    format_float,
    frames_from_true_history,
    freeze_unused_parameters,
    init_trackers,
    initialize_transformer_weights,
    load_vae_folder,
    parse_int_list,
    parse_resolution,
    parse_with_command,
    pooled_projection_dim,
    push_folder_to_hub,
    pyramid_training_batch,
    register_folder_checkpoints,
    resume_global_step,
    sample_stage,
    save_checkpoint,
    setup_accelerator,
    should_stop,
    step_generator,
    training_batches,
    training_command,
    video_strip,
    window_mean,
)
from diffusers_neodragon.training_utils.latent_cache import (  # noqa: F401 - the script's names, as before the move
    CachedLatents,
    build_latent_cache,
    cache_metadata,
    check_latent_shape,
    encode_training_set,
    encode_videos,
    latents_from_shards,
    shapes_dataset,
    shard_indices,
    text_table,
    video_foreground,
)
from diffusers_neodragon.training_utils.prompts import load_text_components
from diffusers_neodragon.training_utils.pruning_recovery import (
    BlockOutputs,
    check_stage_2_start,
    completed_stages,
    feature_matching_losses,
    new_recovery_record,
    read_recovery_record,
    with_stage,
    write_recovery_record,
)
from diffusers_neodragon.training_utils.sharding import (
    enable_gradient_checkpointing,
    full_model,
    shard_frozen_model,
    update_ema,
)
from diffusers_neodragon.training_utils.video_data import (
    add_video_data_arguments,
    real_data_source,
    video_dataset_from_args,
)
from diffusers_neodragon.utils.model_cards import write_model_card


logger = get_logger(__name__)
SCRIPT = "training/train_pyramidal_flow.py"

def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Pyramidal flow-matching training of a Shapes text-to-video model.")
    # Components
    parser.add_argument("--vae_path", type=str, default=None,
                        help="Trained VAE (CausalVideoVAE, or a decoder-distilled AsymmetricVAE): a `vae` folder, or a "
                             "folder holding one (train_vae.py output).")
    parser.add_argument("--pretrained_model_name_or_path", type=str, default=None,
                        help="A pipeline folder from an earlier run: continue from its transformer and text encoders "
                             "(and VAE, when --vae_path is not given).")
    parser.add_argument("--transformer_path", type=str, default=None, help="Start from this transformer folder.")
    parser.add_argument("--text_encoders_path", type=str, default=None,
                        help="Folder with text_encoder(_2,_3) + tokenizer(_2,_3) subfolders; default: build new ones.")
    # Transformer size (new model)
    parser.add_argument("--num_layers", type=int, default=10)
    parser.add_argument("--num_attention_heads", type=int, default=4)
    parser.add_argument("--attention_head_dim", type=int, default=32)
    parser.add_argument("--patch_size", type=int, default=2, help="Of a new model (a loaded one keeps its own).")
    # Text encoders (new stand-ins)
    parser.add_argument("--t5_dim", type=int, default=256, help="Width of the teacher T5 = context_embedder_dim.")
    parser.add_argument("--t5_layers", type=int, default=2)
    parser.add_argument("--t5_heads", type=int, default=4)
    parser.add_argument("--clip_dim", type=int, default=64)
    parser.add_argument("--clip_layers", type=int, default=1)
    parser.add_argument("--clip_heads", type=int, default=2)
    parser.add_argument("--clip_projection_dim", type=int, default=64, help="Pooled vector = 2x this.")
    parser.add_argument("--text_encoder_seed", type=int, default=0)
    parser.add_argument("--max_sequence_length", type=int, default=64, help="T5 tokens (captions are shorter).")
    # Data
    parser.add_argument("--resolution", type=str, default="128", help="`N` or `HxW`, multiples of 64.")
    parser.add_argument("--num_frames", type=int, default=49, help="1 + 8k frames.")
    parser.add_argument("--train_samples", type=int, default=8192)
    parser.add_argument("--cache_latents", action=argparse.BooleanOptionalAction, default=True,
                        help="Encode the (synthetic, deterministic) training set once and train from device memory "
                             "(--no-cache_latents: encode every batch on the fly).")
    parser.add_argument("--latent_cache_path", type=str, default=None,
                        help="With --cache_latents: load the cache from / save it to this file (.safetensors).")
    parser.add_argument("--encode_batch_size", type=int, default=32)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    # Objective
    parser.add_argument("--sample_ratios", type=str, default="1,2,3",
                        help="Relative frequency of stages 0,1,2 (Pyramid-Flow: 1,2,1; the shape of a small object is "
                             "decided at full resolution, the last stage).")
    parser.add_argument("--stage_range", type=str, default=None,
                        help="The scheduler's stage boundaries on the noise axis, e.g. 0,0.25,0.5,1 (stage 2, at full "
                             "resolution, then starts from more noise); default: those of the pipeline continued "
                             "(--pretrained_model_name_or_path), else Pyramid-Flow's equal thirds.")
    parser.add_argument("--corrupt_ratio", type=float, default=0.5,
                        help=f"History corruption sigma_c ~ U(0, this) (Pyramid-Flow: {HISTORY_CORRUPTION_RATIO:.3g}).")
    parser.add_argument("--first_frame_prob", type=float, default=0.3,
                        help="Train the first latent frame (no history) with this probability (a negative value: "
                             "1/T, like every other unit).")
    parser.add_argument("--caption_dropout", type=float, default=CAPTION_DROPOUT_PROBABILITY)
    parser.add_argument("--generated_history_prob", type=float, default=0.0,
                        help="Probability that each history frame is the model's own sample of it from the true "
                             "frames before (training_utils.frames_from_true_history, made once at the start by the "
                             "initial transformer with the saved pipeline's sampler), so that the model learns to "
                             "continue its own frames; needs --cache_latents and a trained transformer "
                             "(--transformer_path or --pretrained_model_name_or_path).")
    parser.add_argument("--foreground_weight", type=float, default=0.0,
                        help="Weight of an MSE term over the objects' latents only (training_utils."
                             "latent_foreground_mask): a small object is a few latent pixels of a frame-wide mean.")
    parser.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--ema_decay", type=float, default=0.995)
    # Pruning recovery (stage 2)
    parser.add_argument("--teacher_path", type=str, default=None,
                        help="Stage 2 of pruning recovery: the unpruned teacher (a pipeline folder or a transformer "
                             "folder) whose blocks' features the pruned transformer matches through its block_origin.")
    parser.add_argument("--feature_loss_weights", type=str, default="1,1,1,1",
                        help="With --teacher_path: weights of flow matching to the data, flow matching to the "
                             "teacher's prediction, visual-token MSE and text-token cosine distance of the kept "
                             "blocks.")
    parser.add_argument("--guidance_loss_weight", type=float, default=0.0,
                        help="With --teacher_path: weight of the relative squared error between the student's and "
                             "the teacher's guidance directions (the prediction for the caption minus the one for the "
                             "empty caption, on the same inputs): the part of the velocity that CFG multiplies, which "
                             "matching each prediction alone leaves far off. Costs one more forward of each model per "
                             "step.")
    parser.add_argument("--force", action="store_true",
                        help="Start stage 2 from weights that did not go through stage 1 (the paper found this fails).")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the transformer blocks (regional, dynamic shapes): fewer kernel launches "
                        "for a small model whose step is launch-bound on a GPU; costs compile time at the start")
    # Validation
    parser.add_argument("--validation_steps", type=int, default=0, help="Every N steps (0: only at the end).")
    parser.add_argument("--validation_prompts", type=str, nargs="*", default=None)
    parser.add_argument("--num_validation_prompts", type=int, default=2, help="From fixed_prompt_set('seen').")
    parser.add_argument("--validation_num_inference_steps", type=str, default="20", help="First frame, per stage.")
    parser.add_argument("--validation_video_num_inference_steps", type=str, default="10", help="Later frames.")
    parser.add_argument("--validation_guidance_scale", type=float, default=None,
                        help="First frame; default: the saved pipeline's (--default_guidance_scale).")
    parser.add_argument("--validation_video_guidance_scale", type=float, default=None,
                        help="Later frames; default: the saved pipeline's (--default_video_guidance_scale).")
    parser.add_argument("--validation_fps", type=int, default=8)
    # The saved pipeline
    parser.add_argument("--default_guidance_scale", type=float, default=MODE_DEFAULTS["monolithic"]["guidance_scale"],
                        help="First-frame CFG scale stored in the saved pipeline's config (used by calls without "
                             "one, the validation videos and --eval_shapesbench); default: the monolithic mode's")
    parser.add_argument("--default_video_guidance_scale", type=float,
                        default=MODE_DEFAULTS["monolithic"]["video_guidance_scale"],
                        help="The same for the later frames; default: the monolithic mode's")
    parser.add_argument("--default_history_noise", type=float, default=0.0,
                        help="The saved pipeline's history_noise (noise mixed into the history the later frames are "
                             "conditioned on at inference; within [0, --corrupt_ratio] the model has seen it)")
    parser.add_argument("--eval_shapesbench", action="store_true",
                        help="Score the final pipeline on ShapesBench (diffusers_neodragon.evaluation).")
    parser.add_argument("--shapesbench_num_prompts", type=int, default=16, help="Per split (seen, heldout).")
    parser.add_argument("--shapesbench_num_inference_steps", type=int, default=None,
                        help="Steps per stage for ShapesBench videos (first frame and later ones); default: the "
                             "pipeline's monolithic defaults (20 / 10).")
    add_video_data_arguments(parser)
    add_common_arguments(
        parser, output_dir="shapes-pyramidal-flow", tracker_project_name="neodragon-train-pyramidal-flow",
        learning_rate=1e-3, train_batch_size=128, max_train_steps=100_000, checkpointing_steps=1000,
        lr_warmup_steps=200, adam_beta2=0.95,
    )

    args = parse_with_command(parser, input_args)
    args.height, args.width = parse_resolution(args.resolution)
    args.sample_ratios = parse_int_list(args.sample_ratios)
    if args.stage_range is not None:
        args.stage_range = [float(x) for x in args.stage_range.split(",")]
    args.validation_num_inference_steps = _steps(args.validation_num_inference_steps)
    args.validation_video_num_inference_steps = _steps(args.validation_video_num_inference_steps)
    # The CFG scales the saved pipeline samples with, and those of the validation videos (None: the former).
    args.validation_guidance_scale = first_given(args.validation_guidance_scale, args.default_guidance_scale)
    args.validation_video_guidance_scale = first_given(
        args.validation_video_guidance_scale, args.default_video_guidance_scale)
    if args.vae_path is None and args.pretrained_model_name_or_path is None:
        raise ValueError("Give --vae_path (a trained CausalVideoVAE) or --pretrained_model_name_or_path.")
    if args.num_frames < 1 or (args.num_frames - 1) % 8:
        raise ValueError(f"--num_frames must be 1 + 8k, got {args.num_frames}.")
    if args.first_frame_prob is not None and args.first_frame_prob < 0:
        args.first_frame_prob = None  # 1/T
    if args.first_frame_prob is not None and not 0.0 <= args.first_frame_prob <= 1.0:
        raise ValueError(f"--first_frame_prob must lie in [0, 1], got {args.first_frame_prob}.")
    if not 0.0 <= args.default_history_noise < 1.0:
        raise ValueError(f"--default_history_noise must lie in [0, 1), got {args.default_history_noise}.")
    if args.foreground_weight < 0:
        raise ValueError(f"--foreground_weight must be >= 0, got {args.foreground_weight}.")
    args.data_source = real_data_source(args)
    if args.data_source and args.foreground_weight:
        raise ValueError("--foreground_weight needs the Shapes world's object masks; real data has none.")
    if args.latents_dir and not args.cache_latents:
        raise ValueError("--latents_dir trains from stored latents: drop --no-cache_latents.")
    if args.latent_cache_path and not args.cache_latents:
        raise ValueError("--latent_cache_path needs --cache_latents.")
    if not 0.0 <= args.generated_history_prob <= 1.0:
        raise ValueError(f"--generated_history_prob must lie in [0, 1], got {args.generated_history_prob}.")
    trained = args.transformer_path or args.pretrained_model_name_or_path
    args.feature_loss_weights = [float(x) for x in args.feature_loss_weights.split(",")]
    if len(args.feature_loss_weights) != 4 or min(args.feature_loss_weights) < 0:
        raise ValueError("--feature_loss_weights takes four weights >= 0 (data, teacher, visual, text), got "
                         f"{args.feature_loss_weights}.")
    if args.guidance_loss_weight < 0 or (args.guidance_loss_weight and args.teacher_path is None):
        raise ValueError("--guidance_loss_weight is a weight >= 0 of stage 2 (it needs --teacher_path), got "
                         f"{args.guidance_loss_weight}.")
    args.recovery_record = read_recovery_record(start_transformer_folder(args))
    args.recovery_warning = None
    if args.teacher_path is not None:
        if not trained:
            raise ValueError("--teacher_path (stage 2) continues a pruned transformer: give --transformer_path or "
                             "--pretrained_model_name_or_path.")
        args.recovery_warning = check_stage_2_start(args.recovery_record, args.force)
    if args.generated_history_prob and not (args.cache_latents and trained):
        raise ValueError("--generated_history_prob needs --cache_latents and a trained transformer to sample from "
                         "(--transformer_path or --pretrained_model_name_or_path).")
    return args


def start_transformer_folder(args) -> str | None:
    """The transformer folder training starts from (None: a new model)."""
    if args.transformer_path:
        return args.transformer_path
    if args.pretrained_model_name_or_path:
        return os.path.join(args.pretrained_model_name_or_path, "transformer")
    return None


def load_teacher(args, student) -> NeodragonTransformer3DModel:
    """The frozen unpruned teacher of stage 2, checked against the student's block_origin and width."""
    path = args.teacher_path
    if (Path(path) / "transformer").is_dir():
        path = str(Path(path) / "transformer")
    teacher = NeodragonTransformer3DModel.from_pretrained(path, torch_dtype=torch.float32)
    origin = student.config.block_origin
    if origin is None:
        raise ValueError("--teacher_path needs a pruned transformer (its config's block_origin maps its blocks to the "
                         "teacher's); this one has none. Prune it with training/prune_transformer.py.")
    if max(origin) >= teacher.config.num_layers:
        raise ValueError(f"block_origin {list(origin)} points past the teacher's {teacher.config.num_layers} blocks.")
    for key in ("attention_head_dim", "num_attention_heads", "patch_size", "in_channels", "context_embedder_dim"):
        if teacher.config[key] != student.config[key]:
            raise ValueError(
                f"The teacher's {key} {teacher.config[key]} differs from the student's {student.config[key]}.")
    return teacher.eval().requires_grad_(False)


def _steps(value: str):
    steps = parse_int_list(value)
    return steps[0] if len(steps) == 1 else list(steps)


# ---------------------------------------------------------------------------------------------- components


def default_validation_prompts(n: int) -> list[str]:
    from diffusers_neodragon.data.shapes import fixed_prompt_set  # noqa: PLC0415

    return fixed_prompt_set("seen", n) if n > 0 else []


def shapes_vocabulary() -> list[str]:
    from diffusers_neodragon.data.shapes import shapes_vocabulary as vocabulary  # noqa: PLC0415

    return vocabulary()


def load_vae(args):
    """The pipeline's VAE: a CausalVideoVAE, or the AsymmetricVAE of a decoder-distilled pipeline (same encoder)."""
    return load_vae_folder(args.vae_path or args.pretrained_model_name_or_path, torch.float32)


def load_text_encoders(path: str) -> dict:
    """The folder's frozen text path (see ``load_text_components``; a text-distilled pipeline's ContextAdapter too)."""
    return load_text_components(path)


def build_text_encoders(args) -> dict:
    path = args.text_encoders_path or args.pretrained_model_name_or_path
    if path:
        return load_text_encoders(path)
    return build_shapes_text_encoders(
        shapes_vocabulary(), seed=args.text_encoder_seed, t5_dim=args.t5_dim, t5_layers=args.t5_layers,
        t5_heads=args.t5_heads, clip_dim=args.clip_dim, clip_layers=args.clip_layers, clip_heads=args.clip_heads,
        clip_projection_dim=args.clip_projection_dim, t5_max_length=args.max_sequence_length,
    )


def build_scheduler(args) -> PyramidalDMDScheduler:
    """--stage_range's scheduler; else the continued pipeline's (so a run goes on with the stage boundaries it was
    trained with), else Pyramid-Flow's."""
    if args.stage_range is None and args.pretrained_model_name_or_path:
        folder = os.path.join(args.pretrained_model_name_or_path, "scheduler")
        if os.path.isdir(folder):
            return PyramidalDMDScheduler.from_pretrained(folder)
    return PyramidalDMDScheduler(stage_range=args.stage_range)


def build_transformer(args, vae, text_components) -> NeodragonTransformer3DModel:
    path = args.transformer_path
    if path is None and args.pretrained_model_name_or_path:
        path = os.path.join(args.pretrained_model_name_or_path, "transformer")
    if path is not None:
        return NeodragonTransformer3DModel.from_pretrained(path, torch_dtype=torch.float32)
    spatial = vae.config.spatial_downsample_scale
    latent_h, latent_w = args.height // spatial, args.width // spatial
    patch_size = args.patch_size
    grid = max(latent_h, latent_w) // patch_size
    transformer = NeodragonTransformer3DModel(
        patch_size=patch_size,
        in_channels=vae.config.latent_channels,
        num_layers=args.num_layers,
        attention_head_dim=args.attention_head_dim,
        num_attention_heads=args.num_attention_heads,
        pooled_projection_dim=pooled_projection_dim(text_components),
        context_embedder_dim=text_components["text_encoder_3"].config.d_model,
        sample_size=latent_h,
        pos_embed_max_size=2 * grid,
    )
    return initialize_transformer_weights(transformer)


def make_pipeline(transformer, vae, text_components, scheduler, args) -> NeodragonPipeline:
    pipe = NeodragonPipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, context_adapter=text_components.get("context_adapter"),
        mode="monolithic",
        prompt_suffix="", default_negative_prompt="", default_height=args.height, default_width=args.width,
        default_num_frames=args.num_frames, default_guidance_scale=args.default_guidance_scale,
        default_video_guidance_scale=args.default_video_guidance_scale,
        default_history_noise=args.default_history_noise,
        **{k: text_components.get(k) for k in TEXT_COMPONENT_NAMES},
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------------- data


def generate_history(args, transformer, vae, text_components, scheduler, cache, accelerator) -> torch.Tensor:
    """The transformer's own sample of every cached clip's every latent frame from its true history
    (``frames_from_true_history``, the saved pipeline's sampler); process r samples the contiguous shard r."""
    pipe = make_pipeline(transformer.to(accelerator.device).eval(), vae, text_components, scheduler, args)
    mode = MODE_DEFAULTS["monolithic"]
    total = cache.latents.shape[0]
    indices = torch.tensor(shard_indices(total, accelerator), device=cache.latents.device)
    generator = step_generator(args.seed + 1, 0, accelerator.process_index, accelerator.device)
    frames = []
    for chunk in tqdm(indices.split(args.train_batch_size), desc="Sampling history",
                      disable=not accelerator.is_local_main_process):
        ids = cache.caption_ids[chunk]
        text = (cache.embeds[ids], cache.mask[ids], cache.pooled[ids])
        negative = tuple(t[torch.zeros_like(ids)] for t in (cache.embeds, cache.mask, cache.pooled))
        with accelerator.autocast():
            frames.append(frames_from_true_history(
                pipe, cache.latents[chunk].float(), text, negative, mode["num_inference_steps"],
                mode["video_num_inference_steps"], args.default_guidance_scale, args.default_video_guidance_scale,
                generator=generator,
            ).to(cache.latents.dtype))
    frames = torch.cat(frames)
    if accelerator.num_processes > 1:
        frames = accelerator.gather(frames)
    transformer.train()
    return frames[:total]


class IndexedShapes(torch.utils.data.Dataset):
    """The training set as indices (latents cached or from shards) or as clips with their index (encoded on the
    fly): the Shapes world's rendered clips, or ``clips`` (a real captioned video dataset) when given."""

    def __init__(self, args, cached: bool, clips=None, num_samples: int | None = None):
        self.cached = cached
        self.num_samples = num_samples or args.train_samples
        self.dataset = None if cached else clips if clips is not None else shapes_dataset(
            args.train_samples, args.num_frames, args.height, args.width, args.seed, "train"
        )

    def __len__(self):
        return self.num_samples

    def __getitem__(self, index):
        if self.cached:
            return {"index": index}
        item = self.dataset[index]
        return {"index": index, "video": item["video"], "caption": item["caption"]}


def collate(items):
    batch = {"index": torch.tensor([item["index"] for item in items])}
    if "video" in items[0]:
        batch["video"] = torch.stack([item["video"] for item in items])
        batch["caption"] = [item["caption"] for item in items]
    return batch


# ---------------------------------------------------------------------------------------------- validation


def _to_video_tensor(frames: np.ndarray) -> torch.Tensor:
    """[F, H, W, 3] in [0, 1] -> [3, F, H, W] in [-1, 1]."""
    return torch.from_numpy(np.asarray(frames)).permute(3, 0, 1, 2).float() * 2 - 1


@torch.no_grad()
def log_validation(pipe, prompts, accelerator, args, step, tag="validation"):
    """Generate one video per prompt with the monolithic sampler; save mp4s + a PNG strip; log to the trackers."""
    from diffusers.utils import export_to_video  # noqa: PLC0415

    if not prompts:
        return []
    folder = Path(args.output_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    videos = []
    for i, prompt in enumerate(prompts):
        generator = torch.Generator(device="cpu").manual_seed(args.seed + i)
        with accelerator.autocast():
            frames = pipe(
                prompt, generator=generator, output_type="np",
                num_inference_steps=args.validation_num_inference_steps,
                video_num_inference_steps=args.validation_video_num_inference_steps,
                guidance_scale=args.validation_guidance_scale,
                video_guidance_scale=args.validation_video_guidance_scale,
            ).frames[0]
        videos.append(frames)
        try:
            export_to_video(list(frames), str(folder / f"{tag}-step-{step:06d}-{i}.mp4"), fps=args.validation_fps)
        except Exception as error:  # noqa: BLE001 - an mp4 encoder problem must not stop training
            logger.warning(f"Could not write an mp4 ({error}); the PNG strip is still saved.")
    strip = video_strip([_to_video_tensor(v) for v in videos])
    strip_path = folder / f"{tag}-step-{step:06d}.png"
    strip.save(strip_path)
    print(f"[train_pyramidal_flow] step {step}: validation videos -> {strip_path}")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, np.asarray(strip), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb  # noqa: PLC0415

            tracker.log({tag: [wandb.Video(np.transpose((v * 255).astype(np.uint8), (0, 3, 1, 2)),
                                            caption=p, fps=args.validation_fps) for v, p in zip(videos, prompts)]},
                        step=step)
    return videos


@torch.no_grad()
def run_shapesbench(pipe, args, accelerator) -> dict | None:
    """Score the pipeline on ShapesBench's fixed "seen" and "heldout" prompt sets (``--shapesbench_num_prompts``
    each) at the pipeline's default size: every prompt gets its own ``torch.Generator().manual_seed(seed)``, like
    ``benchmarks/shapesbench.py``, but prompts are generated in batches of 8 (with CFG batched too), so the
    numbers can differ from the benchmark script's by floating-point rounding.
    Returns ``{"seen": summary, "heldout": summary, "table": str}`` or None when the evaluator is unavailable."""
    try:
        from diffusers_neodragon.data.shapes import fixed_prompt_set  # noqa: PLC0415
        from diffusers_neodragon.evaluation import evaluate_video, format_table, summarize  # noqa: PLC0415
    except ImportError as error:
        logger.warning(f"ShapesBench is not available ({error}): no scores.")
        return None
    summaries = {}
    batch = 8
    for split in ("seen", "heldout"):
        prompts = fixed_prompt_set(split, args.shapesbench_num_prompts)
        results = []
        for start in range(0, len(prompts), batch):
            chunk = prompts[start : start + batch]
            generators = [torch.Generator().manual_seed(args.seed) for _ in chunk]
            steps = {}
            if args.shapesbench_num_inference_steps:
                steps = dict(num_inference_steps=args.shapesbench_num_inference_steps,
                             video_num_inference_steps=args.shapesbench_num_inference_steps)
            with accelerator.autocast():
                videos = pipe(chunk, generator=generators, output_type="np", **steps).frames
            results += [evaluate_video(video, prompt) for video, prompt in zip(videos, chunk)]
        summaries[split] = summarize(results)
    table = format_table(summaries)
    print(f"[train_pyramidal_flow] ShapesBench ({args.shapesbench_num_prompts} prompts per split):\n{table}")
    num_steps = args.shapesbench_num_inference_steps
    cfg = f"CFG {args.default_guidance_scale:g} / {args.default_video_guidance_scale:g}"
    default = f"the pipeline's default sampler (20 / 10 steps per stage, {cfg})"
    sampler = f"{num_steps} steps per stage, {cfg}" if num_steps else default
    return {**summaries, "table": table, "sampler": sampler}


def record_recovery_stage(args, transformer_folder: Path, steps: int, loss: float | None,
                          loss_terms: dict | None = None) -> str:
    """Append this run's recovery stage to a pruned transformer's record (stage 2 with --teacher_path, else 1); the
    model card's sentence about it ("" for a model that is not being recovered from pruning). ``loss_terms``: stage
    2's unweighted terms, means over the last steps."""
    record = args.recovery_record
    if record is None and args.teacher_path is None:
        return ""
    if record is None:  # stage 2 forced on weights without a record
        origin = NeodragonTransformer3DModel.load_config(str(transformer_folder))["block_origin"]
        record = new_recovery_record(args.teacher_path, -1, origin)
    stage = 2 if args.teacher_path else 1
    details = dict(steps=steps, loss=loss, command=training_command(SCRIPT, args.command_args))
    if stage == 2:
        details.update(teacher=args.teacher_path, feature_loss_weights=args.feature_loss_weights,
                       guidance_loss_weight=args.guidance_loss_weight,
                       loss_terms=loss_terms, forced=1 not in completed_stages(record))
    record = with_stage(record, stage, **details)
    write_recovery_record(transformer_folder, record)
    w = args.feature_loss_weights
    what = ("stage 1 (flow matching on data)" if stage == 1 else
            f"stage 2 (teacher `{args.teacher_path}`: {w[0]:g} x flow matching to the data + {w[1]:g} x to the "
            f"teacher's prediction + {w[2]:g} x visual-token MSE + {w[3]:g} x text-token cosine distance of each kept "
            "block to the teacher block of its `block_origin`"
            + (f" + {args.guidance_loss_weight:g} x relative squared error of the guidance direction (caption minus "
               "empty caption) to the teacher's" if args.guidance_loss_weight else "") + ")")
    return (f"\n\nThis run is {what} of the recovery of a pruned transformer (`block_origin` "
            f"{list(record['block_origin'])}); recovery stages so far: {completed_stages(record)} "
            f"(`transformer/pruning_recovery.json`).")


def _shapesbench_markdown(scores: dict | None) -> str:
    if not scores:
        return "Not evaluated (run with `--eval_shapesbench`)."
    n = scores["seen"]["n"]
    return (
        f"ShapesBench (`diffusers_neodragon.evaluation`), {n} fixed prompts per split, seed as in training, "
        f"{scores['sampler']}; accuracies and sub-scores in %, totals 0-100:\n\n```\n{scores['table']}\n```"
    )


# ---------------------------------------------------------------------------------------------------- main


def main(args):
    output_dir = Path(args.output_dir)
    accelerator, repo_id = setup_accelerator(args)

    # Frozen components.
    vae = load_vae(args).to(accelerator.device).eval().requires_grad_(False)
    text_components = build_text_encoders(args)
    for name in TEXT_MODULE_NAMES:
        if text_components.get(name) is not None:
            text_components[name].to(accelerator.device)
    scheduler = build_scheduler(args)
    stages = scheduler.config.stages
    if len(args.sample_ratios) != stages:
        raise ValueError(f"--sample_ratios needs {stages} entries, got {args.sample_ratios}.")

    # The trained model.
    transformer = build_transformer(args, vae, text_components)
    multiple = vae.config.spatial_downsample_scale * 2 ** (stages - 1) * transformer.config.patch_size
    if args.height % multiple or args.width % multiple:
        raise ValueError(f"--resolution must be a multiple of {multiple}, got {args.height}x{args.width}.")
    if transformer.config.in_channels != vae.config.latent_channels:
        raise ValueError("The transformer's in_channels must equal the VAE's latent_channels.")
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(transformer)
    freeze_unused_parameters(transformer)
    transformer.train()
    if args.compile:
        transformer.compile_repeated_blocks(dynamic=True)
    ema = None
    if args.use_ema:
        ema = EMAModel(transformer.parameters(), decay=args.ema_decay, model_cls=NeodragonTransformer3DModel,
                       model_config=transformer.config, foreach=True)
        ema.to(accelerator.device)

    register_folder_checkpoints(accelerator, [("transformer", NeodragonTransformer3DModel)],
                                emas={"transformer_ema": ema} if ema is not None else None)
    optimizer = build_optimizer(transformer.parameters(), args, accelerator)
    teacher = None
    if args.teacher_path is not None:
        if args.recovery_warning:
            logger.warning(args.recovery_warning)
        # Under FSDP the frozen teacher is split across the GPUs like the student (it only runs in the training step).
        teacher = shard_frozen_model(accelerator, load_teacher(args, transformer).to(accelerator.device))

    clips = cache = None
    if args.latents_dir:
        cache = latents_from_shards(args.latents_dir, text_components, accelerator.device, args.max_sequence_length,
                                    vae)
        check_latent_shape(cache.latents, vae, args)
    elif args.data_source:
        clips = video_dataset_from_args(args, verbose=accelerator.is_main_process)
    if args.cache_latents and cache is None:
        cache = build_latent_cache(args, vae, text_components, accelerator, dataset=clips)
    num_samples = cache.latents.shape[0] if cache is not None else len(clips) if clips is not None else None
    generated_history = None
    if args.generated_history_prob:
        generated_history = generate_history(args, transformer, vae, text_components, scheduler, cache, accelerator)
    # With the captions cached, the text encoders serve only the main process's validation and the saved pipeline.
    idle_text = IdleOnCpu((text_components.get(n) for n in TEXT_MODULE_NAMES), accelerator.device)
    if cache is not None:
        idle_text.park()
    dataset = IndexedShapes(args, cached=cache is not None, clips=clips, num_samples=num_samples)
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=args.train_batch_size, sampler=EpochShuffleSampler(len(dataset), seed=args.seed),
        collate_fn=collate, num_workers=0 if cache is not None else args.dataloader_num_workers, drop_last=True,
    )
    lr_scheduler = build_lr_scheduler(optimizer, args, accelerator)
    transformer, optimizer, dataloader, lr_scheduler = accelerator.prepare(
        transformer, optimizer, dataloader, lr_scheduler
    )

    validation_prompts = args.validation_prompts
    if validation_prompts is None:
        validation_prompts = default_validation_prompts(args.num_validation_prompts)
    init_trackers(accelerator, args)

    unwrapped = accelerator.unwrap_model(transformer)
    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"***** Pyramidal flow training: transformer {count_parameters(unwrapped) / 1e6:.2f}M params *****\n"
        f"  {args.num_frames}x{args.height}x{args.width} clips, total batch {total_batch}, steps {args.max_train_steps}"
    )

    global_step = resume_global_step(accelerator, args, output_dir)

    def validation_pipeline():
        """The pipeline of the trained (EMA) weights on the main process, None on the others (collective)."""
        model = full_model(accelerator, transformer, ema=ema, device=accelerator.device)
        return None if model is None else make_pipeline(model.eval(), vae, text_components, scheduler, args)

    def text_inputs(batch, generator, empty=False):
        """(embeds, mask or None, pooled) of the batch, captions dropped to "" with --caption_dropout (every caption
        with ``empty``: CFG's unconditional branch)."""
        size = len(batch["index"])
        dropped = (torch.ones(size, dtype=torch.bool) if empty
                   else caption_dropout_mask(size, args.caption_dropout, generator))
        if cache is not None:
            ids = cache.caption_ids[batch["index"].to(cache.caption_ids.device)]
            ids = torch.where(dropped.to(ids.device), torch.zeros_like(ids), ids)
            embeds, mask, pooled = cache.embeds[ids], cache.mask[ids], cache.pooled[ids]
        else:
            captions = ["" if d else c for c, d in zip(batch["caption"], dropped.tolist())]
            embeds, mask, pooled = encode_prompts(
                text_components, captions, accelerator.device, args.max_sequence_length
            )
        keep = max(int(mask.sum(1).max()), 1)
        embeds, mask = embeds[:, :keep], mask[:, :keep]
        return embeds, (None if bool(mask.all()) else mask), pooled

    feature_hooks = contextlib.ExitStack()
    if teacher is not None:
        student_blocks = feature_hooks.enter_context(BlockOutputs(unwrapped))
        teacher_blocks = feature_hooks.enter_context(BlockOutputs(teacher))
    w_data, w_teacher, w_visual, w_text = args.feature_loss_weights

    start_step, start_time = global_step, time.perf_counter()
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="Steps",
                    disable=not accelerator.is_local_main_process)
    recent_losses = collections.deque(maxlen=50)
    window_losses = []
    # stage 2's terms (unweighted), logged apart: their scales differ by orders of magnitude
    term_names = ("flow_data", "flow_teacher", "visual_mse", "text_cosine")
    term_weights = [w_data, w_teacher, w_visual, w_text]
    if args.guidance_loss_weight:
        term_names, term_weights = (*term_names, "guidance"), [*term_weights, args.guidance_loss_weight]

    def predict(model, example, text):
        embeds, mask, pooled = text
        with accelerator.autocast():
            return model(
                hidden_states=example.hidden_states, encoder_hidden_states=embeds, pooled_projections=pooled,
                timestep=example.timestep, history=example.history, encoder_attention_mask=mask,
            ).sample

    recent_terms, window_terms = collections.deque(maxlen=50), []
    for micro_step, batch in training_batches(dataloader, accelerator, global_step, args.max_train_steps,
                                              args.gradient_accumulation_steps):
        generator = step_generator(args.seed, micro_step, device=accelerator.device)
        with accelerator.accumulate(transformer):
            history_latents = None
            if cache is not None:
                indices = batch["index"].to(cache.latents.device)
                latents = cache.latents[indices]
                foreground = cache.foreground[indices] if args.foreground_weight else None
                if generated_history is not None:
                    own = torch.rand((latents.shape[0], 1, latents.shape[2], 1, 1), generator=generator,
                                     device=generator.device).to(latents.device)
                    history_latents = torch.where(own < args.generated_history_prob,
                                                  generated_history[indices], latents)
            else:
                latents = encode_videos(vae, batch["video"])
                foreground = video_foreground(vae, batch["video"]) if args.foreground_weight else None
            embeds, mask, pooled = text_inputs(batch, generator)
            example = pyramid_training_batch(
                scheduler, latents, sample_stage(args.sample_ratios, generator), generator=generator,
                corrupt_ratio=args.corrupt_ratio, first_frame_prob=args.first_frame_prob, foreground=foreground,
                history_latents=history_latents,
            )
            pred = predict(transformer, example, (embeds, mask, pooled))
            loss = flow_matching_loss(pred, example.target, example.foreground, args.foreground_weight)
            if teacher is not None:
                with torch.no_grad():
                    teacher_pred = predict(teacher, example, (embeds, mask, pooled))
                # the features of this call: the guidance term's calls below overwrite the hooks' outputs
                visual, text = feature_matching_losses(student_blocks.outputs, teacher_blocks.outputs,
                                                       unwrapped.config.block_origin, mask)
                terms = [loss, flow_matching_loss(pred, teacher_pred), visual, text]
                if args.guidance_loss_weight:
                    empty = text_inputs(batch, generator, empty=True)
                    with torch.no_grad():
                        teacher_direction = teacher_pred - predict(teacher, example, empty)
                    # relative to the direction's size (a few thousandths in Shapes), so that weights near 1 count
                    terms.append(flow_matching_loss(pred - predict(transformer, example, empty), teacher_direction)
                                 / teacher_direction.float().pow(2).mean().clamp_min(1e-12))
                terms = torch.stack([t.float() for t in terms])
                window_terms.append(terms.detach().float())
                loss = (terms * terms.new_tensor(term_weights)).sum()
            window_losses.append(loss.detach())
            backward_and_step(accelerator, loss, transformer, optimizer, lr_scheduler, args.max_grad_norm)

        if accelerator.sync_gradients:
            if ema is not None:
                update_ema(ema, transformer)
            global_step += 1
            progress.update(1)
            # the mean over the accumulation window (all micro-batches of this optimiser step)
            step_loss = window_mean(accelerator, window_losses)
            recent_losses.append(step_loss)
            progress.set_postfix(loss=f"{step_loss:.4f}")
            logs = {"loss": step_loss, "lr": lr_scheduler.get_last_lr()[0]}
            if window_terms:  # this process's window only: enough to see the terms' balance
                step_terms = dict(zip(term_names, torch.stack(window_terms).mean(0).tolist()))
                window_terms.clear()
                recent_terms.append(step_terms)
                logs.update(step_terms)
            accelerator.log(logs, step=global_step)
            if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
            if args.validation_steps and global_step % args.validation_steps == 0:
                pipe = validation_pipeline()
                if accelerator.is_main_process:
                    with idle_text.in_use():
                        log_validation(pipe, validation_prompts, accelerator, args, global_step)
                unwrapped.train()
        if should_stop(accelerator, args, global_step, start_time):
            break
    progress.close()
    feature_hooks.close()
    finish_training_loop("train_pyramidal_flow", accelerator, args, output_dir, start_step, global_step, start_time)

    accelerator.wait_for_everyone()
    result = {"global_step": global_step, "loss": float(np.mean(recent_losses)) if recent_losses else None}
    if recent_terms:
        result["loss_terms"] = {k: float(np.mean([t[k] for t in recent_terms])) for k in term_names}
        if accelerator.is_main_process:  # also in the log, where a run's files may not survive
            print("[train_pyramidal_flow] loss terms, unweighted means of the last steps: "
                  + ", ".join(f"{k} {v:.4g}" for k, v in result["loss_terms"].items()), flush=True)
    pipe = validation_pipeline()
    if accelerator.is_main_process:
        save_dtype = SAVE_DTYPES[args.save_dtype]
        to_save = pipe if save_dtype == torch.float32 else make_pipeline(
            copy.deepcopy(pipe.transformer).to(save_dtype), copy.deepcopy(vae).to(save_dtype),
            {k: (copy.deepcopy(v).to(save_dtype) if isinstance(v, torch.nn.Module) else v)
             for k, v in text_components.items()}, scheduler, args)
        to_save.save_pretrained(str(output_dir), safe_serialization=True)  # first: evaluation can be cut short
        recovery = record_recovery_stage(args, output_dir / "transformer", global_step, result["loss"],
                                         result.get("loss_terms"))
        with idle_text.in_use():
            log_validation(pipe, validation_prompts, accelerator, args, global_step, tag="final")
            scores = run_shapesbench(pipe, args, accelerator) if args.eval_shapesbench else None
        result["shapesbench"] = scores
        model = pipe.transformer
        t5 = text_components["text_encoder_3"]
        clips = [text_components[n] for n in ("text_encoder", "text_encoder_2") if text_components.get(n) is not None]
        spatial, temporal = vae.config.spatial_downsample_scale, vae.config.temporal_downsample_scale
        latent_shape = (vae.config.latent_channels, (args.num_frames - 1) // temporal + 1,
                        args.height // spatial, args.width // spatial)
        values = dict(
            title=args.hub_model_id or f"Shapes pyramidal-flow base model ({output_dir.name})",
            command=training_command(SCRIPT, args.command_args),
            steps=global_step, final_loss=format_float(result["loss"]), loss_window=len(recent_losses),
            example_prompt=(validation_prompts or ["a large red circle moving left on a blue background"])[0],
            height=args.height, width=args.width, num_frames=args.num_frames,
            first_frame_steps=args.validation_num_inference_steps,
            video_steps=args.validation_video_num_inference_steps,
            guidance_scale=args.validation_guidance_scale, video_guidance_scale=args.validation_video_guidance_scale,
            default_guidance_scale=f"{args.default_guidance_scale:g}",
            default_video_guidance_scale=f"{args.default_video_guidance_scale:g}",
            default_history_noise=f"{args.default_history_noise:g}",
            transformer_parameters=f"{count_parameters(model) / 1e6:.2f}M", num_layers=model.config.num_layers,
            num_attention_heads=model.config.num_attention_heads, attention_head_dim=model.config.attention_head_dim,
            patch_size=model.config.patch_size, context_embedder_dim=model.config.context_embedder_dim,
            t5_parameters=f"{count_parameters(t5) / 1e6:.2f}M",
            clip_parameters=f"{sum(count_parameters(c) for c in clips) / 1e6:.2f}M",
            pooled_projection_dim=model.config.pooled_projection_dim,
            vae_parameters=f"{count_parameters(vae) / 1e6:.2f}M",
            vae_path=args.vae_path or args.pretrained_model_name_or_path,
            save_dtype=args.save_dtype, sample_ratios=list(args.sample_ratios),
            stage_range=", ".join(f"{x:.3g}" for x in scheduler.config.stage_range),
            corrupt_ratio=f"{args.corrupt_ratio:.4g}",
            generated_history=(f"; each history frame replaced with probability {args.generated_history_prob:g} by "
                               "the initial transformer's own sample of it from the true frames before it "
                               "(`--generated_history_prob`, sampled once with the saved pipeline's sampler)"
                               if args.generated_history_prob else ""),
            caption_dropout=f"{args.caption_dropout:.0%}",
            foreground_term=(f" + {args.foreground_weight:g} x the MSE over the objects' latent cells only"
                             if args.foreground_weight else ""),
            first_frame_prob="1/T" if args.first_frame_prob is None else f"{args.first_frame_prob:.0%}",
            data=(f"{num_samples} clips of {args.data_source}" if args.data_source
                  else f"{args.train_samples} Shapes clips"),
            latent_shape="x".join(map(str, latent_shape)),
            learning_rate=args.learning_rate, lr_scheduler=args.lr_scheduler, lr_warmup_steps=args.lr_warmup_steps,
            ema=f"decay {args.ema_decay}" if args.use_ema else "off", batch_size=total_batch,
            mixed_precision=args.mixed_precision or "no", shapesbench=_shapesbench_markdown(scores),
            recovery=recovery,
        )
        write_model_card(output_dir, "pyramidal_flow.md", values, tags=["text-to-video", "neodragon", "shapes"])
        if args.push_to_hub:
            push_folder_to_hub(repo_id, output_dir, token=args.hub_token)
    accelerator.end_training()
    return result


if __name__ == "__main__":
    main(parse_args())
