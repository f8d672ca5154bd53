#!/usr/bin/env python
# SPDX-License-Identifier: Apache-2.0
"""Text-encoder distillation, Neodragon's Operation 1: replace a pipeline's large T5 + the transformer's
``context_embedder`` (CE) by a small ``DT5EncoderModel`` + a ``ContextAdapter`` (CA), trained on prompts alone.

Target tokens t = CE(T5(prompt)) from the frozen teacher pipeline (``--pretrained_model_name_or_path``, a folder
whose transformer has a ``context_embedder``); prediction t̂ = CA(DT5(prompt)) (``EM``: CE(CA(DT5(prompt)))); loss
``--mse_weight`` · MSE + ``--cd_weight`` · (1 − cos) over the valid (unpadded) tokens, defaults 1.0 and 0.1 as in the
paper. Both sides use the teacher's ``tokenizer_3`` (DT5 and T5-XXL share T5's vocabulary), and the pipeline's
``prompt_suffix`` is appended as ``NeodragonPipeline`` does; the teacher's ``default_negative_prompt`` (the CFG
negative) is mixed into the training prompts (``--negative_prompt_fraction``).

Modes (``--mode``; see ``diffusers_neodragon.training_utils.text_distillation``):
  RM    CA replaces CE (the Neodragon layout: the saved transformer has no context_embedder). A pretrained DT5
        (``--student_model_name_or_path``) stays frozen; a new one (from the ``--student_*`` sizes) has nothing to
        keep and trains with CA, which makes RM with a new DT5 the same computation as TDT5.
  EM    CA maps DT5 into the teacher T5's width and the frozen CE stays in the transformer. Same DT5 rule as RM.
  TDT5  RM's layout, DT5 always trained.
  LORA  RM's layout, CA + LoRA adapters (peft) on DT5's attention/feed-forward layers; the saved DT5 has them merged
        (``--lora_save merged``) or they are saved beside it in ``text_encoder_3_lora/`` (``--lora_save adapters``).

Prompts: ``--train_prompts shapes`` (the Shapes caption generator, train split: ``--num_train_prompts`` distinct
draws), a text file (one prompt per line), or ``--train_dataset`` (a local ``datasets`` folder / ``load_from_disk``
folder / data file, column ``--dataset_text_column``). Held-out prompts: ``--validation_prompts shapes-heldout``
(ShapesBench's held-out captions) or a file (``/work/shared/data/vbench_prompts.txt`` for real models). The teacher's
targets can be cached once in safetensors shards (``--target_cache_dir``); otherwise they are computed on the fly.

The output folder is the teacher's complete pipeline with ``text_encoder_3`` = the DT5, ``tokenizer_3`` = the
shared tokenizer, ``context_adapter`` = the CA, and (RM/TDT5/LORA) no ``context_embedder``; a model card records the
mode, data, steps, held-out token MSE/cosine and both text paths' parameter counts; ``distillation_metrics.json``
has the same figures.

Shapes (teacher = the embedded model; its T5 stand-in has 1.32M parameters, d_model 256, 2 layers):

    accelerate launch training/distill_text_encoder.py --output_dir runs/textenc/rm --mode RM \\
        --student_d_model 128 --student_num_layers 2 --adapter_hidden_features 256,256 --max_train_steps 3000

Real scale (T5-XXL teacher = a converted Pyramid-Flow folder, whose 24-block transformer has the 4096→1536
context_embedder; the paper used ~1.4M prompts), several GPUs with ``training/configs/ddp.yaml``:

    accelerate launch --config_file training/configs/ddp.yaml training/distill_text_encoder.py \\
        --pretrained_model_name_or_path runs/pyramid-flow-384p --teacher_dtype bf16 \\
        --student_model_name_or_path <a DT5 folder (e.g. the official DT5 converted by loaders.dt5_official)> \\
        --mode RM \\
        --train_prompts prompts_1.4M.txt --target_cache_dir /scratch/t5xxl-targets --target_cache_dtype bf16 \\
        --validation_prompts /work/shared/data/vbench_prompts.txt --max_sequence_length 128 \\
        --train_batch_size 256 --learning_rate 1e-4 --mixed_precision bf16 --max_train_steps 20000 \\
        --checkpointing_steps 1000 --validation_steps 1000 --save_dtype bf16
    # EM / TDT5 / LORA: change --mode (LORA: --lora_rank 64). A T5 encoder folder (e.g. T5-base) starts only
    # TDT5: its DT5 head is new and must train with it. The cache is filled once by the main process before
    # training (1.4M prompts x ~30 valid tokens x 1536 x 2 bytes ≈ 130 GB); without it each GPU runs T5-XXL.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from diffusers_neodragon import ContextAdapter, DT5Config, DT5EncoderModel, NeodragonPipeline
from diffusers_neodragon.data.prompts import dataset_prompts, read_prompt_file
from diffusers_neodragon.training_utils import (
    SAVE_DTYPES,
    EpochShuffleSampler,
    add_common_arguments,
    backward_and_step,
    build_lr_scheduler,
    build_optimizer,
    count_parameters,
    finish_training_loop,
    format_float,
    init_trackers,
    parse_int_list,
    parse_with_command,
    push_folder_to_hub,
    resume_global_step,
    save_checkpoint,
    setup_accelerator,
    should_stop,
    training_batches,
    training_command,
    window_mean,
)
from diffusers_neodragon.training_utils.sharding import enable_gradient_checkpointing, is_sharded
from diffusers_neodragon.training_utils.text_distillation import (
    EXPANSION_MODES,
    MODES,
    T5_LORA_TARGET_MODULES,
    TokenAgreement,
    dt5_is_trained,
    text_stream_tokens,
    token_distillation_loss,
    tokenize,
)
from diffusers_neodragon.training_utils.token_shards import TokenShards, token_shards_ready, write_token_shards
from diffusers_neodragon.utils.model_cards import write_model_card


logger = get_logger(__name__)
SCRIPT = "training/distill_text_encoder.py"
SHAPES_PROMPTS = "shapes"
SHAPES_HELDOUT = "shapes-heldout"
LORA_FOLDER = "text_encoder_3_lora"


def parse_args(input_args=None):
    from diffusers_neodragon.pretrained import shapes_model_path  # noqa: PLC0415

    parser = argparse.ArgumentParser(description="Distil a pipeline's T5 + context_embedder into DT5 + ContextAdapter.")
    parser.add_argument("--pretrained_model_name_or_path", type=str, default=shapes_model_path(),
                        help="Teacher pipeline folder (its transformer must have a context_embedder).")
    parser.add_argument("--teacher_dtype", type=str, default="fp32", choices=list(SAVE_DTYPES))
    parser.add_argument("--mode", type=str, default="RM", choices=list(MODES))
    # Student
    parser.add_argument("--student_model_name_or_path", type=str, default=None,
                        help="A DT5 folder, or a T5 encoder folder (its encoder is loaded, the projection head is "
                             "new; with a smaller --student_num_layers its first blocks are kept). Default: a new DT5.")
    parser.add_argument("--student_d_model", type=int, default=None, help="New DT5: default half the teacher's.")
    parser.add_argument("--student_num_layers", type=int, default=None, help="Default: the teacher's.")
    parser.add_argument("--student_num_heads", type=int, default=None, help="New DT5: default the teacher's.")
    parser.add_argument("--student_d_ff", type=int, default=None, help="New DT5: default 2 x d_model (gated GELU).")
    parser.add_argument("--student_projection_dim", type=int, default=None,
                        help="Width of DT5's projection head (default: the teacher T5's d_model, as DT5's 4096).")
    parser.add_argument("--student_dropout", type=float, default=0.0, help="New DT5: encoder and head dropout.")
    parser.add_argument("--adapter_hidden_features", type=str, default=None,
                        help="ContextAdapter hidden widths (default: 4 layers of its input width, as the paper's).")
    parser.add_argument("--adapter_dropout", type=float, default=0.0)
    parser.add_argument("--lora_rank", type=int, default=8)
    parser.add_argument("--lora_alpha", type=float, default=None, help="Default: the rank.")
    parser.add_argument("--lora_save", type=str, default="merged", choices=["merged", "adapters"])
    # Loss
    parser.add_argument("--mse_weight", type=float, default=1.0)
    parser.add_argument("--cd_weight", type=float, default=0.1)
    # Prompts
    parser.add_argument("--train_prompts", type=str, default=SHAPES_PROMPTS,
                        help='"shapes" (the caption generator) or a text file, one prompt per line.')
    parser.add_argument("--train_dataset", type=str, default=None,
                        help="A local `datasets` dataset (folder or data file) instead of --train_prompts.")
    parser.add_argument("--dataset_text_column", type=str, default="text")
    parser.add_argument("--dataset_split", type=str, default="train")
    parser.add_argument("--num_train_prompts", type=int, default=20_000,
                        help="Shapes: distinct captions drawn; files/datasets: a cap (0 = all).")
    parser.add_argument("--two_objects_prob", type=float, default=0.0, help="Shapes: share of two-object captions.")
    parser.add_argument("--negative_prompt_fraction", type=float, default=0.02,
                        help="Share of training prompts replaced by the teacher's default negative prompt.")
    parser.add_argument("--validation_prompts", type=str, default=SHAPES_HELDOUT,
                        help='"shapes-heldout", a text file, or "none".')
    parser.add_argument("--num_validation_prompts", type=int, default=200, help="A cap on the held-out prompts.")
    parser.add_argument("--validation_steps", type=int, default=0, help="Evaluate every N steps (0: only at the end).")
    parser.add_argument("--max_sequence_length", type=int, default=None,
                        help="Tokens per prompt (default: tokenizer_3's model_max_length, at most 128).")
    parser.add_argument("--target_cache_dir", type=str, default=None,
                        help="Cache the teacher's target tokens of the training prompts here (safetensors shards).")
    parser.add_argument("--target_cache_dtype", type=str, default="fp32", choices=list(SAVE_DTYPES))
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    add_common_arguments(
        parser, output_dir="text-encoder-distillation", tracker_project_name="neodragon-distill-text-encoder",
        learning_rate=1e-3, train_batch_size=64, max_train_steps=3000, checkpointing_steps=500, lr_warmup_steps=100,
        adam_weight_decay=0.0,
    )
    args = parse_with_command(parser, input_args)
    if args.mode == "LORA" and not args.student_model_name_or_path:
        raise ValueError("--mode LORA adapts a pretrained DT5: give --student_model_name_or_path.")
    if not 0.0 <= args.negative_prompt_fraction < 1.0:
        raise ValueError(f"--negative_prompt_fraction must be in [0, 1), got {args.negative_prompt_fraction}.")
    if args.mse_weight < 0 or args.cd_weight < 0 or args.mse_weight + args.cd_weight == 0:
        raise ValueError("--mse_weight and --cd_weight must be >= 0, not both 0.")
    return args


# ------------------------------------------------------------------------------------------------------- teacher


def load_teacher_text_path(path: str, dtype: torch.dtype):
    """``(text_encoder_3, tokenizer_3, context_embedder, pipeline config)`` of a pipeline folder, frozen; only these
    parts are loaded (the transformer's blocks are dropped right after reading its context_embedder)."""
    from diffusers_neodragon import NeodragonTransformer3DModel  # noqa: PLC0415

    folder = Path(path)
    index = json.loads((folder / "model_index.json").read_text())
    library, class_name = index["text_encoder_3"]
    encoder_cls = getattr(importlib.import_module(library), class_name)
    text_encoder = encoder_cls.from_pretrained(str(folder), subfolder="text_encoder_3", dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), subfolder="tokenizer_3")
    transformer = NeodragonTransformer3DModel.from_pretrained(str(folder), subfolder="transformer", torch_dtype=dtype)
    if transformer.context_embedder is None:
        raise ValueError(f"The teacher's transformer ({folder}) has no context_embedder: it already reads a "
                         "ContextAdapter's tokens, so there is no CE(T5(prompt)) target to distil.")
    context_embedder = transformer.context_embedder
    del transformer
    for module in (text_encoder, context_embedder):
        module.eval().requires_grad_(False)
    config = {k: v for k, v in index.items() if not k.startswith("_") and not isinstance(v, list)}
    return text_encoder, tokenizer, context_embedder, config


