"""Whole releases: telling an official Neodragon or a Pyramid-Flow SD3 snapshot apart from other folders, and
assembling every component of one into the arguments of :class:`NeodragonPipeline` (with the release's own prompt
suffix, negative prompt and default size)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..pipelines.neodragon.mode_defaults import MODES
from ..schedulers.scheduling_pyramidal_dmd import PyramidalDMDScheduler
from .context_adapter_official import load_official_context_adapter
from .dt5_official import load_official_dt5
from .library_folders import (
    SSD1B_FOLDERS,
    load_checked_model,
    load_clip_encoders,
    load_ssd1b_first_frame_pipeline,
    load_tokenizer,
)
from .transformer_official import load_official_transformer
from .vae_official import load_official_vae, load_pyramid_flow_vae


NEODRAGON_HUB_ID = "Qualcomm-AI-Research/Neodragon"
PYRAMID_FLOW_HUB_ID = "rain1011/pyramid-flow-sd3"

#: Official folder of the transformer / context adapter for each mode.
OFFICIAL_TRANSFORMER_FOLDERS = {
    "hybrid": "diffusion_transformer_320p",
    "monolithic": "diffusion_transformer_320p_multistep_t2v",
}
OFFICIAL_ADAPTER_FOLDERS = {"hybrid": "context_adapter", "monolithic": "context_adapter_multistep_t2v"}
OFFICIAL_VAE_FOLDER = "causal_video_vae"
TEXT_FOLDERS = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2", "tokenizer_3", "text_encoder_3")
#: Pyramid-Flow SD3 variants: transformer folder and the resolution it was trained at (height, width).
PYRAMID_FLOW_VARIANTS = {
    "384p": ("diffusion_transformer_384p", 384, 640),
    "768p": ("diffusion_transformer_768p", 768, 1280),
}

# Facts about the official behaviour (neodragon/utils/generation_utils.py and first_frame_gen.py).
NEODRAGON_PROMPT_SUFFIX = ", cinematic, realistic textures, high detail, natural colours"
NEODRAGON_NEGATIVE_PROMPT = (
    "cartoon style, worst quality, low quality, blurry, absolute black, absolute white, low res, extra limbs, "
    "extra digits, misplaced objects, mutated anatomy, monochrome, horror"
)
NEODRAGON_SIZE = dict(default_height=320, default_width=512, default_num_frames=49)
# Pyramid-Flow: its generate() appends this suffix; its default negative prompt is the same text as Neodragon's.
PYRAMID_FLOW_PROMPT_SUFFIX = ", hyper quality, Ultra HD, 8K"
PYRAMID_FLOW_NUM_FRAMES = 121  # 16 latent frames = 5 s at 24 fps, Pyramid-Flow's default `temp=16`


def _has_config(path: Path) -> bool:
    return (path / "config.json").is_file()


def official_neodragon_modes(folder: os.PathLike) -> list[str]:
    """The modes whose transformer and context adapter folders are present in an official snapshot."""
    root = Path(folder)
    return [
        mode
        for mode in MODES
        if _has_config(root / OFFICIAL_TRANSFORMER_FOLDERS[mode])
        and _has_config(root / OFFICIAL_ADAPTER_FOLDERS[mode])
    ]


def is_official_neodragon_layout(folder: os.PathLike) -> bool:
    """Whether ``folder`` is an official Neodragon snapshot: no ``model_index.json``, the VAE and DT5 folders, and the
    transformer + context adapter of at least one mode. Only configs are looked at (weights may not be there yet)."""
    root = Path(folder)
    if not root.is_dir() or (root / "model_index.json").exists():
        return False
    return (
        _has_config(root / OFFICIAL_VAE_FOLDER)
        and _has_config(root / "text_encoder_3")
        and (root / "tokenizer_3").is_dir()
        and bool(official_neodragon_modes(root))
    )


def is_pyramid_flow_layout(folder: os.PathLike) -> bool:
    """Whether ``folder`` is a Pyramid-Flow SD3 snapshot: a ``diffusion_transformer_{384p,768p}/`` folder, the VAE and
    the T5 text encoder, and no context adapter."""
    root = Path(folder)
    if not root.is_dir() or (root / "context_adapter").exists():
        return False
    return (
        any(_has_config(root / name) for name, _, _ in PYRAMID_FLOW_VARIANTS.values())
        and _has_config(root / OFFICIAL_VAE_FOLDER)
        and _has_config(root / "text_encoder_3")
    )


def pyramid_flow_variants(folder: os.PathLike) -> list[str]:
    """The Pyramid-Flow variants whose transformer folder is present in a snapshot (``384p`` first)."""
    root = Path(folder)
    return [v for v, (name, _, _) in sorted(PYRAMID_FLOW_VARIANTS.items()) if _has_config(root / name)]


def official_neodragon_folders(mode: str) -> list[str]:
    """The sub-folders of the official release that a pipeline in ``mode`` needs."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    folders = [*TEXT_FOLDERS, OFFICIAL_VAE_FOLDER, OFFICIAL_TRANSFORMER_FOLDERS[mode], OFFICIAL_ADAPTER_FOLDERS[mode]]
    if mode == "hybrid":
        folders += list(SSD1B_FOLDERS.values())
    return folders


def _require_folders(root: Path, folders: Iterable[str], what: str) -> None:
    missing = [name for name in folders if not (root / name).is_dir()]
    if missing:
        raise ValueError(f"{root} lacks the folders {missing} that {what} needs.")


