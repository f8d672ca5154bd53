"""Folders that ``transformers`` / ``diffusers`` load themselves (CLIP encoders, tokenizers, the SSD-1B first-frame
pipeline of the official release), read with safetensors only and failing on any missing/unexpected/mis-shaped
tensor instead of initialising it at random."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .safetensors_folders import check_safetensors_folder, format_keys


#: SSD-1B sub-folders of the official release → StableDiffusionXLPipeline component names.
SSD1B_FOLDERS = {
    "vae": "ssd_1b_vae",
    "unet": "ssd_1b_unet",
    "text_encoder": "ssd_1b_text_encoder",
    "text_encoder_2": "ssd_1b_text_encoder_2",
    "tokenizer": "ssd_1b_tokenizer",
    "tokenizer_2": "ssd_1b_tokenizer_2",
}
#: The release's first-frame scheduler (official first_frame_gen.py).
SSD1B_LCM_SCHEDULER_CONFIG = dict(set_alpha_to_one=False, original_inference_steps=4, steps_offset=1)


def _check_loading_info(what: str, info: Mapping[str, Any]) -> None:
    problems = {name: sorted(info.get(name) or []) for name in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems or info.get("error_msgs"):
        details = "; ".join(f"{k.replace('_', ' ')} ({len(v)}): {format_keys(v)}" for k, v in problems.items())
        raise ValueError(f"{what} does not match its config; {details or info.get('error_msgs')}.")


def load_checked_model(cls, folder: os.PathLike, dtype: torch.dtype | None = None):
    """A `diffusers` or `transformers` model folder, safetensors only, failing on any missing/unexpected/mis-shaped
    tensor."""
    check_safetensors_folder(folder)
    model, info = cls.from_pretrained(folder, dtype=dtype or torch.float32, use_safetensors=True,
                                      output_loading_info=True)
    _check_loading_info(f"{cls.__name__} checkpoint {folder}", info)
    return model.eval()


def load_tokenizer(folder: os.PathLike):
    """``AutoTokenizer`` of a folder that must exist (not a Hub id)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"Missing tokenizer folder {folder}.")
    return AutoTokenizer.from_pretrained(folder)


def load_clip_encoders(root: os.PathLike, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """CLIP-L and CLIP-G with projection and their tokenizers, from ``text_encoder{,_2}/`` and ``tokenizer{,_2}/``."""
    from transformers import CLIPTextModelWithProjection

    root = Path(root)
    return dict(
        text_encoder=load_checked_model(CLIPTextModelWithProjection, root / "text_encoder", dtype),
        tokenizer=load_tokenizer(root / "tokenizer"),
        text_encoder_2=load_checked_model(CLIPTextModelWithProjection, root / "text_encoder_2", dtype),
        tokenizer_2=load_tokenizer(root / "tokenizer_2"),
    )


def load_ssd1b_first_frame_pipeline(folder: os.PathLike, dtype: torch.dtype | None = None):
    """The release's first-frame generator: SSD-1B sub-folders → ``StableDiffusionXLPipeline`` with the release's
    ``LCMScheduler(set_alpha_to_one=False, original_inference_steps=4, steps_offset=1)`` (its call defaults, 4
    steps at 999/749/499/249 without CFG, live in ``NeodragonPipeline``)."""
    from diffusers import AutoencoderKL, LCMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    root = Path(folder)
    return StableDiffusionXLPipeline(
        vae=load_checked_model(AutoencoderKL, root / SSD1B_FOLDERS["vae"], dtype),
        unet=load_checked_model(UNet2DConditionModel, root / SSD1B_FOLDERS["unet"], dtype),
        text_encoder=load_checked_model(CLIPTextModel, root / SSD1B_FOLDERS["text_encoder"], dtype),
        text_encoder_2=load_checked_model(
            CLIPTextModelWithProjection, root / SSD1B_FOLDERS["text_encoder_2"], dtype
        ),
        tokenizer=load_tokenizer(root / SSD1B_FOLDERS["tokenizer"]),
        tokenizer_2=load_tokenizer(root / SSD1B_FOLDERS["tokenizer_2"]),
        scheduler=LCMScheduler(**SSD1B_LCM_SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
    )