# ------------------------------------------------------------------------------------------------------- student


def build_student_dt5(args, tokenizer, teacher_config) -> tuple[DT5EncoderModel, bool]:
    """``(DT5, pretrained?)`` from --student_model_name_or_path (DT5 or T5 folder) or the --student_* sizes."""
    projection_dim = args.student_projection_dim or teacher_config.d_model
    if args.student_model_name_or_path:
        source = Path(args.student_model_name_or_path)
        config = json.loads((source / "config.json").read_text())
        if config.get("model_type") == DT5Config.model_type:
            return DT5EncoderModel.from_pretrained(str(source), dtype=torch.float32), True
        from transformers import T5EncoderModel  # noqa: PLC0415

        if args.mode != "TDT5":
            raise ValueError(f"{source} is a T5 encoder: the DT5 head on top of it would be new and random, and mode "
                             f"{args.mode} keeps DT5's own weights frozen. Start from it with --mode TDT5 (which "
                             "trains the head too), or give a DT5 folder.")
        t5 = T5EncoderModel.from_pretrained(str(source), dtype=torch.float32)
        layers = args.student_num_layers or t5.config.num_layers
        if layers > t5.config.num_layers:
            raise ValueError(f"--student_num_layers {layers} exceeds the {t5.config.num_layers} of {source}.")
        dt5 = DT5EncoderModel(DT5Config(**{**t5.config.to_dict(), "num_layers": layers,
                                           "projection_dim": projection_dim,
                                           "projection_dropout": args.student_dropout}))
        state = {k: v for k, v in t5.state_dict().items()
                 if not k.startswith("encoder.block.") or int(k.split(".")[2]) < layers}
        dt5.encoder.load_state_dict(state, strict=False)
        missing = set(dt5.encoder.state_dict()) - set(state) - {"encoder.embed_tokens.weight", "shared.weight"}
        if missing:
            raise ValueError(f"{source} lacks the encoder weights {sorted(missing)[:5]}.")
        return dt5, True
    d_model = args.student_d_model or teacher_config.d_model // 2
    heads = args.student_num_heads or teacher_config.num_heads
    if d_model % heads:
        raise ValueError(f"--student_d_model {d_model} must be divisible by the {heads} heads.")
    config = DT5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // heads, d_ff=args.student_d_ff or 2 * d_model,
        num_layers=args.student_num_layers or teacher_config.num_layers, num_heads=heads,
        feed_forward_proj="gated-gelu", dropout_rate=args.student_dropout, projection_dim=projection_dim,
        projection_dropout=args.student_dropout, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
        is_encoder_decoder=False, use_cache=False,
    )
    return DT5EncoderModel(config), False


