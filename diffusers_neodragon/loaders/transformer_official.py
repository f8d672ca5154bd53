"""The official transformer layouts → :class:`NeodragonTransformer3DModel`: Neodragon's ``PyramidMMDiT`` and
Pyramid-Flow's ``PyramidDiffusionMMDiT`` (config entries mapped one by one, tensors checked and renamed)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import logging

from ..models.transformers.transformer_neodragon import NeodragonTransformer3DModel, sincos_2d_crop
from .safetensors_folders import load_safetensors_folder, read_json
from .state_dict_checks import build_and_load, check_config_keys, rename_keys


logger = logging.get_logger(__name__)

# Entries of the official `PyramidMMDiT` (Neodragon) and `PyramidDiffusionMMDiT` (Pyramid-Flow) configs.
_DIT_MAPPED = ("sample_size", "patch_size", "in_channels", "num_layers", "attention_head_dim", "num_attention_heads",
               "pooled_projection_dim", "pos_embed_max_size")
_DIT_REQUIRED = {  # value the reference behaviour needs (our model implements exactly this)
    "qk_norm": "rms_norm",
    "pos_embed_type": "sincos",
    "temp_pos_embed_type": "rope",
    "add_temp_pos_embed": True,
    "use_temporal_causal": True,
    "interp_condition_pos": True,
}
# Pyramid-Flow's loader (`build_pyramid_dit`) overrides these whatever the config says.
_PYRAMID_FLOW_LOADER_OVERRIDES = ("temp_pos_embed_type", "add_temp_pos_embed", "use_temporal_causal",
                                  "interp_condition_pos", "use_t5_mask", "use_flash_attn")
_DIT_IGNORED = ("max_num_frames", "joint_attention_dim", "caption_projection_dim", "use_gradient_checkpointing",
                "gradient_checkpointing_ratio", "use_t5_mask", "use_flash_attn")
_DIT_SOURCES = {"PyramidMMDiT": "neodragon", "PyramidDiffusionMMDiT": "pyramid_flow"}
# What each class uses when its config omits an entry (Pyramid-Flow's constructor defaults to RoPE positions).
_DIT_CLASS_DEFAULTS = {
    "neodragon": dict(_DIT_REQUIRED),
    "pyramid_flow": dict(qk_norm="rms_norm", pos_embed_type="rope"),
}


def _dit_source(config: Mapping[str, Any], source: str | None) -> str:
    if source is None:
        source = _DIT_SOURCES.get(config.get("_class_name"))
        if source is None:
            source = "pyramid_flow" if "use_flash_attn" in config else "neodragon"
    if source not in ("neodragon", "pyramid_flow"):
        raise ValueError(f"source must be 'neodragon' or 'pyramid_flow', got {source!r}")
    return source


def convert_official_transformer_config(config: Mapping[str, Any], source: str | None = None) -> dict[str, Any]:
    """Official transformer config → :class:`NeodragonTransformer3DModel` arguments.

    ``source`` is ``"neodragon"`` (``PyramidMMDiT``: no context embedder, the ContextAdapter feeds the text stream)
    or ``"pyramid_flow"`` (``PyramidDiffusionMMDiT``: a ``context_embedder`` Linear(joint_attention_dim → width)
    becomes our ``context_embedder_dim``); ``None`` reads it from ``_class_name``. Settings the reference behaviour
    depends on must have the values our model implements (Pyramid-Flow's loader forces them, so there they are
    not checked); training-only and unused entries are dropped; anything else raises.
    """
    source = _dit_source(config, source)
    check_config_keys(f"Transformer ({source})", config, (*_DIT_MAPPED, *_DIT_REQUIRED, *_DIT_IGNORED))
    defaults = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=18 if source == "neodragon" else 24,
                    attention_head_dim=64, num_attention_heads=24, pooled_projection_dim=2048, pos_embed_max_size=192)
    settings = {**defaults, **{k: config[k] for k in _DIT_MAPPED if k in config}}
    required = dict(_DIT_REQUIRED)
    if source == "pyramid_flow":
        for key in _PYRAMID_FLOW_LOADER_OVERRIDES:
            required.pop(key, None)
    class_defaults = _DIT_CLASS_DEFAULTS[source]
    wrong = [
        f"{k}={config.get(k, class_defaults.get(k))!r} (needs {v!r})"
        for k, v in required.items()
        if config.get(k, class_defaults.get(k, v)) != v
    ]
    if wrong:
        raise ValueError(f"Transformer config uses settings this model does not implement: {', '.join(wrong)}.")
    if not settings["pos_embed_max_size"]:
        raise ValueError("pos_embed_max_size must be set (the sincos table is cropped from a fixed grid).")
    width = settings["attention_head_dim"] * settings["num_attention_heads"]
    context_embedder_dim = None
    if source == "pyramid_flow":
        caption_dim = config.get("caption_projection_dim", 1152)
        if caption_dim != width:
            raise ValueError(
                f"caption_projection_dim={caption_dim} must equal the width heads x head_dim = {width}: the "
                "context_embedder's output is the text stream."
            )
        context_embedder_dim = int(config.get("joint_attention_dim", 4096))
    return dict(
        patch_size=int(settings["patch_size"]),
        in_channels=int(settings["in_channels"]),
        num_layers=int(settings["num_layers"]),
        attention_head_dim=int(settings["attention_head_dim"]),
        num_attention_heads=int(settings["num_attention_heads"]),
        pooled_projection_dim=int(settings["pooled_projection_dim"]),
        context_embedder_dim=context_embedder_dim,
        sample_size=int(settings["sample_size"]),
        pos_embed_max_size=int(settings["pos_embed_max_size"]),
        qk_norm_eps=1e-5,
        rope_theta=10000.0,
    )


_BLOCK_KEY = re.compile(r"^transformer_blocks\.(\d+)\.")
# The official code (and Pyramid-Flow) name the text-stream qk norms `attn.norm_add_q/k`, as we do; diffusers'
# SD3Transformer2DModel names them `attn.norm_added_q/k`. Checkpoints saved with diffusers' names are renamed.
_DIFFUSERS_SD3_RENAMES = ((re.compile(r"\.attn\.norm_added_([qk])\."), r".attn.norm_add_\1."),)



# A sincos table saved through fp16/bf16 (e.g. SD3-Medium's fp16 buffer, inherited by Pyramid-Flow) differs from the
# exact one by at most a few 1e-3; any other grid / base size / embedding differs by O(1). Our model regenerates the
# exact table, so the stored one only has to be recognised.
_POS_EMBED_REFUSE = 2e-2


def convert_official_transformer_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any], source: str = "neodragon"
) -> dict[str, torch.Tensor]:
    """Official DiT tensors → :class:`NeodragonTransformer3DModel` keys (``config`` = our model's arguments).

    Parameter names are already ours (the official ``attn.norm_add_q/k`` included; diffusers' SD3 spelling
    ``attn.norm_added_q/k`` is renamed to it). The persistent sincos buffer ``pos_embed.pos_embed`` is dropped after
    checking that it is the table our model regenerates (equal up to half-precision rounding, with a warning beyond
    1e-6 after rounding ours to the stored dtype): a different table would mean a different ``sample_size`` /
    ``pos_embed_max_size`` or embedding. Pyramid-Flow checkpoints may also hold a ``pos_embed.temp_pos_embed``
    sincos buffer that its loader never uses (it forces the temporal RoPE); it is dropped. The number of blocks and
    the context-pre-only final block are checked here with specific messages; the full layout is checked on load.
    """
    state = rename_keys(dict(state_dict), _DIFFUSERS_SD3_RENAMES, "transformer")
    width = config["attention_head_dim"] * config["num_attention_heads"]
    pos = state.pop("pos_embed.pos_embed", None)
    if pos is not None:
        grid = config["pos_embed_max_size"]
        base = config["sample_size"] // config["patch_size"]
        if tuple(pos.shape) != (1, grid * grid, width):
            raise ValueError(
                f"pos_embed.pos_embed has shape {tuple(pos.shape)}, expected (1, {grid * grid}, {width}) for "
                f"pos_embed_max_size={grid} and width {width}."
            )
        table = sincos_2d_crop(width, grid, base, 0, 0, grid, grid)
        diff = (pos[0].float() - table.to(pos.dtype).float()).abs().max().item()
        if not diff <= _POS_EMBED_REFUSE:
            raise ValueError(
                f"pos_embed.pos_embed differs from the 2-D sincos table (grid {grid}, base size {base}) by "
                f"{diff:.3g}: the checkpoint was made with another sample_size / pos_embed_max_size or positional "
                "embedding."
            )
        if diff > 1e-6:
            logger.warning(
                f"pos_embed.pos_embed differs from the exact 2-D sincos table by up to {diff:.3g} (a copy that went "
                "through a lower precision before it was saved); the converted model uses the exact table, so its "
                "outputs can differ from the original code's by about that much."
            )
    if source == "pyramid_flow":
        state.pop("pos_embed.temp_pos_embed", None)

    indices = sorted({int(m.group(1)) for m in map(_BLOCK_KEY.match, state) if m is not None})
    if indices != list(range(len(indices))):
        raise ValueError(f"The checkpoint's transformer blocks are not numbered 0..n-1: {indices}.")
    if len(indices) != config["num_layers"]:
        raise ValueError(
            f"The config says num_layers={config['num_layers']} but the checkpoint holds {len(indices)} transformer "
            "blocks."
        )
    last = len(indices) - 1
    last_keys = [k for k in state if k.startswith(f"transformer_blocks.{last}.")]
    norm = state.get(f"transformer_blocks.{last}.norm1_context.linear.weight")
    if any(".ff_context." in k or ".attn.to_add_out." in k for k in last_keys) or (
        norm is not None and norm.shape[0] != 2 * width
    ):
        raise ValueError(
            f"Block {last} (the last) must be context-pre-only (no attn.to_add_out, no ff_context, norm1_context "
            "producing scale and shift only), as in every SD3-style MMDiT; this checkpoint's last block is a full one."
        )
    has_embedder = any(k.startswith("context_embedder.") for k in state)
    if has_embedder and config.get("context_embedder_dim") is None:
        raise ValueError(
            "The checkpoint has a context_embedder (a Pyramid-Flow DiT fed by T5-XXL) but was converted as a "
            "Neodragon DiT; convert it with source='pyramid_flow'."
        )
    return state


def load_official_transformer(
    folder: os.PathLike, dtype: torch.dtype | None = None, source: str | None = None
) -> NeodragonTransformer3DModel:
    """Load an official Neodragon or Pyramid-Flow DiT folder (``config.json`` + safetensors)."""
    folder = Path(folder)
    config = read_json(folder / "config.json")
    source = _dit_source(config, source)
    kwargs = convert_official_transformer_config(config, source)
    state = convert_official_transformer_state_dict(load_safetensors_folder(folder), kwargs, source)
    return build_and_load(NeodragonTransformer3DModel, kwargs, state, f"Transformer checkpoint {folder}", dtype)
