"""How closely an export's ONNX graphs reproduce the torch pipeline's video: same prompt, same seed, frame by frame.

    python benchmarks/ort_video_fidelity.py PIPELINE EXPORT_DIR [--backend htp] [--precision fp16|w8a16]
        [--prompt "..."] [--seed 0] [--num-frames 49] [--steps N] [--video-steps N] [--strip strip.png]
        [--json out.json]

PIPELINE is the folder that was exported (the reference, run in float32 on the CPU); EXPORT_DIR is what
``neodragon export`` wrote. ``--backend cpu`` runs the graphs with ONNX Runtime's CPU provider (float32: the
exporter's own error); ``--backend htp`` on the QNN HTP backend (the simulator on x86) with CPU fallback disabled, at
``--precision`` fp16 (the float graphs compiled in fp16) or w8a16 (the quantised ``*.w8a16.onnx`` graphs). Both
pipelines draw their noise from the same torch generator, so any difference is the graphs'.

Prints the PSNR of the whole video (pixels in [0, 1]), the worst frame's, and the wall time of each pipeline;
``--strip`` saves a PNG with torch frames over ONNX frames.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def as_tensor(video: np.ndarray) -> torch.Tensor:
    """[F, H, W, 3] in [0, 1] -> [3, F, H, W] in [-1, 1], the layout of ``training_utils``' PSNR and strips."""
    return torch.from_numpy(np.ascontiguousarray(video)).float().permute(3, 0, 1, 2) * 2 - 1


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline")
    parser.add_argument("export_dir")
    parser.add_argument("--backend", choices=["cpu", "htp"], default="cpu")
    parser.add_argument("--precision", choices=["fp16", "w8a16"], default="fp16",
                        help="HTP precision (the CPU backend runs the float graphs, or the w8a16 ones with w8a16)")
    parser.add_argument("--prompt", default="a large red circle moving right on a white background")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-frames", type=int, default=None, help="default: the export's")
    parser.add_argument("--steps", type=int, default=None,
                        help="first-frame denoising steps per stage (default: the pipeline's); fewer steps make an "
                             "HTP-simulator run affordable and are compared like for like")
    parser.add_argument("--video-steps", type=int, default=None, help="the same for the later frames")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--strip", default=None, help="save torch frames over ONNX frames to this PNG")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from diffusers_neodragon import NeodragonPipeline
    from diffusers_neodragon.export.ort_pipeline import (
        ORTNeodragonPipeline,
        cpu_session_factory,
        htp_session_factory,
    )
    from diffusers_neodragon.training_utils import psnr, video_strip

    factory = htp_session_factory(args.precision) if args.backend == "htp" else cpu_session_factory
    onnx_pipe = ORTNeodragonPipeline(args.export_dir, session_factory=factory,
                                     precision="w8a16" if args.precision == "w8a16" else "fp32")
    num_frames = args.num_frames or onnx_pipe.max_frames
    steps = dict(num_inference_steps=args.steps, video_num_inference_steps=args.video_steps)
    start = time.perf_counter()
    onnx_video = onnx_pipe(args.prompt, num_frames=num_frames, generator=torch.Generator().manual_seed(args.seed),
                           output_type="np", **steps)
    onnx_seconds = time.perf_counter() - start

    torch_pipe = NeodragonPipeline.from_pretrained(args.pipeline, dtype=torch.float32)
    start = time.perf_counter()
    torch_video = torch_pipe(args.prompt, num_frames=num_frames, height=onnx_pipe.height, width=onnx_pipe.width,
                             generator=torch.Generator().manual_seed(args.seed), output_type="np", **steps).frames
    torch_seconds = time.perf_counter() - start
    torch_video, onnx_video = as_tensor(np.asarray(torch_video)[0]), as_tensor(np.asarray(onnx_video)[0])
    if torch_video.shape != onnx_video.shape:
        raise ValueError(f"the videos differ in shape: torch {tuple(torch_video.shape)}, "
                         f"ONNX {tuple(onnx_video.shape)}")

    per_frame = [psnr(onnx_video[:, i], torch_video[:, i]) for i in range(torch_video.shape[1])]
    result = {
        "backend": args.backend, "precision": args.precision, "prompt": args.prompt, "seed": args.seed,
        "frames": len(per_frame), "steps": args.steps, "video_steps": args.video_steps,
        "psnr_db": psnr(onnx_video, torch_video), "worst_frame_psnr_db": min(per_frame),
        "worst_frame": int(np.argmin(per_frame)), "onnx_seconds": onnx_seconds, "torch_seconds": torch_seconds,
    }
    print(f"{args.backend} {args.precision}: video PSNR {result['psnr_db']:.2f} dB against torch, worst frame "
          f"{result['worst_frame']} at {result['worst_frame_psnr_db']:.2f} dB ({len(per_frame)} frames); "
          f"ONNX {onnx_seconds:.1f} s, torch {torch_seconds:.1f} s")
    if args.strip:
        video_strip([torch_video, onnx_video]).save(args.strip)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
