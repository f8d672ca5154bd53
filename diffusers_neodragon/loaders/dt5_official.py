"""The official DT5 (``T5EncoderWithProjection``, config ``T5ProjectionConfig``) → :class:`DT5EncoderModel`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers.utils import logging
from transformers import T5Config

from ..models.text_encoder_dt5 import DT5Config, DT5EncoderModel
from .safetensors_folders import load_safetensors_folder, read_json
from .state_dict_checks import check_state_dict, expected_layout


logger = logging.get_logger(__name__)

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
    with init_empty_weights():
        expected = expected_layout(DT5EncoderModel(config))
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
