# SPDX-License-Identifier: Apache-2.0
"""The teacher pipeline's own samples as decoder-distillation data (``distill_decoder.py --generated_clips``).

A decoder in a pipeline never sees the encoder's latents of real clips: it decodes what the transformer samples,
which lies off the encoder's manifold. A student trained on encoded clips alone meets those latents for the first
time at inference, and decodes them differently from the teacher decoder. So the teacher pipeline samples clips
once (latents before decoding, and the teacher decoder's pixels of them, the target), and the student is trained on
them beside the data clips.

Each clip is one ``<index>.safetensors`` file in a folder: ``latents`` (raw, i.e. denormalised, float32
``[C, T, h, w]``) and ``video`` (the teacher decoder's output, uint8 ``[3, F, H, W]``, as a rendered clip would be
stored), with its prompt in the file's metadata. Clip ``i`` comes from prompt ``i`` with generator seed ``seed + i``,
so it does not depend on batching or on a resume, and a folder grows: asking for more clips samples only the new ones.
``clips_key.json`` records the pipeline's weights, the seed and the clip size; a folder made with other ones, or
whose clip ``i`` has another prompt, is refused instead of mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm


KEY_FILE = "clips_key.json"


def _clip_path(folder: Path, index: int) -> Path:
    return folder / f"{index:08d}.safetensors"


def _weights_sha256(*modules) -> str:
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def generated_clips_key(pipe, seed: int, num_frames: int, height: int, width: int) -> str:
    """What every clip of a folder depends on besides its prompt: the transformer's and VAE's weights, the seed and
    the clip size."""
    return json.dumps(dict(weights_sha256=_weights_sha256(pipe.transformer, pipe.vae), seed=seed,
                           num_frames=num_frames, height=height, width=width), sort_keys=True)


def _check_prompts(folder: Path, prompts: list[str]) -> list[int]:
    """Indices of the clips still to sample; a stored clip of another prompt is an error."""
    missing = []
    for index, prompt in enumerate(prompts):
        path = _clip_path(folder, index)
        if not path.is_file():
            missing.append(index)
            continue
        with safe_open(str(path), framework="pt") as stored:
            if stored.metadata().get("prompt") != prompt:
                raise ValueError(f"{path} was sampled from another prompt ({stored.metadata().get('prompt')!r}, not "
                                 f"{prompt!r}); give another folder")
    return missing


@torch.no_grad()
def sample_generated_clips(pipe, prompts: list[str], folder: str | os.PathLike, *, seed: int, num_frames: int,
                           height: int, width: int, batch_size: int = 8, disable_progress: bool = False) -> None:
    """Sample (with ``pipe``, at its default steps and guidance) every clip of ``prompts`` whose file is missing
    from ``folder``, and write its raw latents and the pipeline decoder's pixels. Files appear whole or not at all."""
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = generated_clips_key(pipe, seed, num_frames, height, width)
    key_file = folder / KEY_FILE
    if key_file.is_file() and key_file.read_text() != key:
        raise ValueError(f"{folder} holds clips of another pipeline, seed or size ({key_file}); give another folder "
                         "or remove it")
    key_file.write_text(key)
    missing = _check_prompts(folder, prompts)
    for start in tqdm(range(0, len(missing), batch_size), desc="Sampling teacher clips", disable=disable_progress):
        indices = missing[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed + i) for i in indices]
        latents = pipe([prompts[i] for i in indices], num_frames=num_frames, height=height, width=width,
                       generator=generators, output_type="latent").frames
        raw = pipe.vae.denormalize_latents(latents.to(pipe.vae.dtype))
        pixels = pipe.vae.decode(raw).sample.float().clamp(-1, 1)
        video = ((pixels + 1) * 127.5).round().to(torch.uint8).cpu()
        for k, index in enumerate(indices):
            partial = folder / f"{index:08d}.partial"
            save_file({"latents": raw[k].float().cpu().contiguous(), "video": video[k].contiguous()}, str(partial),
                      metadata={"prompt": prompts[index]})
            os.replace(partial, _clip_path(folder, index))


class GeneratedClips(torch.utils.data.Dataset):
    """The clips of a :func:`sample_generated_clips` folder: ``{"latents": raw float32, "video": uint8}`` (as
    stored; ``diffusers_neodragon.data.shapes.to_unit_range`` makes it float on the GPU after the copy)."""

    def __init__(self, folder: str | os.PathLike, num_clips: int):
        self.folder = Path(folder)
        absent = [i for i in range(num_clips) if not _clip_path(self.folder, i).is_file()]
        if absent:
            raise ValueError(f"{self.folder} lacks {len(absent)} of its {num_clips} clips (first: {absent[0]}); "
                             "sample them first")
        self.num_clips = num_clips

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> dict:
        stored = load_file(str(_clip_path(self.folder, index)))
        return {"latents": stored["latents"], "video": stored["video"]}

    def batch(self, indices) -> dict:
        items = [self[int(i)] for i in indices]
        return {key: torch.stack([item[key] for item in items]) for key in ("latents", "video")}


class GeneratedBatches:
    """Batch ``k`` of generated clips, drawn with replacement from ``(seed, k)`` alone (a resumed run draws what the
    uninterrupted one drew), read from disk in a background thread one batch ahead: the run asks for batches
    ``k, k + stride, ...`` (``stride``: the number of processes), so the next one is read while the GPU works."""

    def __init__(self, clips: GeneratedClips, batch_size: int, seed: int, stride: int = 1):
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        self.clips, self.batch_size, self.seed, self.stride = clips, batch_size, seed, stride
        self._reader = ThreadPoolExecutor(max_workers=1)
        self._ahead: tuple[int, object] | None = None

    def indices(self, step: int) -> torch.Tensor:
        from .randomness import step_generator  # noqa: PLC0415

        return torch.randint(len(self.clips), (self.batch_size,), generator=step_generator(self.seed, step))

    def __call__(self, step: int) -> dict:
        if self._ahead is not None and self._ahead[0] == step:
            batch = self._ahead[1].result()
        else:
            batch = self.clips.batch(self.indices(step))
        self._ahead = (step + self.stride, self._reader.submit(self.clips.batch, self.indices(step + self.stride)))
        return batch


__all__ = ["GeneratedBatches", "GeneratedClips", "generated_clips_key", "sample_generated_clips"]
