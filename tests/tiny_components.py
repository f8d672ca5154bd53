"""Tiny random components of a complete NeodragonPipeline (every part real, every size minimal)."""

import torch
from diffusers import AutoencoderKL, LCMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from diffusers_neodragon import (
    AsymmetricVAE,
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


def clip_tokenizer():
    return build_word_level_tokenizer(WORDS, model_max_length=12, bos_token="<|startoftext|>", eos_token="<|endoftext|>")


def clip_encoder(cls, tokenizer, hidden=16, projection=8, seed=0):
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, projection_dim=projection, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
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
    transformer = NeodragonTransformer3DModel(
        in_channels=LATENT_CHANNELS, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        pooled_projection_dim=16, sample_size=16, pos_embed_max_size=32,
    )
    # A fresh SD3-style model is not zero-initialised here, but make sure no layer is (gates, output).
    with torch.no_grad():
        for param in transformer.parameters():
            param.normal_(0, 0.2)
    vae = AsymmetricVAE(
        latent_channels=LATENT_CHANNELS, encoder_block_out_channels=(8, 8, 8, 8), encoder_layers_per_block=(1, 1, 1, 1),
        norm_num_groups=4, decoder_num_features=(8, 8, 8, 8),
    )
    # The VAE's trunc-normal(0.02) init decodes everything to grey; PyTorch's default init keeps signal flowing.
    for module in vae.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)):
            module.reset_parameters()
    t5_tokenizer = build_word_level_tokenizer(WORDS, model_max_length=16)
    dt5 = DT5EncoderModel(DT5Config(
        vocab_size=len(t5_tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, projection_dim=24,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )).eval()
    clip_tok = clip_tokenizer()
    return dict(
        transformer=transformer.eval(),
        scheduler=PyramidalDMDScheduler(),
        vae=vae.eval(),
        text_encoder_3=dt5,
        tokenizer_3=t5_tokenizer,
        context_adapter=ContextAdapter(in_features=24, out_features=16, hidden_features=(32, 32)).eval(),
        text_encoder=clip_encoder(CLIPTextModelWithProjection, clip_tok, seed=seed + 3),
        tokenizer=clip_tok,
        text_encoder_2=clip_encoder(CLIPTextModelWithProjection, clip_tok, seed=seed + 4),
        tokenizer_2=clip_tokenizer(),
        first_frame_pipeline=first_frame_pipeline(seed + 5) if with_first_frame else None,
        super_resolution=QuickSRNet(num_channels=8, num_intermediate_layers=1).eval() if with_super_resolution else None,
    )


def pipeline(seed=0, **kwargs):
    pipe = NeodragonPipeline(**components(seed, **kwargs))
    pipe.set_progress_bar_config(disable=True)
    if pipe.first_frame_pipeline is not None:
        pipe.first_frame_pipeline.set_progress_bar_config(disable=True)
    return pipe


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
    torch.manual_seed(seed)
    config = {k: v for k, v in parts["transformer"].config.items() if not k.startswith("_")}
    config["context_embedder_dim"] = parts["text_encoder_3"].config.projection_dim
    transformer = NeodragonTransformer3DModel.from_config(config)
    with torch.no_grad():
        for param in transformer.parameters():
            param.normal_(0, 0.2)
    parts.update(transformer=transformer.eval(), context_adapter=None)
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
