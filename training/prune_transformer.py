#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""MMDiT block pruning (Neodragon's operation 3): score the blocks, prune, then recover in two stages.

    # 1. importance of every block at real sampling states (+ the ShapesBench cost of dropping each block alone)
    python training/prune_transformer.py score --teacher PIPELINE --output_dir runs/prune/score [--drop_cost]
    # 2. prune: an explicit keep-list, or drop the N least important blocks of the score file
    python training/prune_transformer.py prune --teacher PIPELINE --output_dir runs/prune/pruned --keep 0,1,2,4,5,6,8,9
    python training/prune_transformer.py prune --teacher PIPELINE --output_dir runs/prune/pruned \\
        --scores runs/prune/score/importance.json --num_drop 2 --criterion mean
    # 3. stage 1 (flow matching on data), then stage 2 (teacher features + flow matching to teacher and data)
    accelerate launch training/train_pyramidal_flow.py --pretrained_model_name_or_path runs/prune/pruned ...
    accelerate launch training/train_pyramidal_flow.py --pretrained_model_name_or_path runs/prune/stage1 \\
        --teacher_path PIPELINE ...

``score`` runs the pipeline's own sampling loop (``NeodragonPipeline.__call__``, the monolithic sampler by default)
over ``--num_prompts`` calibration prompts x ``--num_samples`` samples with forward hooks on every block
(``training_utils.block_pruning.BlockImportance``: BI = 1 - mean cosine between a block's input and output tokens,
visual and text apart) and writes ``importance.json``, ``importance.md`` (table with text bars) and, when
matplotlib is installed, ``importance.png``. ``--drop_cost`` also generates ShapesBench's fixed prompts with each
block dropped alone and records the total score lost (resumable: blocks already in ``drop_cost.json`` are kept).

``prune`` writes ``OUTPUT/transformer`` (``num_layers`` and ``block_origin`` set, ``pruning_recovery.json`` beside
it, recording that no recovery stage has run yet) and, when the teacher is a pipeline folder, the whole pipeline
around it in ``OUTPUT`` (``--no-save_pipeline``: the transformer only), plus a model card. The last kept block is
context-pre-only: when the teacher's last block is dropped, the new last block is converted exactly (see
``training_utils.block_pruning``), so the pruned model computes the teacher with the dropped blocks skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from diffusers_neodragon import NeodragonPipeline, NeodragonTransformer3DModel
from diffusers_neodragon.training_utils import (
    SAVE_DTYPES,
    count_parameters,
    create_hub_repo,
    parse_int_list,
    parse_with_command,
    push_folder_to_hub,
    save_pipeline_with,
    training_command,
)
from diffusers_neodragon.training_utils.block_pruning import (
    CRITERIA,
    BlockImportance,
    check_keep,
    combined_importance,
    keep_after_dropping,
    prune_transformer,
)
from diffusers_neodragon.training_utils.pruning_recovery import new_recovery_record, write_recovery_record
from diffusers_neodragon.utils.model_cards import write_model_card


