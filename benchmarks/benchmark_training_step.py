"""Where a pyramidal training step spends its time and memory, on synthetic inputs (no data, no VAE, no text encoder).

    python benchmarks/benchmark_training_step.py [--preset small|neodragon|pyramid-flow] [--mode flow|dmd]
        [--batch N] [--latent-size H [W]] [--latent-frames 7] [--gradient-checkpointing] [--stages 2] [--steps 20]
        [--device cuda] [--profile] [--json out.json]
    accelerate launch --config_file training/configs/fsdp.yaml --num_processes 1 \
        benchmarks/benchmark_training_step.py --preset neodragon ...      # the same step under FSDP2

The training scripts report only steps per second. This script times the pieces of one step of
``train_pyramidal_flow.py`` (``--mode flow``) or of ``distill_pyramidal_dmd.py`` (``--mode dmd``: the student's
DMD + Cauchy update, the frozen teacher's guided and the fake score's estimates, one fake-score update), per pyramid
stage and for the first frame (no history) and a frame with full history. It reports the achieved TFLOP/s of the
transformer's matrix products (``torch.utils.flop_counter``), visual tokens per second and the peak GPU memory, so
the capacity of a GPU can be read off for the released sizes (``--preset neodragon``: the 18-block transformer at
320x512; ``--preset pyramid-flow``: the 24-block teacher with T5-XXL-wide text); "resident" is the memory held
between steps (weights, optimiser state, the frozen teacher), the rest of the peak is activations and gradients. The
models go through ``accelerator.prepare`` like the scripts' (FSDP2 or DDP under ``accelerate launch``); under FSDP
the frozen DMD teacher is sharded with ``training_utils.sharding.shard_frozen_model``. ``--profile`` prints the top
operators of one step (``torch.profiler``).
"""

import argparse
import contextlib
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffusers_neodragon import PyramidalDMDScheduler
from diffusers_neodragon.training_utils import flow_matching_loss, pyramid_training_batch, step_generator
from diffusers_neodragon.training_utils.dmd import cauchy_loss, dmd_loss, renoise_sample
from diffusers_neodragon.training_utils.sharding import (
    enable_gradient_checkpointing,
    keep_fsdp_forward_inputs,
    shard_frozen_model,
)


REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Defaults per preset; any option given on the command line wins. The full-size presets are 49 frames at 320x512
# (7 latent frames of 40x64), 128 text tokens; "small" is a Shapes-sized transformer.
PRESETS = {
    "small": dict(batch=256, latent_channels=16, latent_frames=7, latent_size=[16], num_layers=10, heads=4,
                  head_dim=32, text_dim=256, pooled_dim=128, text_tokens=16),
    "neodragon": dict(batch=8, latent_channels=16, latent_frames=7, latent_size=[40, 64], num_layers=18, heads=24,
                      head_dim=64, text_dim=4096, pooled_dim=2048, text_tokens=128),
    "pyramid-flow": dict(batch=8, latent_channels=16, latent_frames=7, latent_size=[40, 64], num_layers=24, heads=24,
                         head_dim=64, text_dim=4096, pooled_dim=2048, text_tokens=128),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--mode", choices=("flow", "dmd"), default="flow",
                        help="flow: a flow-matching step; dmd: a Pyramidal DMD step (three transformers)")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--latent-channels", type=int)
    parser.add_argument("--latent-frames", type=int)
    parser.add_argument("--latent-size", type=int, nargs="+", help="latent height [width] (width = height if one)")
    parser.add_argument("--num-layers", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--head-dim", type=int)
    parser.add_argument("--patch-size", type=int, default=2)
    parser.add_argument("--text-dim", type=int, help="width of the text embeddings fed to the transformer")
    parser.add_argument("--pooled-dim", type=int)
    parser.add_argument("--text-tokens", type=int)
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="checkpoint the trained transformers' blocks (the scripts' --gradient_checkpointing)")
    parser.add_argument("--teacher-guidance", type=float, default=5.0, help="--mode dmd: the teacher's CFG scale")
    parser.add_argument("--stages", type=int, nargs="+", default=None,
                        help="pyramid stages to time (default all; the last holds the most tokens and sets the peak)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per case (after 3 warm-up steps)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu (single process)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", default=None)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if len(args.latent_size) > 2:
        raise ValueError(f"--latent-size takes a height and an optional width, got {args.latent_size}")
    unit = args.patch_size * 2 ** (PyramidalDMDScheduler().config.stages - 1)  # the lowest stage is patchified too
    if any(size % unit for size in args.latent_size):
        raise ValueError(f"--latent-size {args.latent_size}: each must be a multiple of {unit} (the patch size at the "
                         "lowest pyramid stage)")
    return args


