"""Loading the published checkpoints into this package's classes.

Two releases are understood:

* the official Neodragon release (Hub repo ``Qualcomm-AI-Research/Neodragon``): one folder per component and no
  ``model_index.json`` — ``tokenizer{,_2,_3}/``, ``text_encoder{,_2,_3}/`` (CLIP-L, CLIP-G, DT5),
  ``context_adapter[_multistep_t2v]/``, ``diffusion_transformer_320p[_multistep_t2v]/``, ``causal_video_vae/`` and the
  SSD-1B first-frame generator in ``ssd_1b_*/``;
* Pyramid-Flow's SD3 release (``rain1011/pyramid-flow-sd3``): ``diffusion_transformer_{384p,768p}/`` (24 blocks with a
  ``context_embedder`` fed by T5-XXL), the full ``causal_video_vae/`` and the SD3 text encoders.

Every function here reads weights with ``safetensors`` only, checks each state dict against the exact layout the target
class expects (a ``ValueError`` names every missing, unexpected or mis-shaped tensor: nothing is loaded loosely), and
maps the configs field by field, refusing settings our classes do not implement. :func:`load_official_neodragon`
returns everything a :class:`NeodragonPipeline` needs; :class:`OfficialLayoutLoaderMixin` (a base of
``NeodragonPipeline``) makes ``from_pretrained`` accept both releases as published, converting them on the fly.
The scripts in ``conversion/`` write converted folders.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import logging
from huggingface_hub import snapshot_download
from transformers import T5Config

from .models.autoencoders.autoencoder_asymmetric import AsymmetricVAE
from .models.autoencoders.autoencoder_causal_video import CausalVideoVAE
from .models.context_adapter import (
    ContextAdapter,
    convert_official_context_adapter_config,
    convert_official_context_adapter_state_dict,
)
from .models.text_encoder_dt5 import DT5Config, DT5EncoderModel
from .models.transformers.transformer_neodragon import NeodragonTransformer3DModel, sincos_2d_crop
from .pipelines.neodragon.mode_defaults import MODES
from .schedulers.scheduling_pyramidal_dmd import PyramidalDMDScheduler


logger = logging.get_logger(__name__)

# ----------------------------------------------------------------------------------------------------- constants

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
#: SSD-1B sub-folders of the official release → StableDiffusionXLPipeline component names.
SSD1B_FOLDERS = {
    "vae": "ssd_1b_vae",
    "unet": "ssd_1b_unet",
    "text_encoder": "ssd_1b_text_encoder",
    "text_encoder_2": "ssd_1b_text_encoder_2",
    "tokenizer": "ssd_1b_tokenizer",
    "tokenizer_2": "ssd_1b_tokenizer_2",
}
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
SSD1B_LCM_SCHEDULER_CONFIG = dict(set_alpha_to_one=False, original_inference_steps=4, steps_offset=1)
# Pyramid-Flow: its generate() appends this suffix; its default negative prompt is the same text as Neodragon's.
PYRAMID_FLOW_PROMPT_SUFFIX = ", hyper quality, Ultra HD, 8K"
PYRAMID_FLOW_NUM_FRAMES = 121  # 16 latent frames = 5 s at 24 fps, Pyramid-Flow's default `temp=16`
# Neodragon's latent normalisation (z - shift) * scale (generation_utils: VAE_SHIFT/SCALE_FACTOR for the first latent
# frame, VAE_VIDEO_SHIFT/SCALE_FACTOR for the others); the video scale differs from Pyramid-Flow's 1/3.0986.
NEODRAGON_LATENT_CONSTANTS = dict(
    image_latent_shift=0.1490, image_latent_scale=0.5430, video_latent_shift=-0.2343, video_latent_scale=0.3031
)
# Pyramid-Flow's latent normalisation (z - shift) * scale: image (first latent frame) and video constants.
PYRAMID_FLOW_LATENT_CONSTANTS = dict(
    image_latent_shift=0.1490, image_latent_scale=1 / 1.8415, video_latent_shift=-0.2343, video_latent_scale=1 / 3.0986
)

_WEIGHT_STEMS = ("diffusion_pytorch_model", "model")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_MAX_LISTED = 20


# ------------------------------------------------------------------------------------------------------- reading


def _fmt_keys(keys: Iterable[Any]) -> str:
    keys = list(keys)
    shown = ", ".join(str(k) for k in keys[:_MAX_LISTED])
    return f"[{shown}{f', ... and {len(keys) - _MAX_LISTED} more' if len(keys) > _MAX_LISTED else ''}]"


def read_json(path: os.PathLike) -> dict[str, Any]:
    """Read a JSON file, with an error that names the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Missing {path.name} in {path.parent}: not a checkpoint folder of the expected layout.")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); the file may be truncated or corrupted.") from error


