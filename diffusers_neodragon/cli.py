"""The ``neodragon`` command: ``neodragon generate PROMPT ...`` writes an mp4 and a PNG strip of frames;
``neodragon export PIPELINE_FOLDER --output DIR ...`` exports it for Snapdragon NPUs (see ``export/cli.py``)."""

import argparse
import os
import sys

import numpy as np
import PIL.Image


def _steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps takes comma-separated ints such as 1,1,1; got {text!r}")
    return steps[0] if len(steps) == 1 else steps


def frame_strip(frames: list[PIL.Image.Image], count: int = 8, height: int = 128) -> PIL.Image.Image:
    """Evenly spaced frames side by side, so a video can be judged at a glance (and by image viewers)."""
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    width = round(frames[0].width * height / frames[0].height)
    strip = PIL.Image.new("RGB", (width * len(picks), height))
    for slot, index in enumerate(picks):
        strip.paste(frames[index].convert("RGB").resize((width, height), PIL.Image.BICUBIC), (slot * width, 0))
    return strip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neodragon", description="Neodragon text-to-video (diffusers plugin)")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate a video from a prompt (and optionally a first frame)")
    gen.add_argument("prompt")
    gen.add_argument("--model", help="pipeline folder or Hub id saved by NeodragonPipeline (default: the small "
                     "Shapes model embedded in the package, which works offline)")
    gen.add_argument("--image", help="first frame (image-to-video)")
    gen.add_argument("--mode", choices=["hybrid", "monolithic"], help="default: the pipeline's configured mode")
    gen.add_argument("--frames", type=int, help="8k+1 frames (default: the model's, 49 for Neodragon)")
    gen.add_argument("--height", type=int, help="multiple of 64 (default: the model's, 320 for Neodragon)")
    gen.add_argument("--width", type=int, help="multiple of 64 (default: the model's, 512 for Neodragon)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=_steps, help="video DiT steps per stage, e.g. 1,1,1 (default: the mode's)")
    gen.add_argument("--first-frame-steps", type=_steps, help="DiT steps per stage for a DiT-made first frame")
    gen.add_argument("--guidance-scale", type=float, help="first-frame CFG (default: the mode's)")
    gen.add_argument("--video-guidance-scale", type=float, help="later-frame CFG (default: the mode's)")
    gen.add_argument("--history-noise", type=float,
                     help="noise in [0, 1) mixed into the earlier frames the model conditions on (default: the model's)")
    gen.add_argument("--negative-prompt")
    gen.add_argument("--no-super-resolution", action="store_true", help="skip the 2x super-resolution stage")
    gen.add_argument("--decode-chunk-size", type=int,
                     help="decode (and super-resolve) this many latent frames at a time: less memory, same video")
    gen.add_argument("--float8-weights", action="store_true",
                     help="store the large models' weights in float8 (about half the memory; outputs change slightly)")
    gen.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    gen.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                     help="default: bfloat16 on cuda, float32 on cpu")
    gen.add_argument("--fps", type=int, default=24)
    gen.add_argument("--output", default="out.mp4", help="mp4 path; the PNG strip goes next to it")
    from .export.cli import add_export_arguments  # argparse only: the export dependencies load when it runs

    add_export_arguments(commands.add_parser(
        "export", help="export a pipeline to static-shape ONNX graphs for Snapdragon NPUs (QNN HTP check, AI Hub)"))
    return parser


def generate(args) -> int:
    import torch
    from diffusers.utils import export_to_video, load_image

    from . import NeodragonPipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    if args.model is None:
        from .pretrained import shapes_model_path

        args.model = shapes_model_path()
        print(f"using the embedded Shapes model ({args.model}); pass --model for another pipeline")
    pipe = NeodragonPipeline.from_pretrained(args.model, dtype=dtype).to(device)
    if args.float8_weights:
        pipe.enable_float8_weights()
    result = pipe(
        args.prompt,
        image=load_image(args.image) if args.image else None,
        negative_prompt=args.negative_prompt,
        mode=args.mode,
        height=args.height,
        width=args.width,
        num_frames=args.frames,
        video_num_inference_steps=args.steps,
        num_inference_steps=args.first_frame_steps,
        guidance_scale=args.guidance_scale,
        video_guidance_scale=args.video_guidance_scale,
        history_noise=args.history_noise,
        super_resolution=False if args.no_super_resolution else None,
        decode_chunk_size=args.decode_chunk_size,
        generator=torch.Generator().manual_seed(args.seed),
    )
    frames = result.frames[0]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    export_to_video(frames, args.output, fps=args.fps)
    strip_path = os.path.splitext(args.output)[0] + "_frames.png"
    frame_strip(frames).save(strip_path)
    print(f"wrote {args.output} ({len(frames)} frames, {frames[0].width}x{frames[0].height}) and {strip_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        return generate(args)
    if args.command == "export":
        from .export.cli import run_export

        return run_export(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
