from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput


@dataclass
class NeodragonPipelineOutput(BaseOutput):
    r"""Output of [`NeodragonPipeline`].

    Args:
        frames: per video a list of PIL frames (``output_type="pil"``), an array [B, F, H, W, 3] in [0, 1]
            (``"np"``), a tensor [B, F, 3, H, W] in [0, 1] (``"pt"``), or the normalised latents
            [B, C, T, h, w] (``"latent"``).
        nsfw_content_detected: per video, per frame, whether the pipeline's ``safety_checker`` flagged (and blacked
            out) the frame; ``None`` without a safety checker or for ``"latent"`` output.
    """

    frames: list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor
    nsfw_content_detected: list[list[bool]] | None = None
