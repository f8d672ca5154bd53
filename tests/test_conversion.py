"""Conversion of the published checkpoints (official Neodragon release, Pyramid-Flow SD3).

The official tensor names, shapes and config entries below are written down from the reference fact sheet
(``shared/reference/official_neodragon_facts.md`` §1.2, §4, §5) and from reading Pyramid-Flow's modules, not from
our own classes; ``tests/test_reference_equivalence.py`` checks them against the official classes' ``state_dict()``
where a reference checkout exists. Tiny random checkpoints are written in those layouts as safetensors folders,
converted, and every tensor is looked up where it must land.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from diffusers_neodragon import NeodragonPipeline
from diffusers_neodragon.data.vocab_tokenizer import build_word_level_tokenizer
from diffusers_neodragon.loaders import (
    NEODRAGON_NEGATIVE_PROMPT,
    NEODRAGON_PROMPT_SUFFIX,
    PYRAMID_FLOW_PROMPT_SUFFIX,
    convert_official_transformer_config,
    is_official_neodragon_layout,
    is_pyramid_flow_layout,
    load_official_context_adapter,
    load_official_dt5,
    load_official_neodragon,
    load_official_transformer,
    load_official_vae,
    load_pyramid_flow,
    load_pyramid_flow_vae,
)
from tests.script_loading import load_script
from tests.tiny_components import WORDS, clip_encoder, clip_tokenizer, first_frame_pipeline


# Tiny sizes: width 16 = 2 heads x 8, 4 latent channels, pooled 8 + 8 (two CLIPs), 64x64 videos.
HEADS, HEAD_DIM, LATENT, PATCH, POOLED = 2, 8, 4, 2, 16
WIDTH = HEADS * HEAD_DIM
SAMPLE_SIZE, POS_GRID = 16, 16  # sincos base size 8, 16x16 table
DT5_WIDTH, T5XXL_WIDTH = 24, 20  # text_encoder_3 output widths (DT5 head / Pyramid-Flow's T5)


# ============================================================================ official layouts (from the facts)


def linear(out_features, in_features, bias=True):
    return {"weight": (out_features, in_features), **({"bias": (out_features,)} if bias else {})}


def prefixed(prefix, params):
    return {f"{prefix}.{name}": shape for name, shape in params.items()}


def official_dit_layout(num_layers, context_dim=None):
    """Facts §1.2: PyramidMMDiT keys (SD3 names, norm_add_q/k, context-pre-only last block, pos_embed buffer)."""
    d = WIDTH
    layout = {
        "pos_embed.pos_embed": (1, POS_GRID * POS_GRID, d),
        "pos_embed.proj.weight": (d, LATENT, PATCH, PATCH),
        "pos_embed.proj.bias": (d,),
        **prefixed("time_text_embed.timestep_embedder.linear_1", linear(d, 256)),
        **prefixed("time_text_embed.timestep_embedder.linear_2", linear(d, d)),
        **prefixed("time_text_embed.text_embedder.linear_1", linear(d, POOLED)),
        **prefixed("time_text_embed.text_embedder.linear_2", linear(d, d)),
        **prefixed("norm_out.linear", linear(2 * d, d)),
        **prefixed("proj_out", linear(PATCH * PATCH * LATENT, d)),
    }
    if context_dim:  # Pyramid-Flow: Linear(joint_attention_dim -> caption_projection_dim)
        layout.update(prefixed("context_embedder", linear(d, context_dim)))
    for i in range(num_layers):
        last = i == num_layers - 1
        block = {
            **prefixed("norm1.linear", linear(6 * d, d)),
            **prefixed("norm1_context.linear", linear((2 if last else 6) * d, d)),
            **{f"attn.{n}.weight": (HEAD_DIM,) for n in ("norm_q", "norm_k", "norm_add_q", "norm_add_k")},
            **prefixed("attn.to_out.0", linear(d, d)),
            **prefixed("ff.net.0.proj", linear(4 * d, d)),
            **prefixed("ff.net.2", linear(d, 4 * d)),
        }
        for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
            block.update(prefixed(f"attn.{name}", linear(d, d)))
        if not last:
            block.update(prefixed("attn.to_add_out", linear(d, d)))
            block.update(prefixed("ff_context.net.0.proj", linear(4 * d, d)))
            block.update(prefixed("ff_context.net.2", linear(d, 4 * d)))
        layout.update(prefixed(f"transformer_blocks.{i}", block))
    return layout


def official_dit_config(num_layers, pyramid_flow=False):
    """Facts §1.1 (PyramidMMDiT) / §9 (PyramidDiffusionMMDiT as saved on the Hub)."""
    config = {
        "_class_name": "PyramidDiffusionMMDiT" if pyramid_flow else "PyramidMMDiT",
        "_diffusers_version": "0.30.3" if pyramid_flow else "0.34.0",
        "sample_size": SAMPLE_SIZE, "patch_size": PATCH, "in_channels": LATENT, "num_layers": num_layers,
        "attention_head_dim": HEAD_DIM, "num_attention_heads": HEADS, "caption_projection_dim": WIDTH,
        "pooled_projection_dim": POOLED, "pos_embed_max_size": POS_GRID, "max_num_frames": 200,
        "qk_norm": "rms_norm", "pos_embed_type": "sincos", "temp_pos_embed_type": "rope",
        "joint_attention_dim": T5XXL_WIDTH if pyramid_flow else 4096, "use_gradient_checkpointing": False,
        "use_temporal_causal": True, "use_t5_mask": True, "add_temp_pos_embed": True, "interp_condition_pos": True,
        "gradient_checkpointing_ratio": 0.6,
    }
    if pyramid_flow:  # what the Hub config holds; Pyramid-Flow's loader overrides the temporal settings
        config.update(use_flash_attn=False, temp_pos_embed_type="sincos", use_temporal_causal=False,
                      add_temp_pos_embed=False, use_t5_mask=False, interp_condition_pos=False)
    return config


def facts_sincos_table(dim, grid, base):
    """Facts §1.4: SD3's 2-D sincos table, coordinates k / (grid / base) (float32), channels [column | row], each
    half [sin | cos] with frequencies 10000^(-k / (dim/4)); token index row * grid + col."""
    coords = (np.arange(grid, dtype=np.float32) / np.float32(grid / base)).astype(np.float64)
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))

    def one_d(pos):
        angles = pos[:, None] * omega[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    rows, cols = np.meshgrid(coords, coords, indexing="ij")
    table = np.concatenate([one_d(cols.reshape(-1)), one_d(rows.reshape(-1))], axis=1)
    return torch.from_numpy(table).float()[None]


def resnet3d(cin, cout):
    layout = {
        "norm1.weight": (cin,), "norm1.bias": (cin,),
        "conv1.conv.weight": (cout, cin, 3, 3, 3), "conv1.conv.bias": (cout,),
        "norm2.weight": (cout,), "norm2.bias": (cout,),
        "conv2.conv.weight": (cout, cout, 3, 3, 3), "conv2.conv.bias": (cout,),
    }
    if cin != cout:
        layout.update({"conv_shortcut.conv.weight": (cout, cin, 1, 1, 1), "conv_shortcut.conv.bias": (cout,)})
    return layout


def conv3d(cout, cin, k=3):
    return {"conv.weight": (cout, cin, k, k, k), "conv.bias": (cout,)}


def mid_block(c):
    attention = {"group_norm.weight": (c,), "group_norm.bias": (c,)}
    for name in ("to_q", "to_k", "to_v", "to_out.0"):
        attention.update(prefixed(name, linear(c, c)))
    return {**prefixed("resnets.0", resnet3d(c, c)), **prefixed("resnets.1", resnet3d(c, c)),
            **prefixed("attentions.0", attention)}


def causal_encoder_layout(channels, layers, spatial, temporal, latent=LATENT):
    """Facts §5: the causal 3-D encoder shared by Neodragon's and Pyramid-Flow's VAEs (+ quant convs)."""
    layout = prefixed("encoder.conv_in", conv3d(channels[0], 3))
    previous = channels[0]
    for b, c in enumerate(channels):
        for j in range(layers[b]):
            layout.update(prefixed(f"encoder.down_blocks.{b}.resnets.{j}", resnet3d(previous if j == 0 else c, c)))
        previous = c
        if spatial[b]:
            layout.update(prefixed(f"encoder.down_blocks.{b}.downsamplers.0.conv", conv3d(c, c)))
        if temporal[b]:
            layout.update(prefixed(f"encoder.down_blocks.{b}.temporal_downsamplers.0.conv", conv3d(c, c)))
    layout.update(prefixed("encoder.mid_block", mid_block(channels[-1])))
    layout.update({"encoder.conv_norm_out.weight": (channels[-1],), "encoder.conv_norm_out.bias": (channels[-1],)})
    layout.update(prefixed("encoder.conv_out", conv3d(2 * latent, channels[-1])))
    layout.update(prefixed("quant_conv", conv3d(2 * latent, 2 * latent, 1)))
    layout.update(prefixed("post_quant_conv", conv3d(latent, latent, 1)))
    return layout


def taehv_decoder_layout(features, latent=LATENT):
    """Facts §5: `decoder.blocks` indices: 1 conv(+bias); per stage s: MemBlocks 3+6s..5+6s (conv.0/2/4 with bias),
    TGrow 7+6s (1x1, no bias, 2n outputs), conv 8+6s (no bias); final conv 22 (+bias)."""
    layout = {"decoder.blocks.1.weight": (features[0], latent, 3, 3), "decoder.blocks.1.bias": (features[0],)}
    for stage in range(3):
        n, base = features[stage], 3 + 6 * stage
        for index in range(base, base + 3):
            for conv, cin in ((0, 2 * n), (2, n), (4, n)):
                layout[f"decoder.blocks.{index}.conv.{conv}.weight"] = (n, cin, 3, 3)
                layout[f"decoder.blocks.{index}.conv.{conv}.bias"] = (n,)
        layout[f"decoder.blocks.{base + 4}.conv.weight"] = (2 * n, n, 1, 1)
        layout[f"decoder.blocks.{base + 5}.weight"] = (features[stage + 1], n, 3, 3)
    layout.update({"decoder.blocks.22.weight": (3, features[3], 3, 3), "decoder.blocks.22.bias": (3,)})
    return layout


def pyramid_flow_decoder_layout(channels, layers, spatial, temporal, latent=LATENT):
    """Pyramid-Flow's CausalVaeDecoder: conv_in, mid block, up blocks over the reversed widths (resnets, pixel-shuffle
    spatial upsampler conv to 4c, temporal upsampler conv to 2c), norm, conv_out."""
    reversed_channels = list(reversed(channels))
    layout = prefixed("decoder.conv_in", conv3d(reversed_channels[0], latent))
    layout.update(prefixed("decoder.mid_block", mid_block(reversed_channels[0])))
    previous = reversed_channels[0]
    for i, c in enumerate(reversed_channels):
        for j in range(layers[i]):
            layout.update(prefixed(f"decoder.up_blocks.{i}.resnets.{j}", resnet3d(previous if j == 0 else c, c)))
        previous = c
        if spatial[i]:
            layout.update(prefixed(f"decoder.up_blocks.{i}.upsamplers.0.conv", conv3d(4 * c, c)))
        if temporal[i]:
            layout.update(prefixed(f"decoder.up_blocks.{i}.temporal_upsamplers.0.conv", conv3d(2 * c, c)))
    layout.update({"decoder.conv_norm_out.weight": (channels[0],), "decoder.conv_norm_out.bias": (channels[0],)})
    layout.update(prefixed("decoder.conv_out", conv3d(3, channels[0])))
    return layout


ENCODER = dict(channels=(8, 16, 16, 16), layers=(1, 2, 1, 1), spatial=(True, True, True, False),
               temporal=(True, True, True, False))
TAEHV_FEATURES = (16, 8, 8, 8)
PF_DECODER = dict(channels=(8, 16, 16, 16), layers=(2, 1, 1, 1), spatial=(True, True, True, False),
                  temporal=(True, True, True, False))


def official_vae_layout():
    return {**causal_encoder_layout(**ENCODER), **taehv_decoder_layout(TAEHV_FEATURES)}


def official_vae_config():
    """Facts §5: AsymmetricCausalVideoVAE config entries."""
    return {
        "_class_name": "AsymmetricCausalVideoVAE", "_diffusers_version": "0.34.0",
        "encoder_in_channels": 3, "encoder_out_channels": LATENT, "encoder_layers_per_block": list(ENCODER["layers"]),
        "encoder_down_block_types": ["DownEncoderBlockCausal3D"] * 4,
        "encoder_block_out_channels": list(ENCODER["channels"]),
        "encoder_spatial_down_sample": list(ENCODER["spatial"]),
        "encoder_temporal_down_sample": list(ENCODER["temporal"]), "encoder_block_dropout": [0.0] * 4,
        "encoder_act_fn": "silu", "encoder_norm_num_groups": 4, "decoder_num_features": list(TAEHV_FEATURES),
        "decoder_time_upscale": [True] * 3, "decoder_space_upscale": [True] * 3, "sample_size": 256,
        "temporal_downsample_scale": 8, "spatial_downsample_scale": 8,
    }


def pyramid_flow_vae_layout():
    return {**causal_encoder_layout(**ENCODER), **pyramid_flow_decoder_layout(**PF_DECODER)}


def pyramid_flow_vae_config():
    """Pyramid-Flow's CausalVideoVAE config entries."""
    return {
        "_class_name": "CausalVideoVAE", "_diffusers_version": "0.30.1",
        "encoder_in_channels": 3, "encoder_out_channels": LATENT, "encoder_layers_per_block": list(ENCODER["layers"]),
        "encoder_down_block_types": ["DownEncoderBlockCausal3D"] * 4,
        "encoder_block_out_channels": list(ENCODER["channels"]),
        "encoder_spatial_down_sample": list(ENCODER["spatial"]),
        "encoder_temporal_down_sample": list(ENCODER["temporal"]), "encoder_block_dropout": [0.0] * 4,
        "encoder_act_fn": "silu", "encoder_norm_num_groups": 4, "encoder_double_z": True,
        "encoder_type": "causal_vae_conv", "decoder_in_channels": LATENT, "decoder_out_channels": 3,
        "decoder_layers_per_block": list(PF_DECODER["layers"]),
        "decoder_up_block_types": ["UpDecoderBlockCausal3D"] * 4,
        "decoder_block_out_channels": list(PF_DECODER["channels"]),
        "decoder_spatial_up_sample": list(PF_DECODER["spatial"]),
        "decoder_temporal_up_sample": list(PF_DECODER["temporal"]), "decoder_block_dropout": [0.0] * 4,
        "decoder_act_fn": "silu", "decoder_norm_num_groups": 4, "decoder_type": "causal_vae_conv",
        "sample_size": 256, "scaling_factor": 0.18215, "add_post_quant_conv": True, "interpolate": False,
        "downsample_scale": 8,
    }