def add_lora(dt5: DT5EncoderModel, args):
    """DT5 wrapped by peft with LoRA adapters on T5's attention and feed-forward projections."""
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415

    config = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha or args.lora_rank,
                        target_modules=list(T5_LORA_TARGET_MODULES), lora_dropout=0.0)
    return get_peft_model(dt5, config)


class TextStudent(torch.nn.Module):
    """The student's text path as one module (what the optimiser trains and a distributed wrapper sees)."""

    def __init__(self, text_encoder, context_adapter, context_embedder=None, encoder_frozen: bool = False):
        super().__init__()
        self.text_encoder, self.context_adapter, self.context_embedder = text_encoder, context_adapter, context_embedder
        self.encoder_frozen = encoder_frozen

    def train(self, mode: bool = True):
        """A frozen DT5 (and the frozen context_embedder) stay in eval mode: no dropout on what does not train."""
        super().train(mode)
        if self.encoder_frozen and self.text_encoder is not None:
            self.text_encoder.eval()
        if self.context_embedder is not None:
            self.context_embedder.eval()
        return self

    def forward(self, input_ids, attention_mask):
        return text_stream_tokens(self.text_encoder, input_ids, attention_mask, self.context_adapter,
                                  self.context_embedder)


def register_student_checkpoints(accelerator, args, dt5_trained: bool) -> None:
    """Checkpoints hold the trained parts as loadable folders: ``context_adapter/``, and ``text_encoder_3/`` (DT5
    trained) or ``text_encoder_3_lora/`` (peft adapters); a frozen DT5 is rebuilt from its source."""

    def save_hook(models, weights, folder):
        if accelerator.is_main_process:
            student = accelerator.unwrap_model(models[0])
            student.context_adapter.save_pretrained(Path(folder) / "context_adapter")
            if args.mode == "LORA":
                student.text_encoder.save_pretrained(Path(folder) / LORA_FOLDER)
            elif dt5_trained:
                student.text_encoder.save_pretrained(Path(folder) / "text_encoder_3")
        weights.clear()

    def load_hook(models, folder):
        student = accelerator.unwrap_model(models[0])
        adapter = ContextAdapter.from_pretrained(Path(folder) / "context_adapter", torch_dtype=torch.float32)
        student.context_adapter.load_state_dict(adapter.state_dict())
        if args.mode == "LORA":
            from peft import set_peft_model_state_dict  # noqa: PLC0415
            from safetensors.torch import load_file  # noqa: PLC0415

            set_peft_model_state_dict(student.text_encoder,
                                      load_file(str(Path(folder) / LORA_FOLDER / "adapter_model.safetensors")))
        elif dt5_trained:
            dt5 = DT5EncoderModel.from_pretrained(Path(folder) / "text_encoder_3", dtype=torch.float32)
            student.text_encoder.load_state_dict(dt5.state_dict())
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


