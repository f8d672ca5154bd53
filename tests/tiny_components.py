"""Tiny random components for every test: each tiny config is written here once, each builder takes overrides.

A builder seeds the global RNG with ``seed`` (``None``: it draws from the RNG as it stands, so that ``components``
keeps one stream for all parts) and applies the init tweak that lets a tiny random model carry signal.
"""

import torch
from diffusers import AutoencoderKL, LCMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from diffusers_neodragon import (
    AsymmetricVAE,
    CausalVideoVAE,
    ContextAdapter,
    DT5Config,
    DT5EncoderModel,
    NeodragonPipeline,
    NeodragonTransformer3DModel,
    PyramidalDMDScheduler,
    QuickSRNet,
)
from diffusers_neodragon.data.vocab_tokenizer import build_word_level_tokenizer


WORDS = "a an the red green blue yellow circle square triangle moving left right up down on background cat dog".split()
LATENT_CHANNELS = 4

TRANSFORMER = dict(
    in_channels=LATENT_CHANNELS, num_layers=2, attention_head_dim=8, num_attention_heads=2, pooled_projection_dim=16,
    sample_size=16, pos_embed_max_size=32,
)
ENCODER = dict(
    latent_channels=LATENT_CHANNELS, encoder_block_out_channels=(8, 8, 8, 8), encoder_layers_per_block=(1, 1, 1, 1),
    norm_num_groups=4,
)
ASYMMETRIC_VAE = dict(**ENCODER, decoder_num_features=(8, 8, 8, 8))
CAUSAL_VAE = dict(**ENCODER, decoder_block_out_channels=(8, 8, 8, 8), decoder_layers_per_block=(1, 1, 1, 1))
# Unequal widths, 16 latent channels and the released depth (two layers per encoder block): what the VAE model tests
# compare with the reference implementations, where a transposed or skipped weight must show.
WIDE_ENCODER = dict(
    latent_channels=16, encoder_block_out_channels=(8, 16, 16, 16), encoder_layers_per_block=(2, 2, 2, 2),
    norm_num_groups=4,
)
DT5 = dict(
    d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, feed_forward_proj="gated-gelu", projection_dim=24,
    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
)
CONTEXT_ADAPTER = dict(in_features=24, out_features=16, hidden_features=(32, 32))
QUICKSRNET = dict(num_channels=8, num_intermediate_layers=1)


def _seed(seed):
    if seed is not None:
        torch.manual_seed(seed)


def transformer_config(**overrides):
    return {**TRANSFORMER, **overrides}


def tiny_transformer(seed=0, std=0.2, **overrides):
    """``std``: every weight drawn from N(0, std) (a fresh SD3-style model has zero gates and output layers after
    training init, so no path is silently multiplied by zero); ``None`` keeps the library's init."""
    _seed(seed)
    model = NeodragonTransformer3DModel(**transformer_config(**overrides))
    if std is not None:
        with torch.no_grad():
            for param in model.parameters():
                param.normal_(0, std)
    return model.eval()


def pytorch_init_(model):
    """The VAEs' trunc-normal(0.02) init decodes everything to grey; PyTorch's default init keeps signal flowing."""
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)):
            module.reset_parameters()
    return model