def _open_safetensors(path: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as error:  # SafetensorError, OSError: header unreadable or data not covered by the file
        raise ValueError(
            f"Cannot read {path} as safetensors ({error}). The file is truncated or corrupted (an interrupted "
            "download?): delete it and download it again."
        ) from error


def _weight_files(folder: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files holding a folder's weights (and the shard index's weight map, if sharded)."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder.")
    for stem in _WEIGHT_STEMS:
        index = folder / f"{stem}.safetensors.index.json"
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index} has no `weight_map`; the shard index is corrupted.")
            files = [folder / name for name in sorted(set(weight_map.values()))]
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise ValueError(f"{folder} is missing the shards {absent} listed in {index.name}.")
            return files, weight_map
        single = folder / f"{stem}.safetensors"
        if single.is_file():
            return [single], None
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return found, None
    if found:
        raise ValueError(
            f"{folder} holds several safetensors files {[f.name for f in found]} and no shard index; cannot tell "
            "which one holds the weights."
        )
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    hint = (
        f" It holds {pickles}: pickle checkpoints are never loaded here (they can run arbitrary code); convert them "
        "to safetensors first."
        if pickles
        else ""
    )
    raise ValueError(f"No safetensors weights in {folder}.{hint}")


def check_safetensors_folder(folder: os.PathLike) -> list[Path]:
    """Open (header only) every safetensors file of a folder, so that a truncated download fails with a clear error
    before a library loader sees it. Returns the weight files."""
    files, _ = _weight_files(Path(folder))
    for path in files:
        with _open_safetensors(path) as handle:
            handle.keys()
    return files


