#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""Pyramidal DMD step distillation (Neodragon, operation 4): a few-step student from a multi-step pyramidal teacher.

Three transformers: the frozen teacher ("real score", with CFG at the teacher's scales: its first-frame scale for
latent frame 0, its video scale for later frames), a trainable "fake score" copy of the teacher, and the student
(the teacher, or ``--student_path`` for the progressive schedule 4-4-4 -> 1-1-1). Per optimisation step, on a batch
of cached latents (``training_utils.latent_cache``: the Shapes world, or real captioned videos with ``--video_folder``
/ ``--dataset_name`` encoded once at the start, or the shards of ``training/extract_latents.py`` with
``--latents_dir``, made with the teacher's VAE), one pyramid stage i and one unit u (u history frames
from the data, corrupted as in training; u = 0 is the generated first frame, ``--first_frame_prob``):

1. the student sees the stage's noisy point at one of its own sampler's steps (``--steps_per_stage``, one step drawn
   per example, ``scheduler.sample_inference_timesteps``) and predicts the clean stage latent in one Euler step,
   z = z_sigma - sigma / (sigma_start^i - sigma_end^i) D(z_sigma) (``scheduler.predict_clean_stage_latent``);
2. student loss = ``--dmd_weight`` x the DMD surrogate (teacher minus fake clean estimate on z re-noised into the
   stage, normalised by mean |z - x_real|) + ``--cauchy_weight`` x log(1 + ||z - z_data||^2), z_data the same
   one-step prediction made with the exact velocity (Down(data, 2^i) in the first and last stage)
   (``training_utils.dmd``);
3. ``--fake_updates_per_student`` (2) updates of the fake model with the pyramidal flow-matching loss on z.

