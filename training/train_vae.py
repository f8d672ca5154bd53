#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""Train a small causal video VAE (``CausalVideoVAE``: causal 3-D encoder + full causal decoder, 8x8x8) on the
synthetic Shapes world, or on real videos (``--video_folder``, its metadata file optional: a VAE needs no captions;
``--dataset_name``), and store its latent normalisation constants.

The result, ``<output_dir>/vae``, is the VAE of the Shapes base model trained by ``train_pyramidal_flow.py`` (and
the teacher decoder of ``distill_decoder.py``). Loss: MSE + L1 on the reconstruction (+ an optional, tiny KL to
N(0, I); + an optional LPIPS term, off by default because its weights must be downloaded).

After training, the latents of ``--normalization_samples`` training clips give the constants written into the
saved config: the first latent frame (image) and the later frames (video) each get shift = mean, scale = 1/std.

``--decoder_only --latent_noise_std S`` fine-tunes the decoder of a trained VAE on latents perturbed by noise (in
the transformer's normalised units), keeping the encoder and the constants: the way to make the decoder of a
shipped model tolerate generated latents without retraining its transformer.

Defaults are the values of the embedded model's recipe (``training/recipes/shapes_default.sh``, its first phase:
8 latent channels, a posterior log-variance starting at -30, batch 8, 256 clips for the constants); ``--edge_weight``
and ``--vae_init`` serve comparisons of loss terms and initialisations that the tests keep reproducible.

Example (one GPU, ~5 minutes on an H100):

    accelerate launch training/train_vae.py --output_dir runs/shapes-vae --mixed_precision bf16 --max_train_seconds 300
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from pathlib import Path

import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from diffusers_neodragon import CausalVideoVAE
from diffusers_neodragon.models.autoencoders.causal_video_blocks import CausalResnetBlock3D
from diffusers_neodragon.training_utils import (
    SAVE_DTYPES,
    EpochShuffleSampler,
    add_common_arguments,
    backward_and_step,
    build_lpips,
    build_lr_scheduler,
    build_optimizer,
    compute_latent_statistics,
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
    setup_accelerator,
    should_stop,
    step_generator,
    training_batches,
    training_command,
    vae_reconstruction_loss,
    video_strip,
    window_mean,
)
from diffusers_neodragon.training_utils.sharding import enable_gradient_checkpointing, full_model
from diffusers_neodragon.training_utils.video_data import (
    add_video_data_arguments,
    real_data_source,
    video_dataset_from_args,
)
from diffusers_neodragon.utils.model_cards import write_model_card