def load_safetensors_folder(folder: os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder (single file or shards), read with ``safetensors`` only."""
    folder = Path(folder)
    files, weight_map = _weight_files(folder)
    state: dict[str, torch.Tensor] = {}
    for path in files:
        with _open_safetensors(path) as handle:
            for key in handle.keys():
                if key in state:
                    raise ValueError(f"Tensor {key!r} appears in more than one shard of {folder}.")
                try:
                    state[key] = handle.get_tensor(key)
                except Exception as error:
                    raise ValueError(f"Cannot read tensor {key!r} from {path}: {error}; the file is corrupted.") \
                        from error
    if weight_map is not None and set(weight_map) != set(state):
        raise ValueError(
            f"The shard index of {folder} does not match its shards: listed but absent "
            f"{_fmt_keys(sorted(set(weight_map) - set(state)))}, present but unlisted "
            f"{_fmt_keys(sorted(set(state) - set(weight_map)))}."
        )
    return state


def checkpoint_dtype(folder: os.PathLike) -> torch.dtype:
    """The dtype of the first floating-point tensor of a checkpoint folder (what it was saved in)."""
    files, _ = _weight_files(Path(folder))
    with _open_safetensors(files[0]) as handle:
        for key in handle.keys():
            tensor = handle.get_slice(key)
            dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}.get(
                tensor.get_dtype()
            )
            if dtype is not None:
                return dtype
    return torch.float32


# ------------------------------------------------------------------------------------------------------ checking


def _expected_layout(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def check_state_dict(what: str, state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]):
    """Raise a ``ValueError`` naming every missing, unexpected and mis-shaped tensor of ``state_dict``."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs expected {tuple(expected[key])}"
        for key in sorted(expected)
        if key in state_dict and tuple(state_dict[key].shape) != tuple(expected[key])
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_fmt_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_fmt_keys(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {_fmt_keys(mismatched)}")
    if problems:
        raise ValueError(f"{what} does not match the expected layout; " + "; ".join(problems) + ".")


def _config_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    """Drop bookkeeping entries (``_class_name``, ``_diffusers_version``, ``_use_default_values``, ...)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _check_config_keys(what: str, config: Mapping[str, Any], known: Iterable[str]) -> None:
    unknown = sorted(set(_config_keys(config)) - set(known))
    if unknown:
        raise ValueError(
            f"{what} config has entries this converter does not know: {unknown}. The checkpoint was made with a "
            "different version of the original code; refusing to guess what they change."
        )


def _build_and_load(cls, kwargs: dict[str, Any], state_dict: dict[str, torch.Tensor], what: str, dtype):
    """Instantiate ``cls(**kwargs)`` without allocating (meta device), check and assign the tensors, cast."""
    with torch.device("meta"):
        model = cls(**kwargs)
    check_state_dict(what, state_dict, _expected_layout(model))
    model.load_state_dict(state_dict, strict=True, assign=True)
    leftovers = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if leftovers:  # a buffer created in __init__ and not saved would be lost; none of our classes has one
        raise RuntimeError(f"{what}: tensors {leftovers} were not restored from the checkpoint.")
    # nn.Module.to: ModelMixin.to would warn about fp32-kept modules, of which these classes have none.
    return torch.nn.Module.to(model, dtype=dtype or torch.float32).eval()


# --------------------------------------------------------------------------------------------------- transformer

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
    _check_config_keys(f"Transformer ({source})", config, (*_DIT_MAPPED, *_DIT_REQUIRED, *_DIT_IGNORED))
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
# Original TAEHV (madebyollin/taehv) keeps the decoder layers directly in `decoder.N.*`; the official Neodragon VAE
# (and ours) nests them as `decoder.blocks.N.*`.
_TAEHV_RENAMES = ((re.compile(r"^decoder\.(\d+)\."), r"decoder.blocks.\1."),)


def _rename(state: dict[str, torch.Tensor], rules, what: str) -> dict[str, torch.Tensor]:
    """Apply regex renames; a renamed key that collides with one already present is an error (both spellings)."""
    renamed: dict[str, torch.Tensor] = {}
    collisions = []
    for key, value in state.items():
        new = key
        for pattern, replacement in rules:
            new = pattern.sub(replacement, new)
        if new in renamed or (new != key and new in state):
            collisions.append(f"{key} -> {new}")
        renamed[new] = value
    if collisions:
        raise ValueError(f"The {what} checkpoint holds the same tensor under two names: {_fmt_keys(collisions)}.")
    return renamed
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
    state = _rename(dict(state_dict), _DIFFUSERS_SD3_RENAMES, "transformer")
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
    return _build_and_load(NeodragonTransformer3DModel, kwargs, state, f"Transformer checkpoint {folder}", dtype)


# ----------------------------------------------------------------------------------------------------------- VAE

_BLOCK_TYPES = {
    "encoder_down_block_types": "DownEncoderBlockCausal3D",
    "decoder_up_block_types": "UpDecoderBlockCausal3D",
}


def _same_value(what: str, values, name: str):
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if len(set(values)) != 1:
        raise ValueError(f"{what}: {name}={values} differs between blocks; our model takes a single value.")
    return values[0]


def _check_block_types(what: str, config: Mapping[str, Any]) -> None:
    for key, block in _BLOCK_TYPES.items():
        if key in config and any(t != block for t in config[key]):
            raise ValueError(f"{what}: {key}={config[key]} is not supported (only {block!r}).")


def _flags(values) -> tuple[bool, ...]:
    return tuple(bool(v) for v in values)


_OFFICIAL_VAE_KEYS = (
    "encoder_in_channels", "encoder_out_channels", "encoder_layers_per_block", "encoder_down_block_types",
    "encoder_block_out_channels", "encoder_spatial_down_sample", "encoder_temporal_down_sample",
    "encoder_block_dropout", "encoder_act_fn", "encoder_norm_num_groups", "decoder_num_features",
    "decoder_time_upscale", "decoder_space_upscale", "sample_size", "temporal_downsample_scale",
    "spatial_downsample_scale",
)


def _encoder_kwargs(c: Mapping[str, Any]) -> dict[str, Any]:
    """Our config entries for the causal 3-D encoder, shared by both VAE layouts (official and Pyramid-Flow)."""
    return dict(
        in_channels=int(c["encoder_in_channels"]),
        latent_channels=int(c["encoder_out_channels"]),
        encoder_block_out_channels=tuple(int(x) for x in c["encoder_block_out_channels"]),
        encoder_layers_per_block=tuple(int(x) for x in c["encoder_layers_per_block"]),
        encoder_spatial_downsample=_flags(c["encoder_spatial_down_sample"]),
        encoder_temporal_downsample=_flags(c["encoder_temporal_down_sample"]),
        norm_num_groups=int(c["encoder_norm_num_groups"]),
        act_fn=str(c["encoder_act_fn"]),
    )


def convert_official_vae_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Official ``AsymmetricCausalVideoVAE`` config → :class:`AsymmetricVAE` arguments, with Neodragon's latent
    constants (which live in the official generation code, not in the VAE config).

    ``sample_size`` only sizes the reference's optional tiling and is dropped; the block types must be the causal
    3-D ones and the per-block dropout a single value.
    """
    what = "Neodragon VAE"
    _check_config_keys(what, config, _OFFICIAL_VAE_KEYS)
    _check_block_types(what, config)
    c = {**dict(encoder_in_channels=3, encoder_out_channels=16, encoder_layers_per_block=(2, 2, 2, 2),
                encoder_block_out_channels=(128, 256, 512, 512), encoder_spatial_down_sample=(True, True, True, False),
                encoder_temporal_down_sample=(True, True, True, False), encoder_block_dropout=(0.0,) * 4,
                encoder_act_fn="silu", encoder_norm_num_groups=32, decoder_num_features=(256, 128, 64, 64),
                decoder_time_upscale=(True, True, True), decoder_space_upscale=(True, True, True),
                temporal_downsample_scale=8, spatial_downsample_scale=8), **_config_keys(config)}
    return dict(
        **_encoder_kwargs(c),
        dropout=float(_same_value(what, c["encoder_block_dropout"], "encoder_block_dropout")),
        decoder_num_features=tuple(int(x) for x in c["decoder_num_features"]),
        decoder_time_upscale=_flags(c["decoder_time_upscale"]),
        decoder_space_upscale=_flags(c["decoder_space_upscale"]),
        temporal_downsample_scale=int(c["temporal_downsample_scale"]),
        spatial_downsample_scale=int(c["spatial_downsample_scale"]),
        **NEODRAGON_LATENT_CONSTANTS,
    )


_PYRAMID_FLOW_VAE_KEYS = (
    "encoder_in_channels", "encoder_out_channels", "encoder_layers_per_block", "encoder_down_block_types",
    "encoder_block_out_channels", "encoder_spatial_down_sample", "encoder_temporal_down_sample",
    "encoder_block_dropout", "encoder_act_fn", "encoder_norm_num_groups", "encoder_double_z", "encoder_type",
    "decoder_in_channels", "decoder_out_channels", "decoder_layers_per_block", "decoder_up_block_types",
    "decoder_block_out_channels", "decoder_spatial_up_sample", "decoder_temporal_up_sample", "decoder_block_dropout",
    "decoder_act_fn", "decoder_norm_num_groups", "decoder_type", "sample_size", "scaling_factor",
    "add_post_quant_conv", "interpolate", "downsample_scale",
)


def convert_pyramid_flow_vae_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Pyramid-Flow ``CausalVideoVAE`` config → :class:`CausalVideoVAE` arguments, with Pyramid-Flow's own latent
    normalisation (image (z − 0.1490)/1.8415, video (z + 0.2343)/3.0986).

    ``interpolate`` is ignored because Pyramid-Flow always loads its VAE with ``interpolate=False`` (a checkpoint
    trained otherwise fails the shape check); ``scaling_factor`` and ``sample_size`` are unused by its pipeline.
    """
    what = "Pyramid-Flow VAE"
    _check_config_keys(what, config, _PYRAMID_FLOW_VAE_KEYS)
    _check_block_types(what, config)
    c = {**dict(encoder_in_channels=3, encoder_out_channels=4, encoder_layers_per_block=(2, 2, 2, 2),
                encoder_block_out_channels=(128, 256, 512, 512), encoder_spatial_down_sample=(True, True, True, False),
                encoder_temporal_down_sample=(True, True, True, False), encoder_block_dropout=(0.0,) * 4,
                encoder_act_fn="silu", encoder_norm_num_groups=32, encoder_double_z=True,
                encoder_type="causal_vae_conv", decoder_in_channels=4, decoder_out_channels=3,
                decoder_layers_per_block=(3, 3, 3, 3), decoder_block_out_channels=(128, 256, 512, 512),
                decoder_spatial_up_sample=(True, True, True, False),
                decoder_temporal_up_sample=(True, True, True, False),
                decoder_block_dropout=(0.0,) * 4, decoder_act_fn="silu", decoder_norm_num_groups=32,
                decoder_type="causal_vae_conv", add_post_quant_conv=True), **_config_keys(config)}
    problems = []
    if not c["encoder_double_z"]:
        problems.append("encoder_double_z=False (the encoder must output mean and log-variance)")
    if c["encoder_type"] != "causal_vae_conv" or c["decoder_type"] != "causal_vae_conv":
        problems.append(
            f"encoder_type/decoder_type={c['encoder_type']!r}/{c['decoder_type']!r} (only 'causal_vae_conv')"
        )
    if not c["add_post_quant_conv"]:
        problems.append("add_post_quant_conv=False")
    if c["decoder_in_channels"] != c["encoder_out_channels"]:
        problems.append(
            f"decoder_in_channels={c['decoder_in_channels']} != encoder_out_channels={c['encoder_out_channels']}"
        )
    if c["decoder_out_channels"] != c["encoder_in_channels"]:
        problems.append(
            f"decoder_out_channels={c['decoder_out_channels']} != encoder_in_channels={c['encoder_in_channels']}"
        )
    for name in ("act_fn", "norm_num_groups"):
        if c[f"encoder_{name}"] != c[f"decoder_{name}"]:
            problems.append(f"encoder_{name} != decoder_{name} ({c[f'encoder_{name}']!r} vs {c[f'decoder_{name}']!r})")
    if c["decoder_act_fn"] != "silu":  # Pyramid-Flow hard-codes SiLU before the decoder's conv_out
        problems.append(f"decoder_act_fn={c['decoder_act_fn']!r} (only 'silu')")
    dropout = {float(x) for x in [*c["encoder_block_dropout"], *c["decoder_block_dropout"]]}
    if len(dropout) != 1:
        problems.append(f"block dropouts {sorted(dropout)} differ (our model takes a single value)")
    if problems:
        raise ValueError(f"{what} config uses settings this model does not implement: {'; '.join(problems)}.")
    t_scale = 2 ** sum(bool(x) for x in c["encoder_temporal_down_sample"])
    s_scale = 2 ** sum(bool(x) for x in c["encoder_spatial_down_sample"])
    return dict(
        **_encoder_kwargs(c),
        decoder_block_out_channels=tuple(int(x) for x in c["decoder_block_out_channels"]),
        decoder_layers_per_block=tuple(int(x) for x in c["decoder_layers_per_block"]),
        decoder_spatial_upsample=_flags(c["decoder_spatial_up_sample"]),
        decoder_temporal_upsample=_flags(c["decoder_temporal_up_sample"]),
        dropout=dropout.pop(),
        temporal_downsample_scale=t_scale,
        spatial_downsample_scale=s_scale,
        **PYRAMID_FLOW_LATENT_CONSTANTS,
    )


def convert_official_vae_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``AsymmetricCausalVideoVAE`` tensors → :class:`AsymmetricVAE` keys: the official names are ours
    (``decoder.blocks.N.*``); a decoder saved with original TAEHV's ``decoder.N.*`` prefixes is renamed."""
    return _rename(dict(state_dict), _TAEHV_RENAMES, "VAE")


def load_official_vae(folder: os.PathLike, dtype: torch.dtype | None = None) -> AsymmetricVAE:
    """Load Neodragon's ``causal_video_vae/`` (causal encoder + tiny decoder)."""
    folder = Path(folder)
    kwargs = convert_official_vae_config(read_json(folder / "config.json"))
    state = convert_official_vae_state_dict(load_safetensors_folder(folder))
    return _build_and_load(AsymmetricVAE, kwargs, state, f"VAE checkpoint {folder}", dtype)


def load_pyramid_flow_vae(folder: os.PathLike, dtype: torch.dtype | None = None) -> CausalVideoVAE:
    """Load Pyramid-Flow's full ``causal_video_vae/`` (encoder + original decoder); tensor names are already ours."""
    folder = Path(folder)
    kwargs = convert_pyramid_flow_vae_config(read_json(folder / "config.json"))
    return _build_and_load(CausalVideoVAE, kwargs, load_safetensors_folder(folder), f"VAE checkpoint {folder}", dtype)


# ---------------------------------------------------------------------------------------------- context adapter

_ADAPTER_KEYS = ("input_dims", "output_dims", "layer_depths", "skips", "use_biases", "pre_activation",
                 "activation_fn", "out_activation_fn")


def load_official_context_adapter(folder: os.PathLike, dtype: torch.dtype | None = None) -> ContextAdapter:
    """Load an official ``context_adapter*/`` folder (``SkipMLP`` config and ``network_layers.*`` tensors)."""
    folder = Path(folder)
    config = read_json(folder / "config.json")
    _check_config_keys("ContextAdapter", config, _ADAPTER_KEYS)
    kwargs = convert_official_context_adapter_config(config)
    skips = config.get("skips")
    if skips is not None and len(skips) != len(kwargs["hidden_features"]):
        raise ValueError(
            f"ContextAdapter config: {len(skips)} skips for {len(kwargs['hidden_features'])} layer depths."
        )
    state = convert_official_context_adapter_state_dict(load_safetensors_folder(folder))
    return _build_and_load(ContextAdapter, kwargs, state, f"ContextAdapter checkpoint {folder}", dtype)


# -------------------------------------------------------------------------------------------------------- DT5

# Keys of the official `T5ProjectionConfig` that are not T5 settings.
_DT5_OWN_KEYS = ("out_dim", "project_in_dim", "project_out_dim")
# T5 settings whose DT5Config default differs from T5Config's: a config that omits them meant T5Config's.
_DT5_T5_DEFAULTED = ("d_model", "d_ff", "num_layers", "num_heads", "feed_forward_proj")


def convert_official_dt5_config(config: Mapping[str, Any]) -> DT5Config:
    """Official ``T5ProjectionConfig`` (model_type ``t5``) → :class:`DT5Config` (model_type ``dt5_encoder``).

    The reference reads the head width from ``out_dim`` (default 4096) and its input width from ``project_in_dim``
    (default 768, which must equal ``d_model``); ``project_out_dim`` is written by it but never read. The head's
    dropout is a fixed 0.1 there.
    """
    model_type = config.get("model_type", "t5")
    if model_type not in ("t5", DT5Config.model_type):
        raise ValueError(f"text_encoder_3 config has model_type={model_type!r}; expected 't5' (DT5 with projection).")
    t5_defaults = T5Config()
    kwargs = {k: getattr(t5_defaults, k) for k in _DT5_T5_DEFAULTED}
    kwargs.update({k: v for k, v in config.items()
                   if k not in (*_DT5_OWN_KEYS, "model_type", "architectures", "transformers_version", "auto_map")
                   and not k.startswith("_")})
    if "projection_dim" in config:  # already in our format
        projection_dim, project_in = int(config["projection_dim"]), kwargs["d_model"]
    else:
        projection_dim, project_in = int(config.get("out_dim", 4096)), int(config.get("project_in_dim", 768))
    if project_in != kwargs["d_model"]:
        raise ValueError(f"text_encoder_3: project_in_dim={project_in} must equal d_model={kwargs['d_model']}.")
    kwargs["projection_dim"] = projection_dim
    kwargs.setdefault("projection_dropout", 0.1)
    kwargs["architectures"] = ["DT5EncoderModel"]
    return DT5Config(**kwargs)


def convert_official_dt5_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: DT5Config
) -> dict[str, torch.Tensor]:
    """Check an official ``T5EncoderWithProjection`` state dict (names are already ours). The tied token embedding
    may be stored as ``encoder.shared.weight``, ``encoder.encoder.embed_tokens.weight`` or both (then equal);
    leftover ``encoder.decoder.*`` tensors (never used by the reference, which has no decoder) are dropped."""
    state = dict(state_dict)
    leftovers = [k for k in state if k.startswith("encoder.decoder.")]
    if leftovers:
        logger.warning(f"Dropping {len(leftovers)} unused T5 decoder tensors from text_encoder_3.")
        for key in leftovers:
            del state[key]
    shared, embed = "encoder.shared.weight", "encoder.encoder.embed_tokens.weight"
    if shared in state and embed in state:
        if state[shared].shape != state[embed].shape or not torch.equal(state[shared], state[embed]):
            raise ValueError(
                f"text_encoder_3: {shared} and {embed} are tied in the model but differ in the checkpoint."
            )
    elif embed in state:
        state[shared] = state[embed]
    elif shared in state:
        state[embed] = state[shared]
    with torch.device("meta"):
        expected = _expected_layout(DT5EncoderModel(config))
    check_state_dict("text_encoder_3 (DT5) checkpoint", state, expected)
    state.pop(embed)
    return state


def load_official_dt5(folder: os.PathLike, dtype: torch.dtype | None = None) -> DT5EncoderModel:
    """Load the official ``text_encoder_3/`` (DT5: T5 encoder + projection head)."""
    folder = Path(folder)
    config = convert_official_dt5_config(read_json(folder / "config.json"))
    state = convert_official_dt5_state_dict(load_safetensors_folder(folder), config)
    model = DT5EncoderModel.from_pretrained(None, config=config, state_dict=state, dtype=dtype or torch.float32)
    return model.eval()


# --------------------------------------------------------------------------------- library folders (CLIP, SSD-1B)


def _check_loading_info(what: str, info: Mapping[str, Any]) -> None:
    problems = {name: sorted(info.get(name) or []) for name in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems or info.get("error_msgs"):
        details = "; ".join(f"{k.replace('_', ' ')} ({len(v)}): {_fmt_keys(v)}" for k, v in problems.items())
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
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"Missing tokenizer folder {folder}.")
    return AutoTokenizer.from_pretrained(folder)


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


def _load_clip_encoders(root: Path, dtype) -> dict[str, Any]:
    from transformers import CLIPTextModelWithProjection

    return dict(
        text_encoder=load_checked_model(CLIPTextModelWithProjection, root / "text_encoder", dtype),
        tokenizer=load_tokenizer(root / "tokenizer"),
        text_encoder_2=load_checked_model(CLIPTextModelWithProjection, root / "text_encoder_2", dtype),
        tokenizer_2=load_tokenizer(root / "tokenizer_2"),
    )


# ------------------------------------------------------------------------------------------ whole releases


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
        **_load_clip_encoders(root, dtype),
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
        **_load_clip_encoders(root, dtype),
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


# ----------------------------------------------------------------------------------------- Hub / from_pretrained

_DOWNLOAD_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "force_download", "proxies")