def fan_in_init_(model, seed=0):
    """Fan-in scaled weights, norm weights near 1, small biases: every path carries an O(1) signal (for models
    compared with a reference implementation, whose own init is small)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim > 1:
                param.copy_(torch.randn(param.shape, generator=g) / (param[0].numel() ** 0.5))
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.2 * torch.randn(param.shape, generator=g))
            else:
                param.copy_(0.1 * torch.randn(param.shape, generator=g))
    return model


def _init_vae(model, init, seed):
    if init == "pytorch":
        pytorch_init_(model)
    elif init == "fan_in":
        fan_in_init_(model, seed)
    elif init is not None:
        raise ValueError(f"init must be 'pytorch', 'fan_in' or None, not {init!r}")
    return model.eval()


def tiny_asymmetric_vae(seed=0, init="pytorch", **overrides):
    """``init``: "pytorch" (PyTorch's default init), "fan_in" (``fan_in_init_`` seeded with ``seed``) or ``None``
    (the library's init)."""
    _seed(seed)
    return _init_vae(AsymmetricVAE(**{**ASYMMETRIC_VAE, **overrides}), init, seed)


def tiny_causal_vae(seed=0, init="pytorch", **overrides):
    """The full causal decoder (the embedded model's VAE); ``init`` as in ``tiny_asymmetric_vae``."""
    _seed(seed)
    return _init_vae(CausalVideoVAE(**{**CAUSAL_VAE, **overrides}), init, seed)


def t5_tokenizer():
    return build_word_level_tokenizer(WORDS, model_max_length=16)


def dt5_config(vocab_size, **overrides):
    return DT5Config(vocab_size=vocab_size, **{**DT5, **overrides})


def tiny_dt5(vocab_size, seed=None, **overrides):
    _seed(seed)
    return DT5EncoderModel(dt5_config(vocab_size, **overrides)).eval()


def tiny_context_adapter(**overrides):
    return ContextAdapter(**{**CONTEXT_ADAPTER, **overrides}).eval()


def tiny_quicksrnet(**overrides):
    return QuickSRNet(**{**QUICKSRNET, **overrides}).eval()


def clip_tokenizer():
    return build_word_level_tokenizer(WORDS, model_max_length=12, bos_token="<|startoftext|>",
                                      eos_token="<|endoftext|>")


def clip_encoder(cls, tokenizer, hidden=16, projection=8, seed=0, **overrides):
    torch.manual_seed(seed)
    config = CLIPTextConfig(**{
        "vocab_size": len(tokenizer), "hidden_size": hidden, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "projection_dim": projection, "max_position_embeddings": tokenizer.model_max_length,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id, **overrides,
    })
    return cls(config).eval()


def first_frame_pipeline(seed=0):
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=4, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=32,
        cross_attention_dim=32, norm_num_groups=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32,
    )
    tokenizer = clip_tokenizer()
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=clip_encoder(CLIPTextModel, tokenizer, seed=seed + 1),
        text_encoder_2=clip_encoder(CLIPTextModelWithProjection, tokenizer, projection=8, seed=seed + 2),
        tokenizer=tokenizer,
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=LCMScheduler(set_alpha_to_one=False, original_inference_steps=4, steps_offset=1),
        force_zeros_for_empty_prompt=True,
    )


def components(seed=0, with_first_frame=True, with_super_resolution=True):
    torch.manual_seed(seed)
    transformer = tiny_transformer(seed=None)
    vae = tiny_asymmetric_vae(seed=None)
    tokenizer_3 = t5_tokenizer()
    dt5 = tiny_dt5(len(tokenizer_3))
    clip_tok = clip_tokenizer()
    return dict(
        transformer=transformer,
        scheduler=PyramidalDMDScheduler(),
        vae=vae,
        text_encoder_3=dt5,
        tokenizer_3=tokenizer_3,
        context_adapter=tiny_context_adapter(),
        text_encoder=clip_encoder(CLIPTextModelWithProjection, clip_tok, seed=seed + 3),
        tokenizer=clip_tok,
        text_encoder_2=clip_encoder(CLIPTextModelWithProjection, clip_tok, seed=seed + 4),
        tokenizer_2=clip_tokenizer(),
        first_frame_pipeline=first_frame_pipeline(seed + 5) if with_first_frame else None,
        super_resolution=tiny_quicksrnet() if with_super_resolution else None,
    )


def pipeline(seed=0, **kwargs):
    pipe = NeodragonPipeline(**components(seed, **kwargs))
    pipe.set_progress_bar_config(disable=True)
    if pipe.first_frame_pipeline is not None:
        pipe.first_frame_pipeline.set_progress_bar_config(disable=True)
    return pipe


def monolithic_pipeline(seed=0, num_frames=9, **kwargs):
    """The pipeline without first-frame model, as a trained Shapes model is saved: monolithic, 64x64 by default."""
    return NeodragonPipeline(**components(seed, with_first_frame=False, **kwargs), mode="monolithic",
                             default_height=64, default_width=64, default_num_frames=num_frames)


def single_clip_components(seed=0, **kwargs):
    """One CLIP text encoder filling the whole pooled vector (``text_encoder`` and its tokenizer absent)."""
    parts = components(seed, **kwargs)
    tokenizer = clip_tokenizer()
    pooled_dim = parts["transformer"].config.pooled_projection_dim
    parts.update(text_encoder=None, tokenizer=None, tokenizer_2=tokenizer,
                 text_encoder_2=clip_encoder(CLIPTextModelWithProjection, tokenizer, projection=pooled_dim, seed=seed))
    return parts


def context_embedder_components(seed=0, **kwargs):
    """A transformer with its own ``context_embedder`` (Pyramid-Flow layout) and no ContextAdapter."""
    parts = components(seed, **kwargs)
    transformer = tiny_transformer(seed, context_embedder_dim=parts["text_encoder_3"].config.projection_dim)
    parts.update(transformer=transformer, context_adapter=None)
    return parts


def safety_checker(seed=0, image_size=32):
    """diffusers' StableDiffusionSafetyChecker on a tiny random CLIP vision tower, with its CLIPImageProcessor."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=32, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        projection_dim=8,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size,
                                                                                  "width": image_size})
    return checker, processor