def load_official_neodragon(
    folder: os.PathLike, mode: str = "hybrid", dtype: torch.dtype | None = None
) -> dict[str, Any]:
    """Load an official Neodragon snapshot folder as the arguments of :class:`NeodragonPipeline`.

    ``mode="hybrid"``: the step-distilled ``diffusion_transformer_320p`` + ``context_adapter`` and the SSD-1B
    first-frame pipeline; ``mode="monolithic"``: the multi-step ``*_multistep_t2v`` pair and no first-frame
    pipeline. Both get the release's prompt suffix, default negative prompt and 320x512x49 size. ``dtype`` casts
    every model (default float32). ``NeodragonPipeline(**load_official_neodragon(path))`` builds the pipeline.
    """
    root = Path(folder)
    if not is_official_neodragon_layout(root):
        raise ValueError(
            f"{root} is not an official Neodragon snapshot (expected causal_video_vae/, text_encoder_3/, tokenizer_3/ "
            "and diffusion_transformer_320p[_multistep_t2v]/ + context_adapter[_multistep_t2v]/, no model_index.json)."
        )
    _require_folders(root, official_neodragon_folders(mode), f"mode={mode!r}")
    components: dict[str, Any] = dict(
        transformer=load_official_transformer(root / OFFICIAL_TRANSFORMER_FOLDERS[mode], dtype, source="neodragon"),
        context_adapter=load_official_context_adapter(root / OFFICIAL_ADAPTER_FOLDERS[mode], dtype),
        vae=load_official_vae(root / OFFICIAL_VAE_FOLDER, dtype),
        text_encoder_3=load_official_dt5(root / "text_encoder_3", dtype),
        tokenizer_3=load_tokenizer(root / "tokenizer_3"),
        **load_clip_encoders(root, dtype),
        scheduler=PyramidalDMDScheduler(),
        first_frame_pipeline=load_ssd1b_first_frame_pipeline(root, dtype) if mode == "hybrid" else None,
        super_resolution=None,
        mode=mode,
        prompt_suffix=NEODRAGON_PROMPT_SUFFIX,
        default_negative_prompt=NEODRAGON_NEGATIVE_PROMPT,
        **NEODRAGON_SIZE,
    )
    _check_widths(components)
    return components


def load_pyramid_flow(
    folder: os.PathLike, variant: str = "384p", dtype: torch.dtype | None = None
) -> dict[str, Any]:
    """Load a Pyramid-Flow SD3 snapshot as :class:`NeodragonPipeline` arguments in monolithic mode.

    The 24-block DiT keeps its ``context_embedder`` (fed by T5-XXL: ``text_encoder_3`` is a ``T5EncoderModel``,
    no context adapter); the VAE is the full causal VAE with Pyramid-Flow's latent constants; prompt suffix
    ", hyper quality, Ultra HD, 8K"; size = the variant's training resolution, 121 frames. This transformer is also
    the 24-block teacher that pruning and distillation start from.
    """
    from transformers import T5EncoderModel

    if variant not in PYRAMID_FLOW_VARIANTS:
        raise ValueError(f"variant must be one of {sorted(PYRAMID_FLOW_VARIANTS)}, got {variant!r}")
    root = Path(folder)
    dit_folder, height, width = PYRAMID_FLOW_VARIANTS[variant]
    _require_folders(root, [*TEXT_FOLDERS, OFFICIAL_VAE_FOLDER, dit_folder], f"Pyramid-Flow {variant}")
    components: dict[str, Any] = dict(
        transformer=load_official_transformer(root / dit_folder, dtype, source="pyramid_flow"),
        context_adapter=None,
        vae=load_pyramid_flow_vae(root / OFFICIAL_VAE_FOLDER, dtype),
        text_encoder_3=load_checked_model(T5EncoderModel, root / "text_encoder_3", dtype),
        tokenizer_3=load_tokenizer(root / "tokenizer_3"),
        **load_clip_encoders(root, dtype),
        scheduler=PyramidalDMDScheduler(),
        first_frame_pipeline=None,
        super_resolution=None,
        mode="monolithic",
        prompt_suffix=PYRAMID_FLOW_PROMPT_SUFFIX,
        default_negative_prompt=NEODRAGON_NEGATIVE_PROMPT,
        default_height=height,
        default_width=width,
        default_num_frames=PYRAMID_FLOW_NUM_FRAMES,
    )
    _check_widths(components)
    return components


def _check_widths(components: Mapping[str, Any]) -> None:
    """The text path's widths must chain: text_encoder_3 → (adapter | context_embedder) → transformer; pooled."""
    transformer = components["transformer"].config
    width = transformer.attention_head_dim * transformer.num_attention_heads
    encoder = components["text_encoder_3"].config
    t5_width = getattr(encoder, "projection_dim", None) or encoder.d_model
    adapter = components.get("context_adapter")
    problems = []
    if adapter is not None:
        if adapter.config.in_features != t5_width:
            problems.append(f"context adapter input {adapter.config.in_features} != text_encoder_3 output {t5_width}")
        if adapter.config.out_features != width:
            problems.append(f"context adapter output {adapter.config.out_features} != transformer width {width}")
    elif transformer.context_embedder_dim != t5_width:
        problems.append(
            f"transformer context_embedder_dim {transformer.context_embedder_dim} != text_encoder_3 {t5_width}"
        )
    pooled = sum(components[name].config.projection_dim for name in ("text_encoder", "text_encoder_2"))
    if pooled != transformer.pooled_projection_dim:
        problems.append(f"CLIP projections sum to {pooled} != transformer pooled_projection_dim "
                        f"{transformer.pooled_projection_dim}")
    if components["vae"].config.latent_channels != transformer.in_channels:
        problems.append(f"VAE latent channels {components['vae'].config.latent_channels} != transformer "
                        f"in_channels {transformer.in_channels}")
    if problems:
        raise ValueError(f"The components do not fit together: {'; '.join(problems)}.")