# ------------------------------------------------------------------------------------------------------- prompts


def shapes_captions(count: int, split: str, seed: int, two_objects_prob: float = 0.0) -> list[str]:
    """``count`` distinct Shapes captions of ``split``, drawn deterministically from ``seed`` (fewer when the
    split has fewer: the draws stop after 50 x count tries)."""
    from diffusers_neodragon.data.shapes import sample_scene  # noqa: PLC0415

    rng = np.random.default_rng([seed, 7])
    found: dict[str, None] = {}
    for _ in range(50 * count):
        found.setdefault(sample_scene(rng, split, two_objects_prob).caption, None)
        if len(found) == count:
            break
    return list(found)


def training_prompts(args, negative_prompt: str) -> list[str]:
    """The training prompt list (raw, the suffix is added at encoding), with the negative prompt mixed in at
    evenly spaced positions."""
    if args.train_dataset:
        prompts = dataset_prompts(args.train_dataset, args.dataset_text_column, args.dataset_split)
    elif args.train_prompts == SHAPES_PROMPTS:
        prompts = shapes_captions(args.num_train_prompts, "train", args.seed, args.two_objects_prob)
    else:
        prompts = read_prompt_file(args.train_prompts)
    if args.num_train_prompts and args.train_prompts != SHAPES_PROMPTS:
        prompts = prompts[: args.num_train_prompts]
    if args.negative_prompt_fraction > 0:
        every = max(2, round(1 / args.negative_prompt_fraction))
        prompts = [negative_prompt if i % every == every - 1 else p for i, p in enumerate(prompts)]
    return prompts


