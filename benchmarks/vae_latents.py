"""What a VAE's latent space offers the transformer: how far apart it puts small shapes, and how rough it is.

    python benchmarks/vae_latents.py FOLDER [FOLDER ...] [--clips 12] [--pairs 18] [--json out.json]

FOLDER is a VAE folder, a ``train_vae.py`` run folder or a pipeline folder. For each it prints, in normalised
(transformer) units:

- ``std``: the latents' spread, first latent frame and later ones (about 1 if the constants fit);
- ``roughness``: the mean squared difference of neighbouring latent cells (horizontal and vertical averaged) over
  twice the variance (0 for a constant, about 1 for white noise): a rougher latent space is harder for the transformer
  to model, as the transformer fine-tuned on a rougher VAE showed (see the embedded model card);
- ``separation``: the RMS difference, per latent value over the object's cells, between the first latent frames of
  a small diamond (triangle, square) and a small circle of the same colour, place and background. The first latent
  frame encodes one pixel frame; if the decoder's tolerance to latent noise exceeds this, it draws both alike.

Cheap (no transformer, CPU in seconds), so VAE candidates can be compared before a transformer is trained on one.
"""

import argparse
import json

import numpy as np
import torch

from diffusers_neodragon.data.shapes import render_scene, scene_from_caption
from diffusers_neodragon.training_utils import latent_foreground_mask, load_vae_folder


SIZE = 128
CLIP_FRAMES = 49
COLOURS = (("red", "blue"), ("yellow", "black"), ("white", "green"))
CLIP_PROMPTS = (
    "a small red diamond moving left on a blue background",
    "a large yellow circle moving up on a black background",
    "a small white triangle moving right on a green background",
    "a large blue square moving down on a white background",
)


def roughness(latents: torch.Tensor) -> float:
    """Mean squared neighbour difference (x and y averaged) of ``latents`` [B, C, T, h, w] over twice their
    variance: 0 for a constant, about 1 for white noise."""
    dx = (latents[..., 1:] - latents[..., :-1]).pow(2).mean()
    dy = (latents[..., 1:, :] - latents[..., :-1, :]).pow(2).mean()
    return float((dx + dy) / (4 * latents.var()))


def separation(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """RMS of ``a - b`` [B, C, T, h, w] per latent value over the cells where ``mask`` [B, 1, T, h, w] is set."""
    squared = (a - b).pow(2).sum(1, keepdim=True) * mask
    return float(squared.sum() / (mask.sum() * a.shape[1]).clamp_min(1)) ** 0.5


def _video(prompt: str, seed: int, frames: int) -> torch.Tensor:
    pixels = render_scene(scene_from_caption(prompt, np.random.default_rng(seed)), frames, SIZE, SIZE)
    return torch.from_numpy(pixels).permute(3, 0, 1, 2)[None].float() / 127.5 - 1


@torch.no_grad()
def measure(folder: str, clips: int = 12, pairs: int = 18, device: str = "cpu") -> dict[str, float]:
    vae = load_vae_folder(folder).to(device).eval()
    grid = (vae.config.temporal_downsample_scale, vae.config.spatial_downsample_scale)

    def encode(video: torch.Tensor) -> torch.Tensor:
        return vae.normalize_latents(vae.encode(video.to(device)).latent_dist.mode()).float().cpu()

    first, later, rough_first, rough_all = [], [], [], []
    for index in range(clips):
        latents = encode(_video(CLIP_PROMPTS[index % len(CLIP_PROMPTS)], index // len(CLIP_PROMPTS), CLIP_FRAMES))
        first.append(float(latents[:, :, 0].std()))
        later.append(float(latents[:, :, 1:].std()))
        rough_first.append(roughness(latents[:, :, :1]))
        rough_all.append(roughness(latents))
    result = {"std first frame": float(np.mean(first)), "std later frames": float(np.mean(later)),
              "roughness first frame": float(np.mean(rough_first)), "roughness all frames": float(np.mean(rough_all))}
    for shape in ("diamond", "triangle", "square"):
        values = []
        for index in range(pairs):
            colour, background = COLOURS[index % len(COLOURS)]
            seed = index // len(COLOURS)
            prompt = f"a small {colour} {shape} standing still on a {background} background"
            video = _video(prompt, seed, 1)
            circle = _video(prompt.replace(shape, "circle"), seed, 1)
            mask = torch.maximum(*(latent_foreground_mask(v, *grid, dilation=0) for v in (video, circle)))
            values.append(separation(encode(video), encode(circle), mask))
        result[f"separation small {shape} - circle"] = float(np.mean(values))
    return result


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="VAE, train_vae.py run or pipeline folders.")
    parser.add_argument("--clips", type=int, default=12, help="49-frame clips for std and roughness.")
    parser.add_argument("--pairs", type=int, default=18, help="First-frame pairs per shape for the separation.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="Also write the figures here.")
    args = parser.parse_args(argv)
    if args.clips < 1 or args.pairs < 1:
        parser.error("--clips and --pairs must be >= 1.")
    report = {folder: measure(folder, args.clips, args.pairs, args.device) for folder in args.folders}
    names = list(next(iter(report.values())))
    width = max(len(name) for name in names)
    print(f"{'':{width}}  " + "  ".join(f"{folder[-24:]:>24}" for folder in report))
    for name in names:
        print(f"{name:{width}}  " + "  ".join(f"{report[folder][name]:>24.3f}" for folder in report))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
