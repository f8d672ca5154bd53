"""The ``neodragon`` command: ``neodragon generate PROMPT ...`` writes a video and a PNG strip of frames;
``neodragon export PIPELINE_FOLDER --output DIR ...`` exports it for Snapdragon NPUs (see
``diffusers_neodragon/export/cli.py``).

Bad input costs a fraction of a second and one line: everything that can be checked from the arguments and from the
model folder's JSON configs is checked before torch is imported or a weight is read. Errors go to stderr as
``neodragon: error: <one line>``, exit code 2 for a bad argument and 1 for a failure while loading or generating;
``--debug`` (or ``NEODRAGON_DEBUG=1``) adds the traceback. Outputs are written to a temporary file next to the
destination and renamed, so a failed run leaves nothing behind.
"""

import argparse
import importlib.util
import json
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


PROG = "neodragon"
DEBUG_ENV = "NEODRAGON_DEBUG"
# What diffusers' export_to_video (imageio + ffmpeg, or Pillow for .gif) writes correctly; .webm "succeeds" with an
# empty stream (ffmpeg's default codec is not allowed in WebM) and .m4v/.flv/.ogv/.ts/.mpg find no writer.
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".gif")
SEED_LIMIT = 2**63
# Classifier-free guidance is useful up to ~20; far above, outputs saturate and large enough scales overflow to an
# all-black video, so anything above this is taken for a typo.
MAX_GUIDANCE_SCALE = 100.0
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


class UsageError(Exception):
    """A bad argument found before any work (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with the command's one-line error format (subparsers inherit it)."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message}\n")


# ---------------------------------------------------------------------------------------------- argument types
def int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return parse


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63), got {text!r}")
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63), got {value}")
    return value


def _guidance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or not 0 <= value <= MAX_GUIDANCE_SCALE:
        raise argparse.ArgumentTypeError(
            f"must be a number in [0, {MAX_GUIDANCE_SCALE:g}] (guidance is off at <= 1), got {text!r}")
    return value


def _history_noise(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value < 1:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def _steps(text: str) -> int | list[int]:
    try:
        steps = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated positive ints such as 1,1,1; got {text!r}")
    if any(s < 1 for s in steps):
        raise argparse.ArgumentTypeError(f"takes comma-separated positive ints such as 1,1,1; got {text!r}")
    return steps[0] if len(steps) == 1 else steps


# ---------------------------------------------------------------------------------------------- the model's limits
@dataclass
class ModelLimits:
    """What a pipeline folder's JSON configs say about valid sizes, read without loading a weight."""

    size_multiple: int  # VAE spatial scale x 2^(stages - 1) x patch size
    max_size: int | None  # transformer pos_embed_max_size x patch size x VAE spatial scale
    temporal_scale: int
    stages: int
    default_height: int
    default_width: int
    default_num_frames: int
    mode: str
    has_first_frame_pipeline: bool

    def describe(self) -> str:
        limit = f", at most {self.max_size}" if self.max_size else ""
        return (f"{self.default_height}x{self.default_width} and {self.default_num_frames} frames by default; sizes "
                f"are multiples of {self.size_multiple}{limit}; frames {self.temporal_scale}k+1")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error


def read_model_limits(folder: os.PathLike) -> ModelLimits | None:
    """The limits of a saved ``NeodragonPipeline`` folder; ``None`` for other layouts (the official release and
    Pyramid-Flow folders, converted when loaded), which the pipeline checks once loaded."""
    root = Path(folder)
    if not (root / "model_index.json").is_file():
        return None
    index = _read_json(root / "model_index.json")
    if index.get("_class_name") != "NeodragonPipeline" or not (root / "transformer" / "config.json").is_file():
        return None
    transformer = _read_json(root / "transformer" / "config.json")
    vae = _read_json(root / "vae" / "config.json") if (root / "vae" / "config.json").is_file() else {}
    scheduler_file = root / "scheduler" / "scheduler_config.json"
    scheduler = _read_json(scheduler_file) if scheduler_file.is_file() else {}
    spatial = vae.get("spatial_downsample_scale", 8)
    patch = transformer.get("patch_size", 2)
    stages = scheduler.get("stages", 3)
    grid = transformer.get("pos_embed_max_size")
    first_frame = index.get("first_frame_pipeline") or [None, None]
    return ModelLimits(
        size_multiple=spatial * 2 ** (stages - 1) * patch,
        max_size=grid * patch * spatial if grid else None,
        temporal_scale=vae.get("temporal_downsample_scale", 8),
        stages=stages,
        default_height=index.get("default_height", 320),
        default_width=index.get("default_width", 512),
        default_num_frames=index.get("default_num_frames", 49),
        mode=index.get("mode", "hybrid"),
        has_first_frame_pipeline=first_frame[0] is not None,
    )


