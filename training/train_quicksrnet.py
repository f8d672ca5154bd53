#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""Train the pipeline's super-resolution model (``QuickSRNet``, the ``super_resolution`` component that upscales
every decoded frame) on pairs of (low-res input, high-res frame).

Data: frames of Shapes clips (default; rendered at ``--resolution``, by default ``--scale`` x the teacher pipeline's
default size, so the low-res inputs have the size the pipeline decodes) or of ``--video_folder`` clips. The input is
the high-res frame downsampled by ``--downsample`` (``area``: the mean of each s x s block, default; or antialiased
``bicubic``); with ``--degrade vae`` that downsampled clip then goes through the ``--teacher`` pipeline's VAE
(encode, posterior mode, decode), so the network learns to undo the decoder's artefacts as well as to upscale:
what it will see in the pipeline. Each step takes ``--frames_per_clip`` random frames of every clip and one random
``--crop_size`` crop (high-res pixels) of each.

Loss: ``--pixel_loss`` (MSE, default, or L1) + ``--perceptual_weight`` x ``--perceptual`` (the choices of
``distill_decoder.py``). Default ``ssim`` (weight 0.1): SR exists to restore edges and texture, which a pixel loss
alone averages into blur; 1 - SSIM pays for lost structure, runs offline and costs little on small crops, while
LPIPS needs backbone weights this machine cannot download and ``encoder_features`` needs the teacher's VAE.

Init: from scratch (``--scale``, ``--num_channels``, ``--num_intermediate_layers``; output clamped to [-1, 1]; the
network starts as nearest-neighbour upsampling), or ``--pretrained_model_name_or_path``: a QuickSRNet folder, or a
folder holding ``super_resolution/`` (a pipeline or a run of this script).

Validation: PSNR/SSIM of the network against bicubic and nearest-neighbour upsampling of the same inputs on whole
held-out frames, printed, logged, in the model card, and a PNG strip (rows per clip: target, nearest, bicubic, SR).

Output: ``<output_dir>/super_resolution`` (``QuickSRNet.from_pretrained``) and its model card; ``--pipeline_output
DIR`` also writes the ``--teacher`` pipeline with this network as its ``super_resolution``.