def validation_prompts(args) -> list[str]:
    if args.validation_prompts == "none":
        return []
    if args.validation_prompts == SHAPES_HELDOUT:
        from diffusers_neodragon.data.shapes import fixed_prompt_set  # noqa: PLC0415

        return fixed_prompt_set("heldout", min(args.num_validation_prompts, 200))
    return read_prompt_file(args.validation_prompts)[: args.num_validation_prompts]


# ---------------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(student, teacher, tokenizer, texts, args, device, batch_size=64) -> dict[str, float]:
    """Held-out token MSE and cosine of the student against the teacher (means over valid tokens)."""
    was_training = student.training
    student.eval()
    agreement = TokenAgreement()
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenize(tokenizer, texts[start:start + batch_size], args.max_sequence_length, device)
        target = text_stream_tokens(teacher[0], ids, mask, context_embedder=teacher[1])
        agreement.update(student(ids, mask), target, mask)
    student.train(was_training)
    return agreement.result()


# ---------------------------------------------------------------------------------------------------------- main


def distilled_pipeline(teacher_path: str, text_encoder, tokenizer, context_adapter, keep_context_embedder: bool):
    """The teacher's pipeline with the student's text path: text_encoder_3/tokenizer_3/context_adapter replaced and,
    unless ``keep_context_embedder`` (EM), the transformer's context_embedder removed (the adapter outputs its
    width)."""
    pipe = NeodragonPipeline.from_pretrained(teacher_path, dtype=torch.float32)
    if not keep_context_embedder:
        pipe.transformer.context_embedder = None
        pipe.transformer.register_to_config(context_embedder_dim=None)
    pipe.register_modules(text_encoder_3=text_encoder, tokenizer_3=tokenizer, context_adapter=context_adapter)
    return pipe