logger = get_logger(__name__)
SCRIPT = "training/train_vae.py"
# Validation and normalisation clips come from other seeds than the training set (the Shapes world is infinite).
VALIDATION_SEED_OFFSET = 1000
STATISTICS_SEED_OFFSET = 2000
LATENT_CONSTANTS = ("image_latent_shift", "image_latent_scale", "video_latent_shift", "video_latent_scale")


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Train a small causal video VAE on the Shapes world.")
    # Data
    parser.add_argument("--resolution", type=str, default="128", help="`N` or `HxW` (multiples of 8).")
    parser.add_argument("--num_frames", type=int, default=17, help="Frames per training clip (1 + 8k).")
    parser.add_argument("--train_samples", type=int, default=100_000, help="Size of the synthetic training set.")
    add_video_data_arguments(parser, latents=False)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    # Model
    parser.add_argument("--latent_channels", type=int, default=8)
    parser.add_argument("--block_out_channels", type=str, default="32,64,64,64", help="Encoder widths per block.")
    parser.add_argument("--layers_per_block", type=str, default="1,1,1,1", help="Encoder resnets per block.")
    parser.add_argument("--decoder_block_out_channels", type=str, default=None, help="Default: the encoder's.")
    parser.add_argument("--decoder_layers_per_block", type=str, default=None, help="Default: the encoder's.")
    parser.add_argument("--norm_num_groups", type=int, default=16)
    parser.add_argument("--pretrained_vae", type=str, default=None,
                        help="Start from this CausalVideoVAE folder (or a folder with vae/).")
    parser.add_argument("--vae_init", type=str, default="scaled", choices=["scaled", "reference", "pytorch"],
                        help="scaled: fan-in scaled normal (unit gain) with zero-initialised residual branches, the "
                             "one that trains small VAEs from scratch; reference: Pyramid-Flow's "
                             "truncated-normal(0.02), "
                             "calibrated for its 128-512-wide VAE (on narrow ones the latent path shrinks to ~1e-4 and "
                             "colour is never learned); pytorch: PyTorch's default init.")
    parser.add_argument("--decoder_only", action="store_true",
                        help="Fine-tune only the decoder of --pretrained_vae: the encoder, the latent space and its "
                             "normalisation constants stay as they are, so a transformer trained on them stays valid.")
    parser.add_argument("--latent_noise_std", type=float, default=0.0,
                        help="Decode latents perturbed by Gaussian noise of std U(0, this) per clip, in the VAE's "
                             "normalised (transformer) units, so that the decoder tolerates generated latents.")
    parser.add_argument("--init_logvar", type=float, default=-30.0,
                        help="Initial posterior log-variance (quant_conv bias) of a new VAE: sampling noise starts "
                             "small instead of swamping the untrained latents (std exp(logvar/2)).")
    # Loss
    parser.add_argument("--mse_weight", type=float, default=1.0)
    parser.add_argument("--l1_weight", type=float, default=1.0)
    parser.add_argument("--kl_weight", type=float, default=1e-6, help="Per-element-mean KL weight (0 = off).")
    parser.add_argument("--edge_weight", type=float, default=0.0,
                        help="Weight of the L1 loss on horizontal/vertical pixel differences (sharper outlines).")
    parser.add_argument("--foreground_weight", type=float, default=0.0,
                        help="Weight of the L1 loss over object pixels only (training_utils.foreground_mask): "
                             "small objects keep their shape.")
    parser.add_argument("--first_frame_weight", type=float, default=1.0,
                        help="How many frames the first frame counts as in the pixel losses: the causal VAE encodes "
                             "it alone, and the transformer's image stage generates it (8 = a latent frame's share).")
    parser.add_argument(
        "--lpips_weight", type=float, default=0.0,
        help="LPIPS weight; needs `lpips` and a network connection for its weights (off by default).",
    )
    add_common_arguments(
        parser, output_dir="shapes-vae", tracker_project_name="neodragon-train-vae", learning_rate=3e-4,
        train_batch_size=8, max_train_steps=20_000, checkpointing_steps=500, lr_warmup_steps=100, adam_beta2=0.99,
    )
    # Validation and the latent constants
    parser.add_argument("--validation_steps", type=int, default=0, help="Validate every N steps (0 = only at the end).")
    parser.add_argument("--num_validation_clips", type=int, default=2)
    parser.add_argument("--validation_num_frames", type=int, default=None,
                        help="Frames of the validation clips (default --num_frames). Set it to the length the VAE "
                             "will encode downstream: a causal VAE trained on short clips can fail on longer ones "
                             "(its receptive field always reached the first frame's padding in training).")
    parser.add_argument("--normalization_samples", type=int, default=256, help="Clips used for the latent constants.")
    parser.add_argument("--normalization_num_frames", type=int, default=None, help="Default: --num_frames.")

    args = parse_with_command(parser, input_args)
    args.height, args.width = parse_resolution(args.resolution)
    if args.height % 8 or args.width % 8:
        raise ValueError(f"--resolution must be a multiple of 8, got {args.resolution}.")
    if args.num_frames < 9 or (args.num_frames - 1) % 8:
        raise ValueError(f"--num_frames must be 1 + 8k with k >= 1, got {args.num_frames}.")
    args.normalization_num_frames = args.normalization_num_frames or args.num_frames
    args.validation_num_frames = args.validation_num_frames or args.num_frames
    if args.validation_num_frames < 9 or (args.validation_num_frames - 1) % 8:
        raise ValueError(f"--validation_num_frames must be 1 + 8k with k >= 1, got {args.validation_num_frames}.")
    if (args.normalization_num_frames - 1) % 8 or args.normalization_num_frames < 9:
        raise ValueError("--normalization_num_frames must be 1 + 8k with k >= 1.")
    if args.decoder_only and not args.pretrained_vae:
        raise ValueError("--decoder_only fine-tunes the decoder of --pretrained_vae; give one.")
    if args.latent_noise_std < 0:
        raise ValueError(f"--latent_noise_std must be >= 0, got {args.latent_noise_std}.")
    if args.first_frame_weight <= 0:
        raise ValueError(f"--first_frame_weight must be > 0, got {args.first_frame_weight}.")
    args.data_source = real_data_source(args)
    if args.data_source and args.foreground_weight:
        raise ValueError("--foreground_weight finds the Shapes world's objects by their plain backgrounds; real "
                         "data has none: drop it.")
    return args


