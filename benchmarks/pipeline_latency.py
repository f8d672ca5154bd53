"""The cost columns of a compression table: parameters, transformer evaluations, latency and peak memory of pipeline
folders at their own default settings (or the options given), one video of one prompt at batch 1.

    python benchmarks/pipeline_latency.py "teacher=FOLDER" "student=FOLDER --mode monolithic" \\
        [--device cpu --threads 2] [--repeats 3] [--cuda-graphs] [--markdown] [--json out.json]

Each entry runs in a fresh process, so its peak memory is its own: on the CPU the process's peak resident memory
(weights included), on a GPU the peak of ``torch.cuda.max_memory_allocated`` during the timed calls. NFE counts
transformer evaluations per video (a CFG call on a doubled batch counts twice), the denoiser's own and those of a
nested first-frame pipeline apart. Entry options: ``--mode``, ``--steps`` (video steps per stage, e.g. ``1,1,1``),
``--first-frame-steps``, ``--frames``, ``--height``, ``--width``, ``--no-super-resolution``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import subprocess
import sys
import time

import torch

from diffusers_neodragon.training_utils import count_parameters


PROMPT = "a large red circle moving right on a blue background"


def _steps(text: str) -> int | list[int]:
    values = [int(v) for v in text.split(",")]
    return values[0] if len(values) == 1 else values


def entry_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="entry", add_help=False)
    parser.add_argument("folder")
    parser.add_argument("--mode", choices=["hybrid", "monolithic"])
    parser.add_argument("--steps", type=_steps)
    parser.add_argument("--first-frame-steps", type=_steps)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--no-super-resolution", action="store_true")
    return parser


def parse_entry(text: str) -> tuple[str, argparse.Namespace]:
    """``"LABEL=FOLDER [options]"`` -> (label, options)."""
    label, sep, rest = text.partition("=")
    if not sep or not label or not rest.strip():
        raise argparse.ArgumentTypeError(f'an entry is "LABEL=FOLDER [options]", got {text!r}')
    try:
        return label, entry_parser().parse_args(shlex.split(rest))
    except SystemExit:
        raise argparse.ArgumentTypeError(f"bad options in entry {text!r}") from None


def parameters_of(module) -> int:
    """Parameters of a pipeline component; 0 for one that is absent or no model (a tokenizer)."""
    return count_parameters(module) if isinstance(module, torch.nn.Module) else 0


def component_parameters(pipe) -> dict[str, int]:
    """Parameters of what the pipeline runs, by part; a nested first-frame pipeline is one part."""
    text = sum(parameters_of(getattr(pipe, n, None)) for n in
               ("text_encoder", "text_encoder_2", "text_encoder_3", "context_adapter"))
    vae = pipe.vae
    parts = {
        "transformer": parameters_of(pipe.transformer),
        "text": text,
        "vae_encoder": parameters_of(getattr(vae, "encoder", None)),
        "vae_decoder": parameters_of(vae) - parameters_of(getattr(vae, "encoder", None)),
        "super_resolution": parameters_of(getattr(pipe, "super_resolution", None)),
        "first_frame_pipeline": sum(parameters_of(m) for m in getattr(
            getattr(pipe, "first_frame_pipeline", None), "components", {}).values()),
    }
    parts["total"] = sum(parts.values())
    return parts


class EvaluationCounter:
    """Counts a model's evaluations per sample: each forward call adds its batch size."""

    def __init__(self, model):
        self.count = 0
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True) if model is not None else None

    def _hook(self, module, args, kwargs):
        first = kwargs.get("hidden_states", kwargs.get("sample", args[0] if args else None))
        self.count += int(first.shape[0]) if torch.is_tensor(first) else 1

    def remove(self):
        if self.handle is not None:
            self.handle.remove()


