#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The paper's whole chain on the Shapes world, each step a command of the training scripts, each writing a pipeline
# folder that the next step starts from:
#   1-text      DT5 + ContextAdapter learn the T5 + context-embedder tokens (distill_text_encoder.py, mode RM)
#   2-decoder   a tiny streaming decoder learns to decode the same latents (distill_decoder.py; encoder kept)
#   3-pruned    the blocks whose removal alone costs least on ShapesBench dropped, the last one kept (prune_transformer.py)
#   4-stage1    recovery stage 1: flow matching on data (train_pyramidal_flow.py)
#   5-stage2    recovery stage 2: teacher features + flow matching (train_pyramidal_flow.py --teacher_path)
#   6-dmd444    Pyramidal DMD 4-4-4 from the recovered model (distill_pyramidal_dmd.py)
#   7-dmd111    Pyramidal DMD 1-1-1 from 4-4-4 for every later frame, 4-4-4 kept for its own first frame
#               (--first_frame_steps_per_stage): a multi-step first frame in 12 transformer calls, where the recovered
#               model's (6-dmd444's hybrid) takes 120 and about 7 s of the CPU budget
#   pipeline    7-dmd111 with a trained 2x QuickSRNet (train_quicksrnet.py): the mobile pipeline
# Usage: training/recipes/neodragon_shapes.sh OUTPUT_DIR
# TEACHER: the starting pipeline (default: the embedded model). *_SECONDS cap each step's training time;
# NUM_DROP the blocks to drop (default 2 of 10); SHAPESBENCH_PROMPTS the prompts per split of the final comparison of
# every step against the teacher (default 16, seeds 0 and 1; 0 skips it), which with each step's CPU (two threads) and
# GPU latency makes the ablation table, $OUT/ablation.md (benchmarks/ablation_table.py). LAUNCH runs each training
# script under a launcher (e.g. "accelerate launch"). SMOKE=1 shrinks every size so that the chain runs on a CPU in
# minutes.
# Run it again after a crash or a time limit: steps whose output is complete are skipped, and the step that was cut
# resumes from its latest checkpoint. DECODER_FROM (e.g. checkpoints/shapes-distilled-decoder, made from the embedded
# teacher's encoder) skips the decoder's three runs: that decoder is validated against the teacher and used as it is.
set -euo pipefail
OUT=${1:?usage: neodragon_shapes.sh OUTPUT_DIR}
HERE="$(cd "$(dirname "$0")/../.." && pwd)"
PY=${PYTHON:-python3}
read -r -a LAUNCH <<< "${LAUNCH:-$PY}"
TEACHER=${TEACHER:-$("$PY" -c "from diffusers_neodragon.pretrained import shapes_model_path; print(shapes_model_path())")}
NUM_DROP=${NUM_DROP:-2}
SHAPESBENCH_PROMPTS=${SHAPESBENCH_PROMPTS:-16}
mkdir -p "$OUT"
CACHE="$OUT/latent-cache.safetensors"  # the decoder-distilled VAE's latents, shared by steps 4-7

if [[ "${SMOKE:-0}" == 1 ]]; then
  SIZE=(--resolution 64 --num_frames 9)
  TEXT=(--student_d_model 16 --student_num_layers 1 --student_num_heads 2 --student_d_ff 32
        --adapter_hidden_features 32 --num_train_prompts 16 --train_batch_size 4 --max_train_steps 2
        --num_validation_prompts 2)
  DECODER=("${SIZE[@]}" --decoder_num_features 8,8,8,8 --decoder_blocks_per_stage 1 --train_batch_size 1
           --max_train_steps 2 --num_validation_clips 1)
  DECODER_RUN1=(--train_samples 2) DECODER_RUN2=(--train_samples 2) DECODER_RUN3=(--train_samples 2)
  DECODER_CHECK=(--train_samples 2)
  SCORE=(--num_prompts 1 --num_samples 1 --num_frames 9) PRUNE=()
  FLOW=("${SIZE[@]}" --train_samples 4 --train_batch_size 2 --max_train_steps 2 --num_validation_prompts 0
        --max_sequence_length 24)
  STAGE1=() STAGE2=()
  DMD=("${SIZE[@]}" --train_samples 4 --train_batch_size 2 --max_train_steps 2 --num_validation_prompts 0
       --max_sequence_length 24)
  SR=(--train_samples 2 --train_batch_size 1 --crop_size 32 --max_train_steps 2 --num_validation_clips 1)
  COMMON=(--report_to none --checkpointing_steps 0 --mixed_precision no --resume_from_checkpoint latest)