def text_path_parameters(text_encoder, context_module) -> int:
    return count_parameters(text_encoder) + count_parameters(context_module)


def main(args):
    output_dir = Path(args.output_dir)
    accelerator, repo_id = setup_accelerator(args)
    if is_sharded(accelerator):
        raise ValueError("distill_text_encoder.py trains a student that fits one GPU (DT5 + ContextAdapter) and saves "
                         "it whole from the main process: run it with DDP (training/configs/ddp.yaml), not FSDP.")
    device = accelerator.device
    teacher_encoder, tokenizer, context_embedder, pipeline_config = load_teacher_text_path(
        args.pretrained_model_name_or_path, SAVE_DTYPES[args.teacher_dtype])
    teacher_encoder.to(device)
    context_embedder.to(device)
    args.max_sequence_length = args.max_sequence_length or min(int(tokenizer.model_max_length), 128)
    suffix = pipeline_config.get("prompt_suffix", "") or ""
    negative = pipeline_config.get("default_negative_prompt", "") or ""

    def with_suffix(prompts):  # as NeodragonPipeline.encode_prompt: the suffix on prompts, not on the negative
        return [p if p == negative else p + suffix for p in prompts]

    dt5, pretrained = build_student_dt5(args, tokenizer, teacher_encoder.config)
    if dt5.config.vocab_size < len(tokenizer):
        raise ValueError(f"The student's vocabulary ({dt5.config.vocab_size}) is smaller than tokenizer_3's "
                         f"({len(tokenizer)}): student and teacher must share the teacher's tokenizer.")
    dt5_trained = dt5_is_trained(args.mode, pretrained)
    expansion = args.mode in EXPANSION_MODES
    width = context_embedder.in_features if expansion else context_embedder.out_features
    in_features = dt5.config.projection_dim
    hidden = parse_int_list(args.adapter_hidden_features) if args.adapter_hidden_features else (in_features,) * 4
    adapter = ContextAdapter(in_features=in_features, out_features=width, hidden_features=hidden,
                             dropout=args.adapter_dropout)
    dt5.requires_grad_(dt5_trained)
    text_encoder = add_lora(dt5, args) if args.mode == "LORA" else dt5
    student = TextStudent(text_encoder, adapter, context_embedder if expansion else None,
                          encoder_frozen=not dt5_trained and args.mode != "LORA").to(device).train()
    if args.gradient_checkpointing and dt5_trained:
        enable_gradient_checkpointing(dt5)
    if not pretrained:
        logger.info(f"mode {args.mode}: the student DT5 is new, so it trains with the adapter.")

    prompts = training_prompts(args, negative)
    heldout = validation_prompts(args)
    targets = None
    if args.target_cache_dir:
        # The targets depend on the teacher's weights (not only its path), the precision and the prompts.
        digest = hashlib.sha256(json.dumps(
            [args.teacher_dtype, args.target_cache_dtype, args.max_sequence_length, suffix, prompts]).encode())
        for module in (teacher_encoder, context_embedder):
            for name, tensor in module.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().numpy().tobytes())
        fingerprint = digest.hexdigest()
        if accelerator.is_main_process and not token_shards_ready(args.target_cache_dir, fingerprint):
            @torch.no_grad()
            def compute(indices):
                texts = with_suffix([prompts[i] for i in indices])
                ids, mask = tokenize(tokenizer, texts, args.max_sequence_length, device)
                tokens = text_stream_tokens(teacher_encoder, ids, mask, context_embedder=context_embedder)
                return [row[: int(m.sum())] for row, m in zip(tokens, mask)]

            write_token_shards(args.target_cache_dir, len(prompts), compute, fingerprint,
                               dtype=SAVE_DTYPES[args.target_cache_dtype])
        accelerator.wait_for_everyone()
        targets = TokenShards(args.target_cache_dir)

    register_student_checkpoints(accelerator, args, dt5_trained)
    optimizer = build_optimizer(student.parameters(), args, accelerator)
    dataloader = torch.utils.data.DataLoader(
        range(len(prompts)), batch_size=args.train_batch_size, sampler=EpochShuffleSampler(len(prompts), args.seed),
        collate_fn=list, num_workers=args.dataloader_num_workers, drop_last=True,
    )
    lr_scheduler = build_lr_scheduler(optimizer, args, accelerator)
    student, optimizer, dataloader, lr_scheduler = accelerator.prepare(student, optimizer, dataloader, lr_scheduler)
    if len(dataloader) == 0:
        raise ValueError(f"{len(prompts)} training prompts are fewer than one batch.")

    init_trackers(accelerator, args)
    teacher_parameters = text_path_parameters(teacher_encoder, context_embedder)
    kept_embedder = count_parameters(context_embedder) if expansion else 0
    student_parameters = count_parameters(dt5) + count_parameters(adapter) + kept_embedder
    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"***** Text-encoder distillation, mode {args.mode} *****\n  teacher text path {teacher_parameters / 1e6:.3f}M "
        f"(T5 {count_parameters(teacher_encoder) / 1e6:.3f}M), student {student_parameters / 1e6:.3f}M "
        f"(DT5 {count_parameters(dt5) / 1e6:.3f}M, {'trained' if dt5_trained else 'frozen'}), "
        f"{len(prompts)} prompts, total batch {total_batch}, steps {args.max_train_steps}"
    )

    global_step = resume_global_step(accelerator, args, output_dir)

    teacher = (teacher_encoder, context_embedder)
    unwrapped = accelerator.unwrap_model(student)
    start_step, start_time = global_step, time.perf_counter()
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="Steps",
                    disable=not accelerator.is_local_main_process)
    last_loss, metrics, window = None, None, []
    for _, indices in training_batches(dataloader, accelerator, global_step, args.max_train_steps,
                                       args.gradient_accumulation_steps):
        with accelerator.accumulate(student):
            ids, mask = tokenize(tokenizer, with_suffix([prompts[int(i)] for i in indices]),
                                 args.max_sequence_length, device)
            keep = max(int(mask.sum(1).max()), 1)
            ids, mask = ids[:, :keep], mask[:, :keep]
            if targets is not None:
                rows = [targets[int(i)] for i in indices]
                if [r.shape[0] for r in rows] != mask.sum(1).tolist():
                    raise ValueError("The cached targets do not match the prompts' token counts.")
                target = torch.zeros(len(rows), keep, rows[0].shape[1], device=device)
                for row, tokens in enumerate(rows):
                    target[row, : tokens.shape[0]] = tokens.to(device)
            else:
                with torch.no_grad():
                    target = text_stream_tokens(teacher_encoder, ids, mask, context_embedder=context_embedder)
            with accelerator.autocast():
                prediction = student(ids, mask)
            loss, terms = token_distillation_loss(prediction, target, mask, args.mse_weight, args.cd_weight)
            window.append(loss.detach())
            backward_and_step(accelerator, loss, student, optimizer, lr_scheduler, args.max_grad_norm)
        if accelerator.sync_gradients:
            global_step += 1
            progress.update(1)
            last_loss = window_mean(accelerator, window)
            progress.set_postfix(loss=f"{last_loss:.4f}")
            accelerator.log({"loss": last_loss, "lr": lr_scheduler.get_last_lr()[0],
                             **{f"loss/{k}": v for k, v in terms.items()}}, step=global_step)
            if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
            if heldout and args.validation_steps and global_step % args.validation_steps == 0:
                if accelerator.is_main_process:
                    metrics = evaluate(unwrapped, teacher, tokenizer, with_suffix(heldout), args, device)
                    accelerator.print(f"[distill_text_encoder] step {global_step}: held-out token MSE "
                                      f"{metrics['mse']:.5f}, cosine {metrics['cosine']:.4f}")
                    accelerator.log({"val/mse": metrics["mse"], "val/cosine": metrics["cosine"]}, step=global_step)
        if should_stop(accelerator, args, global_step, start_time):
            break
    progress.close()
    finish_training_loop("distill_text_encoder", accelerator, args, output_dir, start_step, global_step, start_time)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        student = accelerator.unwrap_model(student).eval()
        if heldout:
            metrics = evaluate(student, teacher, tokenizer, with_suffix(heldout), args, device)
            accelerator.print(f"[distill_text_encoder] held-out ({len(heldout)} prompts, {metrics['tokens']} tokens): "
                              f"token MSE {metrics['mse']:.5f}, cosine {metrics['cosine']:.4f}")
        encoder = student.text_encoder
        if args.mode == "LORA":
            if args.lora_save == "adapters":
                encoder.save_pretrained(output_dir / LORA_FOLDER)
                encoder = encoder.unload()  # the base DT5 without the LoRA layers; the adapters stay beside it
            else:
                encoder = encoder.merge_and_unload()
        encoder = encoder.cpu().eval()
        student_parameters = count_parameters(encoder) + count_parameters(student.context_adapter) + kept_embedder
        pipe = distilled_pipeline(args.pretrained_model_name_or_path, encoder, tokenizer, student.context_adapter.cpu(),
                                  keep_context_embedder=expansion)
        if SAVE_DTYPES[args.save_dtype] != torch.float32:
            pipe.to(SAVE_DTYPES[args.save_dtype])
        pipe.save_pretrained(output_dir)
        teacher_t5, ce = count_parameters(teacher_encoder), count_parameters(context_embedder)
        values = dict(
            title=args.hub_model_id or f"Distilled text encoder ({args.mode}, {output_dir.name})",
            mode=args.mode,
            dt5_state=("trained" if dt5_trained else "LoRA-adapted" if args.mode == "LORA" else "frozen")
            + ("" if pretrained else " (new, from a config)"),
            teacher=args.pretrained_model_name_or_path,
            student_source=args.student_model_name_or_path or "new DT5 from a config",
            data=(args.train_dataset or args.train_prompts) + f" ({len(prompts)} prompts, "
            f"{args.negative_prompt_fraction:.0%} the negative prompt {negative!r})",
            validation=f"{args.validation_prompts} ({len(heldout)} prompts)",
            steps=global_step, batch_size=total_batch, learning_rate=args.learning_rate,
            loss=f"{args.mse_weight:g}·MSE + {args.cd_weight:g}·(1 − cos) over valid tokens",
            final_loss=format_float(last_loss),
            heldout_mse=format_float(metrics and metrics["mse"]),
            heldout_cosine=format_float(metrics and metrics["cosine"]),
            teacher_t5_parameters=f"{teacher_t5 / 1e6:.3f}M", teacher_ce_parameters=f"{ce / 1e6:.3f}M",
            teacher_text_path=f"{(teacher_t5 + ce) / 1e6:.3f}M",
            student_dt5_parameters=f"{count_parameters(encoder) / 1e6:.3f}M",
            student_adapter_parameters=f"{count_parameters(student.context_adapter) / 1e6:.3f}M",
            student_text_path=f"{student_parameters / 1e6:.3f}M",
            compression=f"{(teacher_t5 + ce) / student_parameters:.2f}x",
            dt5_config=(f"d_model {encoder.config.d_model}, {encoder.config.num_layers} layers x "
                        f"{encoder.config.num_heads} heads, d_ff {encoder.config.d_ff}, projection "
                        f"{encoder.config.projection_dim}"),
            adapter_config=f"{in_features} → {list(hidden)} → {width}",
            layout=("DT5 → ContextAdapter → the transformer's frozen context_embedder" if expansion
                    else "DT5 → ContextAdapter (the transformer's context_embedder removed)"),
            save_dtype=args.save_dtype,
            command=training_command(SCRIPT, args.command_args),
        )
        write_model_card(output_dir, "text_encoder_distillation.md", values,
                         tags=["text-encoder-distillation", "neodragon", args.mode.lower()])
        figures = {"mode": args.mode, "steps": global_step, "final_loss": last_loss, "heldout": metrics,
                   "teacher_text_path_parameters": teacher_t5 + ce, "student_text_path_parameters": student_parameters,
                   "student_dt5_parameters": count_parameters(encoder), "teacher_t5_parameters": teacher_t5}
        (output_dir / "distillation_metrics.json").write_text(json.dumps(figures, indent=2))
        if args.push_to_hub:
            push_folder_to_hub(repo_id, output_dir, token=args.hub_token)
    accelerator.end_training()
    return {"global_step": global_step, "loss": last_loss, "heldout": metrics}


if __name__ == "__main__":
    main(parse_args())