# -------------------------------------------------------------------------------------------------- data


def shapes_dataset(num_samples, num_frames, height, width, seed, split):
    from diffusers_neodragon.data.shapes import ShapesVideoDataset  # noqa: PLC0415

    return ShapesVideoDataset(num_samples, num_frames=num_frames, height=height, width=width, seed=seed, split=split)


def real_clips(args, num_frames: int, count: int | None = None, verbose: bool = False, training_set=None):
    """The first ``count`` (all: None) real clips at ``num_frames`` frames: of ``training_set`` when it has that
    length, else read (and probed) again."""
    clips = training_set if training_set is not None and training_set.num_frames == num_frames else \
        video_dataset_from_args(args, verbose=verbose, captions=False, num_frames=num_frames)
    return clips if count is None else torch.utils.data.Subset(clips, range(min(count, len(clips))))


def collate_videos(items):
    return {"video": torch.stack([item["video"] for item in items]), "caption": [item["caption"] for item in items]}


@torch.no_grad()
def scaled_init_(vae: CausalVideoVAE) -> None:
    """Unit-gain init for training a narrow CausalVideoVAE from scratch (same architecture and keys).

    Weights ~ N(0, 1 / fan_in), fan_in counting one temporal tap (an image, or frame 0, sees only the last tap of
    a causal 3x3x3 kernel), zero biases; then each residual branch's last layer (ResBlock conv2, mid-block
    attention to_out) starts at zero, so every block starts as the identity and the latent reaches the decoder
    output at O(1) scale.
    """
    for module in vae.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.Linear)):
            weight = module.weight
            fan_in = weight.shape[1] * (weight[0, 0].numel() // (weight.shape[2] if weight.ndim == 5 else 1))
            torch.nn.init.normal_(weight, std=fan_in**-0.5)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    for module in vae.modules():
        if isinstance(module, CausalResnetBlock3D):
            torch.nn.init.zeros_(module.conv2.conv.weight)
    for mid_block in (vae.encoder.mid_block, vae.decoder.mid_block):
        torch.nn.init.zeros_(mid_block.attentions[0].to_out[0].weight)


def build_vae(args) -> CausalVideoVAE:
    if args.pretrained_vae:  # a VAE folder, or a training run / pipeline folder holding vae/
        return load_vae_folder(args.pretrained_vae, torch.float32, CausalVideoVAE)
    encoder_channels = parse_int_list(args.block_out_channels)
    encoder_layers = parse_int_list(args.layers_per_block)
    if len(encoder_channels) != 4 or len(encoder_layers) != 4:
        raise ValueError("--block_out_channels and --layers_per_block need 4 entries (three 2x downsamplings).")
    vae = CausalVideoVAE(
        latent_channels=args.latent_channels,
        encoder_block_out_channels=encoder_channels,
        encoder_layers_per_block=encoder_layers,
        decoder_block_out_channels=parse_int_list(args.decoder_block_out_channels or args.block_out_channels),
        decoder_layers_per_block=parse_int_list(args.decoder_layers_per_block or args.layers_per_block),
        norm_num_groups=args.norm_num_groups,
    )
    if args.vae_init == "pytorch":
        for module in vae.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)):
                module.reset_parameters()
    elif args.vae_init == "scaled":
        scaled_init_(vae)
    with torch.no_grad():
        vae.quant_conv.conv.bias[args.latent_channels :] = args.init_logvar
    return vae


