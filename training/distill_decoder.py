#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""Asymmetric decoder distillation (Neodragon's operation 2): keep a teacher VAE's encoder, train a tiny streaming
decoder to decode its latents.

The teacher is any ``CausalVideoVAE`` (a VAE folder, or a pipeline / run folder holding ``vae/``). Its encoder,
posterior projection and latent normalisation constants are copied bit for bit into an ``AsymmetricVAE`` and frozen,
so a transformer trained on the teacher's latent space keeps working; only the TAEHV-style decoder (widths, MemBlocks
per stage and up-sampling flags from the command line; its up-sampling must undo the encoder's 8x8x8) is trained.

Loss: ``--pixel_loss`` (MSE or L1) + ``--perceptual_weight`` x a perceptual term: LPIPS (``--perceptual lpips``, only
with its backbone weights already on disk: nothing here can download them, the error says where to put the file), or
an offline substitute: ``ssim`` (1 - SSIM, default) or ``encoder_features`` (feature distance in the frozen encoder).
The decoder reads the teacher encoder's posterior mean (``--sample_posterior``: a sample) of each clip, and learns to
reproduce ``--target data`` (default: the clip itself, as the paper does; the student can then beat the teacher's
own reconstruction errors) or ``--target teacher`` (the teacher decoder's output: no ground truth needed, and the
student inherits the teacher's look, errors included). ``--latent_cache_dir`` encodes every training clip once.
``--latent_noise_std`` perturbs those latents as a transformer's would be, ``--foreground_weight`` (Shapes only) and
``--first_frame_weight`` weigh the objects and the first frame, and ``--edge_weight`` pays for blurred outlines, as
in ``train_vae.py``.

Data: the Shapes world (default) or ``--video_folder`` (mp4 files or folders of frames). ``--generated_clips N`` adds
the teacher pipeline's own samples (sampled once, kept in ``--generated_clips_dir``): its transformer's latents, which
the encoder never makes but the decoder meets in the pipeline, with the teacher decoder's pixels as the target.

Output: ``<output_dir>/vae`` (``AsymmetricVAE``) and its model card; ``--pipeline_output DIR`` also writes the
teacher's pipeline with its VAE replaced by the student (streaming, exportable decoder).

Example (one GPU; the embedded Shapes model as teacher):

    accelerate launch training/distill_decoder.py --output_dir runs/decoder --mixed_precision bf16 \\
        --pipeline_output runs/decoder/pipeline --max_train_seconds 300
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import time
from pathlib import Path

import torch
from accelerate.logging import get_logger
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from diffusers_neodragon import AsymmetricVAE, CausalVideoVAE
from diffusers_neodragon.data.prompts import read_prompt_file
from diffusers_neodragon.data.shapes import to_unit_range
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
    parse_int_list,
    parse_resolution,
    parse_with_command,
    perturb_latents,
    psnr,
    push_folder_to_hub,
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
from diffusers_neodragon.training_utils.asymmetric_student import (
    build_student_vae,
    continue_student_vae,
    encoder_state,
)
from diffusers_neodragon.training_utils.generated_clips import (
    GeneratedBatches,
    GeneratedClips,
    sample_generated_clips,
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
SCRIPT = "training/distill_decoder.py"
VALIDATION_SEED_OFFSET = 1000
GENERATION_SEED_OFFSET = 2000
GENERATED_CLIPS_FOLDER = "generated-clips"


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Distil a tiny streaming decoder from a causal video VAE.")
    parser.add_argument("--teacher", type=str, default=None,
                        help="CausalVideoVAE folder, or a pipeline/run folder holding vae/ (default: the embedded "
                             "Shapes model).")
    parser.add_argument("--pipeline_output", type=str, default=None,
                        help="Also write the teacher pipeline (--teacher must be one) with the student as its vae.")
    # Student
    parser.add_argument("--student_init", type=str, default=None,
                        help="Start from an earlier student (an AsymmetricVAE folder, or a run folder holding vae/) "
                             "instead of a fresh decoder; its encoder must be the teacher's. The --decoder_* shape "
                             "options are then taken from it.")
    parser.add_argument("--decoder_num_features", type=str, default="32,32,16,16",
                        help="Widths: the first conv, then the output of every stage (stages = entries - 1).")
    parser.add_argument("--decoder_blocks_per_stage", type=str, default="3",
                        help="MemBlocks per stage: one count, or one per stage.")
    parser.add_argument("--decoder_time_upscale", type=str, default=None,
                        help="0/1 per stage: doubles time (default all 1). 2**(number of 1s) must be the encoder's "
                             "temporal factor.")
    parser.add_argument("--decoder_space_upscale", type=str, default=None, help="As --decoder_time_upscale, space.")
    # Data
    parser.add_argument("--video_folder", type=str, default=None,
                        help="Train on the clips of this folder (mp4 or frame folders) instead of the Shapes world.")
    parser.add_argument("--validation_folder", type=str, default=None,
                        help="Held-out clips for validation (default: held-out Shapes clips, or the last "
                             "--num_validation_clips of --video_folder, then left out of training).")
    parser.add_argument("--resolution", type=str, default="128", help="`N` or `HxW` (multiples of 8).")
    parser.add_argument("--num_frames", type=int, default=49, help="Frames per clip (1 + 8k).")
    parser.add_argument("--train_samples", type=int, default=100_000, help="Shapes training clips.")
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--latent_cache_dir", type=str, default=None,
                        help="Encode every training clip once into this folder (reused when it exists).")
    parser.add_argument("--sample_posterior", action="store_true",
                        help="Decode a posterior sample instead of its mean.")
    parser.add_argument("--target", type=str, default="data", choices=["data", "teacher"],
                        help="data: reconstruct the clip (default); teacher: the teacher decoder's output.")
    parser.add_argument("--generated_clips", type=int, default=0,
                        help="Also train on this many clips sampled once by the teacher pipeline (--teacher must be "
                             "one), decoding its transformer's latents into the teacher decoder's pixels: the latents "
                             "the decoder meets in the pipeline, which the encoder never produces.")
    parser.add_argument("--generated_clips_dir", type=str, default=None,
                        help="Where the generated clips are kept, reused and grown by later runs (default: "
                             "<output_dir>/generated-clips).")
    parser.add_argument("--generated_batch_size", type=int, default=None,
                        help="Generated clips added to every batch (default: --train_batch_size).")
    parser.add_argument("--generation_prompts", type=str, default=None,
                        help="Prompt file (one per line) for --generated_clips, cycled (default: captions of the "
                             "Shapes world's training split; required with --video_folder).")
    parser.add_argument("--latent_noise_std", type=float, default=0.0,
                        help="Decode latents perturbed by noise of std U(0, this) in the normalised space, as the "
                             "teacher's own decoder may have been trained (the embedded Shapes VAE: 0.15), so the "
                             "student stays steady on a transformer's imperfect latents.")
    # Loss
    parser.add_argument("--pixel_loss", type=str, default="mse", choices=["mse", "l1"])
    parser.add_argument("--pixel_weight", type=float, default=1.0)
    parser.add_argument("--perceptual", type=str, default="ssim", choices=PERCEPTUAL_KINDS)
    parser.add_argument("--perceptual_weight", type=float, default=0.1)
    parser.add_argument("--lpips_net", type=str, default="vgg", choices=["vgg", "alex", "squeeze"])
    parser.add_argument("--first_frame_weight", type=float, default=1.0,
                        help="How many frames the first (image) frame counts as in the loss.")
    parser.add_argument("--edge_weight", type=float, default=0.0,
                        help="Weight of an L1 term over horizontal and vertical pixel differences (sharp outlines).")
    parser.add_argument("--foreground_weight", type=float, default=0.0,
                        help="Weight of an L1 term over the objects' pixels (Shapes world only: the objects are found "
                             "by their plain backgrounds).")
    add_common_arguments(
        parser, output_dir="distilled-decoder", tracker_project_name="neodragon-distill-decoder",
        learning_rate=1e-3, train_batch_size=4, max_train_steps=5_000, checkpointing_steps=500, lr_warmup_steps=50,
        adam_weight_decay=0.0,
    )
    parser.add_argument("--validation_steps", type=int, default=0, help="Validate every N steps (0 = only at the end).")
    parser.add_argument("--num_validation_clips", type=int, default=4)

    args = parse_with_command(parser, input_args)
    args.height, args.width = parse_resolution(args.resolution)
    if args.height % 8 or args.width % 8:
        raise ValueError(f"--resolution must be a multiple of 8, got {args.resolution}.")
    if args.num_frames < 1 or (args.num_frames - 1) % 8:
        raise ValueError(f"--num_frames must be 1 + 8k, got {args.num_frames}.")
    args.num_features = parse_int_list(args.decoder_num_features)
    blocks = parse_int_list(args.decoder_blocks_per_stage)
    args.blocks_per_stage = blocks[0] if len(blocks) == 1 else list(blocks)
    args.time_upscale = None if args.decoder_time_upscale is None else parse_int_list(args.decoder_time_upscale)
    args.space_upscale = None if args.decoder_space_upscale is None else parse_int_list(args.decoder_space_upscale)
    if args.perceptual == "lpips" and args.perceptual_weight > 0:
        missing = lpips_weights_missing(args.lpips_net)
        if missing:  # before any model is loaded
            raise ValueError(f"--perceptual lpips: {missing}. Offline alternatives: --perceptual ssim or "
                             "encoder_features.")
    if args.pixel_weight <= 0 and (args.perceptual == "none" or args.perceptual_weight <= 0):
        raise ValueError("Give --pixel_weight > 0 or a perceptual term.")
    if args.first_frame_weight <= 0:
        raise ValueError(f"--first_frame_weight must be > 0, got {args.first_frame_weight}.")
    if args.latent_noise_std < 0:
        raise ValueError(f"--latent_noise_std must be >= 0, got {args.latent_noise_std}.")
    for name in ("foreground_weight", "edge_weight"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(args, name)}.")
    if args.generated_clips < 0:
        raise ValueError(f"--generated_clips must be >= 0, got {args.generated_clips}.")
    if args.generated_batch_size is None:
        args.generated_batch_size = args.train_batch_size
    if args.generated_clips and args.generated_batch_size < 1:
        raise ValueError(f"--generated_batch_size must be >= 1, got {args.generated_batch_size}.")
    if args.generated_clips and args.sample_posterior:
        raise ValueError("--sample_posterior draws from the encoder's posterior; generated clips have none. Drop one.")
    if args.generated_clips and args.video_folder and not args.generation_prompts:
        raise ValueError("--generated_clips with --video_folder needs --generation_prompts (a prompt file).")
    if args.foreground_weight and args.video_folder:
        raise ValueError("--foreground_weight finds the Shapes world's objects by their plain backgrounds; a video "
                         "folder has none. Drop it for real clips.")
    return args


# -------------------------------------------------------------------------------------------------- models


def load_teacher(args) -> CausalVideoVAE:
    teacher = load_vae_folder(teacher_pipeline_path(args.teacher), torch.float32)
    if not isinstance(teacher, CausalVideoVAE):
        raise ValueError(f"The teacher must be a CausalVideoVAE, got {type(teacher).__name__} from {args.teacher}.")
    return teacher.eval().requires_grad_(False)


def build_student(args, teacher) -> AsymmetricVAE:
    if args.student_init:
        return continue_student_vae(teacher, load_vae_folder(args.student_init, teacher.dtype))
    return build_student_vae(teacher, args.num_features, args.blocks_per_stage, args.time_upscale,
                             args.space_upscale)


class DecoderStudent(torch.nn.Module):
    """What the optimiser trains, as one module for accelerate: latents → the student's pixels."""

    def __init__(self, vae: AsymmetricVAE):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample


# ---------------------------------------------------------------------------------------------------- data


def student_of(wrapper: DecoderStudent) -> AsymmetricVAE:
    """The trained VAE inside the prepared training wrapper."""
    return wrapper.vae


def build_datasets(args):
    """(training set, validation clips [N, 3, F, H, W] or None)."""
    if args.video_folder:
        from diffusers_neodragon.data.video_folder import VideoFolderDataset  # noqa: PLC0415

        train = VideoFolderDataset(args.video_folder, args.num_frames, args.height, args.width)
        if args.validation_folder:
            held = VideoFolderDataset(args.validation_folder, args.num_frames, args.height, args.width)
            items = [held[i] for i in range(min(args.num_validation_clips, len(held)))]
        elif args.num_validation_clips:
            if len(train) <= args.num_validation_clips:
                raise ValueError(f"{args.video_folder} has {len(train)} clips: too few to hold "
                                 f"{args.num_validation_clips} out (give --validation_folder).")
            items = [train[i] for i in range(len(train) - args.num_validation_clips, len(train))]
            train.paths = train.paths[: -args.num_validation_clips]
        else:
            items = []
    else:
        from diffusers_neodragon.data.shapes import ShapesVideoDataset  # noqa: PLC0415

        # uint8 clips (a quarter of the bytes through the workers), made float on the device (to_unit_range).
        train = ShapesVideoDataset(args.train_samples, args.num_frames, args.height, args.width, seed=args.seed,
                                   as_uint8=True)
        items = []
        if args.num_validation_clips:
            held = ShapesVideoDataset(args.num_validation_clips, args.num_frames, args.height, args.width,
                                      seed=args.seed + VALIDATION_SEED_OFFSET, split="heldout")
            items = [held[i] for i in range(len(held))]
    validation = torch.stack([item["video"] for item in items]) if items else None
    return train, validation


class CachedLatents(torch.utils.data.Dataset):
    """A dataset's items with ``latent_mean`` / ``latent_logvar`` read from ``folder/<index>.safetensors``."""

    def __init__(self, dataset, folder: Path):
        self.dataset, self.folder = dataset, folder

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        stored = load_file(str(self.folder / f"{index:08d}.safetensors"))
        item["latent_mean"], item["latent_logvar"] = stored["mean"], stored["logvar"]
        return item


def latent_cache_key(teacher, args, num_clips: int) -> str:
    """What the cached latents depend on: the teacher encoder's weights and the clips (source, size, count, seed)."""
    digest = hashlib.sha256()
    for name, tensor in sorted({**teacher.encoder.state_dict(), **teacher.quant_conv.state_dict()}.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    data = dict(video_folder=str(args.video_folder), num_frames=args.num_frames, height=args.height,
                width=args.width, num_clips=num_clips, seed=args.seed)
    return json.dumps({"encoder_sha256": digest.hexdigest(), **data}, sort_keys=True)


@torch.no_grad()
def fill_latent_cache(teacher, dataset, folder: Path, accelerator, batch_size: int, key: str,
                      num_workers: int = 0) -> None:
    """Encode (main process) every clip of ``dataset`` whose file is missing: posterior mean and log-variance.
    The clips are made by ``num_workers`` loader processes while the device encodes (making them is most of the
    cost). A folder made for another teacher or other clips (``key``) is refused; files appear whole or not at
    all."""
    folder.mkdir(parents=True, exist_ok=True)
    key_file = folder / "cache_key.json"
    if key_file.is_file() and key_file.read_text() != key:
        raise ValueError(f"{folder} holds latents of another teacher or other clips ({key_file}); "
                         "give another --latent_cache_dir")
    key_file.write_text(key)
    missing = [i for i in range(len(dataset)) if not (folder / f"{i:08d}.safetensors").is_file()]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, missing), batch_size=batch_size,
                                         collate_fn=collate, num_workers=num_workers)
    batches = zip(range(0, len(missing), batch_size), loader)
    for start, batch in tqdm(batches, total=len(loader), desc="Caching latents",
                             disable=not accelerator.is_local_main_process):
        indices = missing[start : start + batch_size]
        videos = to_unit_range(batch["video"].to(accelerator.device))
        with accelerator.autocast():
            posterior = teacher.encode(videos).latent_dist
        for k, index in enumerate(indices):
            partial = folder / f"{index:08d}.partial"
            save_file({"mean": posterior.mean[k].float().cpu().contiguous(),
                       "logvar": posterior.logvar[k].float().cpu().contiguous()}, str(partial))
            os.replace(partial, folder / f"{index:08d}.safetensors")