SCRIPT = "training/prune_transformer.py"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub):
        sub.add_argument("--teacher", required=True, help="A NeodragonPipeline folder (or, for prune, a transformer "
                                                         "folder) holding the model to prune.")
        sub.add_argument("--output_dir", required=True)
        sub.add_argument("--device", default=None, help="Default: cuda if available, else cpu.")

    score = commands.add_parser("score", help="Block importance (BI_v, BI_t) and optional drop cost.")
    common(score)
    score.add_argument("--num_prompts", type=int, default=16,
                       help="Calibration prompts (Shapes training captions; the paper used 100).")
    score.add_argument("--num_samples", type=int, default=2, help="Samples per prompt (the paper used 5).")
    score.add_argument("--batch_size", type=int, default=8, help="Prompts per pipeline call.")
    score.add_argument("--num_frames", type=int, default=None, help="Default: the pipeline's.")
    score.add_argument("--num_inference_steps", type=str, default=None, help="First frame, per stage (default: the "
                                                                              "pipeline's).")
    score.add_argument("--video_num_inference_steps", type=str, default=None, help="Later frames (default: the "
                                                                                    "pipeline's).")
    score.add_argument("--dtype", default="float32", choices=list(DTYPES))
    score.add_argument("--seed", type=int, default=0)
    score.add_argument("--drop_cost", action="store_true",
                       help="Also score ShapesBench with each block dropped alone (and the teacher).")
    score.add_argument("--drop_cost_num_prompts", type=int, default=4, help="ShapesBench prompts per split.")

    prune = commands.add_parser("prune", help="Write the pruned transformer (and pipeline).")
    common(prune)
    prune.add_argument("--keep", type=str, default=None, help="Teacher block indices to keep, e.g. 0,1,2,4,5,6,8,9.")
    prune.add_argument("--scores", type=str, default=None, help="importance.json of `score` (with --num_drop).")
    prune.add_argument("--num_drop", type=int, default=None, help="Drop this many of the least important blocks.")
    prune.add_argument("--criterion", default="mean", choices=[*CRITERIA, "drop_cost"],
                       help="How BI_v and BI_t rank the blocks (training_utils.block_pruning.combined_importance: "
                            "each divided by its maximum, then visual / text / mean / max); drop_cost: the "
                            "ShapesBench points lost when the block alone is dropped (needs score --drop_cost).")
    prune.add_argument("--keep_last", action=argparse.BooleanOptionalAction, default=True,
                       help="Never drop the teacher's last block when pruning by score (default; --no-keep_last "
                            "allows it). The final norm and projection read that block's output: on the Shapes "
                            "model, dropping blocks 4 and 9 cost twice the ShapesBench points of dropping 4 and 6.")
    prune.add_argument("--save_pipeline", action=argparse.BooleanOptionalAction, default=None,
                       help="Write the whole pipeline with the transformer replaced (default: when --teacher is a "
                            "pipeline folder).")
    prune.add_argument("--save_dtype", default="fp32", choices=list(SAVE_DTYPES),
                       help="Of the pruned transformer; the pipeline's other components are copied as stored.")
    prune.add_argument("--push_to_hub", action="store_true")
    prune.add_argument("--hub_model_id", type=str, default=None)
    prune.add_argument("--hub_token", type=str, default=None)

    args = parse_with_command(parser, input_args)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    teacher = Path(args.teacher)
    args.teacher_is_pipeline = (teacher / "model_index.json").is_file()
    if not args.teacher_is_pipeline and not (teacher / "config.json").is_file():
        raise ValueError(f"--teacher {teacher} is neither a pipeline folder nor a transformer folder.")
    if args.command == "score":
        if not args.teacher_is_pipeline:
            raise ValueError("score samples with the pipeline: --teacher must be a pipeline folder.")
        if args.num_prompts < 1 or args.num_samples < 1 or args.batch_size < 1 or args.drop_cost_num_prompts < 1:
            raise ValueError("--num_prompts, --num_samples, --batch_size, --drop_cost_num_prompts must be >= 1.")
        for name in ("num_inference_steps", "video_num_inference_steps"):
            value = getattr(args, name)
            if value is not None:
                steps = parse_int_list(value)
                setattr(args, name, steps[0] if len(steps) == 1 else steps)
    else:
        if (args.keep is None) == (args.scores is None):
            raise ValueError("Give either --keep (a keep-list) or --scores with --num_drop.")
        if args.scores is not None and args.num_drop is None:
            raise ValueError("--scores needs --num_drop (how many blocks to remove).")
        if args.keep is not None:
            args.keep = parse_int_list(args.keep)
        if args.save_pipeline is None:
            args.save_pipeline = args.teacher_is_pipeline
        if args.save_pipeline and not args.teacher_is_pipeline:
            raise ValueError("--save_pipeline needs a pipeline folder as --teacher.")
    return args


# ------------------------------------------------------------------------------------------------------ score


def load_pipeline(args) -> NeodragonPipeline:
    pipe = NeodragonPipeline.from_pretrained(args.teacher, dtype=DTYPES[args.dtype]).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def calibration_prompts(n: int, seed: int) -> list[str]:
    """``n`` distinct captions of the Shapes training split (the distribution the model was trained on)."""
    from diffusers_neodragon.data.shapes import ShapesVideoDataset  # noqa: PLC0415

    dataset = ShapesVideoDataset(64 * n, num_frames=1, height=64, width=64, seed=seed, split="train")
    prompts = []
    for index in range(len(dataset)):
        caption = dataset.scene(index).caption
        if caption not in prompts:
            prompts.append(caption)
        if len(prompts) == n:
            break
    return prompts