class VAEReconstruction(torch.nn.Module):
    """The training forward (encode, sample the posterior, optionally perturb, decode) as one module, so that a
    distributed wrapper sees every parameter used: returns (reconstruction, posterior mean, posterior logvar).

    ``latent_noise_std`` perturbs the latents before decoding (``training_utils.perturb_latents``); while the
    encoder trains, relative to the batch's own latent spread, so that the encoder must spread apart what the
    decoder has to tell apart rather than outgrow the noise. ``encoder_frozen`` encodes without gradients.
    """

    def __init__(self, vae: CausalVideoVAE, latent_noise_std: float = 0.0, encoder_frozen: bool = False):
        super().__init__()
        self.vae = vae
        self.latent_noise_std = latent_noise_std
        self.encoder_frozen = encoder_frozen

    def forward(self, videos: torch.Tensor, generator: torch.Generator | None = None):
        with torch.no_grad() if self.encoder_frozen else contextlib.nullcontext():
            posterior = self.vae.encode(videos).latent_dist
            latents = posterior.sample(generator=generator)
        latents = perturb_latents(self.vae, latents, self.latent_noise_std, generator,
                                  relative_to_spread=not self.encoder_frozen)
        recon = self.vae.decode(latents).sample
        return recon, posterior.mean, posterior.logvar


# ---------------------------------------------------------------------------------------------- validation