def collate(items):
    batch = {"video": torch.stack([item["video"] for item in items])}
    if "latent_mean" in items[0]:
        batch["latent_mean"] = torch.stack([item["latent_mean"] for item in items])
        batch["latent_logvar"] = torch.stack([item["latent_logvar"] for item in items])
    return batch


@torch.no_grad()
def teacher_latents(teacher, batch, sample: bool, generator, accelerator) -> torch.Tensor:
    """The raw latents the student decodes: the cached or freshly encoded posterior's mean (or a sample)."""
    if "latent_mean" in batch:
        mean, logvar = batch["latent_mean"].to(accelerator.device), batch["latent_logvar"].to(accelerator.device)
    else:
        with accelerator.autocast():
            posterior = teacher.encode(to_unit_range(batch["video"].to(accelerator.device))).latent_dist
        mean, logvar = posterior.mean.float(), posterior.logvar.float()
    if not sample:
        return mean
    device = generator.device if generator is not None else mean.device
    noise = torch.randn(mean.shape, generator=generator, device=device).to(mean.device)
    return mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise


def generation_prompts(args) -> list[str]:
    """``--generated_clips`` prompts: the prompt file's, cycled, or captions of the Shapes world's training split."""
    if args.generation_prompts:
        prompts = read_prompt_file(args.generation_prompts)
        return [prompts[i % len(prompts)] for i in range(args.generated_clips)]
    from diffusers_neodragon.data.shapes import ShapesVideoDataset  # noqa: PLC0415

    shapes = ShapesVideoDataset(args.generated_clips, args.num_frames, args.height, args.width,
                                seed=args.seed + GENERATION_SEED_OFFSET)
    return [shapes.scene(i).caption for i in range(args.generated_clips)]


