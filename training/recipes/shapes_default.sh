#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The recipe of the embedded default model (diffusers_neodragon/pretrained/shapes): a small causal VAE, then a
# small pyramidal flow-matching transformer on its latents, both on the synthetic Shapes world.
# Usage: training/recipes/shapes_default.sh OUTPUT_DIR
#
# 1. VAE on 17-frame clips (fast), 2. the same VAE fine-tuned on 49-frame clips: a causal VAE trained only on
# short clips breaks down after ~3 latent frames of a longer one (during training every output's receptive field
# reached the first frame's replicate padding), so it must see the length it will encode; 3. its decoder alone
# fine-tuned on latents perturbed by Gaussian noise (the encoder, and so every latent, stays the same): the
# transformer's samples drift off the latent manifold, and a decoder that only saw clean latents turns that drift
# into speckle and stripes; an L1 term over the object's pixels alone (--foreground_weight) keeps the corners of
# small objects, which the frame-wide terms let it round off (a small diamond is 2 % of a frame); 4. the whole VAE
# fine-tuned with the same terms, less latent noise and the first frame counted as eight frames, so that the first
# latent frame (one pixel frame) separates small shapes (the encoder changes: everything after uses its latents);
# 5. the transformer (history corrupted up to sigma 0.5, the first frame trained 30 % of the time); 6. two rounds of
# the transformer continued on histories it sampled itself (--generated_history_prob 1, each round sampling them
# anew with the model of the round before): trained on true histories only, it lost small shapes in its own rollouts.
# VAE_SECONDS / VAE_LONG_SECONDS / VAE_ROBUST_SECONDS / VAE_WHOLE_SECONDS / DIT_SECONDS / OWN_SECONDS cap each
# phase's training time (step counts are upper bounds); DIT_LR sets the transformer's learning rate (default 1e-3,
# for a total batch of 512);
# SHAPESBENCH_PROMPTS the prompts per split of the final ShapesBench run (default 16; 0 skips it).
# COMPILE=1 adds --compile to the transformer phase (GPU only: about 1.75x the steps per second once ~2.5 min of
# compilation are done; see the README).
# LAUNCH runs each script under a launcher, e.g. LAUNCH="python3 -m torch.distributed.run --standalone
# --nproc_per_node 4" (batch sizes are per process; the shipped model used four GPUs, see its model card).
# The scripts' defaults are this recipe's values, so each command states only what differs from them.
# SMOKE=1 shrinks every size so that the whole recipe runs on a CPU in a minute (to check it before GPU time).
set -euo pipefail
OUT=${1:?usage: shapes_default.sh OUTPUT_DIR}
HERE="$(cd "$(dirname "$0")/../.." && pwd)"
PY=${PYTHON:-python3}
read -r -a LAUNCH <<< "${LAUNCH:-$PY}"
VAE_SECONDS=${VAE_SECONDS:-150}
VAE_LONG_SECONDS=${VAE_LONG_SECONDS:-125}
VAE_ROBUST_SECONDS=${VAE_ROBUST_SECONDS:-400}
VAE_WHOLE_SECONDS=${VAE_WHOLE_SECONDS:-400}
DIT_SECONDS=${DIT_SECONDS:-600}
OWN_SECONDS=${OWN_SECONDS:-200}
SHAPESBENCH_PROMPTS=${SHAPESBENCH_PROMPTS:-16}
WORKERS=${WORKERS:-14}

if [[ "${SMOKE:-0}" == 1 ]]; then
  VAE_SIZE=(--resolution 64 --num_frames 9 --train_batch_size 2 --max_train_steps 3 --block_out_channels 8,8,8,8
            --norm_num_groups 4 --normalization_samples 4 --mixed_precision no)
  VAE_LONG_SIZE=(--resolution 64 --num_frames 17 --train_batch_size 1 --max_train_steps 2 --normalization_samples 2
                 --mixed_precision no)
  DIT_SIZE=(--resolution 64 --num_frames 17 --train_samples 8 --train_batch_size 4 --max_train_steps 3
            --num_layers 2
            --validation_num_inference_steps 1 --validation_video_num_inference_steps 1 --mixed_precision no)
  WORKERS=0
  LONG_FRAMES=17