def measure(label: str, options: argparse.Namespace, device: str, dtype: str, threads: int | None, repeats: int,
            cuda_graphs: bool) -> dict:
    """Load one pipeline, count its evaluations on a first call, then time ``repeats`` more calls."""
    from diffusers_neodragon import NeodragonPipeline  # noqa: PLC0415 - imported in the worker process

    if threads:
        torch.set_num_threads(threads)
    pipe = NeodragonPipeline.from_pretrained(options.folder, dtype=getattr(torch, dtype)).to(device)
    pipe.set_progress_bar_config(disable=True)
    nested = getattr(pipe, "first_frame_pipeline", None)
    if nested is not None:
        nested.set_progress_bar_config(disable=True)
    if cuda_graphs:
        pipe.enable_cuda_graphs()
    overrides = {"mode": options.mode, "video_num_inference_steps": options.steps,
                 "num_inference_steps": options.first_frame_steps, "num_frames": options.frames,
                 "height": options.height, "width": options.width,
                 "super_resolution": False if options.no_super_resolution else None}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    cuda = torch.device(device).type == "cuda"

    def call():
        with torch.no_grad():
            return pipe(PROMPT, generator=torch.Generator().manual_seed(0), output_type="np", **overrides).frames

    own = EvaluationCounter(pipe.transformer)
    nested_model = None if nested is None else getattr(nested, "transformer", None) or getattr(nested, "unet", None)
    first = EvaluationCounter(nested_model)
    frames = call()
    own.remove(), first.remove()
    if cuda_graphs:
        call()  # the graphs are captured on each shape's second call
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        "label": label, "folder": options.folder, "device": device, "dtype": dtype, "threads": torch.get_num_threads(),
        "cuda_graphs": cuda_graphs, "video": list(frames.shape[1:4]), "nfe": own.count, "first_frame_nfe": first.count,
        "seconds_median": statistics.median(seconds), "seconds": seconds, "peak_memory_bytes": int(peak),
        "peak_memory_kind": "cuda max_memory_allocated" if cuda else "process peak RSS",
        "parameters": component_parameters(pipe),
    }


def format_table(rows: list[dict], markdown: bool = False) -> str:
    header = ["pipeline", "DiT params", "total params", "NFE", "latency (s)", "peak (MiB)", "video"]
    lines = []
    for r in rows:
        nfe = f"{r['first_frame_nfe']} + {r['nfe']}" if r["first_frame_nfe"] else str(r["nfe"])
        lines.append([r["label"], f"{r['parameters']['transformer'] / 1e6:.2f}M",
                      f"{r['parameters']['total'] / 1e6:.2f}M", nfe, f"{r['seconds_median']:.3f}",
                      f"{r['peak_memory_bytes'] / 2**20:.0f}", "x".join(map(str, r["video"]))])
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in [header, *lines])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("entries", nargs="+", help='"LABEL=FOLDER [options]"')
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (e.g. 2 for two cores)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cuda-graphs", action="store_true", help="replay the models from CUDA graphs")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # measure one entry, print JSON
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    parsed = [parse_entry(text) for text in args.entries]
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.cuda_graphs and torch.device(device).type != "cuda":
        raise SystemExit("--cuda-graphs needs a CUDA device")
    if args.worker:
        (label, options), = parsed
        print(json.dumps(measure(label, options, device, args.dtype, args.threads, args.repeats, args.cuda_graphs)))
        return []
    common = ["--device", device, "--dtype", args.dtype, "--repeats", str(args.repeats)]
    common += ["--threads", str(args.threads)] if args.threads else []
    common += ["--cuda-graphs"] if args.cuda_graphs else []
    rows = []
    for text, (label, _) in zip(args.entries, parsed):
        # a fresh process per entry: its peak memory is its own
        done = subprocess.run([sys.executable, __file__, text, *common, "--worker"],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{label}: the measuring process failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{label}: {rows[-1]['seconds_median']:.3f} s", flush=True)
    print(format_table(rows, args.markdown))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
