"""NeodragonPipeline: text/image-to-video with a pyramidal, autoregressive MMDiT.

Generation runs latent frame by latent frame (1 latent frame = 8 video frames). Each latent frame is denoised
through the pyramid stages (¼, ½, full resolution) conditioned on the clean frames generated before it. The
first latent frame comes from a user image, from a text-to-image pipeline (``hybrid``), or from the DiT itself
(``monolithic``).
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import logging, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor

from ...loaders import OfficialLayoutLoaderMixin
from .acceleration import NeodragonAccelerationMixin
from .first_frame import NeodragonFirstFrameMixin
from .mode_defaults import MODE_DEFAULTS, MODES, OUTPUT_TYPES, first_given
from .pipeline_output import NeodragonPipelineOutput
from .prompt_encoding import NeodragonPromptEncodingMixin
from .pyramid_sampling import sample_latent_frame


logger = logging.get_logger(__name__)

# Guidance beyond this only saturates the video (1e30 gives all black); real models use 1-15.
MAX_GUIDANCE_SCALE = 100.0
# Latent frames per decode/SR chunk by default: streaming one at a time bounds the pipeline's peak memory (the
# full-resolution feature maps) and gives the same video at no cost in time.
DEFAULT_DECODE_CHUNK_SIZE = 1

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers.utils import export_to_video
        >>> from diffusers_neodragon import NeodragonPipeline

        >>> pipe = NeodragonPipeline.from_pretrained("path/to/neodragon-hybrid", torch_dtype=torch.bfloat16).to("cuda")
        >>> video = pipe("A drone flying over a snowy forest", generator=torch.Generator().manual_seed(0)).frames[0]
        >>> export_to_video(video, "drone.mp4", fps=24)
        ```
"""