The noisy points the student learns from are the data's at its sampler's noise levels (not its own rollouts).
The output folder is a ``NeodragonPipeline`` whose config samples with the distilled steps and no CFG by default;
with ``--save_mode hybrid`` (default) the teacher is nested as ``first_frame_pipeline`` and makes latent frame 0
with its multi-step sampler (the paper's hybrid setting); ``mode="monolithic"`` on the same folder lets the student
make its own first frame, no CFG, with ``--first_frame_steps_per_stage`` steps (``--save_mode monolithic`` makes that
the folder's default: e.g. a 4-4-4 first frame and 1-1-1 later frames from one transformer, far cheaper than the
teacher's first frame).

Example (one GPU, a few minutes; the second run starts from the first's student):

    accelerate launch training/distill_pyramidal_dmd.py --teacher_path diffusers_neodragon/pretrained/shapes \\
        --output_dir runs/dmd/444 --steps_per_stage 4 --mixed_precision bf16 --max_train_seconds 150
    accelerate launch training/distill_pyramidal_dmd.py --teacher_path diffusers_neodragon/pretrained/shapes \\
        --student_path runs/dmd/444 --output_dir runs/dmd/111 --steps_per_stage 1 --mixed_precision bf16

Memory: three transformers (teacher frozen); ``--gradient_checkpointing`` checkpoints the student and the fake
model. At the real scale shard them with accelerate's FSDP, e.g. a config file with

    distributed_type: FSDP
    mixed_precision: bf16
    num_processes: 8
    fsdp_config:
      fsdp_sharding_strategy: FULL_SHARD
      fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
      fsdp_transformer_layer_cls_to_wrap: NeodragonTransformerBlock
      fsdp_state_dict_type: FULL_STATE_DICT
      fsdp_use_orig_params: true

(``accelerate launch --config_file fsdp.yaml training/distill_pyramidal_dmd.py ...``; DeepSpeed ZeRO-2 through
``distributed_type: DEEPSPEED`` with ``zero_stage: 2`` works alike). The teacher is not prepared (frozen, replicated);
the CPU tests run the same code path on tiny configs.
"""

from __future__ import annotations

import argparse
import collections
import copy
import time
from pathlib import Path

import numpy as np
import torch
from accelerate.logging import get_logger
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from diffusers_neodragon import NeodragonPipeline, NeodragonTransformer3DModel
from diffusers_neodragon.pipelines.neodragon.mode_defaults import MODE_DEFAULTS, first_given
from diffusers_neodragon.training_utils import (
    SAVE_DTYPES,
    TEXT_COMPONENT_NAMES,
    TEXT_MODULE_NAMES,
    EpochShuffleSampler,
    IdleOnCpu,
    add_common_arguments,
    backward_and_step,
    build_lr_scheduler,
    build_optimizer,
    count_parameters,
    finish_training_loop,
    flow_matching_loss,
    format_float,
    freeze_unused_parameters,
    init_trackers,
    keep_stored_components,
    parse_int_list,
    parse_with_command,
    push_folder_to_hub,
    pyramid_training_batch,
    register_folder_checkpoints,
    resume_global_step,
    sample_num_history,
    sample_stage,
    save_checkpoint,
    save_pipeline_with,
    setup_accelerator,
    should_stop,
    step_generator,
    training_batches,
    training_command,
    video_strip,
)
from diffusers_neodragon.training_utils.dmd import cauchy_loss, dmd_loss, renoise_sample
from diffusers_neodragon.training_utils.latent_cache import (
    build_latent_cache,
    check_latent_shape,
    latents_from_shards,
)
from diffusers_neodragon.training_utils.sharding import (
    enable_gradient_checkpointing,
    full_model,
    shard_frozen_model,
    update_ema,
    whole_model,
)
from diffusers_neodragon.training_utils.video_data import (
    add_video_data_arguments,
    real_data_source,
    video_dataset_from_args,
)
from diffusers_neodragon.utils.model_cards import write_model_card


logger = get_logger(__name__)
SCRIPT = "training/distill_pyramidal_dmd.py"


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Pyramidal DMD step distillation of a Neodragon pipeline.")
    parser.add_argument("--teacher_path", type=str, required=True, help="The multi-step NeodragonPipeline folder.")
    parser.add_argument("--student_path", type=str, default=None,
                        help="Start the student from this pipeline folder's transformer (or a transformer folder): "
                             "the progressive schedule (e.g. the 4-4-4 student for 1-1-1); default: the teacher.")
    parser.add_argument("--steps_per_stage", type=str, default="1",
                        help="The student's sampler: an int for every stage or one per stage (4 / 2,2,2 / 1).")
    parser.add_argument("--first_frame_steps_per_stage", type=str, default=None,
                        help="The student's sampler for its own first frame (u = 0), where a one-step student loses "
                             "most: e.g. 4 with --steps_per_stage 1 keeps a multi-step first frame in the same "
                             "transformer, a cheap stand-in for the hybrid's nested teacher; default: "
                             "--steps_per_stage.")
    parser.add_argument("--fake_updates_per_student", type=int, default=2, help="Fake-model updates per student one.")
    parser.add_argument("--fake_learning_rate", type=float, default=None, help="Default: --learning_rate.")
    parser.add_argument("--dmd_weight", type=float, default=1.0)
    parser.add_argument("--cauchy_weight", type=float, default=1.0)
    parser.add_argument("--teacher_guidance_scale", type=float, default=None,
                        help="Real-score CFG for latent frame 0; default: the teacher's first-frame scale.")
    parser.add_argument("--teacher_video_guidance_scale", type=float, default=None,
                        help="Real-score CFG for later frames; default: the teacher's video scale.")
    parser.add_argument("--sample_ratios", type=str, default="1,1,1", help="Relative frequency of the stages.")
    parser.add_argument("--first_frame_prob", type=float, default=0.3,
                        help="Train the generated first frame (u = 0) with this probability; else u >= 1 with true "
                             "history (negative: 1/T).")
    parser.add_argument("--corrupt_ratio", type=float, default=0.5, help="History corruption sigma_c ~ U(0, this).")
    # Data (the teacher's size by default)
    parser.add_argument("--resolution", type=str, default=None, help="`N` or `HxW`; default: the teacher's.")
    parser.add_argument("--num_frames", type=int, default=None, help="Default: the teacher's default_num_frames.")
    parser.add_argument("--train_samples", type=int, default=2048, help="Shapes clips (the default data).")
    parser.add_argument("--latent_cache_path", type=str, default=None)
    parser.add_argument("--encode_batch_size", type=int, default=32)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--max_sequence_length", type=int, default=64)
    parser.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--ema_decay", type=float, default=0.99)
    # Output
    parser.add_argument("--save_mode", type=str, default="hybrid", choices=["hybrid", "monolithic"],
                        help="hybrid: nest the teacher as first_frame_pipeline (its multi-step frame 0); monolithic: "
                             "the student makes every frame.")
    parser.add_argument("--validation_steps", type=int, default=0, help="Every N steps (0: only at the end).")
    parser.add_argument("--num_validation_prompts", type=int, default=2)
    parser.add_argument("--validation_fps", type=int, default=8)
    add_video_data_arguments(parser)
    add_common_arguments(
        parser, output_dir="shapes-pyramidal-dmd", tracker_project_name="neodragon-distill-pyramidal-dmd",
        learning_rate=1e-5, train_batch_size=64, max_train_steps=2000, checkpointing_steps=500, lr_warmup_steps=0,
        adam_beta2=0.999, adam_weight_decay=0.0,
    )
    args = parse_with_command(parser, input_args)
    for name in ("steps_per_stage", "first_frame_steps_per_stage"):
        steps = list(parse_int_list(getattr(args, name) or args.steps_per_stage))
        if any(s < 1 for s in steps):
            raise ValueError(f"--{name} must be ints >= 1, got {steps}.")
        setattr(args, name, steps)
    args.sample_ratios = parse_int_list(args.sample_ratios)
    if args.fake_updates_per_student < 0:
        raise ValueError("--fake_updates_per_student must be >= 0.")
    if args.gradient_accumulation_steps != 1 and args.fake_updates_per_student > 1:
        raise ValueError("--gradient_accumulation_steps > 1 needs --fake_updates_per_student 0 or 1 (each fake update "
                         "is an optimiser step of its own; accumulated, they would merge).")
    if args.first_frame_prob is not None and args.first_frame_prob < 0:
        args.first_frame_prob = None
    args.data_source = real_data_source(args)
    return args


# ---------------------------------------------------------------------------------------------- components


def load_teacher(args) -> NeodragonPipeline:
    teacher = NeodragonPipeline.from_pretrained(args.teacher_path, dtype=torch.float32)
    teacher.set_progress_bar_config(disable=True)
    for name in ("transformer", "vae", *TEXT_COMPONENT_NAMES, "context_adapter"):
        module = getattr(teacher, name, None)
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    return teacher


def load_student(args, teacher) -> NeodragonTransformer3DModel:
    if args.student_path is None:
        return copy.deepcopy(teacher.transformer)
    folder = Path(args.student_path)
    subfolder = "transformer" if (folder / "transformer").is_dir() else None
    return NeodragonTransformer3DModel.from_pretrained(folder, subfolder=subfolder, torch_dtype=torch.float32)


def per_stage(steps, stages):
    return list(steps) * stages if len(steps) == 1 else list(steps)


def student_steps(args, stages: int) -> tuple[list[int], list[int]]:
    """The student's steps per stage: (every later latent frame, its own first frame)."""
    return per_stage(args.steps_per_stage, stages), per_stage(args.first_frame_steps_per_stage, stages)


def make_pipeline(student, teacher, args, mode=None) -> NeodragonPipeline:
    """The student as a NeodragonPipeline sampling with its distilled steps and no CFG by default; in hybrid mode
    the teacher (its own monolithic defaults) makes latent frame 0."""
    mode = mode or args.save_mode
    config = teacher.config
    steps, first_steps = student_steps(args, teacher.scheduler.config.stages)
    pipe = NeodragonPipeline(
        transformer=student, scheduler=teacher.scheduler, vae=teacher.vae, context_adapter=teacher.context_adapter,
        first_frame_pipeline=teacher if mode == "hybrid" else None, mode=mode,
        prompt_suffix=config.prompt_suffix, default_negative_prompt=config.default_negative_prompt,
        default_height=args.height, default_width=args.width, default_num_frames=args.num_frames,
        default_guidance_scale=0.0, default_video_guidance_scale=0.0,
        default_num_inference_steps=first_steps, default_video_num_inference_steps=steps,
        default_history_noise=config.default_history_noise,
        **{k: getattr(teacher, k, None)
           for k in (*TEXT_COMPONENT_NAMES, "super_resolution", "safety_checker", "feature_extractor")},
        requires_safety_checker=config.get("requires_safety_checker", False),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def teacher_scales(args, teacher) -> tuple[float, float]:
    mono = MODE_DEFAULTS["monolithic"]
    first = first_given(args.teacher_guidance_scale, teacher.config.default_guidance_scale, mono["guidance_scale"])
    video = first_given(args.teacher_video_guidance_scale, teacher.config.default_video_guidance_scale,
                        mono["video_guidance_scale"])
    return float(first), float(video)


def velocity(model, x, text, timestep, history, scale=None, negative=None):
    """The model's velocity; with ``scale`` > 1 classifier-free guided by the ``negative`` text rows."""
    embeds, mask, pooled = text
    if scale is None or scale <= 1.0:
        return model(hidden_states=x, encoder_hidden_states=embeds, pooled_projections=pooled, timestep=timestep,
                     history=history, encoder_attention_mask=mask).sample
    n_embeds, n_mask, n_pooled = negative
    out = model(
        hidden_states=torch.cat([x, x]), encoder_hidden_states=torch.cat([n_embeds, embeds]),
        pooled_projections=torch.cat([n_pooled, pooled]), timestep=torch.cat([timestep, timestep]),
        history=[torch.cat([h, h]) for h in history],
        encoder_attention_mask=None if mask is None else torch.cat([n_mask, mask]),
    ).sample
    uncond, cond = out.chunk(2)
    return uncond + scale * (cond - uncond)


# ---------------------------------------------------------------------------------------------- validation


@torch.no_grad()
def log_validation(pipe, prompts, accelerator, args, step, tag="validation"):
    """One video per prompt with the pipeline's defaults (the distilled sampler); mp4s + a PNG strip."""
    from diffusers.utils import export_to_video  # noqa: PLC0415

    if not prompts:
        return []
    folder = Path(args.output_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    videos = []
    for i, prompt in enumerate(prompts):
        with accelerator.autocast():
            frames = pipe(prompt, generator=torch.Generator().manual_seed(args.seed + i), output_type="np").frames[0]
        videos.append(frames)
        try:
            export_to_video(list(frames), str(folder / f"{tag}-step-{step:06d}-{i}.mp4"), fps=args.validation_fps)
        except Exception as error:  # noqa: BLE001 - an mp4 encoder problem must not stop training
            logger.warning(f"Could not write an mp4 ({error}); the PNG strip is still saved.")
    tensors = [torch.from_numpy(np.asarray(v)).permute(3, 0, 1, 2).float() * 2 - 1 for v in videos]
    video_strip(tensors).save(folder / f"{tag}-step-{step:06d}.png")
    return videos


# ---------------------------------------------------------------------------------------------------- main


class Indices(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return index


def load_training_latents(args, vae, text_components, accelerator):
    """The cached training set: latent shards (``--latents_dir``, checked against the teacher's VAE and this run's
    size), real clips encoded once (``--video_folder`` / ``--dataset_name``) or the Shapes world."""
    if args.latents_dir:
        cache = latents_from_shards(args.latents_dir, text_components, accelerator.device, args.max_sequence_length,
                                    vae)
        check_latent_shape(cache.latents, vae, args)
        return cache
    clips = video_dataset_from_args(args, verbose=accelerator.is_main_process) if args.data_source else None
    return build_latent_cache(args, vae, text_components, accelerator, dataset=clips)


def main(args):
    output_dir = Path(args.output_dir)
    accelerator, repo_id = setup_accelerator(args)
    teacher = load_teacher(args)
    args.height, args.width = (teacher.config.default_height, teacher.config.default_width)
    if args.resolution:
        from diffusers_neodragon.training_utils import parse_resolution  # noqa: PLC0415

        args.height, args.width = parse_resolution(args.resolution)
    args.num_frames = args.num_frames or teacher.config.default_num_frames
    scheduler = teacher.scheduler
    stages = scheduler.config.stages
    steps, first_steps = student_steps(args, stages)
    if len(steps) != stages or len(first_steps) != stages or len(args.sample_ratios) != stages:
        raise ValueError(f"--steps_per_stage, --first_frame_steps_per_stage and --sample_ratios need 1 or {stages} "
                         "entries.")
    device = accelerator.device
    for name in ("transformer", "vae", *TEXT_COMPONENT_NAMES, "context_adapter"):
        module = getattr(teacher, name, None)
        if isinstance(module, torch.nn.Module):
            module.to(device)
    real = teacher.transformer
    # A text-distilled teacher's ContextAdapter is applied (frozen) when the captions are encoded for the cache.
    text_components = {k: getattr(teacher, k, None) for k in (*TEXT_COMPONENT_NAMES, "context_adapter")}
    first_scale, video_scale = teacher_scales(args, teacher)

    student = load_student(args, teacher).to(device).train()
    fake = copy.deepcopy(real).to(device).train().requires_grad_(True)
    student.requires_grad_(True)
    for model in (student, fake):
        freeze_unused_parameters(model)
        if args.gradient_checkpointing:
            enable_gradient_checkpointing(model)
    ema = None
    if args.use_ema:
        ema = EMAModel(student.parameters(), decay=args.ema_decay, model_cls=NeodragonTransformer3DModel,
                       model_config=student.config, foreach=True)
        ema.to(device)
    # Under FSDP the frozen teacher is split across the GPUs like the trained models (after the copies above).
    real = shard_frozen_model(accelerator, real)
    register_folder_checkpoints(accelerator, [("student", NeodragonTransformer3DModel),
                                              ("fake", NeodragonTransformer3DModel)],
                                emas={"student_ema": ema} if ema is not None else None)
    opt_student = build_optimizer(student.parameters(), args, accelerator)
    opt_fake = build_optimizer(fake.parameters(), args, accelerator,
                               learning_rate=first_given(args.fake_learning_rate, args.learning_rate))
    lr_student = build_lr_scheduler(opt_student, args, accelerator)
    lr_fake = build_lr_scheduler(opt_fake, args, accelerator)

    cache = load_training_latents(args, teacher.vae, text_components, accelerator)
    # The captions are cached: the text encoders serve only the main process's validation from here on.
    idle_text = IdleOnCpu((text_components.get(n) for n in TEXT_MODULE_NAMES), device).park()
    num_samples = cache.latents.shape[0]
    if num_samples < args.train_batch_size:
        raise ValueError(f"{num_samples} training clips are fewer than --train_batch_size {args.train_batch_size}.")
    dataloader = torch.utils.data.DataLoader(
        Indices(num_samples), batch_size=args.train_batch_size,
        sampler=EpochShuffleSampler(num_samples, seed=args.seed), drop_last=True,
    )
    # One trained model per prepare call (accelerate's FSDP2 shards one model with its optimiser at a time); the frozen
    # teacher is not prepared: it has nothing to train or synchronise.
    student, opt_student, lr_student = accelerator.prepare(student, opt_student, lr_student)
    fake, opt_fake, lr_fake = accelerator.prepare(fake, opt_fake, lr_fake)
    dataloader = accelerator.prepare(dataloader)
    unwrapped = accelerator.unwrap_model(student)
    init_trackers(accelerator, args)
    from diffusers_neodragon.data.shapes import fixed_prompt_set  # noqa: PLC0415

    validation_prompts = [] if not args.num_validation_prompts else (
        list(dict.fromkeys(cache.captions))[: args.num_validation_prompts] if args.data_source
        else fixed_prompt_set("seen", args.num_validation_prompts))
    logger.info(f"***** Pyramidal DMD: student {count_parameters(unwrapped) / 1e6:.2f}M params, steps {steps}, "
                f"teacher CFG {first_scale:g} / {video_scale:g} *****")

    global_step = resume_global_step(accelerator, args, output_dir)

    def validation_pipeline(mode=None):
        """The pipeline of the student's (EMA) weights on the main process, None on the others (collective)."""
        model = full_model(accelerator, student, ema=ema, device=device)
        first_frame = teacher
        if (mode or args.save_mode) == "hybrid":  # the teacher makes frame 0: with its whole transformer
            whole = whole_model(real, device, keep=accelerator.is_main_process)  # collective when sharded
            if whole is not None and whole is not real:
                first_frame = copy.copy(teacher)
                first_frame.register_modules(transformer=whole)
        return None if model is None else make_pipeline(model.eval(), first_frame, args, mode)

    negative_row = torch.zeros(1, dtype=torch.long, device=cache.caption_ids.device)
    history_log = collections.defaultdict(list)
    start_step, start_time = global_step, time.perf_counter()
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="Steps",
                    disable=not accelerator.is_local_main_process)
    for micro_step, indices in training_batches(dataloader, accelerator, global_step, args.max_train_steps,
                                              args.gradient_accumulation_steps):
        generator = step_generator(args.seed, micro_step, device=device)
        with accelerator.accumulate(student, fake):
            indices = indices.to(cache.latents.device)
            latents = cache.latents[indices].float()
            ids = cache.caption_ids[indices]
            keep = max(int(cache.mask[ids].sum(1).max()), 1)
            mask = cache.mask[ids][:, :keep]
            text = (cache.embeds[ids][:, :keep], None if bool(mask.all()) else mask, cache.pooled[ids])
            batch = latents.shape[0]
            neg = negative_row.expand(batch)
            negative = (cache.embeds[neg][:, :keep], None if text[1] is None else cache.mask[neg][:, :keep],
                        cache.pooled[neg])
            stage = sample_stage(args.sample_ratios, generator)
            unit = sample_num_history(latents.shape[2], generator, args.first_frame_prob)
            stage_steps = (first_steps if unit == 0 else steps)[stage]
            timesteps = scheduler.sample_inference_timesteps(stage, stage_steps, batch, generator, device)
            example = pyramid_training_batch(scheduler, latents, stage, num_history=unit, generator=generator,
                                             corrupt_ratio=args.corrupt_ratio, timesteps=timesteps)
            scale = first_scale if unit == 0 else video_scale

            # Student update: DMD gradient + Cauchy loss to the data.
            with accelerator.autocast():
                v_student = velocity(student, example.hidden_states, text, example.timestep, example.history)
            prediction = scheduler.predict_clean_stage_latent(example.hidden_states, v_student.float(),
                                                              example.ratio, stage)
            noisy = renoise_sample(scheduler, prediction.detach(), stage, generator)
            with torch.no_grad(), accelerator.autocast():
                v_real = velocity(real, noisy.hidden_states, text, noisy.timestep, example.history, scale, negative)
                v_fake = velocity(fake, noisy.hidden_states, text, noisy.timestep, example.history)
            real_clean = scheduler.predict_clean_stage_latent(noisy.hidden_states, v_real.float(), noisy.ratio, stage)
            fake_clean = scheduler.predict_clean_stage_latent(noisy.hidden_states, v_fake.float(), noisy.ratio, stage)
            loss_dmd = dmd_loss(prediction, real_clean, fake_clean)
            # The Cauchy target is where the exact velocity's one-step prediction lands: Down(data, 2^i) in the first
            # and last stage; in a middle stage the straight line through the stage's start and end reaches noise 0 at
            # a mix of the data and the upsampled lower stage, so a perfect student is not penalised there.
            target = scheduler.predict_clean_stage_latent(example.hidden_states, example.target.float(), example.ratio,
                                                          stage)
            loss_cauchy = cauchy_loss(prediction, target)
            loss = args.dmd_weight * loss_dmd + args.cauchy_weight * loss_cauchy
            backward_and_step(accelerator, loss, student, opt_student, lr_student, args.max_grad_norm)

            # Fake-score updates: pyramidal flow matching on the student's samples.
            fake_losses = []
            samples = prediction.detach()
            for _ in range(args.fake_updates_per_student):
                point = renoise_sample(scheduler, samples, stage, generator)
                with accelerator.autocast():
                    v = velocity(fake, point.hidden_states, text, point.timestep, example.history)
                loss_fake = flow_matching_loss(v.float(), point.target.float())
                backward_and_step(accelerator, loss_fake, fake, opt_fake, max_grad_norm=args.max_grad_norm)
                fake_losses.append(loss_fake.detach())
            lr_fake.step()  # accelerate's wrapper steps it with its optimiser only

        if not accelerator.sync_gradients:  # inside an accumulation window
            continue
        if ema is not None:
            update_ema(ema, student)
        global_step += 1
        progress.update(1)
        logs = {"loss_dmd": loss_dmd.detach(), "loss_cauchy": loss_cauchy.detach()}
        if fake_losses:
            logs["loss_fake"] = torch.stack(fake_losses).mean()
        logs = {k: accelerator.gather(v.reshape(1)).mean().item() for k, v in logs.items()}
        for k, v in logs.items():
            history_log[k].append(v)
        progress.set_postfix({k: f"{v:.4f}" for k, v in logs.items()})
        accelerator.log({**logs, "lr": lr_student.get_last_lr()[0], "stage": stage, "unit": unit},
                        step=global_step)
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
    finish_training_loop("distill_pyramidal_dmd", accelerator, args, output_dir, start_step, global_step, start_time)

    accelerator.wait_for_everyone()
    window = {k: float(np.mean(v[-50:])) for k, v in history_log.items()}
    result = {"global_step": global_step, **window}
    pipe = validation_pipeline()
    if accelerator.is_main_process:
        save_dtype = SAVE_DTYPES[args.save_dtype]
        if save_dtype == torch.float32:
            pipe.save_pretrained(str(output_dir), safe_serialization=True)
        else:  # the student alone is cast
            saved = make_pipeline(copy.deepcopy(pipe.transformer).to(save_dtype), teacher, args)
            saved.save_pretrained(str(output_dir), safe_serialization=True)
        if Path(args.teacher_path).is_dir():  # the teacher's parts as it stores them, not at the fp32 they ran in
            keep_stored_components(args.teacher_path, output_dir, exclude=("transformer", "first_frame_pipeline"))
            if args.save_mode == "hybrid":  # the first-frame pipeline is the whole teacher
                save_pipeline_with(args.teacher_path, output_dir / "first_frame_pipeline")
        with idle_text.in_use():
            log_validation(pipe, validation_prompts, accelerator, args, global_step, tag="final")
        steps_text, first_steps_text = ("-".join(map(str, s)) for s in (steps, first_steps))
        teacher_steps = (first_given(teacher.config.get("default_num_inference_steps"),
                                     MODE_DEFAULTS["monolithic"]["num_inference_steps"]),
                         first_given(teacher.config.get("default_video_num_inference_steps"),
                                     MODE_DEFAULTS["monolithic"]["video_num_inference_steps"]))
        values = dict(
            title=args.hub_model_id or f"Shapes pyramidal DMD student {steps_text} ({output_dir.name})",
            command=training_command(SCRIPT, args.command_args), steps=global_step,
            loss_dmd=format_float(window.get("loss_dmd")), loss_cauchy=format_float(window.get("loss_cauchy")),
            loss_fake=format_float(window.get("loss_fake")), steps_per_stage=steps_text,
            first_frame_steps_per_stage=first_steps_text, nfe_first_frame=sum(first_steps),
            nfe_per_frame=sum(steps), teacher_path=args.teacher_path, student_path=args.student_path or "the teacher",
            teacher_first_steps=list(teacher_steps[0]) if not isinstance(teacher_steps[0], int) else teacher_steps[0],
            teacher_video_steps=list(teacher_steps[1]) if not isinstance(teacher_steps[1], int) else teacher_steps[1],
            teacher_cfg=f"{first_scale:g} / {video_scale:g}", save_mode=args.save_mode,
            fake_updates=args.fake_updates_per_student, dmd_weight=args.dmd_weight, cauchy_weight=args.cauchy_weight,
            learning_rate=args.learning_rate, batch_size=args.train_batch_size * accelerator.num_processes,
            data=(f"{num_samples} clips of {args.data_source}" if args.data_source
                  else f"{args.train_samples} Shapes clips"), first_frame_prob=args.first_frame_prob,
            corrupt_ratio=args.corrupt_ratio, ema=f"decay {args.ema_decay}" if args.use_ema else "off",
            mixed_precision=args.mixed_precision or "no", height=args.height, width=args.width,
            num_frames=args.num_frames,
        )
        write_model_card(output_dir, "pyramidal_dmd.md", values,
                         tags=["text-to-video", "neodragon", "dmd", *(() if args.data_source else ("shapes",))])
        if args.push_to_hub:
            push_folder_to_hub(repo_id, output_dir, token=args.hub_token)
    accelerator.end_training()
    return result


if __name__ == "__main__":
    main(parse_args())