ADAPTER_DEPTHS = (32, 32)


def official_adapter_layout():
    """Facts §4: SkipMLP `network_layers.{k}.1` (Linear inside [pre-act, Linear, act]) and `network_layers.{n}.0`."""
    layout, width_in = {}, DT5_WIDTH
    for k, depth in enumerate(ADAPTER_DEPTHS):
        layout.update(prefixed(f"network_layers.{k}.1", linear(depth, width_in)))
        width_in = depth + DT5_WIDTH
    layout.update(prefixed(f"network_layers.{len(ADAPTER_DEPTHS)}.0", linear(WIDTH, width_in)))
    return layout


def official_adapter_config():
    return {"_class_name": "ContextAdapter", "_diffusers_version": "0.34.0", "input_dims": DT5_WIDTH,
            "output_dims": WIDTH, "layer_depths": list(ADAPTER_DEPTHS), "skips": [True] * len(ADAPTER_DEPTHS),
            "use_biases": True, "pre_activation": False, "activation_fn": "gelu", "out_activation_fn": "linear"}


DT5 = dict(d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2)


def official_dt5_layout(vocab_size):
    """Facts §4: T5EncoderWithProjection keys (T5 encoder under `encoder.`, head `final_projection.{0,3}`)."""
    d, inner = DT5["d_model"], DT5["num_heads"] * DT5["d_kv"]
    layout = {"encoder.shared.weight": (vocab_size, d), "encoder.encoder.embed_tokens.weight": (vocab_size, d),
              "encoder.encoder.final_layer_norm.weight": (d,),
              "final_projection.0.weight": (DT5_WIDTH, d), "final_projection.3.weight": (DT5_WIDTH, DT5_WIDTH)}
    for i in range(DT5["num_layers"]):
        p = f"encoder.encoder.block.{i}.layer"
        layout.update({f"{p}.0.SelfAttention.{n}.weight": (inner, d) for n in "qkv"})
        layout.update({f"{p}.0.SelfAttention.o.weight": (d, inner), f"{p}.0.layer_norm.weight": (d,),
                       f"{p}.1.DenseReluDense.wi_0.weight": (DT5["d_ff"], d),
                       f"{p}.1.DenseReluDense.wi_1.weight": (DT5["d_ff"], d),
                       f"{p}.1.DenseReluDense.wo.weight": (d, DT5["d_ff"]), f"{p}.1.layer_norm.weight": (d,)})
    layout["encoder.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (32, DT5["num_heads"])
    return layout


def official_dt5_config(vocab_size):
    """What the official T5ProjectionConfig saves: T5 settings + out_dim / project_in_dim / project_out_dim."""
    return {"architectures": ["T5EncoderWithProjection"], "model_type": "t5", "vocab_size": vocab_size, **DT5,
            "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": True,
            "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6,
            "dropout_rate": 0.1, "is_encoder_decoder": False, "use_cache": False, "tie_word_embeddings": True,
            "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
            "project_in_dim": DT5["d_model"], "out_dim": DT5_WIDTH, "project_out_dim": DT5_WIDTH,
            "transformers_version": "4.46.3"}


# ============================================================================ writing folders


def random_state(layout, seed):
    """Deterministic values that keep every path O(1): fan-in scaled weights, small biases, norms near 1."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in sorted(layout.items()):
        value = torch.randn(shape, generator=generator)
        if len(shape) >= 2:
            value = value / np.sqrt(np.prod(shape[1:]))
        elif key.endswith("weight"):
            value = 1.0 + 0.1 * value
        else:
            value = 0.1 * value
        state[key] = value.contiguous()
    return state


def write_folder(folder, config, state, weights_name="diffusion_pytorch_model.safetensors"):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(state, str(folder / weights_name))
    return state


def write_dit(folder, seed, num_layers=3, pyramid_flow=False):
    state = random_state(official_dit_layout(num_layers, T5XXL_WIDTH if pyramid_flow else None), seed)
    state["pos_embed.pos_embed"] = facts_sincos_table(WIDTH, POS_GRID, SAMPLE_SIZE // PATCH)
    return write_folder(folder, official_dit_config(num_layers, pyramid_flow), state)


def t5_tokenizer():
    return build_word_level_tokenizer(WORDS, model_max_length=16)


def write_text_encoders(root, seed, t5xxl=False):
    """CLIP-L/G stand-ins (transformers folders, as released), tokenizers, and text_encoder_3: the official DT5 layout,
    or for Pyramid-Flow a plain T5EncoderModel (T5-XXL stand-in)."""
    root = Path(root)
    for index, name in enumerate(("text_encoder", "text_encoder_2")):
        tokenizer = clip_tokenizer()
        clip_encoder(CLIPTextModelWithProjection, tokenizer, seed=seed + index).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name.replace("text_encoder", "tokenizer"))
    tokenizer = t5_tokenizer()
    tokenizer.save_pretrained(root / "tokenizer_3")
    if t5xxl:
        torch.manual_seed(seed + 2)
        T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=T5XXL_WIDTH, d_kv=4, d_ff=32, num_layers=1,
                                num_heads=2, feed_forward_proj="gated-gelu", decoder_start_token_id=0, pad_token_id=0,
                                eos_token_id=1)).save_pretrained(root / "text_encoder_3")
        return None
    state = random_state(official_dt5_layout(len(tokenizer)), seed + 2)
    state["encoder.encoder.embed_tokens.weight"] = state["encoder.shared.weight"].clone()  # tied, both saved
    return write_folder(root / "text_encoder_3", official_dt5_config(len(tokenizer)), state, "model.safetensors")


def write_ssd1b(root, seed):
    pipe = first_frame_pipeline(seed)
    for component, folder in (("vae", "ssd_1b_vae"), ("unet", "ssd_1b_unet"), ("text_encoder", "ssd_1b_text_encoder"),
                              ("text_encoder_2", "ssd_1b_text_encoder_2"), ("tokenizer", "ssd_1b_tokenizer"),
                              ("tokenizer_2", "ssd_1b_tokenizer_2")):
        getattr(pipe, component).save_pretrained(Path(root) / folder)
    return pipe


def write_official_neodragon(root, seed=0):
    """A complete official-layout snapshot; returns the official state dicts written, by folder."""
    root = Path(root)
    states = {
        "diffusion_transformer_320p": write_dit(root / "diffusion_transformer_320p", seed + 10),
        "diffusion_transformer_320p_multistep_t2v": write_dit(
            root / "diffusion_transformer_320p_multistep_t2v", seed + 11
        ),
        "context_adapter": write_folder(root / "context_adapter", official_adapter_config(),
                                        random_state(official_adapter_layout(), seed + 12)),
        "context_adapter_multistep_t2v": write_folder(
            root / "context_adapter_multistep_t2v", official_adapter_config(),
            random_state(official_adapter_layout(), seed + 13),
        ),
        "causal_video_vae": write_folder(root / "causal_video_vae", official_vae_config(),
                                         random_state(official_vae_layout(), seed + 14)),
        "text_encoder_3": write_text_encoders(root, seed + 15),
    }
    write_ssd1b(root, seed + 20)
    return states


def write_pyramid_flow(root, seed=0):
    root = Path(root)
    states = {
        "diffusion_transformer_384p": write_dit(root / "diffusion_transformer_384p", seed + 30, num_layers=4,
                                                pyramid_flow=True),
        "causal_video_vae": write_folder(root / "causal_video_vae", pyramid_flow_vae_config(),
                                         random_state(pyramid_flow_vae_layout(), seed + 31)),
    }
    write_text_encoders(root, seed + 32, t5xxl=True)
    return states


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models: intra-op threads only add overhead, and spin-waiting threads slow down badly on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    root = tmp_path_factory.mktemp("neodragon_official")
    return root, write_official_neodragon(root)


@pytest.fixture(scope="module")
def pyramid_flow(tmp_path_factory):
    root = tmp_path_factory.mktemp("pyramid_flow_sd3")
    return root, write_pyramid_flow(root)


def load_converter(name):
    return load_script(f"conversion/{name}.py")


def generate(pipe, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    if pipe.first_frame_pipeline is not None:
        pipe.first_frame_pipeline.set_progress_bar_config(disable=True)
    kwargs = {"height": 64, "width": 64, "num_frames": 9, "output_type": "np", **kwargs}
    if pipe.first_frame_pipeline is not None:  # a small SSD-1B image (resized to the video) keeps the test fast
        kwargs.setdefault("first_frame_kwargs", {"height": 32, "width": 32})
    return pipe("a red circle moving left", generator=torch.Generator().manual_seed(0), **kwargs).frames


# ============================================================================ layout detection


def test_layout_detection(official, pyramid_flow, tmp_path):
    root, _ = official
    assert is_official_neodragon_layout(root) and not is_pyramid_flow_layout(root)
    assert is_pyramid_flow_layout(pyramid_flow[0]) and not is_official_neodragon_layout(pyramid_flow[0])
    assert not is_official_neodragon_layout(tmp_path) and not is_official_neodragon_layout(tmp_path / "absent")
    # Only one mode present is still the official layout; no tokenizer_3 or a model_index.json is not.
    partial = tmp_path / "partial"
    for name in ("causal_video_vae", "text_encoder_3", "tokenizer_3", "diffusion_transformer_320p_multistep_t2v",
                 "context_adapter_multistep_t2v"):
        shutil.copytree(root / name, partial / name)
    assert is_official_neodragon_layout(partial)
    shutil.rmtree(partial / "tokenizer_3")
    assert not is_official_neodragon_layout(partial)
    shutil.copytree(root / "tokenizer_3", partial / "tokenizer_3")
    (partial / "model_index.json").write_text("{}")
    assert not is_official_neodragon_layout(partial)


# ============================================================================ per component: every tensor lands


def test_transformer_every_tensor_lands_and_pos_embed_is_dropped(official):
    root, states = official
    official_state = states["diffusion_transformer_320p"]
    model = load_official_transformer(root / "diffusion_transformer_320p")
    ours = model.state_dict()
    assert set(ours) == set(official_state) - {"pos_embed.pos_embed"}
    for key, value in ours.items():
        assert torch.equal(value, official_state[key]), key
    assert model.config.num_layers == 3 and model.config.context_embedder_dim is None
    assert model.transformer_blocks[-1].context_pre_only and not model.transformer_blocks[0].context_pre_only
    assert (model.config.sample_size, model.config.pos_embed_max_size, model.config.qk_norm_eps) == (16, 16, 1e-5)
    assert model.dtype == torch.float32 and not model.training


def test_pyramid_flow_transformer_keeps_its_context_embedder(pyramid_flow):
    root, states = pyramid_flow
    official_state = states["diffusion_transformer_384p"]
    model = load_official_transformer(root / "diffusion_transformer_384p", dtype=torch.bfloat16)
    assert model.config.context_embedder_dim == T5XXL_WIDTH and model.config.num_layers == 4
    assert model.dtype == torch.bfloat16
    for key, value in model.state_dict().items():
        assert torch.equal(value, official_state[key].bfloat16()), key
    assert "context_embedder.weight" in model.state_dict()
    # Pyramid-Flow's class defaults to RoPE positions: a config that does not say "sincos" is refused.
    config = json.loads((root / "diffusion_transformer_384p" / "config.json").read_text())
    del config["pos_embed_type"]
    with pytest.raises(ValueError, match="pos_embed_type='rope'"):
        convert_official_transformer_config(config)


def _rewrite_dit(root, folder, edit_state=None, edit_config=None, name="edited"):
    target = folder.parent / name
    shutil.copytree(root / "diffusion_transformer_320p", target, dirs_exist_ok=True)
    state = load_file(str(target / "diffusion_pytorch_model.safetensors"))
    config = json.loads((target / "config.json").read_text())
    if edit_state:
        edit_state(state)
    if edit_config:
        edit_config(config)
    write_folder(target, config, state)
    return target


def _pop(key):
    return lambda state: state.pop(key)


def _set(key, value):
    return lambda state: state.__setitem__(key, value)


@pytest.mark.parametrize(
    "edit_state, edit_config, message",
    [
        (_pop("transformer_blocks.1.attn.norm_add_k.weight"), None,
         r"missing keys \(1\): \[transformer_blocks\.1\.attn\.norm_add_k\.weight\]"),
        (_set("transformer_blocks.0.attn.extra.weight", torch.zeros(2)), None,
         r"unexpected keys \(1\): \[transformer_blocks\.0\.attn\.extra\.weight\]"),
        (_set("proj_out.bias", torch.zeros(3)), None, r"shape mismatches \(1\): \[proj_out\.bias: checkpoint \(3,\)"),
        (_set("pos_embed.pos_embed", facts_sincos_table(WIDTH, POS_GRID, 4)), None,
         "differs from the 2-D sincos table"),
        (None, lambda c: c.update(num_layers=2), "num_layers=2 but the checkpoint holds 3"),
        (_set("transformer_blocks.2.ff_context.net.2.bias", torch.zeros(WIDTH)), None, "must be context-pre-only"),
        (_set("context_embedder.weight", torch.zeros(WIDTH, 8)), None, "source='pyramid_flow'"),
        (None, lambda c: c.update(qk_norm="layer_norm"), r"qk_norm='layer_norm' \(needs 'rms_norm'\)"),
        (None, lambda c: c.update(use_temporal_causal=False), "use_temporal_causal=False"),
        (None, lambda c: c.update(new_option=1), r"does not know: \['new_option'\]"),
    ],
)
def test_transformer_rejects_bad_checkpoints(official, tmp_path, edit_state, edit_config, message):
    root, _ = official
    folder = _rewrite_dit(root, tmp_path / "x", edit_state, edit_config)
    with pytest.raises(ValueError, match=message):
        load_official_transformer(folder)


def test_diffusers_sd3_qk_norm_names_are_renamed(official, tmp_path):
    """diffusers' SD3 spelling `attn.norm_added_q/k` (the official code says `norm_add_q/k`) maps to the same tensors;
    a checkpoint holding both spellings is refused."""
    root, states = official

    def respell(state):
        for key in [k for k in state if ".attn.norm_add_" in k]:
            state[key.replace(".attn.norm_add_", ".attn.norm_added_")] = state.pop(key)

    model = load_official_transformer(_rewrite_dit(root, tmp_path / "x", respell, name="diffusers_names"))
    key = "transformer_blocks.1.attn.norm_add_k.weight"
    assert torch.equal(model.state_dict()[key], states["diffusion_transformer_320p"][key])
    duplicate = _set("transformer_blocks.0.attn.norm_added_q.weight", torch.ones(HEAD_DIM))
    both = _rewrite_dit(root, tmp_path / "x", duplicate, name="both_names")
    with pytest.raises(ValueError, match=r"same tensor under two names: \[transformer_blocks\.0\.attn\.norm_added_q"):
        load_official_transformer(both)


def test_vae_decoder_with_original_taehv_prefixes(official, tmp_path):
    root, states = official
    folder = tmp_path / "vae"
    shutil.copytree(root / "causal_video_vae", folder)
    state = {k.replace("decoder.blocks.", "decoder."): v for k, v in states["causal_video_vae"].items()}
    assert "decoder.22.weight" in state
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    vae = load_official_vae(folder)
    for key, value in vae.state_dict().items():
        assert torch.equal(value, states["causal_video_vae"][key]), key


def test_pos_embed_saved_through_half_precision_is_recognised(official, tmp_path, caplog):
    """SD3-Medium's buffer was stored in fp16 and Pyramid-Flow inherited it: a table rounded through half precision
    is the same table (dropped, with a warning when it is not just the storage dtype's rounding of the exact one)."""
    root, states = official
    exact = facts_sincos_table(WIDTH, POS_GRID, SAMPLE_SIZE // PATCH)
    bf16 = _rewrite_dit(root, tmp_path / "x", lambda s: s.update({k: v.bfloat16() for k, v in s.items()}), name="bf16")
    with caplog.at_level("WARNING", logger="diffusers_neodragon.loaders.transformer_official"):
        model = load_official_transformer(bf16)
    assert model.dtype == torch.float32 and not [r for r in caplog.records if "pos_embed" in r.getMessage()]
    via_fp16 = _rewrite_dit(root, tmp_path / "y", _set("pos_embed.pos_embed", exact.half().float()), name="fp16")
    assert (exact.half().float() - exact).abs().max() > 1e-6  # the case is real at this size
    with caplog.at_level("WARNING", logger="diffusers_neodragon.loaders.transformer_official"):
        model = load_official_transformer(via_fp16)
    assert [r for r in caplog.records if "pos_embed.pos_embed differs from the exact" in r.getMessage()]
    assert torch.equal(model.proj_out.weight, states["diffusion_transformer_320p"]["proj_out.weight"])


def test_vae_every_tensor_lands(official):
    root, states = official
    vae = load_official_vae(root / "causal_video_vae")
    assert set(vae.state_dict()) == set(states["causal_video_vae"])
    for key, value in vae.state_dict().items():
        assert torch.equal(value, states["causal_video_vae"][key]), key
    c = vae.config
    assert (c.latent_channels, c.encoder_layers_per_block, c.norm_num_groups, c.decoder_num_features) == (
        LATENT, ENCODER["layers"], 4, TAEHV_FEATURES)
    assert (c.image_latent_shift, c.image_latent_scale, c.video_latent_shift, c.video_latent_scale) == (
        0.1490, 0.5430, -0.2343, 0.3031)  # Neodragon's constants (generation_utils)


def test_pyramid_flow_vae_every_tensor_lands_with_its_own_latent_constants(pyramid_flow):
    root, states = pyramid_flow
    vae = load_pyramid_flow_vae(root / "causal_video_vae")
    assert set(vae.state_dict()) == set(states["causal_video_vae"])
    for key, value in vae.state_dict().items():
        assert torch.equal(value, states["causal_video_vae"][key]), key
    c = vae.config
    assert c.decoder_layers_per_block == PF_DECODER["layers"] and c.encoder_layers_per_block == ENCODER["layers"]
    z = torch.randn(1, LATENT, 3, 2, 2)
    normalized = vae.normalize_latents(z)
    torch.testing.assert_close(normalized[:, :, :1], (z[:, :, :1] - 0.1490) / 1.8415)
    torch.testing.assert_close(normalized[:, :, 1:], (z[:, :, 1:] + 0.2343) / 3.0986)


def test_pyramid_flow_vae_config_refusals(pyramid_flow, tmp_path):
    root, _ = pyramid_flow
    for edit, message in ((dict(encoder_double_z=False), "encoder_double_z=False"),
                          (dict(decoder_norm_num_groups=8), "encoder_norm_num_groups != decoder_norm_num_groups"),
                          (dict(encoder_down_block_types=["DownEncoderBlock2D"] * 4), "not supported")):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        shutil.copytree(root / "causal_video_vae", folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **edit}))
        with pytest.raises(ValueError, match=message):
            load_pyramid_flow_vae(folder)


def test_context_adapter_tensors_are_renamed(official):
    root, states = official
    adapter = load_official_context_adapter(root / "context_adapter")
    state, official_state = adapter.state_dict(), states["context_adapter"]
    assert len(state) == len(official_state) == 6
    for k in range(len(ADAPTER_DEPTHS)):
        for p in ("weight", "bias"):
            assert torch.equal(state[f"layers.{k}.{p}"], official_state[f"network_layers.{k}.1.{p}"])
    for p in ("weight", "bias"):
        assert torch.equal(state[f"proj_out.{p}"], official_state[f"network_layers.{len(ADAPTER_DEPTHS)}.0.{p}"])
    assert adapter.config.hidden_features == ADAPTER_DEPTHS and adapter.config.activation == "gelu"


def test_dt5_config_and_tensors(official, tmp_path):
    root, states = official
    model = load_official_dt5(root / "text_encoder_3")
    assert model.config.model_type == "dt5_encoder" and model.config.projection_dim == DT5_WIDTH
    assert model.config.feed_forward_proj == "gated-gelu" and model.config.d_model == DT5["d_model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, states["text_encoder_3"][key]), key
    assert model.encoder.shared.weight is model.encoder.encoder.embed_tokens.weight

    def rewrite(edit):
        folder = tmp_path / f"dt5_{len(list(tmp_path.iterdir()))}"
        shutil.copytree(root / "text_encoder_3", folder)
        state = load_file(str(folder / "model.safetensors"))
        edit(state)
        save_file(state, str(folder / "model.safetensors"))
        return folder

    # Either tied key alone is enough; unused T5 decoder leftovers are dropped.
    only_embed = rewrite(lambda s: s.pop("encoder.shared.weight"))
    assert torch.equal(load_official_dt5(only_embed).encoder.shared.weight,
                       states["text_encoder_3"]["encoder.shared.weight"])
    leftover_key = "encoder.decoder.block.0.layer.0.SelfAttention.q.weight"
    leftovers = rewrite(lambda s: s.__setitem__(leftover_key, torch.zeros(2)))
    load_official_dt5(leftovers)
    with pytest.raises(ValueError, match="tied in the model but differ"):
        load_official_dt5(rewrite(lambda s: s["encoder.shared.weight"].add_(1.0)))
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): \[final_projection\.3\.bias\]"):
        load_official_dt5(rewrite(lambda s: s.__setitem__("final_projection.3.bias", torch.zeros(DT5_WIDTH))))
    with pytest.raises(ValueError, match=r"missing keys \(1\): \[final_projection\.0\.weight\]"):
        load_official_dt5(rewrite(lambda s: s.pop("final_projection.0.weight")))


# ============================================================================ damaged files


def test_truncated_and_pickle_checkpoints_give_clear_errors(official, tmp_path):
    root, _ = official
    dit = tmp_path / "dit"
    shutil.copytree(root / "diffusion_transformer_320p", dit)
    weights = dit / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_official_transformer(dit)
    weights.unlink()
    (dit / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    pickle_refused = r"dit/diffusion_pytorch_model\.bin is a pickle checkpoint.*safetensors is required"
    with pytest.raises(ValueError, match=pickle_refused):
        load_official_transformer(dit)
    (dit / "config.json").write_text('{"num_layers": 3,')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_official_transformer(dit)

    # A truncated file in a folder read by transformers' own loader (CLIP) fails the same way, before it.
    snapshot = tmp_path / "snapshot"
    shutil.copytree(root, snapshot)
    clip = snapshot / "text_encoder" / "model.safetensors"
    clip.write_bytes(clip.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"text_encoder/model\.safetensors as safetensors .* truncated"):
        load_official_neodragon(snapshot, mode="monolithic")
    # A missing folder is named.
    shutil.rmtree(snapshot / "ssd_1b_unet")
    with pytest.raises(ValueError, match=r"lacks the folders \['ssd_1b_unet'\]"):
        load_official_neodragon(snapshot, mode="hybrid")


# ============================================================================ whole releases


def test_load_official_neodragon_both_modes_generate(official):
    root, states = official
    hybrid = load_official_neodragon(root, mode="hybrid")
    assert hybrid["mode"] == "hybrid" and hybrid["prompt_suffix"] == NEODRAGON_PROMPT_SUFFIX
    assert hybrid["default_negative_prompt"] == NEODRAGON_NEGATIVE_PROMPT
    assert (hybrid["default_height"], hybrid["default_width"], hybrid["default_num_frames"]) == (320, 512, 49)
    ssd = hybrid["first_frame_pipeline"]
    assert type(ssd).__name__ == "StableDiffusionXLPipeline" and type(ssd.scheduler).__name__ == "LCMScheduler"
    sc = ssd.scheduler.config
    assert (sc.set_alpha_to_one, sc.original_inference_steps, sc.steps_offset) == (False, 4, 1)
    assert isinstance(ssd.text_encoder, CLIPTextModel) and isinstance(ssd.text_encoder_2, CLIPTextModelWithProjection)
    assert ssd.config.force_zeros_for_empty_prompt

    monolithic = load_official_neodragon(root, mode="monolithic")
    assert monolithic["first_frame_pipeline"] is None and monolithic["mode"] == "monolithic"
    # Each mode gets its own transformer and context adapter.
    key = "transformer_blocks.0.attn.to_q.weight"
    assert torch.equal(hybrid["transformer"].state_dict()[key], states["diffusion_transformer_320p"][key])
    assert torch.equal(monolithic["transformer"].state_dict()[key],
                       states["diffusion_transformer_320p_multistep_t2v"][key])
    assert torch.equal(monolithic["context_adapter"].proj_out.weight,
                       states["context_adapter_multistep_t2v"]["network_layers.2.0.weight"])

    video = generate(NeodragonPipeline(**hybrid))  # SSD-1B first frame, then 1-1-1
    assert video.shape == (1, 9, 64, 64, 3) and np.isfinite(video).all()
    video = generate(NeodragonPipeline(**monolithic), num_inference_steps=1, video_num_inference_steps=1)
    assert video.shape == (1, 9, 64, 64, 3) and np.isfinite(video).all()


def test_load_pyramid_flow(pyramid_flow):
    root, _ = pyramid_flow
    components = load_pyramid_flow(root, variant="384p")
    assert components["context_adapter"] is None and components["first_frame_pipeline"] is None
    assert isinstance(components["text_encoder_3"], T5EncoderModel)
    assert components["mode"] == "monolithic" and components["prompt_suffix"] == PYRAMID_FLOW_PROMPT_SUFFIX
    assert (components["default_height"], components["default_width"], components["default_num_frames"]) == (
        384, 640, 121)
    with pytest.raises(ValueError, match=r"lacks the folders \['diffusion_transformer_768p'\]"):
        load_pyramid_flow(root, variant="768p")


# ============================================================================ from_pretrained auto-detection


def _conversion_warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "diffusers_neodragon.loaders.pipeline_loading" and "converted on the fly" in r.getMessage()]


def test_from_pretrained_detects_the_official_layout(official, tmp_path, caplog):
    root, states = official
    with caplog.at_level("WARNING", logger="diffusers_neodragon.loaders.pipeline_loading"):
        pipe = NeodragonPipeline.from_pretrained(root)
    assert type(pipe) is NeodragonPipeline and pipe.config.mode == "hybrid" and pipe.first_frame_pipeline is not None
    (message,) = _conversion_warnings(caplog)  # exactly one line says what happened
    assert "\n" not in message and "official Neodragon layout" in message and "mode=hybrid" in message
    for key, value in states["diffusion_transformer_320p"].items():
        if key != "pos_embed.pos_embed":
            assert torch.equal(pipe.transformer.state_dict()[key], value), key

    pipe = NeodragonPipeline.from_pretrained(str(root), mode="monolithic", torch_dtype=torch.bfloat16,
                                             prompt_suffix="!")
    assert pipe.config.mode == "monolithic" and pipe.transformer.dtype == torch.bfloat16
    assert pipe.first_frame_pipeline is None and pipe.config.prompt_suffix == "!"
    assert torch.equal(pipe.transformer.proj_out.weight,
                       states["diffusion_transformer_320p_multistep_t2v"]["proj_out.weight"].bfloat16())
    with pytest.raises(ValueError, match=r"\['device_map'\] are not supported"):
        NeodragonPipeline.from_pretrained(root, mode="monolithic", device_map="cuda")
    with pytest.raises(ValueError, match="mode must be one of"):
        NeodragonPipeline.from_pretrained(root, mode="fast")

    # A diffusers-format folder goes through diffusers' loader (no conversion), `mode` overriding the saved config.
    pipe.save_pretrained(tmp_path / "saved")
    caplog.clear()
    with caplog.at_level("WARNING", logger="diffusers_neodragon.loaders.pipeline_loading"):
        loaded = NeodragonPipeline.from_pretrained(tmp_path / "saved", mode="hybrid")
    assert not _conversion_warnings(caplog)
    assert type(loaded) is NeodragonPipeline and loaded.config.mode == "hybrid"
    assert torch.equal(loaded.transformer.proj_out.weight, pipe.transformer.proj_out.weight)


def test_from_pretrained_detects_the_pyramid_flow_layout(pyramid_flow, caplog):
    root, states = pyramid_flow
    with caplog.at_level("WARNING", logger="diffusers_neodragon.loaders.pipeline_loading"):
        pipe = NeodragonPipeline.from_pretrained(root)
    (message,) = _conversion_warnings(caplog)
    assert "Pyramid-Flow SD3 (384p)" in message
    assert pipe.config.mode == "monolithic" and pipe.context_adapter is None
    assert pipe.config.prompt_suffix == PYRAMID_FLOW_PROMPT_SUFFIX
    assert torch.equal(pipe.transformer.context_embedder.weight,
                       states["diffusion_transformer_384p"]["context_embedder.weight"])
    with pytest.raises(ValueError, match="monolithic mode only"):
        NeodragonPipeline.from_pretrained(root, mode="hybrid")
    with pytest.raises(ValueError, match=r"lacks the folders \['diffusion_transformer_768p'\]"):
        NeodragonPipeline.from_pretrained(root, pyramid_flow_variant="768p")


def test_from_pretrained_hub_id_downloads_only_what_the_mode_needs(official, monkeypatch, tmp_path):
    import diffusers_neodragon.loaders.pipeline_loading as pipeline_loading

    root, _ = official
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns, kwargs))
        return str(root)

    monkeypatch.setattr(pipeline_loading, "snapshot_download", fake_snapshot_download)
    pipe = NeodragonPipeline.from_pretrained("Qualcomm-AI-Research/Neodragon", mode="monolithic", revision="abc")
    assert pipe.config.mode == "monolithic"
    (repo, probe, probe_kwargs), (_, patterns, _) = calls
    assert repo == "Qualcomm-AI-Research/Neodragon" and probe == ["*.json"] and probe_kwargs == {"revision": "abc"}
    assert "diffusion_transformer_320p_multistep_t2v/*" in patterns and "context_adapter_multistep_t2v/*" in patterns
    assert "diffusion_transformer_320p/*" not in patterns and not any(p.startswith("ssd_1b") for p in patterns)