class NeodragonPipeline(
    NeodragonAccelerationMixin, NeodragonPromptEncodingMixin, NeodragonFirstFrameMixin, OfficialLayoutLoaderMixin,
    DiffusionPipeline,
):
    r"""Text-to-video and image-to-video generation with Neodragon.

    Components:
        transformer ([`NeodragonTransformer3DModel`]): the pyramidal MMDiT denoiser.
        scheduler ([`PyramidalDMDScheduler`]): pyramid sigmas/timesteps, Euler steps and stage re-noising.
        vae ([`AsymmetricVAE`] or any VAE with the same API): causal encoder + (tiny) decoder, latent normalisation.
        text_encoder_3 (DT5, transformers model) + tokenizer_3: the token-level text features.
        context_adapter ([`ContextAdapter`], optional): maps text_encoder_3 features to the transformer width;
            absent when the transformer has its own ``context_embedder`` (Pyramid-Flow checkpoints).
        text_encoder / text_encoder_2 (CLIPTextModelWithProjection) + tokenizers: the pooled text vector (their
            ``text_embeds`` concatenated); either may be absent if the other one fills ``pooled_projection_dim``.
        first_frame_pipeline (a diffusers text-to-image pipeline, optional): the ``hybrid`` first frame (SSD-1B); or a
            ``NeodragonPipeline`` sharing this one's latent space (the same VAE), e.g. the multi-step teacher of a
            step-distilled student: it makes latent frame 0 with its own defaults in ``monolithic`` mode and hands
            it over as latents (no decode/encode round trip); the paper's hybrid evaluation setting. Its prompt
            encoders' weights that equal ours (SSD-1B's CLIP-L and CLIP-G) are held once.
        super_resolution ([`QuickSRNet`], optional): 2x per-frame super-resolution of the decoded video.
        safety_checker ([`~diffusers.pipelines.stable_diffusion.StableDiffusionSafetyChecker`], optional) +
            feature_extractor (`CLIPImageProcessor`): checks every decoded frame; flagged frames are blacked out and
            reported in ``nsfw_content_detected``.

    Components marked optional may be ``None``. Without ``text_encoder_3`` / ``tokenizer_3`` (or the CLIP pair) the
    pipeline runs from ``prompt_embeds`` (and ``pooled_prompt_embeds``) only; a call that needs a missing component
    raises a ``ValueError`` naming it.

    ``from_pretrained`` also takes the published releases as they are (the official Neodragon snapshot, Pyramid-Flow
    SD3) and converts them on the fly; see [`~diffusers_neodragon.loaders.OfficialLayoutLoaderMixin`].

    Config:
        mode: default generation mode, ``"hybrid"`` or ``"monolithic"``.
        prompt_suffix: appended to every prompt (the release uses ", cinematic, realistic textures, ...").
        default_negative_prompt: used for classifier-free guidance when no negative prompt is given.
        default_height, default_width, default_num_frames: the size a call without them generates (the size the
            transformer was trained at).
        default_guidance_scale, default_video_guidance_scale: the CFG scales of a call without them; ``None`` (the
            default) takes the mode's (monolithic 7 and 5, hybrid none). A model that uses its caption weakly may
            need more, as the embedded Shapes model does.
        default_history_noise: the ``history_noise`` of a call without it (0, the reference's sampler, by default).
        default_num_inference_steps, default_video_num_inference_steps: the steps per stage (an int or one per
            stage) of a call without them; ``None`` (the default) takes the mode's. A step-distilled (DMD) student
            stores its distilled steps here, e.g. 1 (1-1-1).
        requires_safety_checker: warn when the pipeline has no ``safety_checker`` (set for real-world releases;
            ``False`` for the synthetic Shapes model and by default).
    """

    model_cpu_offload_seq = (
        "text_encoder->text_encoder_2->text_encoder_3->context_adapter->transformer->vae->super_resolution"
    )
    _exclude_from_cpu_offload = ["safety_checker"]
    _optional_components = [
        "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3",
        "context_adapter", "first_frame_pipeline",
        "super_resolution", "safety_checker", "feature_extractor",
    ]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "pooled_prompt_embeds"]

    def __init__(
        self,
        transformer,
        scheduler,
        vae,
        text_encoder_3,
        tokenizer_3,
        context_adapter=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        first_frame_pipeline=None,
        super_resolution=None,
        safety_checker=None,
        feature_extractor=None,
        mode: str = "hybrid",
        prompt_suffix: str = "",
        default_negative_prompt: str = "",
        default_height: int = 320,
        default_width: int = 512,
        default_num_frames: int = 49,
        default_guidance_scale: float | None = None,
        default_video_guidance_scale: float | None = None,
        default_history_noise: float = 0.0,
        requires_safety_checker: bool = False,
        default_num_inference_steps: int | list[int] | None = None,
        default_video_num_inference_steps: int | list[int] | None = None,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if safety_checker is not None and feature_extractor is None:
            raise ValueError(
                "A `safety_checker` needs the `feature_extractor` (a CLIPImageProcessor) that prepares its input; "
                "pass both, or neither"
            )
        if safety_checker is None and requires_safety_checker:
            logger.warning(
                f"You have disabled the safety checker for {self.__class__} by passing `safety_checker=None`. Ensure"
                " that you abide by the conditions of the model's license and do not expose unfiltered results in"
                " services or applications open to the public. Pass `requires_safety_checker=False` to silence this."
            )
        self.register_modules(
            transformer=transformer, scheduler=scheduler, vae=vae, text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3, context_adapter=context_adapter, text_encoder=text_encoder, tokenizer=tokenizer,
            text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, first_frame_pipeline=first_frame_pipeline,
            super_resolution=super_resolution, safety_checker=safety_checker, feature_extractor=feature_extractor,
        )
        self._share_first_frame_weights()
        self.register_to_config(
            mode=mode, prompt_suffix=prompt_suffix, default_negative_prompt=default_negative_prompt,
            default_height=default_height, default_width=default_width, default_num_frames=default_num_frames,
            default_guidance_scale=default_guidance_scale, default_video_guidance_scale=default_video_guidance_scale,
            default_history_noise=default_history_noise, requires_safety_checker=requires_safety_checker,
            default_num_inference_steps=default_num_inference_steps,
            default_video_num_inference_steps=default_video_num_inference_steps,
        )
        self.vae_spatial_scale = getattr(vae.config, "spatial_downsample_scale", 8) if vae is not None else 8
        self.vae_temporal_scale = getattr(vae.config, "temporal_downsample_scale", 8) if vae is not None else 8
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_spatial_scale, resample="lanczos")
        self._guidance_scale = self._video_guidance_scale = None
        self._num_timesteps, self._interrupt, self._unit, self._negatives_encoded = 0, False, 0, False

    # ------------------------------------------------------------------ properties
    @property
    def size_multiple(self) -> int:
        """Height/width must be multiples of this: VAE scale x 2^(stages-1) x patch size (64 for Neodragon)."""
        return self.vae_spatial_scale * 2 ** (self.scheduler.config.stages - 1) * self.transformer.config.patch_size

    # The state of the running call: a `callback_on_step_end` may change `_guidance_scale`,
    # `_video_guidance_scale` or `_interrupt` on the pipeline; the loop reads them at every step.
    @property
    def guidance_scale(self) -> float | None:
        """CFG scale of the DiT-generated first frame in the running call."""
        return self._guidance_scale

    @property
    def video_guidance_scale(self) -> float | None:
        """CFG scale of the later latent frames in the running call."""
        return self._video_guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the latent frame being generated uses CFG now: its scale > 1 and the call encoded negatives."""
        scale = self._guidance_scale if self._unit == 0 else self._video_guidance_scale
        return self._negatives_encoded and scale is not None and scale > 1.0

    @property
    def max_size(self) -> int | None:
        """The largest height/width the transformer's position grid covers (``pos_embed_max_size`` tokens)."""
        grid = self.transformer.config.pos_embed_max_size
        return None if grid is None else grid * self.transformer.config.patch_size * self.vae_spatial_scale

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def _require(self, *names: str, purpose: str):
        missing = [name for name in names if getattr(self, name, None) is None]
        if missing:
            raise ValueError(
                f"This pipeline has no {', '.join(f'`{n}`' for n in missing)} component, which {purpose}; load the "
                f"pipeline with it (`from_pretrained(..., {missing[0]}=...)`)"
            )

    def _text_feature_dim(self) -> int:
        """Width of the token features the transformer takes (``prompt_embeds``' last dimension)."""
        config = self.transformer.config
        return config.context_embedder_dim or config.num_attention_heads * config.attention_head_dim

    # ------------------------------------------------------------------ inputs
    def check_inputs(
        self, prompt, negative_prompt, image, mode, height, width, num_frames, num_inference_steps,
        video_num_inference_steps, guidance_scale, video_guidance_scale, num_videos_per_prompt, output_type,
        generator, latents, callback_on_step_end_tensor_inputs, max_sequence_length, super_resolution=None,
        decode_chunk_size=None, history_noise=0.0, prompt_embeds=None, negative_prompt_embeds=None,
        pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None, prompt_attention_mask=None,
        negative_prompt_attention_mask=None,
    ):
        """Reject bad input with a ValueError that says what is allowed, before any model runs."""
        self._require("transformer", "scheduler", purpose="denoises the video")
        if output_type != "latent" or image is not None:
            self._require("vae", purpose="encodes the first-frame image and decodes the video")
        if isinstance(history_noise, bool) or not isinstance(history_noise, (int, float)) or not 0 <= history_noise < 1:
            raise ValueError(f"`history_noise` must be a number in [0, 1), got {history_noise!r}")
        if decode_chunk_size is not None and (not isinstance(decode_chunk_size, int) or decode_chunk_size < 1):
            raise ValueError(
                f"`decode_chunk_size` must be a positive int (latent frames) or None, got {decode_chunk_size!r}")
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Pass either `prompt` or `prompt_embeds` (with `pooled_prompt_embeds`), not both")
        if prompt is None and prompt_embeds is None:
            raise ValueError("Pass `prompt` (a string or list of strings) or `prompt_embeds` + `pooled_prompt_embeds`")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Pass either `negative_prompt` or `negative_prompt_embeds`, not both")
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else prompt
            if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
                raise ValueError(f"`prompt` must be a non-empty string or a non-empty list of strings, got {prompt!r}")
            if any(not p.strip() for p in prompts):
                raise ValueError("`prompt` must not be empty or whitespace only")
            num_prompts = len(prompts)
            self._require("text_encoder_3", "tokenizer_3", purpose="encodes `prompt` (or pass `prompt_embeds`)")
        else:
            num_prompts = self._check_embeds(
                "prompt", prompt_embeds, pooled_prompt_embeds, prompt_attention_mask, batch=None
            )
        if negative_prompt_embeds is not None:
            self._check_embeds(
                "negative_prompt", negative_prompt_embeds, negative_pooled_prompt_embeds,
                negative_prompt_attention_mask, batch=num_prompts,
            )
        elif negative_pooled_prompt_embeds is not None or negative_prompt_attention_mask is not None:
            raise ValueError(
                "`negative_pooled_prompt_embeds` / `negative_prompt_attention_mask` need `negative_prompt_embeds`")
        if prompt_embeds is None and (pooled_prompt_embeds is not None or prompt_attention_mask is not None):
            raise ValueError("`pooled_prompt_embeds` / `prompt_attention_mask` need `prompt_embeds`")
        if negative_prompt is not None:
            negatives = [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
            if not isinstance(negatives, (list, tuple)) or not all(isinstance(p, str) for p in negatives):
                raise ValueError("`negative_prompt` must be a string or a list of strings")
            if len(negatives) not in (1, num_prompts):
                raise ValueError(
                    f"`negative_prompt` has {len(negatives)} entries but `prompt` has {num_prompts}; give one or as "
                    "many"
                )
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
        multiple, largest = self.size_multiple, self.max_size
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % multiple:
                raise ValueError(f"`{name}` must be a positive multiple of {multiple}, got {value!r}")
            if largest is not None and value > largest:
                raise ValueError(f"`{name}` must be at most {largest} (the transformer's position grid), got {value}")
        if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % self.vae_temporal_scale:
            raise ValueError(
                f"`num_frames` must be {self.vae_temporal_scale}k+1 (1, 9, 17, ..., 49), got {num_frames!r}"
            )
        stages = self.scheduler.config.stages
        for name, steps in (("num_inference_steps", num_inference_steps),
                            ("video_num_inference_steps", video_num_inference_steps)):
            if not (
                isinstance(steps, (list, tuple)) and len(steps) == stages
                and all(isinstance(s, int) and s >= 1 for s in steps)
            ):
                raise ValueError(f"`{name}` must be a positive int or a list of {stages} positive ints, got {steps!r}")
        for name, scale in (("guidance_scale", guidance_scale), ("video_guidance_scale", video_guidance_scale)):
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0, got {scale!r}")
            if scale > MAX_GUIDANCE_SCALE:
                raise ValueError(
                    f"`{name}` must be at most {MAX_GUIDANCE_SCALE:g} (models use 1-15; larger scales saturate the "
                    f"video), got {scale!r}"
                )
        if not isinstance(num_videos_per_prompt, int) or num_videos_per_prompt < 1:
            raise ValueError(f"`num_videos_per_prompt` must be a positive int, got {num_videos_per_prompt!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if not isinstance(max_sequence_length, int) or max_sequence_length < 1:
            raise ValueError(f"`max_sequence_length` must be a positive int, got {max_sequence_length!r}")
        batch = num_prompts * num_videos_per_prompt
        self._check_generator(generator, batch)
        if image is not None:
            self._check_image(image, num_prompts)
        elif mode == "hybrid" and self.first_frame_pipeline is None:
            raise ValueError(
                "`mode='hybrid'` takes its first frame from `image` or from the `first_frame_pipeline` component; "
                "this pipeline has no first_frame_pipeline, so pass `image=` or use `mode='monolithic'`"
            )
        elif mode == "hybrid" and prompt is None:
            raise ValueError(
                "`mode='hybrid'` draws its first frame with the `first_frame_pipeline` from the `prompt` text; with "
                "`prompt_embeds` pass `image=` or use `mode='monolithic'`"
            )
        if latents is not None:
            expected = (
                batch, self.transformer.config.in_channels, (num_frames - 1) // self.vae_temporal_scale + 1,
                height // self.vae_spatial_scale, width // self.vae_spatial_scale,
            )
            if tuple(latents.shape) != expected:
                raise ValueError(
                    f"`latents` (full-resolution noise) must have shape {expected}, got {tuple(latents.shape)}")
        if super_resolution and self.super_resolution is None:
            raise ValueError("super_resolution=True but the pipeline has no super_resolution component")
        if callback_on_step_end_tensor_inputs is not None:
            unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
            if unknown:
                raise ValueError(
                    f"callback_on_step_end_tensor_inputs {sorted(unknown)} are not among {self._callback_tensor_inputs}"
                )

    def _check_embeds(self, name, embeds, pooled, mask, batch):
        """``{name}_embeds`` [B, L, D], ``pooled_{name}_embeds`` [B, P] and the optional mask [B, L] (1 = token,
        0 = padding) fit each other and the transformer; returns B."""
        dim, pooled_dim = self._text_feature_dim(), self.transformer.config.pooled_projection_dim
        if not torch.is_tensor(embeds) or embeds.ndim != 3 or embeds.shape[-1] != dim:
            shape = tuple(embeds.shape) if torch.is_tensor(embeds) else type(embeds).__name__
            raise ValueError(f"`{name}_embeds` must be a tensor [batch, tokens, {dim}], got {shape}")
        if pooled is None:
            raise ValueError(f"`{name}_embeds` needs `pooled_{name}_embeds` (the pooled CLIP vector) too")
        if not torch.is_tensor(pooled) or tuple(pooled.shape) != (embeds.shape[0], pooled_dim):
            shape = tuple(pooled.shape) if torch.is_tensor(pooled) else type(pooled).__name__
            raise ValueError(f"`pooled_{name}_embeds` must be a tensor [{embeds.shape[0]}, {pooled_dim}], got {shape}")
        mask_name = f"{name}_attention_mask"
        if mask is not None and (not torch.is_tensor(mask) or tuple(mask.shape) != tuple(embeds.shape[:2])):
            shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
            raise ValueError(
                f"`{mask_name}` must be a tensor {tuple(embeds.shape[:2])} like `{name}_embeds`, got {shape}")
        if batch is not None and embeds.shape[0] != batch:
            raise ValueError(f"`{name}_embeds` has batch {embeds.shape[0]} but the prompts number {batch}")
        return embeds.shape[0]

    def _check_generator(self, generator, batch: int):
        generators = generator if isinstance(generator, list) else [generator]
        if generator is None:
            return
        if not generators or not all(isinstance(g, torch.Generator) for g in generators):
            raise ValueError(
                f"`generator` must be a torch.Generator or a list of them (one per video), got {generator!r}; "
                "for a seed use `generator=torch.Generator().manual_seed(seed)`"
            )
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"Got {len(generator)} generators for a batch of {batch} videos; give one or {batch}")
        # As diffusers' randn_tensor: a CPU generator serves any device, another device's only its own.
        device = torch.device(self._execution_device)
        for g in generators:
            if g.device.type != "cpu" and g.device.type != device.type:
                raise ValueError(
                    f"A generator on {g.device} cannot draw the noise of a pipeline running on {device}; use a CPU "
                    f"generator or one on {device.type}"
                )

    @staticmethod
    def _check_image(image, num_prompts: int):
        images = image if isinstance(image, list) else [image]
        for item in images:
            if isinstance(item, PIL.Image.Image):
                continue
            if isinstance(item, (torch.Tensor, np.ndarray)):
                ndim, channels = item.ndim, None
                if ndim == 3:
                    channels = item.shape[0] if isinstance(item, torch.Tensor) else item.shape[-1]
                elif ndim == 4:
                    channels = item.shape[1] if isinstance(item, torch.Tensor) else item.shape[-1]
                if channels != 3:
                    raise ValueError(
                        f"`image` arrays must be RGB: tensors [3, H, W] / [B, 3, H, W] in [0, 1], numpy [H, W, 3] / "
                        f"[B, H, W, 3] in [0, 1]; got shape {tuple(item.shape)}"
                    )
                continue
            raise ValueError(
                f"`image` must be a PIL image, a tensor, a numpy array or a list of them, got {type(item)}")
        count = sum(i.shape[0] if getattr(i, "ndim", 0) == 4 else 1 for i in images)
        if count not in (1, num_prompts):
            raise ValueError(f"Got {count} images for {num_prompts} prompts; give one image or one per prompt")

    def run_safety_checker(self, video: torch.Tensor, device) -> tuple[torch.Tensor, list[list[bool]] | None]:
        """Check every frame of ``video`` [B, 3, F, H, W] in [-1, 1] with the ``safety_checker``; flagged frames are
        blacked out. Returns the video and, per video, one flag per frame (``None`` without a safety checker)."""
        if self.safety_checker is None:
            return video, None
        b, c, f, h, w = video.shape
        frames = (video.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1).reshape(b * f, h, w, c).cpu().numpy()
        clip_input = self.feature_extractor(self.video_processor.numpy_to_pil(frames), return_tensors="pt").pixel_values
        _, flags = self.safety_checker(
            images=frames.copy(), clip_input=clip_input.to(device=device, dtype=self.safety_checker.dtype)
        )
        flags = torch.tensor([bool(flag) for flag in flags]).reshape(b, f)
        black = flags.to(video.device)[:, None, :, None, None]
        video = torch.where(black, torch.full_like(video, -1.0), video)
        return video, flags.tolist()

    def _decode(self, latents: torch.Tensor, upscale: bool, chunk_size: int | None) -> torch.Tensor:
        """Normalised latents -> pixels [B, 3, F, H, W] in [-1, 1], super-resolved when ``upscale``; with a
        ``chunk_size`` each video streams through the decoder and SR that many latent frames at a time."""
        raw = self.vae.denormalize_latents(latents.to(self.vae.dtype))

        def finish(pixels: torch.Tensor) -> torch.Tensor:
            return self.super_resolution.upscale_video(pixels.to(self.super_resolution.dtype)) if upscale else pixels

        if chunk_size is None:
            return finish(self.vae.decode(raw).sample)
        return torch.cat([
            torch.cat([finish(chunk) for chunk in self.vae.iter_decode(video, chunk_size)], dim=2)
            for video in raw.split(1)
        ])

    def denoise_unit(
        self,
        x: torch.Tensor,
        history: list[torch.Tensor] | None,
        text: tuple,
        num_inference_steps: list[int],
        guidance_scale: float | Callable[[], float | None] | None = None,
        generator: torch.Generator | None = None,
        history_sigma: torch.Tensor | None = None,
        start_stage: int = 0,
        on_step: Callable | None = None,
    ) -> torch.Tensor:
        """Sample one latent frame through the pyramid stages ``start_stage`` .. last with this pipeline's transformer
        and scheduler: [`~pipelines.neodragon.pyramid_sampling.sample_latent_frame`], whose arguments these are; it
        stops stepping once ``interrupt`` is set."""
        return sample_latent_frame(
            self.transformer, self.scheduler, x, history, text, num_inference_steps, guidance_scale, generator,
            history_sigma, start_stage, on_step, interrupted=lambda: self.interrupt,
        )

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any | None = None,
        negative_prompt: str | list[str] | None = None,
        mode: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | Sequence[int] | None = None,
        video_num_inference_steps: int | Sequence[int] | None = None,
        guidance_scale: float | None = None,
        video_guidance_scale: float | None = None,
        history_noise: float | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        super_resolution: bool | None = None,
        decode_chunk_size: int | None = DEFAULT_DECODE_CHUNK_SIZE,
        first_frame_kwargs: dict[str, Any] | None = None,
        max_sequence_length: int = 128,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ):
        r"""Generate videos.

        Args:
            prompt: the text(s) to generate from; or pass ``prompt_embeds`` instead.
            image: first frame(s) (PIL, numpy [H, W, 3] in [0, 1], or tensor [3, H, W] in [0, 1]) for image-to-video;
                resized (Lanczos) to ``height`` x ``width``.
            negative_prompt: used when a guidance scale is > 1 (default: the pipeline's ``default_negative_prompt``).
            mode: ``"hybrid"`` (first frame from ``first_frame_pipeline`` unless ``image``) or ``"monolithic"`` (first
                frame from the DiT unless ``image``); default: the pipeline's configured mode.
            height, width: output size before super-resolution (multiples of ``size_multiple``, 64); default: the
                pipeline's ``default_height`` / ``default_width`` (320 x 512 for Neodragon).
            num_frames: 8k+1 frames (49 = 7 latent frames); default: ``default_num_frames``.
            num_inference_steps: DiT steps per stage for a DiT-generated first frame (int or one per stage).
            video_num_inference_steps: DiT steps per stage for every later latent frame.
            guidance_scale, video_guidance_scale: classifier-free guidance for the first / later frames (off at <= 1).
            history_noise: sigma in [0, 1) of the Gaussian noise mixed into the earlier latent frames the transformer
                conditions on (``sigma * noise + (1 - sigma) * clean``, the form of the history corruption of training,
                which draws sigma from U(0, ``corrupt_ratio``)). A model trained so then leans less on the details of
                its own earlier frames, whose errors it otherwise copies forward (drift, ghost copies of a moving
                object). 0 conditions on the clean history, as the reference does; default:
                ``default_history_noise``.
            num_videos_per_prompt: videos per prompt.
            generator: torch generator(s) for all randomness (noise, stage re-noising, first-frame sampling).
            latents: full-resolution initial noise [B, C, T, h, w] (drawn from ``generator`` when omitted).
            prompt_embeds, pooled_prompt_embeds, prompt_attention_mask: precomputed text conditioning (one row per
                prompt) instead of ``prompt``, as [`encode_prompt`] returns it: token features [B, L, D], pooled
                vector [B, P] (required with ``prompt_embeds``), mask [B, L] (1 = token; ``None``: no padding).
            negative_prompt_embeds, negative_pooled_prompt_embeds, negative_prompt_attention_mask: the same for the
                negative prompt (instead of ``negative_prompt``); used by CFG.
            super_resolution: apply the ``super_resolution`` component (default: when present).
            decode_chunk_size: decode (and super-resolve) that many latent frames at a time, carrying the decoder's
                causal state between chunks (same result); bounds the memory of the full-resolution feature maps,
                the largest of the pipeline. Default 1, which costs no time (on the GPU as measured; on the CPU it is
                faster); ``None``: all frames at once.
            first_frame_kwargs: overrides for the first-frame pipeline call (default 4 LCM steps at 999/749/499/249,
                no CFG, at twice the video resolution).
            max_sequence_length: text tokens for ``tokenizer_3``.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            callback_on_step_end: called after every denoising step as ``fn(pipe, step, timestep, kwargs)``; may
                return a dict replacing any of ``callback_on_step_end_tensor_inputs``, and may set
                ``pipe._guidance_scale``, ``pipe._video_guidance_scale`` (read at every step; CFG can be turned off,
                or on where the call encoded a negative prompt) or ``pipe._interrupt = True`` (skips every later
                step; what was generated so far is decoded).

        Examples:

        Returns:
            [`NeodragonPipelineOutput`] or a tuple ``(frames, nsfw_content_detected)``.
        """
        self._require("transformer", "scheduler", purpose="denoises the video")
        mode = mode or self.config.mode
        height = self.config.default_height if height is None else height
        width = self.config.default_width if width is None else width
        num_frames = self.config.default_num_frames if num_frames is None else num_frames
        defaults = MODE_DEFAULTS.get(mode, MODE_DEFAULTS["hybrid"])
        stages = self.scheduler.config.stages

        def per_stage(steps, default):
            steps = default if steps is None else steps
            if isinstance(steps, int):
                return [steps] * stages
            return list(steps) if isinstance(steps, (list, tuple)) else steps

        config = self.config
        num_inference_steps = per_stage(
            num_inference_steps,
            first_given(config.get("default_num_inference_steps"), defaults["num_inference_steps"]))
        video_num_inference_steps = per_stage(
            video_num_inference_steps,
            first_given(config.get("default_video_num_inference_steps"), defaults["video_num_inference_steps"]))
        guidance_scale = first_given(guidance_scale, self.config.default_guidance_scale, defaults["guidance_scale"])
        video_guidance_scale = first_given(
            video_guidance_scale, self.config.default_video_guidance_scale, defaults["video_guidance_scale"])
        history_noise = first_given(history_noise, self.config.default_history_noise)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        self.check_inputs(
            prompt, negative_prompt, image, mode, height, width, num_frames, num_inference_steps,
            video_num_inference_steps, guidance_scale, video_guidance_scale, num_videos_per_prompt, output_type,
            generator, latents, callback_on_step_end_tensor_inputs, max_sequence_length, super_resolution,
            decode_chunk_size, history_noise, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            prompt_attention_mask=prompt_attention_mask, negative_prompt_attention_mask=negative_prompt_attention_mask,
        )
        self._interrupt, self._unit = False, 0
        self._guidance_scale, self._video_guidance_scale = guidance_scale, video_guidance_scale

        device = self._execution_device
        dtype = self.transformer.dtype
        first_from_dit = image is None and mode == "monolithic"
        cfg_first = first_from_dit and guidance_scale > 1.0
        cfg_video = num_frames > 1 and video_guidance_scale > 1.0

        # 1. Text: positive (and negative) prompts in one batch so they share one trimmed length.
        (
            prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds,
            prompt_attention_mask, negative_prompt_attention_mask,
        ) = self.encode_prompt(
            prompt, negative_prompt, cfg_first or cfg_video, num_videos_per_prompt, prompt_embeds,
            negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds, prompt_attention_mask,
            negative_prompt_attention_mask, max_sequence_length, device, dtype,
        )
        batch = prompt_embeds.shape[0]
        self._negatives_encoded = cfg_first or cfg_video
        if cfg_first or cfg_video:
            embeds, mask, pooled = self._negative_then_positive(
                (negative_prompt_embeds, negative_prompt_attention_mask, negative_pooled_prompt_embeds),
                (prompt_embeds, prompt_attention_mask, pooled_prompt_embeds),
            )
        else:
            embeds, mask, pooled = prompt_embeds, prompt_attention_mask, pooled_prompt_embeds
        if prompt is not None:  # the first-frame pipeline's text
            prompts = [p + self.config.prompt_suffix for p in ([prompt] if isinstance(prompt, str) else prompt)]

        # 2. Noise: full resolution, then down to stage 0 (variance preserving), one slice per latent frame.
        latent_frames = (num_frames - 1) // self.vae_temporal_scale + 1
        shape = (batch, self.transformer.config.in_channels, latent_frames, height // self.vae_spatial_scale,
                 width // self.vae_spatial_scale)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        noise = self.scheduler.downsample_noise(latents.to(device=device, dtype=torch.float32), times=stages - 1)
        noise = noise.to(dtype)

        # 3. First frame from an image or the text-to-image pipeline.
        generated = []
        if not first_from_dit and image is None and isinstance(self.first_frame_pipeline, NeodragonPipeline):
            generated.append(self._first_frame_latents(prompt, num_videos_per_prompt, height, width, generator,
                                                       max_sequence_length, first_frame_kwargs).to(device, dtype))
        elif not first_from_dit:
            if image is None:
                pixels = self._first_frame_pixels(prompts, height, width, generator, first_frame_kwargs)
            else:
                pixels = self.video_processor.preprocess(image, height=height, width=width)
            generated.append(self._encode_first_frame(pixels, batch, generator, device, dtype))

        # 4. Autoregressive pyramid denoising, one latent frame at a time.
        history_sigma = torch.full((batch,), float(history_noise), device=device) if history_noise > 0 else None
        first_steps = sum(num_inference_steps) if first_from_dit else 0
        self._num_timesteps = first_steps + sum(video_num_inference_steps) * (latent_frames - 1)
        step_index = 0
        with self.progress_bar(total=self._num_timesteps) as progress_bar:
            def on_step(t, x):
                nonlocal embeds, pooled, step_index
                if callback_on_step_end is not None:
                    local = {"latents": x, "prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
                    callback_kwargs = {k: local[k] for k in callback_on_step_end_tensor_inputs}
                    outputs = callback_on_step_end(self, step_index, t, callback_kwargs) or {}
                    x = outputs.get("latents", x)
                    embeds = outputs.get("prompt_embeds", embeds)
                    pooled = outputs.get("pooled_prompt_embeds", pooled)
                step_index += 1
                progress_bar.update()
                return x

            for unit in range(len(generated), latent_frames):
                self._unit = unit
                steps = num_inference_steps if unit == 0 else video_num_inference_steps
                # Read at every step, so that a callback can change it.
                scale = (lambda: self._guidance_scale) if unit == 0 else (lambda: self._video_guidance_scale)
                history = self.scheduler.pyramid(torch.cat(generated, dim=2)) if generated else None
                x = self.denoise_unit(
                    noise[:, :, unit : unit + 1], history, (embeds, mask, pooled), steps, scale, generator,
                    history_sigma, on_step=on_step,
                )
                generated.append(x)
        latents = torch.cat(generated, dim=2)

        # 5. Decode, optional super-resolution, safety check, post-process.
        nsfw_content_detected = None
        if output_type == "latent":
            video = latents
        else:
            upscale = self.super_resolution is not None if super_resolution is None else super_resolution
            video = self._decode(latents, upscale, decode_chunk_size)
            video, nsfw_content_detected = self.run_safety_checker(video, device)
            video = self.video_processor.postprocess_video(video.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (video, nsfw_content_detected)
        return NeodragonPipelineOutput(frames=video, nsfw_content_detected=nsfw_content_detected)
