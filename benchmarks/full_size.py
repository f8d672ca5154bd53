"""Full-size Neodragon components with random weights, built from configs (no download), for every benchmark.

The released shapes (numbers in reference/official_neodragon_facts.md): the 18-block width-1536 MMDiT (24 heads x 64,
pooled 2048), DT5 (T5-v1.1-base encoder + 768→4096 head) with the 4096-wide ContextAdapter, CLIP-L and CLIP-G
(pooled 768 + 1280 = 2048), the AsymmetricVAE (causal encoder 128/256/512/512, tiny streaming decoder), QuickSRNet
(small, 2x) and an SSD-1B-sized SDXL first-frame pipeline (LCM, 4 steps). Where the library's classes default to
the released size, the builder is that default, so the sizes are written in one place; a benchmark passes overrides
only to measure something else. Modules are returned as built (training mode, the library's init); the caller
seeds the RNG and moves them.
"""

import torch


T5_VOCAB_SIZE = 32128
CLIP_MAX_LENGTH = 77
CLIP_L = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, projection_dim=768)
CLIP_G = dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=20, projection_dim=1280)


def transformer(**overrides):
    """NeodragonTransformer3DModel at its released size (18 blocks, width 1536); overrides change single entries."""
    from diffusers_neodragon import NeodragonTransformer3DModel

    return NeodragonTransformer3DModel(**overrides)


def text_encoder_3(vocab_size: int = T5_VOCAB_SIZE):
    """DT5: the T5-v1.1-base encoder with its 768→4096 projection head."""
    from diffusers_neodragon import DT5Config, DT5EncoderModel

    return DT5EncoderModel(DT5Config(vocab_size=vocab_size, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def context_adapter():
    """The 4096-wide ContextAdapter (DT5's 4096 → the transformer's 1536)."""
    from diffusers_neodragon import ContextAdapter

    return ContextAdapter()


def vae():
    """AsymmetricVAE: the causal encoder and the tiny streaming decoder."""
    from diffusers_neodragon import AsymmetricVAE

    return AsymmetricVAE()


def super_resolution():
    """QuickSRNet-small, 2x."""
    from diffusers_neodragon import QuickSRNet

    return QuickSRNet()


def clip_text_encoder(cls, tokenizer, size: dict):
    """A CLIP text tower of ``size`` (``CLIP_L`` or ``CLIP_G``) over ``tokenizer``'s vocabulary."""
    from transformers import CLIPTextConfig

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), intermediate_size=4 * size["hidden_size"], max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="gelu", bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **size,
    )
    return cls(config)


def first_frame_pipeline(clip_tokenizer):
    """The SDXL layout with SSD-1B's reduced transformer depth (an approximation of SSD-1B's config), LCM 4 steps.
    ``clip_tokenizer()`` makes one CLIP tokenizer."""
    from diffusers import AutoencoderKL, LCMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280), down_block_types=(
            "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 4), attention_head_dim=(5, 10, 20), use_linear_projection=True,
        cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2, sample_size=1024, scaling_factor=0.13025, force_upcast=False,
    )
    tok_1, tok_2 = clip_tokenizer(), clip_tokenizer()
    return StableDiffusionXLPipeline(
        vae=vae, unet=unet, tokenizer=tok_1, tokenizer_2=tok_2,
        text_encoder=clip_text_encoder(CLIPTextModel, tok_1, CLIP_L),
        text_encoder_2=clip_text_encoder(CLIPTextModelWithProjection, tok_2, CLIP_G),
        scheduler=LCMScheduler(set_alpha_to_one=False, original_inference_steps=4, steps_offset=1),
    )


def pipeline_components(clip_tokenizer, t5_tokenizer, with_first_frame: bool = True) -> dict:
    """Every component of a full-size NeodragonPipeline; ``clip_tokenizer()`` makes one CLIP tokenizer, DT5's
    vocabulary is ``t5_tokenizer``'s."""
    from transformers import CLIPTextModelWithProjection

    from diffusers_neodragon import PyramidalDMDScheduler

    tok_l, tok_g = clip_tokenizer(), clip_tokenizer()
    components = dict(
        transformer=transformer(),
        scheduler=PyramidalDMDScheduler(),
        vae=vae(),
        text_encoder_3=text_encoder_3(len(t5_tokenizer)),
        tokenizer_3=t5_tokenizer,
        context_adapter=context_adapter(),
        text_encoder=clip_text_encoder(CLIPTextModelWithProjection, tok_l, CLIP_L),
        tokenizer=tok_l,
        text_encoder_2=clip_text_encoder(CLIPTextModelWithProjection, tok_g, CLIP_G),
        tokenizer_2=tok_g,
        super_resolution=super_resolution(),
    )
    if with_first_frame:
        components["first_frame_pipeline"] = first_frame = first_frame_pipeline(clip_tokenizer)
        # The release's SSD-1B holds the same frozen CLIP-L and CLIP-G as the DiT (NeodragonPipeline holds them once)
        for name in ("text_encoder", "text_encoder_2"):
            ours = components[name].state_dict()
            with torch.no_grad():
                for key, tensor in getattr(first_frame, name).state_dict().items():
                    tensor.copy_(next(v for k, v in ours.items() if k == key or k.endswith("." + key)))
    return components


def configs() -> dict:
    """The full-size configs of the transformer, DT5 and the ContextAdapter, read off models built on the meta
    device (no memory): for code that needs the sizes in another layout (the official classes' arguments)."""
    with torch.device("meta"):
        return dict(transformer=transformer().config, text_encoder_3=text_encoder_3().config,
                    context_adapter=context_adapter().config)
