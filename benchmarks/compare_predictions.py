#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""Where does a compressed transformer differ from its teacher: in its prediction for the caption, for the empty
caption, or in their difference, the guidance direction that CFG multiplies? (latent space, fast)

    python benchmarks/compare_predictions.py diffusers_neodragon/pretrained/shapes runs/pruned/stage2 \\
        [--clips 16] [--repeats 2] [--guidance-scales 3.5,5] [--device cpu] [--json out.json]

Both folders are pipelines that share the teacher's VAE and text encoders (pruning and step distillation keep
them). On Shapes clips of the training distribution, encoded by the teacher's VAE, each transformer predicts the
velocity of the same noisy states of ``pyramid_training_batch`` (true history, no corruption) for the first latent
frame, the second and the last at every stage, once with the caption (c) and once with the empty caption (u), the
unconditional branch of the pipeline's CFG. Reported per (frame, stage), as the student's relative L2 distance to
the teacher's: c, u, the guidance direction c - u, and u + s (c - u) for each CFG scale s. A student can match c and
u to a few percent and still miss c - u, which CFG then multiplies into every later frame.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from diffusers_neodragon import NeodragonPipeline
from diffusers_neodragon.data.shapes import ShapesVideoDataset
from diffusers_neodragon.training_utils import pyramid_training_batch, step_generator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("teacher", help="the teacher's pipeline folder")
    parser.add_argument("student", help="the student's pipeline folder (same VAE and text encoders)")
    parser.add_argument("--clips", type=int, default=16, help="training-distribution clips (one batch)")
    parser.add_argument("--repeats", type=int, default=2, help="noise draws per (frame, stage)")
    parser.add_argument("--guidance-scales", default="3.5,5", help="CFG scales of the combined prediction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--json", default=None)
    return parser


def relative_l2(student: torch.Tensor, teacher: torch.Tensor) -> float:
    return float((student - teacher).norm() / teacher.norm().clamp_min(1e-12))


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    scales = [float(s) for s in args.guidance_scales.split(",") if s]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    teacher = NeodragonPipeline.from_pretrained(args.teacher, dtype=torch.float32).to(device)
    student = NeodragonPipeline.from_pretrained(args.student, dtype=torch.float32).to(device)
    config = teacher.config
    data = ShapesVideoDataset(args.clips, num_frames=config.default_num_frames, height=config.default_height,
                              width=config.default_width, seed=args.seed, split="train")
    batch = data.collate_fn([data[i] for i in range(args.clips)])
    latents = teacher.vae.normalize_latents(teacher.vae.encode(batch["video"].to(device)).latent_dist.mode()).float()
    embeds, negative, pooled, negative_pooled, mask, negative_mask = teacher.encode_prompt(
        batch["caption"], do_classifier_free_guidance=True, device=device, dtype=torch.float32)
    texts = {"c": (embeds, pooled, mask), "u": (negative, negative_pooled, negative_mask)}

    def predict(pipe, example, text):
        embeds, pooled, mask = text
        return pipe.transformer(hidden_states=example.hidden_states, encoder_hidden_states=embeds,
                                pooled_projections=pooled, timestep=example.timestep, history=example.history,
                                encoder_attention_mask=mask).sample.float()

    columns = ["c", "u", "c - u"] + [f"cfg {s:g}" for s in scales]
    num_latent_frames = latents.shape[2]
    report = {}
    for unit in sorted({0, min(1, num_latent_frames - 1), num_latent_frames - 1}):
        for stage in range(teacher.scheduler.config.stages):
            rows = []
            for repeat in range(args.repeats):
                example = pyramid_training_batch(teacher.scheduler, latents, stage, num_history=unit,
                                                 generator=step_generator(args.seed, repeat), corrupt_ratio=0.0)
                (tc, tu), (sc, su) = ([predict(pipe, example, texts[k]) for k in ("c", "u")]
                                      for pipe in (teacher, student))
                row = [relative_l2(sc, tc), relative_l2(su, tu), relative_l2(sc - su, tc - tu)]
                row += [relative_l2(su + s * (sc - su), tu + s * (tc - tu)) for s in scales]
                rows.append(row)
            report[f"frame {unit} stage {stage}"] = dict(zip(columns, np.mean(rows, axis=0).tolist()))

    print(f"student against teacher, relative L2 of the predicted velocity ({args.clips} clips x {args.repeats} "
          "draws; c: caption, u: empty caption)")
    print(" " * 18 + "".join(f"{name:>10}" for name in columns))
    for name, values in report.items():
        print(f"{name:18s}" + "".join(f"{values[c]:10.3f}" for c in columns))
    result = dict(teacher=args.teacher, student=args.student,
                  settings={k: v for k, v in vars(args).items() if k not in ("teacher", "student")},
                  relative_l2=report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