def embedded_model_folder() -> Path:
    """The embedded Shapes pipeline's folder, found without importing diffusers_neodragon (which loads torch)."""
    spec = importlib.util.find_spec("diffusers_neodragon")
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained" / "shapes"


def _embedded_limits() -> ModelLimits | None:
    try:
        return read_model_limits(embedded_model_folder())
    except Exception:  # the help text must not fail because of an incomplete install
        return None


# ---------------------------------------------------------------------------------------------- parser
def default_threads() -> int:
    """CPU threads for torch: the cores not already busy (1-minute load average), at most 4.

    torch's default (all physical cores) oversubscribes a busy machine badly: on two loaded cores a 14 s generation
    took 110-140 s with it and 11-16 s with one thread. The small models this runs on a CPU gain little beyond 4.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except OSError:
        busy = 0
    return max(1, min(4, cores - busy))


def build_parser() -> argparse.ArgumentParser:
    shapes = _embedded_limits()
    about = f" (the embedded Shapes model: {shapes.describe()})" if shapes else ""
    # the embedded model's own defaults and limits, read from its configs (Neodragon's: 320x512, 49 frames)
    embedded = {
        "height": f"{shapes.default_height} for the embedded model, at most {shapes.max_size}; " if shapes else "",
        "width": f"{shapes.default_width} for the embedded model, at most {shapes.max_size}; " if shapes else "",
        "frames": f"{shapes.default_num_frames} for the embedded model and " if shapes else "",
    }
    multiple = shapes.size_multiple if shapes else 64
    parser = _Parser(prog=PROG, description="Neodragon text-to-video (diffusers plugin)")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help=f"show the traceback of an error (or set {DEBUG_ENV}=1)")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser(
        "generate", help="generate a video from a prompt (and optionally a first frame)",
        description="Generate a video from a prompt. Sizes, frames and steps are checked against the model's "
        f"configs before anything loads{about}.")
    gen.add_argument("prompt", nargs="?", help="the prompt (or --prompts FILE for one video per line of a file)")
    gen.add_argument("--prompts", metavar="FILE",
                     help="generate one video per prompt of FILE (one per line, or .jsonl with a \"prompt\" field) "
                     "into --output-dir as 00000.mp4, 00001.mp4, ... with manifest.jsonl; prompt i uses seed "
                     "--seed + i; finished videos are skipped when run again; split across the processes of "
                     "`torchrun` / `accelerate launch`")
    gen.add_argument("--output-dir", help="with --prompts: the folder for the videos and manifest.jsonl "
                     "(default: videos)")
    gen.add_argument("--video-format", choices=[e[1:] for e in VIDEO_EXTENSIONS],
                     help="with --prompts: the videos' format (default: mp4)")
    gen.add_argument("--model", help="pipeline folder or Hub id saved by NeodragonPipeline (default: the small "
                     "Shapes model embedded in the package, which works offline)")
    gen.add_argument("--image", help="first frame (image-to-video)")
    gen.add_argument("--mode", choices=["hybrid", "monolithic"], help="default: the pipeline's configured mode")
    gen.add_argument("--frames", type=int_at_least(1),
                     help=f"8k+1 frames (default: the model's: {embedded['frames']}49 for Neodragon)")
    gen.add_argument("--height", type=int_at_least(1),
                     help=f"multiple of {multiple} (default: the model's: {embedded['height']}320 for Neodragon)")
    gen.add_argument("--width", type=int_at_least(1),
                     help=f"multiple of {multiple} (default: the model's: {embedded['width']}512 for Neodragon)")
    gen.add_argument("--seed", type=_seed, default=0,
                     help="in [0, 2**63) (default: 0); with --prompts, prompt i uses seed + i")
    gen.add_argument("--steps", type=_steps, help="video DiT steps per stage, e.g. 1,1,1 (default: the mode's)")
    gen.add_argument("--first-frame-steps", type=_steps, help="DiT steps per stage for a DiT-made first frame")
    gen.add_argument("--guidance-scale", type=_guidance,
                     help=f"first-frame CFG in [0, {MAX_GUIDANCE_SCALE:g}] (default: the model's or the mode's)")
    gen.add_argument("--video-guidance-scale", type=_guidance,
                     help=f"later-frame CFG in [0, {MAX_GUIDANCE_SCALE:g}] (default: the model's or the mode's)")
    gen.add_argument("--history-noise", type=_history_noise,
                     help="noise in [0, 1) mixed into the earlier frames the model conditions on "
                     "(default: the model's)")
    gen.add_argument("--negative-prompt")
    gen.add_argument("--no-super-resolution", action="store_true", help="skip the 2x super-resolution stage")
    gen.add_argument("--decode-chunk-size", type=int_at_least(1), default=1,
                     help="decode (and super-resolve) this many latent frames at a time (default 1: the least "
                          "memory; the video is the same for every value)")
    gen.add_argument("--float8-weights", action="store_true",
                     help="store the large models' weights in float8 (about half the memory; outputs change slightly)")
    gen.add_argument("--float8-matmuls", action="store_true",
                     help="--float8-weights, and the transformer multiplies in float8 (bfloat16 on a GPU with "
                          "float8 tensor cores: faster; outputs change more)")
    gen.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    gen.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                     help="default: bfloat16 on cuda, float32 on cpu")
    gen.add_argument("--threads", type=int_at_least(1),
                     help=f"CPU threads for torch (default: the idle cores, at most 4; {default_threads()} now). "
                     "torch's own default, every core, is many times slower on a machine busy with other work")
    gen.add_argument("--fps", type=int_at_least(1), default=24, help="frames per second of the video (default: 24)")
    gen.add_argument("--output",
                     help=f"video path ({', '.join(VIDEO_EXTENSIONS)}); the PNG strip goes next to it as "
                     "NAME_frames.png (default: out.mp4)")
    gen.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                     help=f"show the traceback of an error (or set {DEBUG_ENV}=1)")
    from .export_arguments import add_export_arguments

    export = commands.add_parser(
        "export", help="export a pipeline to static-shape ONNX graphs for Snapdragon NPUs (QNN HTP check, AI Hub)")
    add_export_arguments(export)
    export.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help=f"show the traceback of an error (or set {DEBUG_ENV}=1)")
    return parser


# ---------------------------------------------------------------------------------------------- checks
def frame_strip(frames, count: int = 8, height: int = 128):
    """Evenly spaced frames side by side, so a video can be judged at a glance (and by image viewers)."""
    import numpy as np
    import PIL.Image

    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    width = round(frames[0].width * height / frames[0].height)
    strip = PIL.Image.new("RGB", (width * len(picks), height))
    for slot, index in enumerate(picks):
        strip.paste(frames[index].convert("RGB").resize((width, height), PIL.Image.BICUBIC), (slot * width, 0))
    return strip


def resolve_model(model: str | None) -> tuple[str, ModelLimits | None]:
    """The folder (or Hub id) to load and its limits; a local-looking path that does not exist is a usage error."""
    if model is None:
        folder = embedded_model_folder()
        if not (folder / "model_index.json").is_file():
            raise UsageError(f"the embedded Shapes model is missing from {folder} (an incomplete install?); "
                             "reinstall diffusers-neodragon or pass --model")
        return str(folder), read_model_limits(folder)
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"--model {model}: is a file; give the pipeline folder (the one holding model_index.json)")
        return str(path), read_model_limits(path)
    # "owner/name" is a Hub id unless "owner" is a local folder (then it is a mistyped path)
    if _HUB_ID.fullmatch(model) and not Path(model.split("/")[0]).is_dir():
        return model, None
    raise UsageError(f"--model {model}: no such folder")


def check_against_model(args, limits: ModelLimits) -> None:
    """Sizes, frames, steps and mode against the model's configs (the pipeline's check_inputs, before loading)."""
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is None:
            continue
        allowed = f"multiples of {limits.size_multiple}" + (f" up to {limits.max_size}" if limits.max_size else "")
        default = f"the model's default is {limits.default_height}x{limits.default_width}"
        if value % limits.size_multiple:
            raise UsageError(f"--{name} {value}: the model takes {allowed}; {default}")
        if limits.max_size and value > limits.max_size:
            raise UsageError(f"--{name} {value}: the model takes {allowed} (its position grid); {default}")
    if args.frames is not None and (args.frames - 1) % limits.temporal_scale:
        k = limits.temporal_scale
        raise UsageError(f"--frames {args.frames}: must be {k}k+1 (1, {k + 1}, {2 * k + 1}, ...); the model's "
                         f"default is {limits.default_num_frames}")
    for flag, steps in (("--steps", args.steps), ("--first-frame-steps", args.first_frame_steps)):
        if isinstance(steps, list) and len(steps) != limits.stages:
            raise UsageError(f"{flag} {','.join(map(str, steps))}: give one count or {limits.stages} (one per "
                             f"pyramid stage), got {len(steps)}")
    mode = args.mode or limits.mode
    if mode == "hybrid" and args.image is None and not limits.has_first_frame_pipeline:
        raise UsageError("--mode hybrid takes its first frame from --image or the model's first_frame_pipeline, "
                         "which this model does not have; pass --image or --mode monolithic")


def check_output(output: str) -> Path:
    """The output must name a file with a known video extension in a folder that exists (or can be made) and is
    writable; checked by creating and removing a file there, which also works for root and read-only mounts."""
    path = Path(output).expanduser()
    if output.endswith(("/", os.sep)) or path.is_dir():
        raise UsageError(f"--output {output}: is a folder; give a file name such as {path / 'out.mp4'}")
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        what = f"unknown video extension {path.suffix!r}" if path.suffix else "no file extension"
        raise UsageError(f"--output {output}: {what}; use one of {', '.join(VIDEO_EXTENSIONS)}")
    _check_writable(path.absolute().parent, f"--output {output}")
    return path


def _check_writable(folder: Path, label: str) -> None:
    """``folder``, or the nearest folder above it that exists (where it would be made), must be a writable folder;
    checked by creating and removing a file there, which also works for root and read-only mounts."""
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{label}: {folder} is a file, not a folder")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise UsageError(f"{label}: cannot write in {folder} ({error.strerror or error})")


def check_image(image: str) -> None:
    import PIL.Image

    path = Path(image).expanduser()
    if not path.is_file():
        raise UsageError(f"--image {image}: " + ("is a folder" if path.is_dir() else "no such file"))
    try:
        with PIL.Image.open(path) as picture:
            picture.verify()
    except Exception as error:
        raise UsageError(f"--image {image}: not a readable image ({type(error).__name__})")


def check_device(device: str | None):
    """The torch device to run on (imports torch: the last check before loading)."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device}: not a torch device (such as cpu, cuda, cuda:1)")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available here; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available here; use --device cpu")
    return parsed