def sampler_kwargs(args) -> dict:
    kwargs = {}
    for name in ("num_frames", "num_inference_steps", "video_num_inference_steps"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    return kwargs


@torch.no_grad()
def measure_importance(pipe, prompts, args) -> dict:
    """BI_v / BI_t per block over the pipeline's own sampling loop (every model call of every step, stage and latent
    frame, CFG's unconditional rows included)."""
    with BlockImportance(pipe.transformer) as importance:
        for start in range(0, len(prompts), args.batch_size):
            chunk = prompts[start : start + args.batch_size]
            generators = [torch.Generator().manual_seed(args.seed + start + i) for i in range(len(chunk))]
            generators = [g for g in generators for _ in range(args.num_samples)]
            pipe(chunk, num_videos_per_prompt=args.num_samples, generator=generators, output_type="latent",
                 **sampler_kwargs(args))
    return importance.result()


@torch.no_grad()
def shapesbench(pipe, num_prompts: int, args) -> dict:
    """Totals of ShapesBench's fixed seen / held-out prompts (one seeded generator per prompt)."""
    from diffusers_neodragon.data.shapes import fixed_prompt_set  # noqa: PLC0415
    from diffusers_neodragon.evaluation import evaluate_video, summarize  # noqa: PLC0415

    totals = {}
    for split in ("seen", "heldout"):
        prompts = fixed_prompt_set(split, num_prompts)
        results = []
        for start in range(0, len(prompts), args.batch_size):
            chunk = prompts[start : start + args.batch_size]
            generators = [torch.Generator().manual_seed(args.seed) for _ in chunk]
            videos = pipe(chunk, generator=generators, output_type="np", **sampler_kwargs(args)).frames
            results += [evaluate_video(video, prompt) for video, prompt in zip(videos, chunk)]
        totals[split] = float(summarize(results)["score"])
    return totals


def drop_costs(pipe, args, output_dir: Path) -> dict:
    """ShapesBench totals of the teacher and of the teacher without each block; resumable through drop_cost.json."""
    path = output_dir / "drop_cost.json"
    settings = {"teacher": str(args.teacher), "seed": args.seed, "dtype": args.dtype,
                "num_prompts": args.drop_cost_num_prompts, "sampler": sampler_kwargs(args)}
    done = json.loads(path.read_text()) if path.is_file() else {}
    if done.get("settings") != json.loads(json.dumps(settings)):  # another run's figures: start again
        done = {"settings": settings, "blocks": {}}
    teacher = pipe.transformer
    n = teacher.config.num_layers
    for name in ["teacher", *map(str, range(n))]:
        if name in done["blocks"]:
            continue
        pipe.transformer = teacher if name == "teacher" else prune_transformer(
            teacher, [i for i in range(n) if i != int(name)])
        start = time.perf_counter()
        done["blocks"][name] = shapesbench(pipe, args.drop_cost_num_prompts, args)
        print(f"[prune_transformer] drop {name}: {done['blocks'][name]} ({time.perf_counter() - start:.0f} s)")
        partial = path.with_suffix(".json.partial")  # a run killed while writing leaves the last good file
        partial.write_text(json.dumps(done, indent=2) + "\n")
        os.replace(partial, path)
    pipe.transformer = teacher
    base = done["blocks"]["teacher"]
    mean = (base["seen"] + base["heldout"]) / 2
    totals = [done["blocks"][str(i)] for i in range(n)]
    return {"num_prompts": args.drop_cost_num_prompts, "teacher": base, "totals": totals,
            "cost": [mean - (done["blocks"][str(i)]["seen"] + done["blocks"][str(i)]["heldout"]) / 2 for i in range(n)]}


def bar(value: float | None, top: float, width: int = 30) -> str:
    return "" if value is None or top <= 0 else "#" * max(1, round(width * value / top))


def importance_markdown(result: dict) -> str:
    bi_v, bi_t = result["bi_visual"], result["bi_text"]
    top_v, top_t = max(bi_v), max((t for t in bi_t if t is not None), default=0.0)
    cost = result.get("drop_cost", {}).get("cost")
    lines = ["| block | BI_v | | BI_t | | mean (normalised) |" + (" ShapesBench cost |" if cost else ""),
             "|---|---|---|---|---|---|" + ("---|" if cost else "")]
    mean = combined_importance(bi_v, bi_t, "mean")
    for i, (v, t) in enumerate(zip(bi_v, bi_t)):
        t_text = "n/a (context-pre-only)" if t is None else f"{t:.4f}"
        row = f"| {i} | {v:.4f} | `{bar(v, top_v)}` | {t_text} | `{bar(t, top_t)}` | {mean[i]:.3f} |"
        lines.append(row + (f" {cost[i]:+.1f} |" if cost else ""))
    return "\n".join(lines)


def save_chart(result: dict, path: Path) -> bool:
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("[prune_transformer] matplotlib is not installed: no importance.png (pip install matplotlib); "
              "the table with text bars is in importance.md.")
        return False
    n = len(result["bi_visual"])
    x = torch.arange(n).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(max(6, n * 0.9), 3.2))
    axes[0].bar(x, result["bi_visual"], color="tab:blue")
    axes[0].set_title("BI_v (visual tokens)")
    axes[1].bar(x, [t if t is not None else 0.0 for t in result["bi_text"]], color="tab:orange")
    axes[1].set_title("BI_t (text tokens; last block: none)")
    for ax in axes:
        ax.set_xlabel("block")
        ax.set_xticks(x)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def run_score(args) -> dict:
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(args)
    prompts = calibration_prompts(args.num_prompts, args.seed)
    start = time.perf_counter()
    result = measure_importance(pipe, prompts, args)
    result.update(num_prompts=len(prompts), num_samples=args.num_samples, sampler=sampler_kwargs(args),
                  seconds=round(time.perf_counter() - start, 1), teacher=args.teacher,
                  command=training_command(SCRIPT, args.command_args))
    if args.drop_cost:
        result["drop_cost"] = drop_costs(pipe, args, output_dir)
    (output_dir / "importance.json").write_text(json.dumps(result, indent=2) + "\n")
    table = importance_markdown(result)
    (output_dir / "importance.md").write_text(
        f"# Block importance of `{args.teacher}`\n\n{len(prompts)} calibration prompts x {args.num_samples} samples, "
        f"{result['calls']} transformer calls.\n\n{table}\n")
    save_chart(result, output_dir / "importance.png")
    print(f"[prune_transformer] block importance ({result['calls']} calls):\n{table}")
    return result


