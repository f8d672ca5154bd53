"""NeodragonPipeline's first frame when the DiT does not make it: an image pipeline's picture, resized on its
device exactly as Pillow would, or a nested NeodragonPipeline's latent frame; then the video VAE's encoding."""

import inspect

import torch
from diffusers.utils import logging

from ...utils.pil_resize import pil_lanczos_resize
from ...utils.shared_weights import share_equal_tensors
from .mode_defaults import FIRST_FRAME_DEFAULTS


logger = logging.get_logger(__name__)

#: The prompt encoders a first-frame pipeline may have in common with ours (SSD-1B: the same frozen CLIP-L and -G;
#: a nested NeodragonPipeline: all four).
SHAREABLE_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3", "context_adapter")


class NeodragonFirstFrameMixin:
    """The first frame of [`NeodragonPipeline`] (its ``first_frame_pipeline``, ``video_processor`` and ``vae``)."""

    def _share_first_frame_weights(self) -> int:
        """Hold once the prompt encoders' weights that the first-frame pipeline has equal to ours (the official
        release stores SSD-1B's CLIP-L and CLIP-G beside the DiT's own copies: 1.3 GiB at full size). Each model
        keeps its own modules; see :func:`~diffusers_neodragon.utils.shared_weights.share_equal_tensors`. Returns
        the bytes saved."""
        first_frame = self.first_frame_pipeline
        saved = 0
        for name in SHAREABLE_ENCODERS if first_frame is not None else ():
            ours, theirs = getattr(self, name, None), getattr(first_frame, name, None)
            if isinstance(ours, torch.nn.Module) and isinstance(theirs, torch.nn.Module) and ours is not theirs:
                saved += share_equal_tensors(ours, theirs)
        if saved:
            logger.info(f"The first-frame pipeline's prompt encoders share {saved / 2**20:.0f} MiB of equal weights")
        return saved

    def _first_frame_pixels(self, prompts: list[str], height, width, generator, first_frame_kwargs) -> torch.Tensor:
        """The text-to-image first frame as pixels ``[N, 3, height, width]`` in [-1, 1], made at twice the size and
        resized. The pixels are those of a uint8 PIL image resized with Pillow's Lanczos (the reference's path), but
        computed on the image's device by :func:`~diffusers_neodragon.utils.pil_resize.pil_lanczos_resize`: no
        round trip through the host."""
        kwargs = {**FIRST_FRAME_DEFAULTS, "height": 2 * height, "width": 2 * width, **(first_frame_kwargs or {})}
        accepted = inspect.signature(self.first_frame_pipeline.__call__).parameters
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        images = self.first_frame_pipeline(prompt=prompts, generator=generator, output_type="pt", **kwargs).images
        quantized = (images.float() * 255).round()  # what numpy_to_pil stores, from the same [0, 1] floats
        return (pil_lanczos_resize(quantized, height, width).float() / 255.0) * 2.0 - 1.0

    def _first_frame_latents(self, prompt, num_videos_per_prompt, height, width, generator, max_sequence_length,
                             first_frame_kwargs):
        """Latent frame 0 from a nested ``NeodragonPipeline`` (same latent space), made with its own monolithic
        defaults (steps, CFG, prompt suffix and negative prompt) unless ``first_frame_kwargs`` override them."""
        fixed = dict(prompt=prompt, num_videos_per_prompt=num_videos_per_prompt, height=height, width=width,
                     num_frames=1, generator=generator, output_type="latent")
        clashing = sorted(set(first_frame_kwargs or {}) & set(fixed))
        if clashing:
            raise ValueError(f"`first_frame_kwargs` cannot set {clashing}: the first frame takes them from the call")
        kwargs = {"mode": "monolithic", "max_sequence_length": max_sequence_length, **(first_frame_kwargs or {})}
        return self.first_frame_pipeline(**fixed, **kwargs).frames

    def _encode_first_frame(self, pixels: torch.Tensor, batch: int, generator, device, dtype):
        """Pixels ``[N, 3, H, W]`` in [-1, 1] (one image or one per video) -> normalised latent frame 0."""
        if pixels.shape[0] != batch:
            pixels = pixels.repeat_interleave(batch // pixels.shape[0], dim=0)
        pixels = pixels.to(device=device, dtype=self.vae.dtype)[:, :, None]
        latent = self.vae.encode(pixels).latent_dist.sample(generator=generator)
        return self.vae.normalize_latents(latent).to(dtype)