Example (the embedded Shapes model as teacher, learning to fix its decoder's artefacts):

    accelerate launch training/train_quicksrnet.py --degrade vae --output_dir runs/sr \\
        --pipeline_output runs/sr/pipeline --max_train_seconds 600
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from diffusers_neodragon import QuickSRNet
from diffusers_neodragon.training_utils import (
    SAVE_DTYPES,
    EpochShuffleSampler,
    add_common_arguments,
    backward_and_step,
    build_lr_scheduler,
    build_optimizer,
    count_parameters,
    finish_training_loop,
    format_float,
    init_trackers,
    load_vae_folder,
    log_image,
    parse_resolution,
    parse_with_command,
    psnr,
    push_folder_to_hub,
    randint,
    register_folder_checkpoints,
    resume_global_step,
    save_checkpoint,
    save_pipeline_with,
    setup_accelerator,
    should_stop,
    step_generator,
    teacher_pipeline_path,
    training_batches,
    training_command,
    vae_reconstruction_loss,
    video_strip,
    window_mean,
)
from diffusers_neodragon.training_utils.perceptual import (
    PERCEPTUAL_KINDS,
    build_perceptual_loss,
    describe_perceptual,
    lpips_weights_missing,
    ssim,
)
from diffusers_neodragon.training_utils.sharding import enable_gradient_checkpointing, full_model
from diffusers_neodragon.utils.model_cards import write_model_card


logger = get_logger(__name__)
SCRIPT = "training/train_quicksrnet.py"
VALIDATION_SEED_OFFSET = 1000
COMPONENT = "super_resolution"
DOWNSAMPLE = {"area": "the mean of each s x s block (area)", "bicubic": "antialiased bicubic"}


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Train the pipeline's QuickSRNet super-resolution model.")
    parser.add_argument("--teacher", type=str, default=None,
                        help="Pipeline folder: its default size sets --resolution, its VAE degrades the inputs "
                             "(--degrade vae), --pipeline_output copies it (default: the embedded Shapes model).")
    parser.add_argument("--pipeline_output", type=str, default=None,
                        help="Also write the --teacher pipeline with the trained network as its super_resolution.")
    # Model
    parser.add_argument("--pretrained_model_name_or_path", type=str, default=None,
                        help="Start from this QuickSRNet folder, or a folder holding super_resolution/.")
    parser.add_argument("--scale", type=int, default=None, help="Upscaling factor 2, 3 or 4 (default 2, or the "
                                                                "loaded model's; must match it).")
    parser.add_argument("--num_channels", type=int, default=None, help="From scratch: feature width (default 32).")
    parser.add_argument("--num_intermediate_layers", type=int, default=None,
                        help="From scratch: C->C convs between the first and last (default 2).")
    # Data
    parser.add_argument("--video_folder", type=str, default=None,
                        help="Train on the frames of this folder's clips (mp4 or frame folders), not the Shapes world.")
    parser.add_argument("--resolution", type=str, default=None,
                        help="High-res frame size `N` or `HxW` (default: --scale x the teacher's default size).")
    parser.add_argument("--num_frames", type=int, default=9, help="Frames per clip (1 + 8k with --degrade vae).")
    parser.add_argument("--frames_per_clip", type=int, default=2, help="Random frames taken from each clip per step.")
    parser.add_argument("--crop_size", type=int, default=64,
                        help="High-res crop side (a multiple of --scale; the input crop is crop_size / scale).")
    parser.add_argument("--downsample", type=str, default="area", choices=list(DOWNSAMPLE))
    parser.add_argument("--degrade", type=str, default="none", choices=["none", "vae"],
                        help="vae: inputs also go through the --teacher pipeline's VAE (its decoder's artefacts).")
    parser.add_argument("--train_samples", type=int, default=100_000, help="Shapes training clips.")
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    # Loss
    parser.add_argument("--pixel_loss", type=str, default="mse", choices=["mse", "l1"])
    parser.add_argument("--pixel_weight", type=float, default=1.0)
    parser.add_argument("--perceptual", type=str, default="ssim", choices=PERCEPTUAL_KINDS)
    parser.add_argument("--perceptual_weight", type=float, default=0.1)
    parser.add_argument("--lpips_net", type=str, default="vgg", choices=["vgg", "alex", "squeeze"])
    add_common_arguments(
        parser, output_dir="quicksrnet", tracker_project_name="neodragon-quicksrnet", learning_rate=5e-4,
        train_batch_size=8, max_train_steps=10_000, checkpointing_steps=1_000, lr_warmup_steps=50,
        adam_weight_decay=0.0,
    )
    parser.add_argument("--validation_steps", type=int, default=0, help="Validate every N steps (0 = only at the end).")
    parser.add_argument("--num_validation_clips", type=int, default=2,
                        help="Held-out clips (Shapes held-out split, or the last clips of --video_folder).")

    args = parse_with_command(parser, input_args)
    if args.scale is not None and args.scale not in (2, 3, 4):
        raise ValueError(f"--scale must be 2, 3 or 4, got {args.scale}.")
    if args.pretrained_model_name_or_path is None:
        args.scale = args.scale or 2
    elif args.num_channels is not None or args.num_intermediate_layers is not None:
        raise ValueError("--num_channels / --num_intermediate_layers describe a model built from scratch; the one "
                         "loaded from --pretrained_model_name_or_path keeps its own.")
    if args.resolution is not None:
        args.height, args.width = parse_resolution(args.resolution)
    if args.frames_per_clip < 1 or args.frames_per_clip > args.num_frames:
        raise ValueError(f"--frames_per_clip must be in [1, --num_frames={args.num_frames}], got "
                         f"{args.frames_per_clip}.")
    if args.degrade == "vae" and (args.num_frames - 1) % 8:
        raise ValueError(f"--degrade vae needs clips of 1 + 8k frames (the VAE's time compression), got "
                         f"--num_frames {args.num_frames}.")
    if args.perceptual == "lpips" and args.perceptual_weight > 0:
        missing = lpips_weights_missing(args.lpips_net)
        if missing:
            raise ValueError(f"--perceptual lpips: {missing}. Offline alternatives: --perceptual ssim or "
                             "encoder_features.")
    if args.pixel_weight <= 0 and (args.perceptual == "none" or args.perceptual_weight <= 0):
        raise ValueError("Give --pixel_weight > 0 or a perceptual term.")
    return args


def check_sizes(args, scale: int) -> None:
    """Once the scale and resolution are known: every size must divide into whole input pixels."""
    if args.crop_size < 1 or args.crop_size % scale:
        raise ValueError(f"--crop_size must be a positive multiple of the scale {scale}, got {args.crop_size}.")
    if args.height % scale or args.width % scale:
        raise ValueError(f"--resolution {args.height}x{args.width} must be a multiple of the scale {scale}.")
    if args.crop_size > min(args.height, args.width):
        raise ValueError(f"--crop_size {args.crop_size} exceeds the frames ({args.height}x{args.width}).")
    low = (args.height // scale, args.width // scale)
    if args.degrade == "vae" and (low[0] % 8 or low[1] % 8):
        raise ValueError(f"--degrade vae needs inputs of a multiple of 8 pixels; {low[0]}x{low[1]} is not "
                         f"(--resolution must be a multiple of {8 * scale}).")


# -------------------------------------------------------------------------------------------------- models


def load_pretrained(path: str) -> QuickSRNet:
    """A QuickSRNet folder, or a folder holding ``super_resolution/`` (pipeline or run)."""
    folder = Path(path)
    subfolder = COMPONENT if (folder / COMPONENT / "config.json").is_file() else None
    config = folder / (subfolder or "") / "config.json"
    if not config.is_file() or json.loads(config.read_text()).get("_class_name") != "QuickSRNet":
        raise ValueError(f"{path} holds no QuickSRNet (neither a QuickSRNet folder nor one with {COMPONENT}/).")
    return QuickSRNet.from_pretrained(str(folder), subfolder=subfolder, torch_dtype=torch.float32)


def build_model(args) -> QuickSRNet:
    if args.pretrained_model_name_or_path is None:
        return QuickSRNet(num_channels=args.num_channels or 32, num_intermediate_layers=(
            2 if args.num_intermediate_layers is None else args.num_intermediate_layers),
            scale_factor=args.scale, clamp_output=(-1.0, 1.0))
    model = load_pretrained(args.pretrained_model_name_or_path)
    if args.scale is not None and args.scale != model.config.scale_factor:
        raise ValueError(f"--scale {args.scale} does not match the loaded model's scale_factor "
                         f"{model.config.scale_factor} ({args.pretrained_model_name_or_path}); leave --scale out.")
    args.scale = model.config.scale_factor
    return model


def teacher_default_size(args) -> tuple[int, int]:
    index = Path(teacher_pipeline_path(args.teacher)) / "model_index.json"
    if not index.is_file():
        raise ValueError(f"Give --resolution: {teacher_pipeline_path(args.teacher)} is no pipeline folder to take "
                         "the default size from.")
    config = json.loads(index.read_text())
    return config.get("default_height", 320), config.get("default_width", 512)


# ---------------------------------------------------------------------------------------------------- data


def build_datasets(args):
    """(training clips, validation clips [N, 3, F, H, W] or None) at the high resolution."""
    if args.video_folder:
        from diffusers_neodragon.data.video_folder import VideoFolderDataset  # noqa: PLC0415

        train = VideoFolderDataset(args.video_folder, args.num_frames, args.height, args.width)
        if args.num_validation_clips and len(train) <= args.num_validation_clips:
            raise ValueError(f"{args.video_folder} has {len(train)} clips: too few to hold "
                             f"{args.num_validation_clips} out (lower --num_validation_clips).")
        items = [train[i] for i in range(len(train) - args.num_validation_clips, len(train))]
        if args.num_validation_clips:
            train.paths = train.paths[: -args.num_validation_clips]
    else:
        from diffusers_neodragon.data.shapes import ShapesVideoDataset  # noqa: PLC0415

        train = ShapesVideoDataset(args.train_samples, args.num_frames, args.height, args.width, seed=args.seed)
        items = []
        if args.num_validation_clips:
            held = ShapesVideoDataset(args.num_validation_clips, args.num_frames, args.height, args.width,
                                      seed=args.seed + VALIDATION_SEED_OFFSET, split="heldout")
            items = [held[i] for i in range(len(held))]
    validation = torch.stack([item["video"] for item in items]) if items else None
    return train, validation


def collate(items):
    return {"video": torch.stack([item["video"] for item in items])}


def frames_of(video: torch.Tensor) -> torch.Tensor:
    """[B, C, F, H, W] -> [B·F, C, H, W]."""
    return video.transpose(1, 2).flatten(0, 1)


@torch.no_grad()
def degrade(video: torch.Tensor, scale: int, downsample: str, vae=None) -> torch.Tensor:
    """High-res clips [B, 3, F, H, W] -> the network's inputs [B, 3, F, H/s, W/s]: downsampled, then (``vae``) its
    encode -> posterior mode -> decode round trip, unclamped as the pipeline hands the decoder's output to SR."""
    b, c, f, h, w = video.shape
    size = (h // scale, w // scale)
    kwargs = {"mode": "area"} if downsample == "area" else {"mode": "bicubic", "antialias": True,
                                                              "align_corners": False}
    low = F.interpolate(frames_of(video.float()), size=size, **kwargs)
    low = low.clamp(-1, 1).reshape(b, f, c, *size).transpose(1, 2)
    if vae is not None:
        low = vae.decode(vae.encode(low.to(vae.dtype)).latent_dist.mode()).sample.float()
    return low


def random_crops(high: torch.Tensor, low: torch.Tensor, frames_per_clip: int, crop: int, scale: int, generator):
    """``frames_per_clip`` random frames per clip, one random aligned crop each: (input crops [N, 3, c/s, c/s],
    target crops [N, 3, c, c])."""
    lows, highs = [], []
    small = crop // scale
    for clip in range(high.shape[0]):
        picks = torch.randperm(high.shape[2], generator=generator, device=generator.device)[:frames_per_clip]
        for frame in picks.tolist():
            top = randint(generator, 0, low.shape[-2] - small + 1)
            left = randint(generator, 0, low.shape[-1] - small + 1)
            lows.append(low[clip, :, frame, top : top + small, left : left + small])
            highs.append(high[clip, :, frame, top * scale : top * scale + crop, left * scale : left * scale + crop])
    return torch.stack(lows), torch.stack(highs)


# ---------------------------------------------------------------------------------------------- validation


def upsample(frames: torch.Tensor, scale: int, mode: str) -> torch.Tensor:
    extra = {"align_corners": False} if mode == "bicubic" else {}
    return F.interpolate(frames, scale_factor=scale, mode=mode, **extra)


@torch.no_grad()
def log_validation(model, clips, vae, accelerator, args, step: int) -> dict[str, float]:
    """PSNR/SSIM of SR, bicubic and nearest upsampling against the held-out high-res frames; a PNG strip."""
    was_training = model.training
    model.eval()
    scale = model.config.scale_factor
    ups = {"sr": [], "bicubic": [], "nearest": []}
    for clip in clips.split(1):
        low = frames_of(degrade(clip.to(accelerator.device), scale, args.downsample, vae))
        with accelerator.autocast():
            ups["sr"].append(model(low).float().cpu())
        ups["bicubic"].append(upsample(low, scale, "bicubic").cpu())
        ups["nearest"].append(upsample(low, scale, "nearest").cpu())
    target = frames_of(clips.float())
    figures = {}
    for name, parts in ups.items():
        frames = torch.cat(parts)
        figures[f"psnr_{name}"] = psnr(frames, target)
        figures[f"ssim_{name}"] = float(ssim(frames.clamp(-1, 1), target).mean())
    videos = {name: torch.cat(parts).reshape(clips.shape[0], clips.shape[2], *target.shape[1:]).transpose(1, 2)
              for name, parts in ups.items()}
    strip = video_strip([v for i in range(clips.shape[0])
                         for v in (clips[i], videos["nearest"][i], videos["bicubic"][i], videos["sr"][i])],
                        max_frames=4)
    folder = Path(args.output_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"sr-step-{step:06d}.png"
    strip.save(path)
    print(f"[train_quicksrnet] step {step}: PSNR SR {figures['psnr_sr']:.2f} / bicubic {figures['psnr_bicubic']:.2f} "
          f"/ nearest {figures['psnr_nearest']:.2f} dB; SSIM {figures['ssim_sr']:.4f} / {figures['ssim_bicubic']:.4f} "
          f"/ {figures['ssim_nearest']:.4f} -> {path}")
    log_image(accelerator, "validation", strip, step)
    accelerator.log({f"val/{k}": v for k, v in figures.items()}, step=step)
    model.train(was_training)
    return figures


# ------------------------------------------------------------------------------------------------- outputs


def card_values(args, model, global_step, last_loss, figures, total_batch) -> dict:
    config = model.config
    perceptual = describe_perceptual(args.perceptual, args.lpips_net) if args.perceptual_weight else "none"
    inputs = f"{DOWNSAMPLE[args.downsample]} downsampling"
    if args.degrade == "vae":
        inputs += f", then the VAE round trip of {teacher_pipeline_path(args.teacher)}"
    return dict(
        title=args.hub_model_id or f"QuickSRNet {config.scale_factor}x ({Path(args.output_dir).name})",
        command=training_command(SCRIPT, args.command_args), scale=config.scale_factor,
        num_channels=config.num_channels, num_intermediate_layers=config.num_intermediate_layers,
        activation=config.activation, clamp_output=config.clamp_output, parameters=f"{count_parameters(model):,}",
        init=args.pretrained_model_name_or_path or "from scratch (nearest-neighbour upsampling at step 0)",
        data=f"{args.video_folder} (video folder)" if args.video_folder else "the Shapes world (rendered on the fly)",
        resolution=f"{args.height}x{args.width}", input_resolution=f"{args.height // config.scale_factor}x"
        f"{args.width // config.scale_factor}", inputs=inputs, crop_size=args.crop_size,
        frames_per_clip=args.frames_per_clip, num_frames=args.num_frames,
        loss=f"{args.pixel_weight:g}·{args.pixel_loss.upper()} + {args.perceptual_weight:g}·perceptual",
        perceptual=perceptual, batch_size=total_batch, learning_rate=args.learning_rate, save_dtype=args.save_dtype,
        steps=global_step, final_loss=format_float(last_loss), num_validation_clips=args.num_validation_clips,
        **{f"{m}_{k}": format_float(figures.get(f"{m}_{k}")) for m in ("psnr", "ssim")
           for k in ("sr", "bicubic", "nearest")},
    )


# ---------------------------------------------------------------------------------------------------- main


def main(args):
    output_dir = Path(args.output_dir)
    # Before the accelerator, so that a bad --pretrained_model_name_or_path fails at once; seeded, so that every
    # process (and every run with this --seed) starts from the same weights: FSDP shards each process's own copy.
    torch.manual_seed(args.seed)
    model = build_model(args)
    if args.resolution is None:
        height, width = teacher_default_size(args)
        args.height, args.width = height * args.scale, width * args.scale
    check_sizes(args, args.scale)
    if args.pipeline_output and not (Path(teacher_pipeline_path(args.teacher)) / "model_index.json").is_file():
        raise ValueError(f"--pipeline_output needs a pipeline folder as --teacher; {args.teacher} has no "
                         "model_index.json.")
    accelerator, repo_id = setup_accelerator(args)

    vae = None
    if args.degrade == "vae" or (args.perceptual == "encoder_features" and args.perceptual_weight > 0):
        vae = load_vae_folder(teacher_pipeline_path(args.teacher), torch.float32).eval().requires_grad_(False)
        vae.to(accelerator.device)
    degrade_vae = vae if args.degrade == "vae" else None
    model.train()
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    register_folder_checkpoints(accelerator, [(COMPONENT, QuickSRNet)])
    optimizer = build_optimizer(model.parameters(), args, accelerator)
    perceptual_fn = None
    if args.perceptual_weight > 0 and args.perceptual != "none":
        encoder = copy.deepcopy(vae.encoder) if vae is not None else None
        perceptual_fn = build_perceptual_loss(args.perceptual, encoder=encoder, lpips_net=args.lpips_net,
                                              device=accelerator.device)
        if isinstance(perceptual_fn, torch.nn.Module):
            perceptual_fn.to(accelerator.device)

    dataset, validation_clips = build_datasets(args)
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=args.train_batch_size, sampler=EpochShuffleSampler(len(dataset), seed=args.seed),
        collate_fn=collate, num_workers=args.dataloader_num_workers, drop_last=True,
        persistent_workers=args.dataloader_num_workers > 0,
    )
    lr_scheduler = build_lr_scheduler(optimizer, args, accelerator)
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)

    init_trackers(accelerator, args)
    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(f"***** Training QuickSRNet {args.scale}x ({count_parameters(model) / 1e3:.1f}k params) on "
                f"{args.height}x{args.width} frames, crops {args.crop_size}, total batch {total_batch} clips x "
                f"{args.frames_per_clip} frames, inputs: {args.downsample} + degrade {args.degrade} *****")

    global_step = resume_global_step(accelerator, args, output_dir)
    start_step, start_time = global_step, time.perf_counter()
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="Steps",
                    disable=not accelerator.is_local_main_process)
    last_loss, figures, window_losses = None, {}, []
    for micro_step, batch in training_batches(dataloader, accelerator, global_step, args.max_train_steps,
                                              args.gradient_accumulation_steps):
        generator = step_generator(args.seed, micro_step)
        with accelerator.accumulate(model):
            high = batch["video"].to(accelerator.device)
            with accelerator.autocast():
                low = degrade(high, args.scale, args.downsample, degrade_vae)
            inputs, targets = random_crops(high, low, args.frames_per_clip, args.crop_size, args.scale, generator)
            with accelerator.autocast():
                output = model(inputs)
            loss, terms = vae_reconstruction_loss(  # frames as one-frame videos
                output[:, :, None], targets[:, :, None],
                mse_weight=args.pixel_weight if args.pixel_loss == "mse" else 0.0,
                l1_weight=args.pixel_weight if args.pixel_loss == "l1" else 0.0,
                perceptual_weight=args.perceptual_weight if perceptual_fn is not None else 0.0,
                perceptual_fn=perceptual_fn,
            )
            window_losses.append(loss.detach())
            backward_and_step(accelerator, loss, model, optimizer, lr_scheduler, args.max_grad_norm)

        if accelerator.sync_gradients:
            global_step += 1
            progress.update(1)
            last_loss = window_mean(accelerator, window_losses)
            progress.set_postfix(loss=f"{last_loss:.4f}")
            accelerator.log({"loss": last_loss, "lr": lr_scheduler.get_last_lr()[0],
                             **{f"loss/{k}": v for k, v in terms.items()}}, step=global_step)
            if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
            if validation_clips is not None and args.validation_steps and global_step % args.validation_steps == 0:
                current = full_model(accelerator, model, device=accelerator.device)  # collective under FSDP
                if accelerator.is_main_process:
                    figures = log_validation(current, validation_clips, degrade_vae, accelerator, args, global_step)
        if should_stop(accelerator, args, global_step, start_time):
            break
    progress.close()
    finish_training_loop("train_quicksrnet", accelerator, args, output_dir, start_step, global_step, start_time)

    accelerator.wait_for_everyone()
    result = {"global_step": global_step, "loss": last_loss}
    model = full_model(accelerator, model, device=accelerator.device)  # collective under FSDP
    if accelerator.is_main_process:
        model = model.eval()
        if validation_clips is not None and not (args.validation_steps and global_step % args.validation_steps == 0):
            figures = log_validation(model, validation_clips, degrade_vae, accelerator, args, global_step)
        save_dtype = SAVE_DTYPES[args.save_dtype]
        saved = model.to("cpu") if save_dtype == torch.float32 else copy.deepcopy(model).to("cpu", save_dtype)
        saved.save_pretrained(output_dir / COMPONENT)
        values = card_values(args, model, global_step, last_loss, figures, total_batch)
        tags = ["super-resolution", "neodragon", "quicksrnet"]
        write_model_card(output_dir, "quicksrnet.md", values, tags=tags)
        published = output_dir
        if args.pipeline_output:
            published = save_pipeline_with(teacher_pipeline_path(args.teacher), args.pipeline_output,
                                           super_resolution=saved)
            write_model_card(published, "quicksrnet.md", values, tags=tags)
        if args.push_to_hub:
            push_folder_to_hub(repo_id, published, token=args.hub_token)
        result.update(figures)
    accelerator.end_training()
    return result


if __name__ == "__main__":
    main(parse_args())