else
  # the values of model_cards/shapes_compression_results.md's runs (one H200, bf16)
  TEXT=(--student_d_model 128 --student_num_layers 2 --adapter_hidden_features 256,256 --train_batch_size 64
        --max_train_seconds "${TEXT_SECONDS:-110}")
  # the decoder in three runs, as checkpoints/shapes-distilled-decoder was made: MSE + 0.1 (1 - SSIM) from 1e-3 and
  # then from 3e-4, then MSE alone from 2e-4 (DECODER_SECONDS caps the first run)
  DECODER=(--train_batch_size 16 --lr_scheduler cosine --dataloader_num_workers 7 --num_validation_clips 8)
  DECODER_RUN1=(--train_samples 16384 --learning_rate 1e-3 --max_train_steps 3200
                --max_train_seconds "${DECODER_SECONDS:-400}" --latent_cache_dir "$OUT/2-decoder/latents-16384")
  DECODER_RUN2=(--train_samples 8192 --learning_rate 3e-4 --max_train_steps 2400
                --latent_cache_dir "$OUT/2-decoder/latents-8192")
  DECODER_RUN3=(--train_samples 8192 --learning_rate 2e-4 --max_train_steps 3000 --perceptual_weight 0
                --latent_cache_dir "$OUT/2-decoder/latents-8192")
  DECODER_CHECK=(--train_samples 16)  # with DECODER_FROM: no training, so no training set
  # blocks ranked by what dropping each alone costs on ShapesBench (the mean-cosine ranking dropped a block the
  # model could not recover from; see model_cards/shapes_compression_results.md)
  SCORE=(--num_frames 17 --drop_cost --drop_cost_num_prompts 8) PRUNE=(--criterion drop_cost)
  # the pruning recovery of model_cards/shapes_compression_results.md's latest 32-prompt rows: each stage to the end
  # of a cosine schedule (1300 and 1400 steps: about 100 and 155 s of training on an H100)
  FLOW=(--train_samples 4096 --train_batch_size 512 --learning_rate 2e-4 --lr_warmup_steps 20 --lr_scheduler cosine
        --ema_decay 0.995 --latent_cache_path "$CACHE" --dataloader_num_workers 4)
  STAGE1=(--max_train_steps 1300) STAGE2=(--max_train_steps 1400)
  DMD=(--train_samples 4096 --train_batch_size 256 --learning_rate 1e-4 --latent_cache_path "$CACHE")
  SR=(--max_train_seconds "${SR_SECONDS:-300}")
  COMMON=(--mixed_precision bf16 --save_dtype fp16 --resume_from_checkpoint latest)
fi
run() { "${LAUNCH[@]}" "$HERE/training/$1" "${@:2}"; }
# `once FILE COMMAND...`: COMMAND unless FILE, the last thing the step writes, shows that it finished before
once() {
  if [[ -e "$1" ]]; then echo "[neodragon_shapes] done already: $1"; else "${@:2}"; fi
}

once "$OUT/1-text/README.md" run distill_text_encoder.py --pretrained_model_name_or_path "$TEACHER" --mode RM \
  --output_dir "$OUT/1-text" "${TEXT[@]}" "${COMMON[@]}"
if [[ -n "${DECODER_FROM:-}" ]]; then  # a decoder distilled before (same teacher encoder): validated, not trained
  once "$OUT/2-decoder/pipeline/README.md" run distill_decoder.py --teacher "$OUT/1-text" --student_init "$DECODER_FROM" \
    --output_dir "$OUT/2-decoder" --pipeline_output "$OUT/2-decoder/pipeline" "${DECODER[@]}" "${DECODER_CHECK[@]}" \
    --max_train_steps 0 "${COMMON[@]}"