@torch.no_grad()
def log_validation(vae, videos, accelerator, args, step: int) -> float:
    """Reconstruct the validation clips (posterior mean), print PSNR, save a PNG strip (originals over
    reconstructions), log both to the trackers. Returns the PSNR in dB."""
    was_training = vae.training
    vae.eval()
    videos = videos.to(accelerator.device)
    with accelerator.autocast():
        recon = vae.decode(vae.encode(videos).latent_dist.mode()).sample.float()
    value = psnr(recon, videos)
    strip = video_strip([v for pair in zip(videos, recon) for v in pair])
    folder = Path(args.output_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"vae-step-{step:06d}.png"
    strip.save(path)
    logger.info(f"step {step}: validation PSNR {value:.2f} dB ({path})", main_process_only=True)
    print(f"[train_vae] step {step}: validation PSNR {value:.2f} dB -> {path}")
    log_image(accelerator, "validation", strip, step)
    accelerator.log({"val/psnr": value}, step=step)
    vae.train(was_training)
    return value


# ---------------------------------------------------------------------------------------------------- main


def vae_of(wrapper) -> CausalVideoVAE:
    """The trained VAE inside the prepared training wrapper."""
    return wrapper.vae


def main(args):
    output_dir = Path(args.output_dir)
    accelerator, repo_id = setup_accelerator(args)

    vae = build_vae(args)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(vae)
    vae.train()
    if args.decoder_only:  # the encoder and its posterior projection define the latent space: keep them
        for module in (vae.encoder, vae.quant_conv):
            module.requires_grad_(False)
    model = VAEReconstruction(vae, args.latent_noise_std, encoder_frozen=args.decoder_only)

    # Checkpoints hold the VAE in diffusers format (loadable with from_pretrained) next to the optimiser state.
    register_folder_checkpoints(accelerator, [("vae", CausalVideoVAE)], model_of=vae_of)
    optimizer = build_optimizer(vae.parameters(), args, accelerator)
    perceptual_fn = None
    if args.lpips_weight > 0:
        perceptual_fn = build_lpips(device=accelerator.device)

    if args.data_source:
        dataset = real_clips(args, args.num_frames, verbose=accelerator.is_main_process)
        if len(dataset) < args.train_batch_size:
            raise ValueError(f"{len(dataset)} usable clips are fewer than --train_batch_size {args.train_batch_size}.")
    else:
        dataset = shapes_dataset(args.train_samples, args.num_frames, args.height, args.width, args.seed, "train")
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=args.train_batch_size, sampler=EpochShuffleSampler(len(dataset), seed=args.seed),
        collate_fn=collate_videos, num_workers=args.dataloader_num_workers, drop_last=True,
        persistent_workers=args.dataloader_num_workers > 0,
    )
    lr_scheduler = build_lr_scheduler(optimizer, args, accelerator)
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)

    validation_clips = None
    if args.num_validation_clips > 0 and args.data_source:  # no held-out split: the first training clips
        validation_set = real_clips(args, args.validation_num_frames, args.num_validation_clips, training_set=dataset)
        validation_clips = collate_videos([validation_set[i] for i in range(len(validation_set))])["video"]
    elif args.num_validation_clips > 0:
        validation_set = shapes_dataset(
            args.num_validation_clips, args.validation_num_frames, args.height, args.width,
            args.seed + VALIDATION_SEED_OFFSET,
            "heldout",  # attribute combinations the training clips never show
        )
        validation_clips = collate_videos([validation_set[i] for i in range(len(validation_set))])["video"]

    init_trackers(accelerator, args)

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"***** Training a CausalVideoVAE ({count_parameters(vae) / 1e6:.2f}M params) *****\n"
        f"  clips {args.num_frames}x{args.height}x{args.width}, total batch {total_batch}, "
        f"steps {args.max_train_steps}"
    )

    global_step = resume_global_step(accelerator, args, output_dir)

    start_step, start_time = global_step, time.perf_counter()
    progress = tqdm(
        range(args.max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    last_loss = None
    last_psnr = None
    window_losses = []
    for micro_step, batch in training_batches(dataloader, accelerator, global_step, args.max_train_steps,
                                              args.gradient_accumulation_steps):
        generator = step_generator(args.seed, micro_step, device=accelerator.device)
        with accelerator.accumulate(model):
            videos = batch["video"].to(accelerator.device)
            with accelerator.autocast():
                recon, mean, logvar = model(videos, generator)
            posterior = argparse.Namespace(mean=mean, logvar=logvar)
            loss, terms = vae_reconstruction_loss(
                recon, videos, posterior, mse_weight=args.mse_weight, l1_weight=args.l1_weight,
                kl_weight=args.kl_weight, perceptual_weight=args.lpips_weight, perceptual_fn=perceptual_fn,
                edge_weight=args.edge_weight, foreground_weight=args.foreground_weight,
                first_frame_weight=args.first_frame_weight,
            )
            window_losses.append(loss.detach())
            backward_and_step(accelerator, loss, model, optimizer, lr_scheduler, args.max_grad_norm)

        if accelerator.sync_gradients:
            global_step += 1
            progress.update(1)
            # the mean over the accumulation window (all micro-batches of this optimiser step)
            last_loss = window_mean(accelerator, window_losses)
            logs = {"loss": last_loss, "lr": lr_scheduler.get_last_lr()[0],
                    **{f"loss/{k}": v for k, v in terms.items()}}
            progress.set_postfix(loss=f"{last_loss:.4f}")
            accelerator.log(logs, step=global_step)
            if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
            if validation_clips is not None and args.validation_steps and global_step % args.validation_steps == 0:
                current = full_model(accelerator, model, vae_of, device=accelerator.device)  # collective
                if accelerator.is_main_process:
                    last_psnr = log_validation(current, validation_clips, accelerator, args, global_step)
        if should_stop(accelerator, args, global_step, start_time):
            break
    progress.close()
    finish_training_loop("train_vae", accelerator, args, output_dir, start_step, global_step, start_time)

    accelerator.wait_for_everyone()
    vae = full_model(accelerator, model, vae_of, device=accelerator.device)  # collective under FSDP
    if accelerator.is_main_process:
        vae = vae.eval()
        if validation_clips is not None and not (args.validation_steps and global_step % args.validation_steps == 0):
            last_psnr = log_validation(vae, validation_clips, accelerator, args, global_step)
        if args.decoder_only:  # same encoder: the pretrained constants (a transformer depends on them) stay
            stats = {name: vae.config[name] for name in LATENT_CONSTANTS}
        else:
            stats_dataset = real_clips(args, args.normalization_num_frames, args.normalization_samples,
                                       training_set=dataset) \
                if args.data_source else shapes_dataset(
                    args.normalization_samples, args.normalization_num_frames, args.height, args.width,
                    args.seed + STATISTICS_SEED_OFFSET, "train",
                )
            stats_loader = torch.utils.data.DataLoader(
                stats_dataset, batch_size=max(1, args.train_batch_size), collate_fn=collate_videos,
                num_workers=args.dataloader_num_workers,
            )
            stats = compute_latent_statistics(vae, (b["video"] for b in stats_loader), device=accelerator.device)
            vae.register_to_config(**stats)
        logger.info(f"latent constants: {stats}")
        save_dtype = SAVE_DTYPES[args.save_dtype]
        if save_dtype == torch.float32:
            vae.save_pretrained(output_dir / "vae")
        else:
            copy.deepcopy(vae).to(save_dtype).save_pretrained(output_dir / "vae")
        values = dict(
            title=args.hub_model_id or f"{'Causal' if args.data_source else 'Shapes causal'} video VAE "
                                       f"({output_dir.name})",
            trained_on=(f"real videos ({args.data_source})" if args.data_source else
                        "the synthetic **Shapes world** (coloured shapes moving on plain backgrounds, "
                        "`diffusers_neodragon.data.shapes`). It is the latent space of the Shapes base model "
                        "trained by `training/train_pyramidal_flow.py`, and the teacher decoder for decoder "
                        "distillation"),
            data=(f"{len(dataset)} clips of {args.data_source}" if args.data_source else
                  "Shapes clips (rendered on the fly, deterministic per seed)"),
            stats_clips="the first training clips" if args.data_source else "held-out Shapes clips",
            limitations=("Trained on the given videos only; check its PSNR on footage like yours." if args.data_source
                         else "Trained only on the synthetic Shapes world: it reconstructs flat-coloured geometric "
                              "shapes, not natural video."),
            command=training_command(SCRIPT, args.command_args),
            steps=global_step,
            final_loss=format_float(last_loss),
            psnr=format_float(last_psnr),
            resolution=f"{args.height}x{args.width}",
            num_frames=args.num_frames,
            parameters=f"{count_parameters(vae) / 1e6:.2f}M",
            encoder_parameters=f"{count_parameters(vae.encoder) / 1e6:.2f}M",
            decoder_parameters=f"{count_parameters(vae.decoder) / 1e6:.2f}M",
            latent_channels=vae.config.latent_channels,
            block_out_channels=list(vae.config.encoder_block_out_channels),
            decoder_block_out_channels=list(vae.config.decoder_block_out_channels),
            layers_per_block=list(vae.config.encoder_layers_per_block),
            decoder_layers_per_block=list(vae.config.decoder_layers_per_block),
            loss=f"{args.mse_weight}·MSE + {args.l1_weight}·L1 + {args.kl_weight}·KL + {args.lpips_weight}·LPIPS"
                 + (f" + {args.edge_weight}·edge" if args.edge_weight else "")
                 + (f" + {args.foreground_weight}·foreground" if args.foreground_weight else "")
                 + (f", the first frame counting as {args.first_frame_weight:g} frames"
                    if args.first_frame_weight != 1 else ""),
            batch_size=total_batch,
            learning_rate=args.learning_rate,
            save_dtype=args.save_dtype,
            **{k: f"{v:.6f}" for k, v in stats.items()},
        )
        write_model_card(output_dir, "vae.md", values,
                         tags=["video-vae", "neodragon", *(() if args.data_source else ("shapes",))])
        if args.push_to_hub:
            push_folder_to_hub(repo_id, output_dir, token=args.hub_token)
    accelerator.end_training()
    return {"global_step": global_step, "loss": last_loss, "psnr": last_psnr}


if __name__ == "__main__":
    main(parse_args())