# ---------------------------------------------------------------------------------------------- writing
def _temporary_twin(path: Path) -> Path:
    """A new empty file next to ``path`` with its extension (writers pick their format from it)."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)  # mkstemp's 0600 would otherwise carry over to the renamed output
    return Path(name)


def write_outputs(frames, output: Path, fps: int) -> Path:
    """Write the video and its frame strip atomically: temporary files in the destination folder, renamed once both
    are complete. On any failure the temporary files and any folder made for them are removed."""
    from diffusers.utils import export_to_video

    strip_path = output.with_name(output.stem + "_frames.png")
    made = []
    folder = output.absolute().parent
    while not folder.exists():
        made.append(folder)
        folder = folder.parent
    temporaries = []
    try:
        for new in reversed(made):
            new.mkdir()
        temporaries.append(_temporary_twin(output))
        export_to_video(frames, str(temporaries[0]), fps=fps)
        if temporaries[0].stat().st_size == 0:
            raise OSError(f"the video writer wrote nothing for {output}")
        temporaries.append(_temporary_twin(strip_path))
        frame_strip(frames).save(temporaries[1], format="PNG")
        os.replace(temporaries[0], output)
        os.replace(temporaries[1], strip_path)
    except BaseException:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
        for new in made:
            try:
                new.rmdir()
            except OSError:
                pass
        raise
    return strip_path


# ---------------------------------------------------------------------------------------------- commands
def check_prompt_arguments(args) -> None:
    """One prompt or a prompt file, and each with its own output flags."""
    if args.prompts is not None:
        if args.prompt is not None:
            raise UsageError(f"give a prompt or --prompts {args.prompts}, not both")
        if args.output is not None:
            raise UsageError(f"--output names one video; with --prompts give the folder as --output-dir (got "
                             f"--output {args.output})")
        path = Path(args.prompts).expanduser()
        if not path.exists():
            raise UsageError(f"--prompts {args.prompts}: no such file")
        if not path.is_file():
            raise UsageError(f"--prompts {args.prompts}: is a folder; give a text file with one prompt per line "
                             "(or .jsonl)")
        return
    for flag, value in (("--output-dir", args.output_dir), ("--video-format", args.video_format)):
        if value is not None:
            raise UsageError(f"{flag} goes with --prompts FILE; for one prompt give --output NAME.mp4")
    if args.prompt is None:
        raise UsageError("the following arguments are required: prompt (or --prompts FILE)")
    if not args.prompt.strip():
        raise UsageError("the prompt is empty")


def check_output_dir(output_dir: str) -> Path:
    """A folder (existing or to be made) that is writable; a file there or on the way is a usage error."""
    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--output-dir {output_dir}: is a file; give a folder for the videos and manifest.jsonl")
    _check_writable(path.absolute(), f"--output-dir {output_dir}")
    return path


def _local_processes() -> int:
    """Processes on this machine under ``accelerate launch`` / ``torchrun`` (1 for a plain run)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def generate(args) -> int:
    """``neodragon generate``: every check that needs no weights first (UsageError), then load and run."""
    check_prompt_arguments(args)
    model, limits = resolve_model(args.model)
    if limits is not None:
        check_against_model(args, limits)
    if args.prompts is None:
        output = check_output(args.output or "out.mp4")
    else:
        output = check_output_dir(args.output_dir or "videos")
    if args.image is not None:
        check_image(args.image)
    # the idle cores are shared by the processes of a launch on this machine
    threads = args.threads or max(1, default_threads() // _local_processes())
    device = check_device(args.device) if args.prompts is None or args.device is not None else None

    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if args.prompts is None:
            return _run(args, model, output, device)
        return _run_prompt_file(args, model, output, device)
    finally:
        torch.set_num_threads(previous_threads)  # main() is also called in-process (tests, scripts)


def _load(args, model: str, device):
    import torch

    from diffusers_neodragon import NeodragonPipeline

    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    pipe = NeodragonPipeline.from_pretrained(model, dtype=dtype).to(device)
    if args.float8_weights or args.float8_matmuls:
        pipe.enable_float8_weights(float8_matmuls=args.float8_matmuls)
    return pipe


def _pipeline_kwargs(args) -> dict:
    """The generation settings of the command line, as ``NeodragonPipeline.__call__`` arguments."""
    from diffusers.utils import load_image

    return dict(
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
    )


def _run(args, model: str, output: Path, device) -> int:
    """Load, generate and write; what fails here is a runtime failure (exit code 1)."""
    import torch

    if args.model is None:
        print(f"using the embedded Shapes model ({model}); pass --model for another pipeline")
    pipe = _load(args, model, device)
    result = pipe(args.prompt, generator=torch.Generator().manual_seed(args.seed), **_pipeline_kwargs(args))
    frames = result.frames[0]
    strip_path = write_outputs(frames, output, args.fps)
    print(f"wrote {output} ({len(frames)} frames, {frames[0].width}x{frames[0].height}) and {strip_path}")
    return 0


def _run_prompt_file(args, model: str, output_dir: Path, device) -> int:
    """``--prompts``: this process's share of the prompt file (see diffusers_neodragon's batch_generation)."""
    from accelerate import PartialState

    from diffusers_neodragon.pipelines.neodragon.batch_generation import generate_prompt_file, read_prompts

    try:
        prompts = read_prompts(args.prompts)
    except ValueError as error:
        raise UsageError(f"--prompts {args.prompts}: {error}") from error
    import torch

    # accelerate treats a torchrun launch on the CPU as distributed (gloo) only when told it runs on the CPU
    on_cpu = device.type == "cpu" if device is not None else not torch.cuda.is_available()
    state = PartialState(cpu=on_cpu)
    if device is None or (device.type == state.device.type and device.index is None):
        device = state.device  # each process its own GPU
    if args.model is None:
        state.print(f"using the embedded Shapes model ({model}); pass --model for another pipeline")
    pipe = _load(args, model, device)
    pipe.set_progress_bar_config(disable=True)
    result = generate_prompt_file(pipe, prompts, output_dir, seed=args.seed, extension=f".{args.video_format or 'mp4'}",
                                  fps=args.fps, state=state, log=print, **_pipeline_kwargs(args))
    state.print(f"{len(result.jobs)} prompts in {output_dir}: {len(result.skipped)} already done, the rest written by "
                f"{state.num_processes} process(es); manifest: {output_dir / 'manifest.jsonl'}")
    return 0


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code: 0, 2 for a bad argument, 1 for a failure while loading or running."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a bad argument already reported by the parser
        return exit_.code if isinstance(exit_.code, int) else 2
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        if args.command == "generate":
            return generate(args)
        from diffusers_neodragon.export.cli import run_export

        return run_export(args)
    except UsageError as error:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"{PROG}: error: {_one_line(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"{PROG}: error: {type(error).__name__}: {_one_line(str(error))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
