"""Generating a prompt file, one video per prompt, split across the processes of an ``accelerate`` / ``torchrun``
launch (``generate_prompt_file``; ``neodragon generate --prompts FILE`` calls it).

Why these rules:
- Every prompt is generated alone (batch of one) with its own CPU generator seeded ``seed + index``, so a prompt's
  video does not depend on which process makes it or on how many there are (nor on batching numerics).
- Videos are named from the prompt's index (``00012.mp4``) and renamed into place only when complete, so a video on
  disk is a finished one and a relaunch skips it (resume); ``manifest.jsonl`` (index, prompt, seed, file per line)
  records the plan, and a relaunch into a folder made from other prompts or another seed fails instead of mixing.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...data.prompts import read_prompt_file


MANIFEST_NAME = "manifest.jsonl"
SEED_LIMIT = 2**63
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".gif")


@dataclass(frozen=True)
class PromptJob:
    """One line of the manifest: the prompt's index in the file, its text, its seed and its video's file name."""

    index: int
    prompt: str
    seed: int
    file: str


@dataclass
class PromptFileResult:
    """What one process did: the jobs it generated and those it found done (resume). ``jobs`` is the whole plan."""

    jobs: list[PromptJob]
    generated: list[PromptJob] = field(default_factory=list)
    skipped: list[PromptJob] = field(default_factory=list)


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts of a text file (one per non-empty line) or of a ``.jsonl`` file (one object with a ``"prompt"`` string
    per non-empty line). A prompt's index is its position among the prompts, blank lines not counted."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"Prompt file {path} is a folder; give a text file with one prompt per line (or .jsonl).")
    if path.suffix.lower() != ".jsonl":
        return read_prompt_file(path)
    if not path.is_file():
        raise ValueError(f"Prompt file {path} does not exist (a .jsonl file, one {{\"prompt\": ...}} per line).")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise ValueError(f"{path} line {number} is not JSON ({error}); write one object per line.") from error
        prompt = record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{path} line {number} has no non-empty \"prompt\" string; write "
                             "{\"prompt\": \"a red circle moving left\"}.")
        prompts.append(prompt.strip())
    if not prompts:
        raise ValueError(f"{path} holds no prompt.")
    return prompts


def plan_jobs(prompts: list[str], seed: int = 0, extension: str = ".mp4") -> list[PromptJob]:
    """One job per prompt: seed ``seed + index``, file ``{index:05d}{extension}`` (wider when there are more than
    100000 prompts)."""
    if not prompts:
        raise ValueError("No prompt to generate: give at least one.")
    if extension.lower() not in VIDEO_EXTENSIONS:
        raise ValueError(f"Video extension {extension!r} is not one of {', '.join(VIDEO_EXTENSIONS)}.")
    if seed < 0 or seed + len(prompts) - 1 >= SEED_LIMIT:
        raise ValueError(f"seed {seed}: prompt i uses seed + i, which must stay in [0, 2**63) for all "
                         f"{len(prompts)} prompts.")
    width = max(5, len(str(len(prompts) - 1)))
    return [PromptJob(i, prompt, seed + i, f"{i:0{width}d}{extension}") for i, prompt in enumerate(prompts)]


def check_output_dir(output_dir: str | os.PathLike) -> Path:
    """The output folder must be a folder (or creatable: no file on the way to it)."""
    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"Output folder {output_dir} is a file; give a folder for the videos and manifest.")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"Output folder {output_dir}: {parent} is a file, not a folder.")
    return path


def read_manifest(output_dir: str | os.PathLike) -> list[PromptJob]:
    """The manifest a previous launch wrote into ``output_dir`` (empty when there is none)."""
    path = Path(output_dir) / MANIFEST_NAME
    if not path.is_file():
        return []
    jobs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                jobs.append(PromptJob(**json.loads(line)))
            except (ValueError, TypeError) as error:
                raise ValueError(f"{path} line {number} is not a manifest entry ({error}); move the folder's "
                                 "manifest away or use a new output folder.") from error
    return jobs


def check_resumable(jobs: list[PromptJob], output_dir: Path) -> None:
    """A finished video of the folder must belong to the same prompt and seed as now (else the folder was made
    from another prompt file or seed, and resuming would mix them)."""
    planned = {job.file: job for job in jobs}
    for old in read_manifest(output_dir):
        new = planned.get(old.file)
        if (output_dir / old.file).is_file() and (new is None or (new.prompt, new.seed) != (old.prompt, old.seed)):
            now = f"now {new.prompt!r} with seed {new.seed}" if new else "now no such prompt"
            raise ValueError(f"{output_dir / old.file} was made from prompt {old.prompt!r} with seed {old.seed}, "
                             f"{now}: this folder holds another prompt file's videos; use a new output folder "
                             "(or the same prompts and --seed to resume).")


def _write_atomically(path: Path, write) -> None:
    """``write(temporary_path)`` into a hidden temporary twin of ``path`` (same extension, which writers read),
    then rename: ``path`` exists only once complete."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        if temporary.stat().st_size == 0:
            raise OSError(f"the writer wrote nothing for {path}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # not mkstemp's 0600
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_manifest(jobs: list[PromptJob], output_dir: Path) -> Path:
    path = output_dir / MANIFEST_NAME
    text = "".join(json.dumps(asdict(job), ensure_ascii=False) + "\n" for job in jobs)
    _write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
    return path


def generate_prompt_file(
    pipe,
    prompts: str | os.PathLike | list[str],
    output_dir: str | os.PathLike,
    *,
    seed: int = 0,
    extension: str = ".mp4",
    fps: int = 24,
    state=None,
    log=None,
    **pipeline_kwargs: Any,
) -> PromptFileResult:
    """Generate one video per prompt into ``output_dir``, this process's share of the prompts still to do.

    Call it in every process of a launch (``accelerate launch``/``torchrun``; a plain ``python`` run is one process)
    with the same arguments: the pending prompts are split with ``state.split_between_processes`` (default: accelerate's
    ``PartialState``, made for the CPU when ``pipe`` is there). ``pipe`` should already be on this process's device
    (``PartialState().device``). ``pipeline_kwargs`` go to every
    ``pipe(...)`` call (sizes, steps, mode, ...); ``generator`` and ``output_type`` are set here. ``log`` (e.g.
    ``print``) is told of every video written.
    """
    import torch
    from accelerate import PartialState
    from diffusers.utils import export_to_video

    for reserved in ("generator", "output_type", "num_videos_per_prompt", "prompt_embeds", "latents"):
        if reserved in pipeline_kwargs:
            raise ValueError(f"generate_prompt_file sets {reserved!r} itself (per prompt); leave it out.")
    if fps < 1:
        raise ValueError(f"fps must be >= 1, got {fps}.")
    # on the CPU, accelerate treats a torchrun launch as distributed (gloo) only when told it runs on the CPU
    state = state or PartialState(cpu=pipe.device.type == "cpu")
    prompt_list = list(prompts) if isinstance(prompts, (list, tuple)) else read_prompts(prompts)
    jobs = plan_jobs(prompt_list, seed, extension)
    folder = check_output_dir(output_dir)
    check_resumable(jobs, folder)
    # every process lists what is left before anyone writes a video, so all of them split the same list
    done = [(folder / job.file).is_file() for job in jobs]
    pending = [job for job, finished in zip(jobs, done) if not finished]
    result = PromptFileResult(jobs, skipped=[job for job, finished in zip(jobs, done) if finished])
    state.wait_for_everyone()
    if state.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        write_manifest(jobs, folder)
    state.wait_for_everyone()
    with state.split_between_processes(pending) as mine:
        for job in mine:
            output = pipe(job.prompt, generator=torch.Generator().manual_seed(job.seed), output_type="pil",
                          **pipeline_kwargs)
            frames = output.frames[0]
            _write_atomically(folder / job.file, lambda temporary: export_to_video(frames, str(temporary), fps=fps))
            result.generated.append(job)
            if log is not None:
                log(f"[process {state.process_index}] wrote {folder / job.file} ({job.prompt!r}, seed {job.seed})")
    state.wait_for_everyone()
    return result