else
  once "$OUT/2-decoder/run1/README.md" run distill_decoder.py --teacher "$OUT/1-text" --output_dir "$OUT/2-decoder/run1" \
    "${DECODER[@]}" "${DECODER_RUN1[@]}" "${COMMON[@]}" --save_dtype fp32
  once "$OUT/2-decoder/run2/README.md" run distill_decoder.py --teacher "$OUT/1-text" \
    --student_init "$OUT/2-decoder/run1" --output_dir "$OUT/2-decoder/run2" "${DECODER[@]}" "${DECODER_RUN2[@]}" \
    "${COMMON[@]}" --save_dtype fp32
  once "$OUT/2-decoder/pipeline/README.md" run distill_decoder.py --teacher "$OUT/1-text" \
    --student_init "$OUT/2-decoder/run2" --output_dir "$OUT/2-decoder" --pipeline_output "$OUT/2-decoder/pipeline" \
    "${DECODER[@]}" "${DECODER_RUN3[@]}" "${COMMON[@]}"
fi
once "$OUT/3-score/importance.json" "$PY" "$HERE/training/prune_transformer.py" score \
  --teacher "$OUT/2-decoder/pipeline" --output_dir "$OUT/3-score" "${SCORE[@]}"
once "$OUT/3-pruned/README.md" "$PY" "$HERE/training/prune_transformer.py" prune --teacher "$OUT/2-decoder/pipeline" \
  --num_drop "$NUM_DROP" --scores "$OUT/3-score/importance.json" "${PRUNE[@]}" --output_dir "$OUT/3-pruned"
once "$OUT/4-stage1/README.md" run train_pyramidal_flow.py --pretrained_model_name_or_path "$OUT/3-pruned" \
  --output_dir "$OUT/4-stage1" --max_train_seconds "${STAGE1_SECONDS:-600}" "${STAGE1[@]}" "${FLOW[@]}" "${COMMON[@]}"
once "$OUT/5-stage2/README.md" run train_pyramidal_flow.py --pretrained_model_name_or_path "$OUT/4-stage1" \
  --teacher_path "$OUT/2-decoder/pipeline" --output_dir "$OUT/5-stage2" --max_train_seconds "${STAGE2_SECONDS:-600}" \
  "${STAGE2[@]}" "${FLOW[@]}" "${COMMON[@]}"
once "$OUT/6-dmd444/README.md" run distill_pyramidal_dmd.py --teacher_path "$OUT/5-stage2" --steps_per_stage 4 \
  --output_dir "$OUT/6-dmd444" --max_train_seconds "${DMD_SECONDS:-300}" "${DMD[@]}" "${COMMON[@]}"
once "$OUT/7-dmd111/README.md" run distill_pyramidal_dmd.py --teacher_path "$OUT/5-stage2" --steps_per_stage 1 \
  --student_path "$OUT/6-dmd444" --first_frame_steps_per_stage 4 --save_mode monolithic --output_dir "$OUT/7-dmd111" \
  --max_train_seconds "${DMD_SECONDS:-300}" "${DMD[@]}" "${COMMON[@]}"
once "$OUT/pipeline/README.md" run train_quicksrnet.py --teacher "$OUT/7-dmd111" --output_dir "$OUT/8-sr" \
  --pipeline_output "$OUT/pipeline" "${SR[@]}" "${COMMON[@]}"

if [[ "$SHAPESBENCH_PROMPTS" != 0 ]]; then  # the ablation table: every step's scores and costs -> $OUT/ablation.md
  STEPS=("teacher=$TEACHER" "text=$OUT/1-text" "decoder=$OUT/2-decoder/pipeline" "pruned=$OUT/5-stage2"
         "dmd444=$OUT/6-dmd444" "dmd111=$OUT/7-dmd111" "final=$OUT/pipeline")
  "$PY" "$HERE/benchmarks/shapesbench_compare.py" "${STEPS[@]}" --seeds 0,1 --num-prompts "$SHAPESBENCH_PROMPTS" \
    --results-dir "$OUT/shapesbench" --markdown --json "$OUT/shapesbench/table.json"
  "$PY" "$HERE/benchmarks/pipeline_latency.py" "${STEPS[@]}" --device cpu --threads 2 --json "$OUT/latency-cpu.json"
  GPU=()
  if "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    "$PY" "$HERE/benchmarks/pipeline_latency.py" "${STEPS[@]}" --cuda-graphs --json "$OUT/latency-gpu.json"
    GPU=(--gpu "$OUT/latency-gpu.json")
  fi
  "$PY" "$HERE/benchmarks/ablation_table.py" --shapesbench "$OUT/shapesbench/table.json" \
    --cpu "$OUT/latency-cpu.json" "${GPU[@]}" --output "$OUT/ablation.md"
fi