# ============================================================================ converter scripts


def test_convert_neodragon_cli_writes_loadable_folders(official, tmp_path):
    root, states = official
    script = load_converter("convert_neodragon_to_diffusers")
    out = tmp_path / "converted"
    assert script.main(["--checkpoint_path", str(root), "--mode", "all", "--dtype", "float32",
                        "--output_path", str(out)]) == 0
    for mode, dit in (("hybrid", "diffusion_transformer_320p"),
                      ("monolithic", "diffusion_transformer_320p_multistep_t2v")):
        folder = out / mode
        assert (folder / "model_index.json").exists() and not list(folder.rglob("*.bin"))
        card = (folder / "README.md").read_text()
        assert "BSD-3-Clause-Clear" in card and "Read the model card" in card and "--mode all" in card
        assert "`transformer` | `NeodragonTransformer3DModel`" in card and "{{" not in card
        for loader in (NeodragonPipeline, DiffusionPipeline) if mode == "hybrid" else (NeodragonPipeline,):
            pipe = loader.from_pretrained(folder)
            assert type(pipe) is NeodragonPipeline and pipe.config.mode == mode
            assert pipe.config.prompt_suffix == NEODRAGON_PROMPT_SUFFIX
            for key, value in pipe.transformer.state_dict().items():
                assert torch.equal(value, states[dit][key]), key
        assert (pipe.first_frame_pipeline is not None) == (mode == "hybrid")
    kwargs = dict(num_inference_steps=1, video_num_inference_steps=1)
    assert np.isfinite(generate(pipe, **kwargs)).all()