class _Timer:
    """Summed wall time per named block, synchronising the device so that queued kernels are counted."""

    def __init__(self, device: torch.device):
        self.device, self.totals = device, {}

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.sync()
        start = time.perf_counter()
        yield
        self.sync()
        self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start


def _visual_tokens(example, patch_size: int) -> int:
    """Visual tokens per sample of a training example: the noisy frame and its history clips, patchified."""
    clips = [example.hidden_states, *example.history]
    return sum(c.shape[2] * (c.shape[-2] // patch_size) * (c.shape[-1] // patch_size) for c in clips)


def _accelerator(device_name: str | None):
    """The scripts' accelerator (bf16, FSDP's mixed precision as in ``setup_accelerator``); ``--device cpu`` runs a
    single process on the CPU of a GPU host."""
    from accelerate import Accelerator  # noqa: PLC0415

    accelerator = Accelerator(mixed_precision="bf16", cpu=device_name == "cpu")
    keep_fsdp_forward_inputs(accelerator)
    return accelerator


def main(argv=None) -> dict:
    args = parse_args(argv)
    accelerator = _accelerator(args.device)
    device = accelerator.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    height, width = args.latent_size[0], args.latent_size[-1]
    from benchmarks import full_size

    torch.manual_seed(0)
    with device:  # built on the device: a full-size transformer's init on the CPU takes longer than its benchmark
        transformer = full_size.transformer(
            patch_size=args.patch_size, in_channels=args.latent_channels, num_layers=args.num_layers,
            attention_head_dim=args.head_dim, num_attention_heads=args.heads, pooled_projection_dim=args.pooled_dim,
            context_embedder_dim=args.text_dim if args.text_dim != args.heads * args.head_dim else None,
            sample_size=max(height, width), pos_embed_max_size=2 * max(height, width) // args.patch_size,
        ).train()
    num_parameters = sum(p.numel() for p in transformer.parameters())
    trained = {"student": transformer}
    teacher = None
    if args.mode == "dmd":  # the student, the fake score (both trained) and the frozen teacher, as the script has them
        trained["fake"] = copy.deepcopy(transformer)
        teacher = shard_frozen_model(accelerator, copy.deepcopy(transformer).eval().requires_grad_(False))
    optimizers = {}
    for name, model in trained.items():
        if args.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        # One model per prepare call, as in the scripts (accelerate's FSDP2 shards one model with its optimiser).
        trained[name], optimizers[name] = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-6))
    scheduler = PyramidalDMDScheduler()
    latents = torch.randn(args.batch, args.latent_channels, args.latent_frames, height, width, device=device)
    embeds = torch.randn(args.batch, args.text_tokens, args.text_dim, device=device)
    pooled = torch.randn(args.batch, args.pooled_dim, device=device)

    def call(model, example_or_point, history):
        return model(hidden_states=example_or_point.hidden_states, encoder_hidden_states=embeds,
                     pooled_projections=pooled, timestep=example_or_point.timestep, history=history).sample

    def guided(model, point, history):
        """The teacher's classifier-free-guided velocity: conditional and unconditional rows in one batch."""
        out = model(hidden_states=torch.cat([point.hidden_states] * 2), encoder_hidden_states=torch.cat([embeds] * 2),
                    pooled_projections=torch.cat([pooled, torch.zeros_like(pooled)]),
                    timestep=torch.cat([point.timestep] * 2), history=[torch.cat([h, h]) for h in history]).sample
        cond, uncond = out.chunk(2)
        return uncond + args.teacher_guidance * (cond - uncond)

    def update(name, loss):
        accelerator.backward(loss)
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)

    def flow_step(example, stage, generator, timer):
        with timer("forward + backward"):
            with accelerator.autocast():
                loss = flow_matching_loss(call(trained["student"], example, example.history).float(),
                                          example.target.float())
            accelerator.backward(loss)
        with timer("optimizer"):
            optimizers["student"].step()
            optimizers["student"].zero_grad(set_to_none=True)

    def dmd_step(example, stage, generator, timer):
        with timer("student"):
            with accelerator.autocast():
                v_student = call(trained["student"], example, example.history)
            prediction = scheduler.predict_clean_stage_latent(example.hidden_states, v_student.float(),
                                                              example.ratio, stage)
            noisy = renoise_sample(scheduler, prediction.detach(), stage, generator)
        with timer("teacher + fake scores"), torch.no_grad(), accelerator.autocast():
            real_clean = scheduler.predict_clean_stage_latent(
                noisy.hidden_states, guided(teacher, noisy, example.history).float(), noisy.ratio, stage)
            fake_clean = scheduler.predict_clean_stage_latent(
                noisy.hidden_states, call(trained["fake"], noisy, example.history).float(), noisy.ratio, stage)
        with timer("student backward + optimizer"):
            target = scheduler.predict_clean_stage_latent(example.hidden_states, example.target.float(),
                                                          example.ratio, stage)
            update("student", dmd_loss(prediction, real_clean, fake_clean) + cauchy_loss(prediction, target))
        with timer("fake score update"):
            point = renoise_sample(scheduler, prediction.detach(), stage, generator)
            with accelerator.autocast():
                loss = flow_matching_loss(call(trained["fake"], point, example.history).float(), point.target.float())
            update("fake", loss)

    run_step = flow_step if args.mode == "flow" else dmd_step

    def step(stage: int, num_history: int, seed: int, timer: _Timer, count_flops: bool = False):
        generator = step_generator(0, seed, 0, device)
        with timer("batch"):
            example = pyramid_training_batch(scheduler, latents, stage, num_history=num_history, generator=generator)
        flops = FlopCounterMode(display=False) if count_flops else None
        with flops or contextlib.nullcontext():  # FLOPs of every forward and backward of the step
            run_step(example, stage, generator, timer)
        return example, (flops.get_total_flops() if flops is not None else None)

    cases = []
    stages = range(scheduler.config.stages) if args.stages is None else args.stages
    if any(not 0 <= stage < scheduler.config.stages for stage in stages):
        raise ValueError(f"--stages {args.stages}: the scheduler has stages 0 to {scheduler.config.stages - 1}")
    for stage in stages:
        for num_history in (0, args.latent_frames - 1):
            example, flops = step(stage, num_history, 0, _Timer(device), count_flops=True)
            for warm in range(3):
                step(stage, num_history, warm, _Timer(device))
            resident = None
            if device.type == "cuda":  # weights, optimiser state and the frozen teacher, between steps
                resident = torch.cuda.memory_allocated(device) / 2**30
                torch.cuda.reset_peak_memory_stats(device)
            timer = _Timer(device)
            for seed in range(args.steps):
                step(stage, num_history, seed, timer)
            ms = {name: 1000 * total / args.steps for name, total in timer.totals.items()}
            step_ms = sum(ms.values())
            model_seconds = (step_ms - ms["batch"]) / 1000
            tokens = _visual_tokens(example, args.patch_size)
            cases.append(dict(
                stage=stage, num_history=num_history, ms=ms, step_ms=step_ms, model_gflop=flops / 1e9,
                model_tflops_per_s=flops / model_seconds / 1e12, samples_per_s=args.batch / (step_ms / 1000),
                visual_tokens_per_sample=tokens, tokens_per_s=args.batch * tokens / (step_ms / 1000),
                resident_memory_gib=resident,
                peak_memory_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            ))
            memory = "" if resident is None else (
                f", resident {resident:.1f} GiB, peak {cases[-1]['peak_memory_gib']:.1f} GiB")
            accelerator.print(
                f"stage {stage} history {num_history}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items())
                + f" | {cases[-1]['model_tflops_per_s']:.1f} TFLOP/s in the model, "
                f"{cases[-1]['samples_per_s']:.1f} samples/s, {cases[-1]['tokens_per_s']:.0f} tokens/s{memory}",
                flush=True)
    if args.profile:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            step(scheduler.config.stages - 1, args.latent_frames - 1, 0, _Timer(device))
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        accelerator.print(prof.key_averages().table(sort_by=key, row_limit=25))
    report = dict(settings=vars(args), device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  distributed_type=str(accelerator.distributed_type), num_processes=accelerator.num_processes,
                  transformer_parameters=num_parameters, cases=cases)
    if args.json and accelerator.is_main_process:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
