"""ShapesBench: generate the fixed seen and held-out Shapes prompt sets with a NeodragonPipeline and score them.

    python benchmarks/shapesbench.py PIPELINE_FOLDER [--num-prompts 32] [--frames F] [--height H --width W]
                                     [--seed 0] [--steps 1,1,1] [--mode monolithic] [--device cuda]
                                     [--dtype float32] [--no-super-resolution] [--cuda-graphs] [--json out.json]
    python benchmarks/shapesbench.py --ground-truth [--frames 49 --height 128 --width 128] [--json out.json]
    python benchmarks/shapesbench.py PIPELINE_OR_VAE_FOLDER --vae-roundtrip [--num-prompts 32]
    python benchmarks/shapesbench.py PIPELINE_FOLDER --first-frame [--num-prompts 200]

"seen" prompts use attribute combinations of the training split, "held-out" prompts each contain a combination the
training split never shows (``HELDOUT_COMBINATIONS`` in ``diffusers_neodragon.data.shapes``), so the gap between the
two columns measures compositional generalisation. Size and length default to the pipeline's own
(``default_height`` / ``default_width`` / ``default_num_frames`` of its config); steps and mode to the pipeline's.
Every prompt is generated from ``torch.Generator().manual_seed(seed)``, so a run is reproducible on one device.
``--ground-truth`` scores rendered videos instead of generated ones: the evaluator's ceiling. ``--vae-roundtrip``
scores them after the pipeline's VAE (encode to the posterior mean, decode): the ceiling of the model's latent space;
it also takes a VAE folder (or a ``train_vae.py`` run folder), 49x128x128 by default, to check a VAE before a
transformer is trained on it. ``--first-frame`` makes and scores the first frame alone (``num_frames=1``): what
the transformer draws before any motion, about 10x cheaper per prompt, so 200 prompts per split (a sampling error of
about 3 points) cost what 20 videos do; only colour, shape, size and background are judged.
"""

import argparse
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from diffusers_neodragon.data.shapes import fixed_prompt_set, render_scene, scene_from_caption
from diffusers_neodragon.evaluation import evaluate_video, format_shape_confusion, format_table, summarize
from diffusers_neodragon.training_utils import load_vae_folder


SPLITS = {"seen": "seen", "held-out": "heldout"}


def _steps(text: str) -> int | list[int]:
    """``"2"`` -> 2 (every stage); ``"1,2,1"`` -> [1, 2, 1] (one per stage)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"steps must be an int or comma-separated ints, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"steps must be >= 1, got {text!r}")
    return values[0] if len(values) == 1 else values


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", nargs="?", help="a folder written by NeodragonPipeline.save_pretrained")
    parser.add_argument("--ground-truth", action="store_true", help="score rendered ground truth (no model)")
    parser.add_argument("--vae-roundtrip", action="store_true",
                        help="score rendered videos after the pipeline's VAE instead of generated ones")
    parser.add_argument("--num-prompts", type=_positive, default=32, help="prompts per split (default 32, at most 200)")
    parser.add_argument("--frames", "--num-frames", dest="frames", type=_positive,
                        help="video length (default: the pipeline's default_num_frames; ground truth: 49)")
    parser.add_argument("--height", type=_positive, help="default: the pipeline's default_height (ground truth: 128)")
    parser.add_argument("--width", type=_positive, help="default: the pipeline's default_width (ground truth: 128)")
    parser.add_argument("--first-frame", action="store_true",
                        help="make and score the first frame alone (colour, shape, size, background)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=_steps, help="video DiT steps per stage, e.g. 1,1,1 (default: the mode's)")
    parser.add_argument("--first-frame-steps", type=_steps, help="DiT steps per stage for a DiT-made first frame")
    parser.add_argument("--history-noise", type=float, default=None,
                        help="noise mixed into the history the DiT conditions on (default: the pipeline's)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="first-frame CFG scale (default: the pipeline's configured one)")
    parser.add_argument("--video-guidance-scale", type=float, default=None,
                        help="later frames' CFG scale (default: the pipeline's configured one)")
    parser.add_argument("--mode", choices=["hybrid", "monolithic"], help="default: the pipeline's configured mode")
    parser.add_argument("--no-super-resolution", action="store_true", help="skip the 2x super-resolution stage")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay the models from CUDA graphs (CUDA only): a small model's video is launch-bound "
                             "on a GPU, and graphs make it several times faster")
    parser.add_argument("--float8-weights", action="store_true", help="enable_float8_weights() before generating")
    parser.add_argument("--float8-matmuls", action="store_true",
                        help="enable_float8_weights(float8_matmuls=True): the transformer multiplies in float8 "
                             "(with --dtype bfloat16)")
    parser.add_argument("--json", help="write the settings, per-video results and summaries here")
    return parser


def _parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.ground_truth == (args.pipeline is not None):
        parser.error("give either PIPELINE_FOLDER or --ground-truth")
    if args.vae_roundtrip and args.pipeline is None:
        parser.error("--vae-roundtrip needs a PIPELINE_FOLDER or VAE folder (whose VAE to use)")
    if args.num_prompts > 200:
        parser.error("--num-prompts is at most 200")
    if args.first_frame:
        if args.frames not in (None, 1):
            parser.error("--first-frame makes one frame: leave out --frames")
        args.frames = 1
    return args


def _video_maker(args: argparse.Namespace) -> Callable[[str], np.ndarray]:
    """A function prompt -> ``[F, H, W, 3]`` video, from the pipeline or from the renderer."""
    if args.ground_truth:
        return functools.partial(_render, size=(args.frames or 49, args.height or 128, args.width or 128),
                                 seed=args.seed)

    from diffusers_neodragon import NeodragonPipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.vae_roundtrip and _is_vae_folder(args.pipeline):
        vae = load_vae_folder(args.pipeline, getattr(torch, args.dtype)).to(device)
        return _vae_roundtrip(vae, (49, 128, 128), args)
    pipe = NeodragonPipeline.from_pretrained(args.pipeline, dtype=getattr(torch, args.dtype)).to(device)
    pipe.set_progress_bar_config(disable=True)
    if args.float8_weights or args.float8_matmuls:
        pipe.enable_float8_weights(float8_matmuls=args.float8_matmuls)
    if args.cuda_graphs:
        if pipe.device.type != "cuda":
            raise ValueError(f"--cuda-graphs needs a CUDA device, got {pipe.device}")
        pipe.enable_cuda_graphs()
    if args.vae_roundtrip:
        config = pipe.config
        return _vae_roundtrip(pipe.vae, (config.default_num_frames, config.default_height, config.default_width), args)
    if getattr(pipe, "first_frame_pipeline", None) is not None:
        pipe.first_frame_pipeline.set_progress_bar_config(disable=True)
    overrides = {
        "height": args.height, "width": args.width, "num_frames": args.frames, "mode": args.mode,
        "video_num_inference_steps": args.steps, "num_inference_steps": args.first_frame_steps,
        "history_noise": args.history_noise, "guidance_scale": args.guidance_scale,
        "video_guidance_scale": args.video_guidance_scale,
        "super_resolution": False if args.no_super_resolution else None,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}

    @torch.no_grad()
    def generate(prompt: str) -> np.ndarray:
        generator = torch.Generator().manual_seed(args.seed)
        return np.asarray(pipe(prompt, generator=generator, output_type="np", **overrides).frames[0], dtype=np.float32)

    return generate


def _render(prompt: str, size, seed: int) -> np.ndarray:
    """The ground-truth video of ``prompt``; unstated speed and position come from the seed, like a model's noise."""
    return render_scene(scene_from_caption(prompt, np.random.default_rng(seed)), *size)