def test_convert_pyramid_flow_cli_and_push(pyramid_flow, tmp_path, monkeypatch):
    import huggingface_hub

    root, states = pyramid_flow
    pushed = []
    monkeypatch.setattr(huggingface_hub, "create_repo",
                        lambda repo_id, **kw: type("Repo", (), {"repo_id": repo_id})())
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kw: pushed.append(kw))
    script = load_converter("convert_pyramid_flow_to_diffusers")
    out = tmp_path / "pf"
    assert script.main(["--checkpoint_path", str(root), "--variant", "384p", "--dtype", "bfloat16",
                        "--output_path", str(out), "--push_to_hub", "--hub_model_id", "me/pf",
                        "--hub_token", "secret"]) == 0
    assert pushed and pushed[0]["repo_id"] == "me/pf" and pushed[0]["folder_path"] == str(out)
    card = (out / "README.md").read_text()
    assert "MIT" in card and "secret" not in card and "--hub_token ***" in card
    assert 'DiffusionPipeline.from_pretrained("me/pf"' in card  # the usage example loads the pushed repo
    saved = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    pipe = NeodragonPipeline.from_pretrained(out, dtype=torch.bfloat16)
    assert pipe.context_adapter is None and pipe.transformer.config.context_embedder_dim == T5XXL_WIDTH
    assert pipe.config.prompt_suffix == PYRAMID_FLOW_PROMPT_SUFFIX
    assert torch.equal(pipe.transformer.context_embedder.weight,
                       states["diffusion_transformer_384p"]["context_embedder.weight"].bfloat16())
    assert pipe.vae.config.video_latent_scale == pytest.approx(1 / 3.0986)
    pipe.to(torch.float32)
    video = generate(pipe, num_inference_steps=1, video_num_inference_steps=1, guidance_scale=7.0,
                     video_guidance_scale=5.0)
    assert video.shape == (1, 9, 64, 64, 3) and np.isfinite(video).all()