# ------------------------------------------------------------------------------------------------------ prune


def choose_keep(args, num_layers: int) -> list[int]:
    if args.keep is not None:
        return check_keep(args.keep, num_layers)
    scores = json.loads(Path(args.scores).read_text())
    if len(scores["bi_visual"]) != num_layers:
        raise ValueError(f"{args.scores} scores {len(scores['bi_visual'])} blocks, the teacher has {num_layers}.")
    if args.criterion == "drop_cost":
        if "drop_cost" not in scores:
            raise ValueError(f"--criterion drop_cost needs {args.scores} made with `score --drop_cost`.")
        importance = scores["drop_cost"]["cost"]
    else:
        importance = combined_importance(scores["bi_visual"], scores["bi_text"], args.criterion)
    return keep_after_dropping(importance, args.num_drop, protect=[num_layers - 1] if args.keep_last else ())


def run_prune(args) -> dict:
    output_dir = Path(args.output_dir)
    transformer_dir = Path(args.teacher) / "transformer" if args.teacher_is_pipeline else Path(args.teacher)
    teacher = NeodragonTransformer3DModel.from_pretrained(str(transformer_dir), torch_dtype=torch.float32)
    num_layers = teacher.config.num_layers
    keep = choose_keep(args, num_layers)
    pruned = prune_transformer(teacher, keep).to(SAVE_DTYPES[args.save_dtype])
    repo_id = create_hub_repo(args)
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.save_pipeline:
        save_pipeline_with(args.teacher, output_dir, transformer=pruned)  # the other components as stored
    else:
        pruned.save_pretrained(str(output_dir / "transformer"), safe_serialization=True)
    write_recovery_record(output_dir / "transformer", new_recovery_record(args.teacher, num_layers, keep))
    before, after = count_parameters(teacher), count_parameters(pruned)
    result = {"keep": keep, "dropped": [i for i in range(num_layers) if i not in keep], "parameters_before": before,
              "parameters_after": after, "reduction": 1 - after / before}
    how = (f"the keep-list `--keep {','.join(map(str, keep))}`" if args.keep is not None else
           f"dropping the {args.num_drop} least important blocks of `{args.scores}` by `{args.criterion}`")
    values = dict(
        title=args.hub_model_id or f"Pruned Neodragon transformer ({output_dir.name})", teacher=args.teacher,
        teacher_layers=num_layers, num_layers=len(keep), block_origin=keep, dropped=result["dropped"], how=how,
        parameters_before=f"{before / 1e6:.2f}M", parameters_after=f"{after / 1e6:.2f}M",
        reduction=f"{result['reduction']:.1%}", last_block=("kept" if keep[-1] == num_layers - 1 else
                                                            f"dropped; block {keep[-1]} converted to context-pre-only"),
        folder="pipeline (transformer replaced)" if args.save_pipeline else "transformer folder",
        load=("NeodragonPipeline.from_pretrained(folder)" if args.save_pipeline else
              "NeodragonTransformer3DModel.from_pretrained(folder, subfolder=\"transformer\")"),
        command=training_command(SCRIPT, args.command_args).replace("accelerate launch", "python"),
        save_dtype=args.save_dtype,
    )
    write_model_card(output_dir, "pruned_transformer.md", values, tags=["neodragon", "pruning"])
    print(f"[prune_transformer] kept {keep} of {num_layers} blocks: {before / 1e6:.2f}M -> {after / 1e6:.2f}M "
          f"parameters ({result['reduction']:.1%} fewer) -> {output_dir}")
    if args.push_to_hub:
        push_folder_to_hub(repo_id, output_dir, token=args.hub_token)
    return result


def main(args):
    return run_score(args) if args.command == "score" else run_prune(args)


if __name__ == "__main__":
    main(parse_args())
