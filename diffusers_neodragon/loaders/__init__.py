"""Loading checkpoints into this package's classes (as diffusers keeps its loaders in ``diffusers.loaders``).

Two published releases are understood besides diffusers-format folders:

* the official Neodragon release (Hub repo ``Qualcomm-AI-Research/Neodragon``): one folder per component and no
  ``model_index.json`` — ``tokenizer{,_2,_3}/``, ``text_encoder{,_2,_3}/`` (CLIP-L, CLIP-G, DT5),
  ``context_adapter[_multistep_t2v]/``, ``diffusion_transformer_320p[_multistep_t2v]/``, ``causal_video_vae/`` and the
  SSD-1B first-frame generator in ``ssd_1b_*/``;
* Pyramid-Flow's SD3 release (``rain1011/pyramid-flow-sd3``): ``diffusion_transformer_{384p,768p}/`` (24 blocks with a
  ``context_embedder`` fed by T5-XXL), the full ``causal_video_vae/`` and the SD3 text encoders.

Weights are read with ``safetensors`` only; each state dict is checked against the exact layout the target class
expects (a ``ValueError`` names every missing, unexpected or mis-shaped tensor: nothing is loaded loosely), and
configs are mapped field by field, refusing settings our classes do not implement. One module per concern:

* ``safetensors_folders``: reading (sharded) safetensors folders, JSON, pickle refusal, damaged-file errors;
* ``state_dict_checks``: strict state-dict / config checks, building a model from a checked state dict;
* ``transformer_official``, ``vae_official``, ``context_adapter_official``, ``dt5_official``: per-component maps;
* ``library_folders``: CLIP encoders, tokenizers and the SSD-1B first-frame pipeline (diffusers/transformers folders);
* ``releases``: whole-release detection and assembly, with the releases' constants;
* ``pipeline_loading``: :class:`OfficialLayoutLoaderMixin` (``NeodragonPipeline.from_pretrained``);
* ``model_card``: the converted folder's model card.
"""

from .context_adapter_official import (
    convert_official_context_adapter_config,
    convert_official_context_adapter_state_dict,
    load_official_context_adapter,
)
from .dt5_official import convert_official_dt5_config, convert_official_dt5_state_dict, load_official_dt5
from .library_folders import (
    SSD1B_FOLDERS,
    SSD1B_LCM_SCHEDULER_CONFIG,
    load_checked_model,
    load_clip_encoders,
    load_ssd1b_first_frame_pipeline,
    load_tokenizer,
)
from .model_card import component_table, write_conversion_model_card
from .pipeline_loading import OfficialLayoutLoaderMixin, check_local_path, looks_like_local_path, resolve_snapshot
from .releases import (
    NEODRAGON_HUB_ID,
    NEODRAGON_NEGATIVE_PROMPT,
    NEODRAGON_PROMPT_SUFFIX,
    NEODRAGON_SIZE,
    OFFICIAL_ADAPTER_FOLDERS,
    OFFICIAL_TRANSFORMER_FOLDERS,
    OFFICIAL_VAE_FOLDER,
    PYRAMID_FLOW_HUB_ID,
    PYRAMID_FLOW_NUM_FRAMES,
    PYRAMID_FLOW_PROMPT_SUFFIX,
    PYRAMID_FLOW_VARIANTS,
    TEXT_FOLDERS,
    is_official_neodragon_layout,
    is_pyramid_flow_layout,
    load_official_neodragon,
    load_pyramid_flow,
    official_neodragon_folders,
    official_neodragon_modes,
    pyramid_flow_variants,
)
from .safetensors_folders import (
    check_safetensors_file,
    check_safetensors_folder,
    check_weights_tree,
    checkpoint_dtype,
    load_safetensors_folder,
    read_json,
    read_safetensors_file,
)
from .state_dict_checks import build_and_load, check_state_dict
from .transformer_official import (
    convert_official_transformer_config,
    convert_official_transformer_state_dict,
    load_official_transformer,
)
from .vae_official import (
    NEODRAGON_LATENT_CONSTANTS,
    PYRAMID_FLOW_LATENT_CONSTANTS,
    convert_official_vae_config,
    convert_official_vae_state_dict,
    convert_pyramid_flow_vae_config,
    load_official_vae,
    load_pyramid_flow_vae,
)


__all__ = [
    "NEODRAGON_HUB_ID",
    "NEODRAGON_LATENT_CONSTANTS",
    "NEODRAGON_NEGATIVE_PROMPT",
    "NEODRAGON_PROMPT_SUFFIX",
    "NEODRAGON_SIZE",
    "OFFICIAL_ADAPTER_FOLDERS",
    "OFFICIAL_TRANSFORMER_FOLDERS",
    "OFFICIAL_VAE_FOLDER",
    "PYRAMID_FLOW_HUB_ID",
    "PYRAMID_FLOW_LATENT_CONSTANTS",
    "PYRAMID_FLOW_NUM_FRAMES",
    "PYRAMID_FLOW_PROMPT_SUFFIX",
    "PYRAMID_FLOW_VARIANTS",
    "SSD1B_FOLDERS",
    "SSD1B_LCM_SCHEDULER_CONFIG",
    "TEXT_FOLDERS",
    "OfficialLayoutLoaderMixin",
    "build_and_load",
    "check_local_path",
    "check_safetensors_file",
    "check_safetensors_folder",
    "check_state_dict",
    "check_weights_tree",
    "checkpoint_dtype",
    "component_table",
    "convert_official_context_adapter_config",
    "convert_official_context_adapter_state_dict",
    "convert_official_dt5_config",
    "convert_official_dt5_state_dict",
    "convert_official_transformer_config",
    "convert_official_transformer_state_dict",
    "convert_official_vae_config",
    "convert_official_vae_state_dict",
    "convert_pyramid_flow_vae_config",
    "is_official_neodragon_layout",
    "is_pyramid_flow_layout",
    "load_checked_model",
    "load_clip_encoders",
    "load_official_context_adapter",
    "load_official_dt5",
    "load_official_neodragon",
    "load_official_transformer",
    "load_official_vae",
    "load_pyramid_flow",
    "load_pyramid_flow_vae",
    "load_safetensors_folder",
    "load_ssd1b_first_frame_pipeline",
    "load_tokenizer",
    "looks_like_local_path",
    "official_neodragon_folders",
    "official_neodragon_modes",
    "pyramid_flow_variants",
    "read_json",
    "read_safetensors_file",
    "resolve_snapshot",
    "write_conversion_model_card",
]
