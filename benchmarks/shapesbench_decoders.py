"""ShapesBench of decoders: a pipeline with its own VAE against the same pipeline with other VAEs (distilled
decoders), every one decoding the very latents the pipeline sampled.

    python benchmarks/shapesbench_decoders.py PIPELINE_FOLDER "student=runs/decoder/vae" [more LABEL=VAE_FOLDER] \\
        [--seeds 0,1] [--num-prompts 32] [--batch-size 8] [--device cuda] [--markdown] [--json out.json]

Swapping the VAE leaves the encoder (an ``AsymmetricVAE`` student keeps the teacher's, bit for bit) and so every
latent the transformer samples unchanged: the pipeline with a student VAE makes exactly these latents, then decodes
them with the student. So one sampling pass scores every decoder, and the differences between rows are free of the
sampling noise that moves a 32-prompt total by several points between seeds (what is left is the decoders' own).
Each prompt is sampled from ``torch.Generator().manual_seed(seed)`` as in ``shapesbench.py``; ``--batch-size`` > 1
samples several prompts per call (faster on a GPU; the numbers then differ from ``shapesbench.py``'s in the last bits
of the latents). Also printed: each decoder's PSNR against the pipeline's own decoder on the same latents.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch

from diffusers_neodragon.data.shapes import fixed_prompt_set
from diffusers_neodragon.evaluation import evaluate_video, summarize
from diffusers_neodragon.pipelines.neodragon.pipeline_neodragon import DEFAULT_DECODE_CHUNK_SIZE
from diffusers_neodragon.training_utils import load_vae_folder, psnr


COMPARE = Path(__file__).with_name("shapesbench_compare.py")
SPLITS = {"seen": "seen", "held-out": "heldout"}
FIELDS = ("score", "semantic", "quality", "temporal")
OWN = "pipeline"


def _entry(text: str) -> tuple[str, str]:
    label, _, folder = text.partition("=")
    if not label or not folder or label == OWN:
        raise argparse.ArgumentTypeError(f"a decoder is LABEL=VAE_FOLDER (label not {OWN!r}), got {text!r}")
    return label, folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", help="a NeodragonPipeline folder (its own VAE is the first row)")
    parser.add_argument("decoders", nargs="+", type=_entry, help="LABEL=VAE_FOLDER (a VAE folder or a run with vae/)")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    parser.add_argument("--num-prompts", type=int, default=32, help="prompts per split (default 32, at most 200)")
    parser.add_argument("--batch-size", type=int, default=1, help="prompts sampled per pipeline call")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--json", help="write the table's numbers here")
    return parser


def _format_comparison():
    spec = importlib.util.spec_from_file_location("shapesbench_compare_script", COMPARE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.format_comparison


@torch.no_grad()
def _frames(pipe, vae, latents: torch.Tensor) -> np.ndarray:
    """The pipeline's output frames ``[B, F, H, W, 3]`` in [0, 1] for ``latents`` decoded by ``vae``."""
    own = pipe.vae
    pipe.vae = vae
    try:
        video = pipe._decode(latents, pipe.super_resolution is not None, DEFAULT_DECODE_CHUNK_SIZE)
    finally:
        pipe.vae = own
    return np.asarray(pipe.video_processor.postprocess_video(video.float(), output_type="np"), dtype=np.float32)


def compare_decoders(pipeline: str, decoders: list[tuple[str, str]], seeds: list[int], num_prompts: int,
                     batch_size: int = 1, device: str | None = None) -> dict:
    """``{label: {"seen": {field: [per seed]}, "held-out": ..., "psnr_vs_pipeline": float, "seconds_per_video"}}``,
    the pipeline's own decoder first."""
    from diffusers_neodragon import NeodragonPipeline

    if not 1 <= num_prompts <= 200:
        raise ValueError(f"--num-prompts must be in [1, 200], got {num_prompts}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    labels = [OWN, *(label for label, _ in decoders)]
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must differ, got {labels}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = NeodragonPipeline.from_pretrained(pipeline, dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    if getattr(pipe, "first_frame_pipeline", None) is not None:
        pipe.first_frame_pipeline.set_progress_bar_config(disable=True)
    vaes = {OWN: pipe.vae, **{label: load_vae_folder(folder, torch.float32).to(device) for label, folder in decoders}}

    table = {label: {split: {f: [] for f in FIELDS} for split in SPLITS} for label in labels}
    errors = {label: [] for label in labels}
    sampling_seconds, num_videos = 0.0, 0
    for seed in seeds:
        for split_name, split in SPLITS.items():
            results = {label: [] for label in labels}
            prompts = fixed_prompt_set(split, num_prompts)
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start : start + batch_size]
                began = time.perf_counter()
                latents = pipe(chunk, generator=[torch.Generator().manual_seed(seed) for _ in chunk],
                               output_type="latent").frames
                sampling_seconds += time.perf_counter() - began
                num_videos += len(chunk)
                reference = _frames(pipe, vaes[OWN], latents)
                for label, vae in vaes.items():
                    frames = reference if label == OWN else _frames(pipe, vae, latents)
                    errors[label] += [psnr(torch.from_numpy(f), torch.from_numpy(r), data_range=1.0)
                                      for f, r in zip(frames, reference)]
                    results[label] += [evaluate_video(video, prompt) for video, prompt in zip(frames, chunk)]
            for label in labels:
                summary = summarize(results[label])
                for field in FIELDS:
                    table[label][split_name][field].append(summary[field])
    for label in labels:
        table[label]["seconds_per_video"] = sampling_seconds / num_videos
        table[label]["psnr_vs_pipeline"] = float(np.mean(errors[label]))
    return table


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    table = compare_decoders(args.pipeline, args.decoders, seeds, args.num_prompts, args.batch_size, args.device)
    print(f"{args.pipeline}: its own decoder against {len(args.decoders)} other(s), on the same sampled latents")
    print(_format_comparison()(table, seeds, markdown=args.markdown))
    for label, row in list(table.items())[1:]:
        print(f"{label}: PSNR against the pipeline's own decoder {row['psnr_vs_pipeline']:.2f} dB (mean over videos)")
    if args.json:
        Path(args.json).write_text(json.dumps({"seeds": seeds, "num_prompts": args.num_prompts, "table": table},
                                              indent=1))
    return table


if __name__ == "__main__":
    main()