def resolve_snapshot(
    repo_or_path: os.PathLike, folders: Iterable[str] | None = None, **download_kwargs
) -> Path:
    """A local folder as is; a Hub repo id through ``huggingface_hub.snapshot_download`` (only ``folders``, plus
    every JSON file, when given)."""
    path = Path(os.fspath(repo_or_path)).expanduser()
    if path.is_dir():
        return path
    allow = None if folders is None else ["*.json", *[f"{name}/*" for name in folders]]
    kwargs = {k: v for k, v in download_kwargs.items() if k in _DOWNLOAD_KWARGS and v is not None}
    return Path(snapshot_download(os.fspath(repo_or_path), allow_patterns=allow, **kwargs))


class OfficialLayoutLoaderMixin:
    """Lets ``from_pretrained`` load the published releases as they are.

    A base of :class:`NeodragonPipeline` (before ``DiffusionPipeline``). A diffusers-format folder or repo (with
    ``model_index.json``) loads exactly as before. An official Neodragon snapshot (see
    :func:`is_official_neodragon_layout`) is converted on the fly by :func:`load_official_neodragon` (``mode=``
    picks hybrid or monolithic; default hybrid when present), a Pyramid-Flow SD3 snapshot (see
    :func:`is_pyramid_flow_layout`) by :func:`load_pyramid_flow` (``pyramid_flow_variant="384p" | "768p"``; default
    the one present, 384p first); one warning line says so. For a Hub id only the JSON files are fetched first to
    tell the layout, then only the folders needed.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, mode: str | None = None, **kwargs):
        path = Path(os.fspath(pretrained_model_name_or_path)).expanduser()
        download = {k: kwargs.get(k) for k in _DOWNLOAD_KWARGS if k in kwargs}
        probe = path if path.is_dir() else resolve_snapshot(pretrained_model_name_or_path, folders=(), **download)
        variant = kwargs.pop("pyramid_flow_variant", None)
        if is_official_neodragon_layout(probe):
            available = official_neodragon_modes(probe)
            mode = mode or ("hybrid" if "hybrid" in available else "monolithic")
            if mode not in MODES:
                raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
            layout, folders = "official Neodragon", official_neodragon_folders(mode)
        elif is_pyramid_flow_layout(probe):
            if mode not in (None, "monolithic"):
                raise ValueError(f"Pyramid-Flow generates in monolithic mode only, got mode={mode!r}.")
            present = [v for v, (name, _, _) in sorted(PYRAMID_FLOW_VARIANTS.items()) if _has_config(probe / name)]
            variant = variant or present[0]
            if variant not in PYRAMID_FLOW_VARIANTS:
                raise ValueError(
                    f"pyramid_flow_variant must be one of {sorted(PYRAMID_FLOW_VARIANTS)}, got {variant!r}"
                )
            mode, layout = "monolithic", f"Pyramid-Flow SD3 ({variant})"
            folders = [*TEXT_FOLDERS, OFFICIAL_VAE_FOLDER, PYRAMID_FLOW_VARIANTS[variant][0]]
        else:
            if variant is not None:
                raise ValueError("pyramid_flow_variant is only for a Pyramid-Flow SD3 snapshot.")
            if mode is not None:
                kwargs["mode"] = mode
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

        root = probe if path.is_dir() else resolve_snapshot(pretrained_model_name_or_path, folders=folders, **download)
        torch_dtype, dtype = kwargs.pop("torch_dtype", None), kwargs.pop("dtype", None)
        dtype = torch_dtype or dtype
        for key in _DOWNLOAD_KWARGS:
            kwargs.pop(key, None)
        for harmless in ("low_cpu_mem_usage", "use_safetensors"):
            kwargs.pop(harmless, None)
        # Component overrides (e.g. super_resolution=QuickSRNet(...)) are taken as given; anything else is refused
        # before the (long) conversion starts.
        allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unsupported = sorted(k for k in kwargs if k not in allowed)
        if unsupported:
            raise ValueError(
                f"Arguments {unsupported} are not supported when loading the {layout} layout (supported: mode, "
                "torch_dtype, pyramid_flow_variant, download options and the pipeline's own arguments)."
            )
        if layout == "official Neodragon":
            components = load_official_neodragon(root, mode=mode, dtype=dtype)
        else:
            components = load_pyramid_flow(root, variant=variant, dtype=dtype)
        components.update(kwargs)
        logger.warning(
            f"{pretrained_model_name_or_path} is in the {layout} layout: converted on the fly (mode={mode}); "
            "save_pretrained() keeps a diffusers copy that loads without conversion."
        )
        return cls(**components)


__all__ = [
    "OfficialLayoutLoaderMixin",
    "check_safetensors_folder",
    "check_state_dict",
    "convert_official_dt5_config",
    "convert_official_dt5_state_dict",
    "convert_official_transformer_config",
    "convert_official_transformer_state_dict",
    "convert_official_vae_config",
    "convert_official_vae_state_dict",
    "convert_pyramid_flow_vae_config",
    "is_official_neodragon_layout",
    "is_pyramid_flow_layout",
    "load_official_context_adapter",
    "load_official_dt5",
    "load_official_neodragon",
    "load_official_transformer",
    "load_official_vae",
    "load_pyramid_flow",
    "load_pyramid_flow_vae",
    "load_safetensors_folder",
    "load_ssd1b_first_frame_pipeline",
    "write_conversion_model_card",
]


# ------------------------------------------------------------------------------------------------- model cards


def component_table(pipe, sources: Mapping[str, str]) -> str:
    """Markdown rows ``| component | class | parameters | source folder |`` for a pipeline's components."""
    rows = []
    for name, component in pipe.components.items():
        if component is None:
            continue
        if isinstance(component, torch.nn.Module):
            count = f"{sum(p.numel() for p in component.parameters()):,}"
        elif hasattr(component, "components"):  # a nested pipeline
            modules = [c for c in component.components.values() if isinstance(c, torch.nn.Module)]
            count = f"{sum(p.numel() for m in modules for p in m.parameters()):,}"
        else:
            count = "-"
        rows.append(f"| `{name}` | `{type(component).__name__}` | {count} | {sources.get(name, '-')} |")
    return "\n".join(rows)


def write_conversion_model_card(output_dir: os.PathLike, values: Mapping[str, Any],
                                template: os.PathLike | None = None) -> Path:
    """Fill the ``neodragon_converted.md`` template (or ``template``) and write it as ``output_dir/README.md``."""
    import diffusers
    import transformers

    from . import __version__
    from .utils.model_cards import write_model_card

    defaults = dict(package_version=__version__, diffusers_version=diffusers.__version__,
                    transformers_version=transformers.__version__, torch_version=torch.__version__)
    return write_model_card(output_dir, template or "neodragon_converted.md", {**defaults, **values})
