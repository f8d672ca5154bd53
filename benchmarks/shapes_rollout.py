"""Does a Shapes pipeline's transformer use its history, and how far does its rollout drift? (latent space, fast)

    python benchmarks/shapes_rollout.py PIPELINE_FOLDER [--clips 8] [--steps 10] [--seed 0] [--device cpu]
                                        [--json out.json]

ShapesBench scores finished videos; this looks inside, on clips of the training distribution encoded by the
pipeline's own VAE, without decoding anything:

1. *teacher-forced loss* of the training objective (``pyramid_training_batch``, no history corruption) per stage for
   the first latent frame, the second and the last, once with the clip's true history and once with the history of
   another clip. A model that ignores its history shows the same loss for both;
2. *caption use*: the first frame's teacher-forced loss per stage with the true caption and with one attribute word
   (shape, colour, size) swapped for another value. A model that ignores a word shows the same loss for both: the
   embedded model ignored its shape word while ShapesBench's shape accuracy stayed at chance, so this is a
   seconds-long check of what ShapesBench needs minutes for;
3. *rollout drift*: the pipeline generates every later latent frame from the clip's true first frame
   (``image=``, no guidance), and the MSE to the true latents is reported per latent frame, relative to their
   variance. Frame 1 measures one step with a perfect history; the growth after it measures exposure bias.
"""

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from diffusers_neodragon import NeodragonPipeline
from diffusers_neodragon.data.shapes import COLORS, SHAPES, SIZES, ShapeScene, ShapesVideoDataset
from diffusers_neodragon.training_utils import pyramid_training_batch, step_generator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", help="a folder written by NeodragonPipeline.save_pretrained")
    parser.add_argument("--clips", type=int, default=8, help="training-distribution clips (one batch)")
    parser.add_argument("--steps", type=int, default=10, help="rollout steps per stage for the later frames")
    parser.add_argument("--repeats", type=int, default=4, help="noise draws per teacher-forced loss")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--json", default=None)
    return parser


SWAPPED_ATTRIBUTES = {"shape": SHAPES, "color": tuple(COLORS), "size": SIZES}


def swap_attribute(scene: ShapeScene, attribute: str) -> ShapeScene:
    """The scene with its (first) object's `attribute` changed to the next value of the vocabulary that keeps the
    scene valid (a colour is never the background's or the second object's)."""
    values = SWAPPED_ATTRIBUTES[attribute]
    start = values.index(getattr(scene, attribute))
    for offset in range(1, len(values)):
        try:
            return dataclasses.replace(scene, **{attribute: values[(start + offset) % len(values)]})
        except ValueError:
            continue
    raise ValueError(f"No valid value to swap {attribute!r} of {scene} for.")


def teacher_forced_loss(pipe, example, text, history) -> float:
    """The training objective's MSE on one `pyramid_training_batch` example, for the given text and history."""
    embeds, mask, pooled = text
    pred = pipe.transformer(hidden_states=example.hidden_states, encoder_hidden_states=embeds,
                            pooled_projections=pooled, timestep=example.timestep, history=history,
                            encoder_attention_mask=mask).sample
    return float(((pred.float() - example.target.float()) ** 2).mean())


@torch.no_grad()
def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.clips < 2:
        raise SystemExit("--clips must be >= 2 (the shuffled history comes from another clip)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = NeodragonPipeline.from_pretrained(args.pipeline, dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    config = pipe.config
    data = ShapesVideoDataset(args.clips, num_frames=config.default_num_frames, height=config.default_height,
                              width=config.default_width, seed=args.seed, split="train")
    batch = data.collate_fn([data[i] for i in range(args.clips)])
    videos = batch["video"].to(device)
    latents = pipe.vae.normalize_latents(pipe.vae.encode(videos).latent_dist.mode()).float()
    embeds, _, pooled, _, mask, _ = pipe.encode_prompt(
        batch["caption"], do_classifier_free_guidance=False, device=device, dtype=torch.float32)
    num_latent_frames = latents.shape[2]

    start = time.perf_counter()
    teacher_forced = {}
    other = torch.roll(torch.arange(args.clips), 1)
    for unit in sorted({0, min(1, num_latent_frames - 1), num_latent_frames - 1}):
        for stage in range(pipe.scheduler.config.stages):
            losses = {"true history": [], "other clip's history": []}
            for repeat in range(args.repeats):
                example = pyramid_training_batch(pipe.scheduler, latents, stage, num_history=unit,
                                                 generator=step_generator(args.seed, repeat), corrupt_ratio=0.0)
                for name, order in (("true history", slice(None)), ("other clip's history", other)):
                    history = [h[order] for h in example.history]
                    losses[name].append(teacher_forced_loss(pipe, example, (embeds, mask, pooled), history))
            teacher_forced[f"frame {unit} stage {stage}"] = {k: float(np.mean(v)) for k, v in losses.items()}

    scenes = [ShapeScene.from_dict(scene) for scene in batch["scene"]]
    texts = {"true caption": (embeds, mask, pooled)}
    for attribute in SWAPPED_ATTRIBUTES:
        captions = [swap_attribute(scene, attribute).caption for scene in scenes]
        swapped, _, swapped_pooled, _, swapped_mask, _ = pipe.encode_prompt(
            captions, do_classifier_free_guidance=False, device=device, dtype=torch.float32)
        texts[f"{attribute} swapped"] = (swapped, swapped_mask, swapped_pooled)
    caption_use = {}
    for stage in range(pipe.scheduler.config.stages):
        losses = {name: [] for name in texts}
        for repeat in range(args.repeats):
            example = pyramid_training_batch(pipe.scheduler, latents, stage, num_history=0,
                                             generator=step_generator(args.seed, repeat), corrupt_ratio=0.0)
            for name, text in texts.items():
                losses[name].append(teacher_forced_loss(pipe, example, text, example.history))
        caption_use[f"frame 0 stage {stage}"] = {k: float(np.mean(v)) for k, v in losses.items()}

    first_frames = (videos[:, :, 0].float() + 1) / 2  # [N, 3, H, W] in [0, 1], as `image=` takes them
    generated = pipe(batch["caption"], image=first_frames, mode="hybrid", video_num_inference_steps=args.steps,
                     video_guidance_scale=1.0, output_type="latent", super_resolution=False,
                     generator=torch.Generator(device).manual_seed(args.seed)).frames.float()
    variance = latents.var(dim=(0, 1, 3, 4))
    drift = (((generated - latents) ** 2).mean(dim=(0, 1, 3, 4)) / variance).tolist()

    report = dict(pipeline=args.pipeline, settings={k: v for k, v in vars(args).items() if k != "pipeline"},
                  teacher_forced_loss=teacher_forced, caption_use_loss=caption_use, rollout_relative_mse=drift,
                  seconds=time.perf_counter() - start)
    print(f"teacher-forced loss ({args.clips} clips x {args.repeats} draws): true history | another clip's history")
    for name, values in teacher_forced.items():
        true, shuffled = values["true history"], values["other clip's history"]
        print(f"  {name:20s} {true:9.4f} | {shuffled:9.4f}")
    print("first-frame loss with the true caption | one word swapped: " + " | ".join(list(texts)[1:]))
    for name, values in caption_use.items():
        print(f"  {name:20s} {values['true caption']:9.4f} | " + " | ".join(f"{v:9.4f}" for k, v in values.items()
                                                                           if k != "true caption"))
    print(f"rollout from the true first frame ({args.steps} steps per stage, no guidance): MSE / variance per latent "
          "frame\n  " + "  ".join(f"{value:.3f}" for value in drift))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
