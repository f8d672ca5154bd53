"""Where a pyramidal flow-matching training step spends its time, on synthetic inputs (no data, no VAE).

    python benchmarks/benchmark_training_step.py [--batch 256] [--latent-channels 16] [--latent-frames 7]
        [--latent-size 16] [--num-layers 10] [--heads 4] [--head-dim 32] [--text-tokens 16] [--steps 20]
        [--device cuda] [--profile] [--json out.json]

``train_pyramidal_flow.py`` reports only steps per second. This script times the pieces of one of its steps, per
pyramid stage and for the first frame (no history) and a frame with full history: building the batch
(``pyramid_training_batch``), the transformer's forward and backward under bf16 autocast, and the AdamW step. It
also counts the achieved TFLOP/s of the transformer's matrix products (``torch.utils.flop_counter``). If the sum of
these is far below the training script's step time, the time goes to data loading or to the launcher, not to the
model. ``--profile`` prints the top operators of one step (``torch.profiler``).
"""

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffusers_neodragon import PyramidalDMDScheduler
from diffusers_neodragon.training_utils import pyramid_training_batch, step_generator


REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--latent-channels", type=int, default=16)
    parser.add_argument("--latent-frames", type=int, default=7)
    parser.add_argument("--latent-size", type=int, default=16, help="latent height = width")
    parser.add_argument("--num-layers", type=int, default=10)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=2)
    parser.add_argument("--text-dim", type=int, default=256)
    parser.add_argument("--pooled-dim", type=int, default=128)
    parser.add_argument("--text-tokens", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per case (after 3 warm-up steps)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", default=None)
    return parser


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


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    size = args.latent_size
    from benchmarks import full_size

    transformer = full_size.transformer(
        patch_size=args.patch_size, in_channels=args.latent_channels, num_layers=args.num_layers,
        attention_head_dim=args.head_dim, num_attention_heads=args.heads, pooled_projection_dim=args.pooled_dim,
        context_embedder_dim=args.text_dim, sample_size=size, pos_embed_max_size=2 * size // args.patch_size,
    ).to(device).train()
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=1e-4)
    scheduler = PyramidalDMDScheduler()
    latents = torch.randn(args.batch, args.latent_channels, args.latent_frames, size, size, device=device)
    embeds = torch.randn(args.batch, args.text_tokens, args.text_dim, device=device)
    pooled = torch.randn(args.batch, args.pooled_dim, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step(stage: int, num_history: int, seed: int, timer: _Timer, count_flops: bool = False):
        generator = step_generator(0, seed, 0, device)
        with timer("batch"):
            example = pyramid_training_batch(scheduler, latents, stage, num_history=num_history, generator=generator)
        flops = FlopCounterMode(display=False) if count_flops else None
        with timer("forward + backward"), (flops or contextlib.nullcontext()):  # FLOPs of both passes
            with autocast:
                pred = transformer(hidden_states=example.hidden_states, encoder_hidden_states=embeds,
                                   pooled_projections=pooled, timestep=example.timestep, history=example.history).sample
                loss = torch.nn.functional.mse_loss(pred.float(), example.target.float())
            loss.backward()
        with timer("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return flops.get_total_flops() if flops is not None else None

    cases = []
    for stage in range(scheduler.config.stages):
        for num_history in (0, args.latent_frames - 1):
            flops = step(stage, num_history, 0, _Timer(device), count_flops=True)
            for warm in range(3):
                step(stage, num_history, warm, _Timer(device))
            timer = _Timer(device)
            for seed in range(args.steps):
                step(stage, num_history, seed, timer)
            ms = {name: 1000 * total / args.steps for name, total in timer.totals.items()}
            seconds = timer.totals["forward + backward"] / args.steps
            cases.append(dict(stage=stage, num_history=num_history, ms=ms, step_ms=sum(ms.values()),
                              model_gflop=flops / 1e9, model_tflops_per_s=flops / seconds / 1e12,
                              samples_per_s=args.batch / (sum(ms.values()) / 1000)))
            print(f"stage {stage} history {num_history}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items())
                  + f" | {cases[-1]['model_tflops_per_s']:.1f} TFLOP/s in the model, "
                  f"{cases[-1]['samples_per_s']:.0f} samples/s", flush=True)
    if args.profile:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            step(scheduler.config.stages - 1, args.latent_frames - 1, 0, _Timer(device))
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=25))
    report = dict(settings=vars(args), device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  cases=cases)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
