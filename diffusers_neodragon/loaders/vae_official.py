"""The VAE layouts: Neodragon's ``AsymmetricCausalVideoVAE`` → :class:`AsymmetricVAE` (causal encoder + tiny
decoder) and Pyramid-Flow's ``CausalVideoVAE`` → :class:`CausalVideoVAE` (the full decoder), each with the latent
normalisation constants its generation code uses."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..models.autoencoders.autoencoder_asymmetric import AsymmetricVAE
from ..models.autoencoders.autoencoder_causal_video import CausalVideoVAE
from .safetensors_folders import load_safetensors_folder, read_json
from .state_dict_checks import build_and_load, check_config_keys, config_entries, rename_keys


# Neodragon's latent normalisation (z - shift) * scale (generation_utils: VAE_SHIFT/SCALE_FACTOR for the first latent
# frame, VAE_VIDEO_SHIFT/SCALE_FACTOR for the others); the video scale differs from Pyramid-Flow's 1/3.0986.
NEODRAGON_LATENT_CONSTANTS = dict(
    image_latent_shift=0.1490, image_latent_scale=0.5430, video_latent_shift=-0.2343, video_latent_scale=0.3031
)
# Pyramid-Flow's latent normalisation (z - shift) * scale: image (first latent frame) and video constants.
PYRAMID_FLOW_LATENT_CONSTANTS = dict(
    image_latent_shift=0.1490, image_latent_scale=1 / 1.8415, video_latent_shift=-0.2343, video_latent_scale=1 / 3.0986
)
# Original TAEHV (madebyollin/taehv) keeps the decoder layers directly in `decoder.N.*`; the official Neodragon VAE
# (and ours) nests them as `decoder.blocks.N.*`.
_TAEHV_RENAMES = ((re.compile(r"^decoder\.(\d+)\."), r"decoder.blocks.\1."),)

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
    check_config_keys(what, config, _OFFICIAL_VAE_KEYS)
    _check_block_types(what, config)
    c = {**dict(encoder_in_channels=3, encoder_out_channels=16, encoder_layers_per_block=(2, 2, 2, 2),
                encoder_block_out_channels=(128, 256, 512, 512), encoder_spatial_down_sample=(True, True, True, False),
                encoder_temporal_down_sample=(True, True, True, False), encoder_block_dropout=(0.0,) * 4,
                encoder_act_fn="silu", encoder_norm_num_groups=32, decoder_num_features=(256, 128, 64, 64),
                decoder_time_upscale=(True, True, True), decoder_space_upscale=(True, True, True),
                temporal_downsample_scale=8, spatial_downsample_scale=8), **config_entries(config)}
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
    check_config_keys(what, config, _PYRAMID_FLOW_VAE_KEYS)
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
                decoder_type="causal_vae_conv", add_post_quant_conv=True), **config_entries(config)}
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
    return rename_keys(dict(state_dict), _TAEHV_RENAMES, "VAE")


def load_official_vae(folder: os.PathLike, dtype: torch.dtype | None = None) -> AsymmetricVAE:
    """Load Neodragon's ``causal_video_vae/`` (causal encoder + tiny decoder)."""
    folder = Path(folder)
    kwargs = convert_official_vae_config(read_json(folder / "config.json"))
    state = convert_official_vae_state_dict(load_safetensors_folder(folder))
    return build_and_load(AsymmetricVAE, kwargs, state, f"VAE checkpoint {folder}", dtype)


def load_pyramid_flow_vae(folder: os.PathLike, dtype: torch.dtype | None = None) -> CausalVideoVAE:
    """Load Pyramid-Flow's full ``causal_video_vae/`` (encoder + original decoder); tensor names are already ours."""
    folder = Path(folder)
    kwargs = convert_pyramid_flow_vae_config(read_json(folder / "config.json"))
    return build_and_load(CausalVideoVAE, kwargs, load_safetensors_folder(folder), f"VAE checkpoint {folder}", dtype)