def _is_vae_folder(path: str) -> bool:
    """A local VAE folder or training run (``config.json`` or ``vae/config.json``) that is not a pipeline; pipelines,
    official snapshots and Hub ids load through ``NeodragonPipeline.from_pretrained``."""
    folder = Path(path)
    has_vae = (folder / "config.json").is_file() or (folder / "vae" / "config.json").is_file()
    return has_vae and not (folder / "model_index.json").is_file()


def _vae_roundtrip(vae, default_size, args: argparse.Namespace) -> Callable[[str], np.ndarray]:
    """prompt -> the rendered video after ``vae`` (posterior mean, then decode), ``[F, H, W, 3]`` in [0, 1]."""
    size = tuple(given or default for given, default in zip((args.frames, args.height, args.width), default_size))

    @torch.no_grad()
    def roundtrip(prompt: str) -> np.ndarray:
        video = _render(prompt, size, args.seed)
        pixels = torch.from_numpy(video).permute(3, 0, 1, 2)[None].to(vae.device, vae.dtype) / 127.5 - 1
        decoded = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
        return ((decoded[0].permute(1, 2, 3, 0).float().cpu().numpy() + 1) / 2).clip(0, 1)

    return roundtrip


def _still_table(results: dict) -> str:
    """Accuracy (%) of the attributes a single frame shows, one column per split."""
    still = ("color", "shape", "size", "background")
    rows = [("first frame", list(results))]
    for attribute in still:
        rows.append((f"{attribute} acc", [f"{100 * np.mean([r['correct'][attribute] for r in split]):.1f}"
                                           for split in results.values()]))
    rows.append(("all four right", [f"{100 * np.mean([all(r['correct'][a] for a in still) for r in split]):.1f}"
                                    for split in results.values()]))
    return "\n".join(f"{label:<16}" + "".join(f"{v:>10}" for v in values) for label, values in rows)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; prints the table and returns the report (also written to ``--json``)."""
    args = _parse_args(argv)
    make_video = _video_maker(args)
    results, generation_seconds, evaluation_seconds, size = {}, 0.0, 0.0, None
    for name, split in SPLITS.items():
        results[name] = []
        for prompt in fixed_prompt_set(split, args.num_prompts):
            start = time.perf_counter()
            video = make_video(prompt)
            generation_seconds += time.perf_counter() - start
            size = [int(v) for v in np.shape(video)[:3]]
            if args.first_frame:  # a still clip: the evaluator tracks objects over a few frames
                video = np.repeat(video[:1], 3, axis=0)
            start = time.perf_counter()
            results[name].append(evaluate_video(video, prompt))
            evaluation_seconds += time.perf_counter() - start
    summaries = {name: summarize(r) for name, r in results.items()}
    roundtrip = " (VAE round trip)" if args.vae_roundtrip else ""
    source = "ground truth" if args.ground_truth else args.pipeline + roundtrip
    num_videos = sum(len(r) for r in results.values())
    unit = "first frame" if args.first_frame else "video"
    print(f"ShapesBench: {source}, {num_videos} {unit}s of {size[0]}x{size[1]}x{size[2]} (FxHxW), seed {args.seed}, "
          f"{generation_seconds / num_videos:.2f} s to make and {evaluation_seconds / num_videos:.2f} s to score "
          f"a {unit}")
    print(_still_table(results) if args.first_frame else format_table(summaries))
    for name, split_results in results.items():
        print(f"\nshape verdicts, {name} (rows: prompted, columns: judged)\n{format_shape_confusion(split_results)}")
    report = {
        "source": source,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json",)},
        "video_size_fhw": size,
        "seconds_per_video": generation_seconds / num_videos,
        "evaluation_seconds_per_video": evaluation_seconds / num_videos,
        "summary": summaries,
        "results": results,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
