"""Time the three DiT calls of the last latent frame of a hybrid 49x320x512 generation (one per pyramid stage, with
that frame's whole history) at full size, for each way of running the transformer, and how far each moves the output.

    python benchmarks/benchmark_dit_calls.py [--compile] [--repeats 20] [--json dit_calls.json]

Variants: the separate q/k/v projections and [`NeodragonTransformer3DModel.fuse_qkv_projections`], each as a CUDA
graph and, with ``--compile``, compiled (``compile_repeated_blocks``) inside the graph. Times are medians of
``--repeats`` replays (CUDA events); on the CPU (``--device cpu``, for checking the script with ``--num-layers``
small) plain wall-clock calls. The error is the relative L2 distance to the eager call with separate projections.
Random weights (the full-size builder of ``benchmark_pipeline.py``); the benchmark's own stage-2 probe call is the
last of the three.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import full_size  # noqa: E402
from benchmarks.benchmark_pipeline import dit_probe_call  # noqa: E402


# (noisy clip, history clips) as (frames, latent height, latent width): the 6th later latent frame's three calls
LAST_FRAME_CALLS = {
    "stage 0": ((1, 10, 16), [(5, 10, 16), (1, 10, 16)]),
    "stage 1": ((1, 20, 32), [(5, 10, 16), (1, 20, 32)]),
    "stage 2": ((1, 40, 64), [(4, 10, 16), (1, 20, 32), (1, 40, 64)]),
}


def calls(device, dtype, channels: int = 16) -> dict[str, dict]:
    """Keyword arguments of each stage's call (text, pooled vector and timestep of the benchmark's probe)."""
    _, probe = dit_probe_call(device, dtype)
    g = torch.Generator(device).manual_seed(0)

    def clip(frames, height, width):
        return torch.randn(1, channels, frames, height, width, generator=g, device=device, dtype=dtype)

    return {name: dict(probe, hidden_states=clip(*noisy), history=[clip(*h) for h in history])
            for name, (noisy, history) in LAST_FRAME_CALLS.items()}


def median_ms(fn, repeats: int, device) -> float:
    """Median time of ``fn``: replayed from a CUDA graph with CUDA events on a GPU, wall clock on the CPU. A bare
    graph rather than the pipeline's ``CUDAGraphRunner``, so that the figure is the replay alone (no input copies or
    key lookup; the end-to-end figures of ``benchmark_pipeline.py`` include those)."""
    for _ in range(3 if device.type == "cuda" else 1):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    side = torch.cuda.Stream()  # one more warm-up on a side stream, as capture wants
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--num-layers", type=int, default=18, help="transformer blocks (18 at full size)")
    parser.add_argument("--compile", action="store_true", help="also time the compiled blocks")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    model = full_size.transformer(num_layers=args.num_layers).to(device, dtype).eval()
    inputs = calls(device, dtype)
    rows = {}
    with torch.no_grad():
        reference = {name: model(**kwargs).sample.float() for name, kwargs in inputs.items()}
        for compiled in (False, True) if args.compile else (False,):
            if compiled:
                model.compile_repeated_blocks(dynamic=True)
            for fused in (False, True):
                (model.fuse_qkv_projections if fused else model.unfuse_qkv_projections)()
                label = ("compiled, " if compiled else "") + ("fused q/k/v" if fused else "separate q/k/v")
                row = {}
                for name, kwargs in inputs.items():
                    out = model(**kwargs).sample.float()
                    row[name] = {"ms": median_ms(lambda kwargs=kwargs: model(**kwargs), args.repeats, device),
                                 "relative_l2": float((out - reference[name]).norm() / reference[name].norm())}
                row["total ms"] = sum(row[name]["ms"] for name in inputs)
                rows[label] = row
                print(f"{label:32s} " + "  ".join(f"{n} {row[n]['ms']:.3f} ms ({row[n]['relative_l2']:.2e})"
                                                  for n in inputs) + f"  total {row['total ms']:.3f} ms", flush=True)
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "dtype": args.dtype, "num_layers": args.num_layers, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