else
  # the scripts' defaults are this recipe's sizes (128x128, batch 8 / 128, 10 blocks, ...)
  LONG_FRAMES=49
  VAE_SIZE=(--mixed_precision bf16)
  VAE_LONG_SIZE=(--num_frames 49 --mixed_precision bf16)
  DIT_SIZE=(--mixed_precision bf16)
fi
if [[ "${COMPILE:-0}" == 1 ]]; then
  DIT_SIZE+=(--compile)
fi
SHAPESBENCH=()
if [[ "${SMOKE:-0}" != 1 && "$SHAPESBENCH_PROMPTS" != 0 ]]; then
  SHAPESBENCH=(--eval_shapesbench --shapesbench_num_prompts "$SHAPESBENCH_PROMPTS")
fi
COMMON=(--dataloader_num_workers "$WORKERS" --checkpointing_steps 0 --report_to none)

"${LAUNCH[@]}" "$HERE/training/train_vae.py" --output_dir "$OUT/vae-short" "${VAE_SIZE[@]}" "${COMMON[@]}" \
  --l1_weight 0 --max_train_seconds "$VAE_SECONDS" --normalization_num_frames "${LONG_FRAMES}" \
  --validation_num_frames "${LONG_FRAMES}" --seed 0

"${LAUNCH[@]}" "$HERE/training/train_vae.py" --pretrained_vae "$OUT/vae-short" --output_dir "$OUT/vae-run" \
  "${VAE_LONG_SIZE[@]}" "${COMMON[@]}" --l1_weight 0 --learning_rate 2e-4 --lr_warmup_steps 50 \
  --max_train_seconds "$VAE_LONG_SECONDS" --seed 1

"${LAUNCH[@]}" "$HERE/training/train_vae.py" --pretrained_vae "$OUT/vae-run" --output_dir "$OUT/vae-robust" \
  "${VAE_LONG_SIZE[@]}" "${COMMON[@]}" --decoder_only --latent_noise_std 0.3 --foreground_weight 2 \
  --learning_rate 1e-4 --lr_warmup_steps 50 --max_train_seconds "$VAE_ROBUST_SECONDS" --seed 2

"${LAUNCH[@]}" "$HERE/training/train_vae.py" --pretrained_vae "$OUT/vae-robust" --output_dir "$OUT/vae-whole" \
  "${VAE_LONG_SIZE[@]}" "${COMMON[@]}" --latent_noise_std 0.15 --foreground_weight 2 --first_frame_weight 8 \
  --learning_rate 1e-4 --lr_warmup_steps 50 --max_train_seconds "$VAE_WHOLE_SECONDS" --seed 3

DIT_COMMON=(--vae_path "$OUT/vae-whole" "${DIT_SIZE[@]}" "${COMMON[@]}")
"${LAUNCH[@]}" "$HERE/training/train_pyramidal_flow.py" --output_dir "$OUT/pipeline-true-history" "${DIT_COMMON[@]}" \
  --learning_rate "${DIT_LR:-1e-3}" --max_train_seconds "$DIT_SECONDS" --num_validation_prompts 0 --seed 0

"${LAUNCH[@]}" "$HERE/training/train_pyramidal_flow.py" --output_dir "$OUT/pipeline-own-history-1" "${DIT_COMMON[@]}" \
  --text_encoders_path "$OUT/pipeline-true-history" --transformer_path "$OUT/pipeline-true-history/transformer" \
  --generated_history_prob 1 --learning_rate 2e-4 --lr_warmup_steps 20 --max_train_seconds "$OWN_SECONDS" \
  --num_validation_prompts 0 --seed 1

"${LAUNCH[@]}" "$HERE/training/train_pyramidal_flow.py" --output_dir "$OUT/pipeline" "${DIT_COMMON[@]}" \
  --text_encoders_path "$OUT/pipeline-own-history-1" --transformer_path "$OUT/pipeline-own-history-1/transformer" \
  --generated_history_prob 1 --learning_rate 2e-4 --lr_warmup_steps 20 --max_train_seconds "$OWN_SECONDS" \
  --seed 2 "${SHAPESBENCH[@]}"