def prepare_generated_clips(args, accelerator) -> GeneratedBatches:
    """Sample (main process, once; a relaunch reuses the folder) the teacher pipeline's clips; batches of them."""
    folder = Path(args.generated_clips_dir or Path(args.output_dir) / GENERATED_CLIPS_FOLDER)
    source = Path(teacher_pipeline_path(args.teacher))
    if not (source / "model_index.json").is_file():  # on every process: none may wait for a main process that failed
        raise ValueError(f"--generated_clips samples with the teacher pipeline; {source} is not a pipeline folder.")
    if accelerator.is_main_process:
        from diffusers_neodragon import NeodragonPipeline  # noqa: PLC0415

        pipe = NeodragonPipeline.from_pretrained(str(source), dtype=torch.float32).to(accelerator.device)
        pipe.set_progress_bar_config(disable=True)
        sample_generated_clips(pipe, generation_prompts(args), folder, seed=args.seed, num_frames=args.num_frames,
                               height=args.height, width=args.width, batch_size=args.train_batch_size,
                               disable_progress=not accelerator.is_local_main_process)
        del pipe
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    accelerator.wait_for_everyone()
    return GeneratedBatches(GeneratedClips(folder, args.generated_clips), args.generated_batch_size, args.seed + 1,
                            stride=accelerator.num_processes)


# ---------------------------------------------------------------------------------------------- validation


@torch.no_grad()
def reconstruct(teacher, student, videos, accelerator, batch_size: int = 2):
    """(teacher decoder's, student decoder's) reconstructions of ``videos`` from the teacher encoder's posterior
    mean, in float32 on the CPU."""
    teacher_out, student_out = [], []
    for part in videos.split(batch_size):
        part = part.to(accelerator.device)
        with accelerator.autocast():
            latents = teacher.encode(part).latent_dist.mode()
            teacher_out.append(teacher.decode(latents).sample.float().cpu())
            student_out.append(student.decode(latents).sample.float().cpu())
    return torch.cat(teacher_out), torch.cat(student_out)


def mean_ssim(recon: torch.Tensor, target: torch.Tensor) -> float:
    frames = lambda v: v.transpose(1, 2).flatten(0, 1)  # noqa: E731
    return float(ssim(frames(recon.clamp(-1, 1)), frames(target)).mean())


def log_validation(teacher, student, videos, accelerator, args, step: int) -> dict[str, float]:
    """PSNR/SSIM of both decoders against the held-out clips (and student vs teacher), a PNG strip (clip, teacher,
    student rows per clip) and tracker logs."""
    was_training = student.training
    student.eval()
    recon_teacher, recon_student = reconstruct(teacher, student, videos, accelerator)
    videos = videos.float()
    figures = {
        "psnr_student": psnr(recon_student, videos), "psnr_teacher": psnr(recon_teacher, videos),
        "ssim_student": mean_ssim(recon_student, videos), "ssim_teacher": mean_ssim(recon_teacher, videos),
        "psnr_student_vs_teacher": psnr(recon_student, recon_teacher.clamp(-1, 1)),
    }
    strip = video_strip([v for triple in zip(videos, recon_teacher, recon_student) for v in triple])
    folder = Path(args.output_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"decoder-step-{step:06d}.png"
    strip.save(path)
    print(f"[distill_decoder] step {step}: PSNR student {figures['psnr_student']:.2f} dB, teacher "
          f"{figures['psnr_teacher']:.2f} dB; SSIM {figures['ssim_student']:.4f} / {figures['ssim_teacher']:.4f} "
          f"-> {path}")
    log_image(accelerator, "validation", strip, step)
    accelerator.log({f"val/{k}": v for k, v in figures.items()}, step=step)
    student.train(was_training)
    return figures


# ------------------------------------------------------------------------------------------------- outputs


def card_values(args, teacher, student, global_step, last_loss, figures, total_batch) -> dict:
    decoder = count_parameters(student.decoder) + count_parameters(student.post_quant_conv)
    teacher_decoder = count_parameters(teacher.decoder) + count_parameters(teacher.post_quant_conv)
    perceptual = describe_perceptual(args.perceptual, args.lpips_net) if args.perceptual_weight else "none"
    return dict(
        title=args.hub_model_id or f"Distilled tiny video decoder ({Path(args.output_dir).name})",
        command=training_command(SCRIPT, args.command_args),
        teacher=args.teacher or "the embedded Shapes model (diffusers_neodragon/pretrained/shapes)",
        steps=f"{global_step}, from the student in {args.student_init}" if args.student_init else global_step,
        final_loss=format_float(last_loss),
        data=f"{args.video_folder} (video folder)" if args.video_folder else "the Shapes world (rendered on the fly)",
        resolution=f"{args.height}x{args.width}", num_frames=args.num_frames,
        decoder_parameters=f"{decoder / 1e6:.3f}M", teacher_decoder_parameters=f"{teacher_decoder / 1e6:.3f}M",
        compression=f"{teacher_decoder / decoder:.1f}x",
        encoder_parameters=f"{(count_parameters(student.encoder) + count_parameters(student.quant_conv)) / 1e6:.3f}M",
        num_features=list(student.config.decoder_num_features),
        blocks_per_stage=student.config.decoder_blocks_per_stage,
        time_upscale=[int(f) for f in student.config.decoder_time_upscale],
        space_upscale=[int(f) for f in student.config.decoder_space_upscale],
        latent_channels=student.config.latent_channels,
        loss=(f"{args.pixel_weight:g}·{args.pixel_loss.upper()} + {args.perceptual_weight:g}·perceptual"
              + "".join(f" + {weight:g}·{name}" for name, weight in (
                  ("foreground L1", args.foreground_weight), ("edge L1", args.edge_weight)) if weight)
              + (f", first frame counted {args.first_frame_weight:g}x" if args.first_frame_weight != 1 else "")
              + (f"; latents perturbed by noise of std up to {args.latent_noise_std:g} (normalised)"
                 if args.latent_noise_std else "")),
        generated=(f"{args.generated_clips} clips (its transformer's latents, its decoder's pixels as the target), "
                   f"{args.generated_batch_size} in every batch, prompts from "
                   f"{args.generation_prompts or 'the Shapes world training split'}" if args.generated_clips
                   else "none"),
        perceptual=perceptual, target="the clip itself" if args.target == "data" else "the teacher decoder's output",
        latents="a posterior sample" if args.sample_posterior else "the posterior mean",
        batch_size=total_batch, learning_rate=args.learning_rate, save_dtype=args.save_dtype,
        **{k: format_float(figures.get(k)) for k in (
            "psnr_student", "psnr_teacher", "ssim_student", "ssim_teacher", "psnr_student_vs_teacher")},
        **{k: f"{student.config[k]:.6f}" for k in (
            "image_latent_shift", "image_latent_scale", "video_latent_shift", "video_latent_scale")},
    )


# ---------------------------------------------------------------------------------------------------- main


def main(args):
    output_dir = Path(args.output_dir)
    accelerator, repo_id = setup_accelerator(args)

    teacher = load_teacher(args)
    student = build_student(args, teacher)
    reference_encoder = {k: v.clone() for k, v in encoder_state(student).items()}
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(student)
    student.decoder.train()
    student.post_quant_conv.train()
    model = DecoderStudent(student)
    teacher.to(accelerator.device)

    register_folder_checkpoints(accelerator, [("vae", AsymmetricVAE)], model_of=student_of)
    optimizer = build_optimizer(student.parameters(), args, accelerator)
    perceptual_fn = None
    if args.perceptual_weight > 0 and args.perceptual != "none":
        perceptual_fn = build_perceptual_loss(args.perceptual, encoder=copy.deepcopy(teacher.encoder),
                                              lpips_net=args.lpips_net, device=accelerator.device)
        if isinstance(perceptual_fn, torch.nn.Module):
            perceptual_fn.to(accelerator.device)

    dataset, validation_clips = build_datasets(args)
    if args.latent_cache_dir:
        cache = Path(args.latent_cache_dir)
        if accelerator.is_main_process:
            fill_latent_cache(teacher, dataset, cache, accelerator, args.train_batch_size,
                              latent_cache_key(teacher, args, len(dataset)), args.dataloader_num_workers)
        accelerator.wait_for_everyone()
        dataset = CachedLatents(dataset, cache)
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=args.train_batch_size, sampler=EpochShuffleSampler(len(dataset), seed=args.seed),
        collate_fn=collate, num_workers=args.dataloader_num_workers, drop_last=True,
        persistent_workers=args.dataloader_num_workers > 0,
    )
    generated = prepare_generated_clips(args, accelerator) if args.generated_clips else None
    lr_scheduler = build_lr_scheduler(optimizer, args, accelerator)
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)

    init_trackers(accelerator, args)
    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"***** Distilling a decoder: teacher {count_parameters(teacher.decoder) / 1e6:.3f}M -> student "
        f"{count_parameters(student.decoder) / 1e6:.3f}M params *****\n  clips {args.num_frames}x{args.height}x"
        f"{args.width}, total batch {total_batch}, steps {args.max_train_steps}, target {args.target}"
    )

    global_step = resume_global_step(accelerator, args, output_dir)

    start_step, start_time = global_step, time.perf_counter()
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="Steps",
                    disable=not accelerator.is_local_main_process)
    last_loss, figures, window_losses = None, {}, []
    for micro_step, batch in training_batches(dataloader, accelerator, global_step, args.max_train_steps,
                                              args.gradient_accumulation_steps):
        generator = step_generator(args.seed, micro_step, device=accelerator.device)
        with accelerator.accumulate(model):
            latents = teacher_latents(teacher, batch, args.sample_posterior, generator, accelerator)
            latents = perturb_latents(teacher, latents, args.latent_noise_std, generator)
            if args.target == "teacher":
                with torch.no_grad(), accelerator.autocast():
                    target = teacher.decode(latents).sample.float().clamp(-1, 1)
            else:
                target = to_unit_range(batch["video"].to(accelerator.device))
            if generated is not None:  # the teacher pipeline's own latents, its decoder's pixels as the target
                extra = generated(micro_step)
                extra_latents = perturb_latents(teacher, extra["latents"].to(accelerator.device),
                                                args.latent_noise_std, generator)
                latents = torch.cat([latents, extra_latents])
                target = torch.cat([target, to_unit_range(extra["video"].to(accelerator.device))])
            with accelerator.autocast():
                recon = model(latents)
            loss, terms = vae_reconstruction_loss(
                recon, target, mse_weight=args.pixel_weight if args.pixel_loss == "mse" else 0.0,
                l1_weight=args.pixel_weight if args.pixel_loss == "l1" else 0.0,
                perceptual_weight=args.perceptual_weight if perceptual_fn is not None else 0.0,
                perceptual_fn=perceptual_fn, first_frame_weight=args.first_frame_weight,
                foreground_weight=args.foreground_weight, edge_weight=args.edge_weight,
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
                current = full_model(accelerator, model, student_of, device=accelerator.device)  # collective
                if accelerator.is_main_process:
                    figures = log_validation(teacher, current, validation_clips, accelerator, args, global_step)
        if should_stop(accelerator, args, global_step, start_time):
            break
    progress.close()
    finish_training_loop("distill_decoder", accelerator, args, output_dir, start_step, global_step, start_time)

    accelerator.wait_for_everyone()
    result = {"global_step": global_step, "loss": last_loss}
    student = full_model(accelerator, model, student_of, device=accelerator.device)  # collective under FSDP
    if accelerator.is_main_process:
        student = student.eval()
        if validation_clips is not None and not (args.validation_steps and global_step % args.validation_steps == 0):
            figures = log_validation(teacher, student, validation_clips, accelerator, args, global_step)
        for key, value in encoder_state(student).items():  # the whole point: the latent space did not move
            if not torch.equal(value.cpu(), reference_encoder[key].cpu()):
                raise RuntimeError(f"The frozen encoder changed during distillation ({key}).")
        save_dtype = SAVE_DTYPES[args.save_dtype]
        saved = student if save_dtype == torch.float32 else copy.deepcopy(student).to(save_dtype)
        saved.to("cpu").save_pretrained(output_dir / "vae")
        values = card_values(args, teacher, student, global_step, last_loss, figures, total_batch)
        write_model_card(output_dir, "decoder_distillation.md", values,
                         tags=["video-vae", "neodragon", "decoder-distillation"])
        published = output_dir
        if args.pipeline_output:
            published = save_pipeline_with(teacher_pipeline_path(args.teacher), args.pipeline_output, vae=saved)
            write_model_card(published, "decoder_distillation.md", values,
                             tags=["video-vae", "neodragon", "decoder-distillation"])
        if args.push_to_hub:
            push_folder_to_hub(repo_id, published, token=args.hub_token)
        result.update(figures)
    accelerator.end_training()
    return result


if __name__ == "__main__":
    main(parse_args())
