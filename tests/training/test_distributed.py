"""Two CPU processes (gloo) against one: a training step under DDP and under FSDP2 (``training/configs/fsdp.yaml``)
gives the weights one process gives for the same global batch, for the base flow-matching script (with EMA), the
VAE, text-encoder distillation (DDP only), decoder distillation, Pyramidal DMD (student with EMA and fake score) and
QuickSRNet (random crops); under FSDP the frozen teachers of Pyramidal DMD and of pruning stage 2 are sharded too;
FSDP checkpoints (sharded state + whole folders) resume to the uninterrupted run; the DeepSpeed ZeRO-2 and ZeRO-3
configs train (one process, DeepSpeed's CPU accelerator; skipped without deepspeed) and resume to the uninterrupted
run, pruning stage 2 with its frozen teacher partitioned by ZeRO-3.

"The same global batch": two processes with batch b each against one process with batch b and two accumulated
micro-batches; ``training_batches`` numbers batches over all processes, so both draw the same data and the same
randomness. Tolerance: 1e-5 absolute + 1e-4 relative on every weight (float32; the reduction order differs).

Marked ``distributed`` (not in the default run): ``pytest -m distributed`` (``.ci/run`` runs them after the suite)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.script_loading import REPO
from tests.tiny_components import tiny_causal_vae


pytestmark = pytest.mark.distributed

WORKER = str(REPO / "tests" / "training" / "distributed_worker.py")
FSDP_CONFIG = str(REPO / "training" / "configs" / "fsdp.yaml")
ATOL, RTOL = 1e-5, 1e-4

PYRAMIDAL = [
    "--resolution", "64", "--num_frames", "17", "--train_samples", "4", "--train_batch_size", "2",
    "--num_layers", "2", "--num_attention_heads", "2", "--attention_head_dim", "16",
    "--t5_dim", "32", "--t5_heads", "2", "--t5_layers", "1", "--clip_dim", "16", "--clip_heads", "2",
    "--clip_projection_dim", "8", "--max_sequence_length", "24", "--report_to", "none", "--max_train_steps", "1",
    "--checkpointing_steps", "1", "--num_validation_prompts", "0", "--lr_warmup_steps", "0",
    "--gradient_checkpointing", "--first_frame_prob", "0.5",
]
DECODER = [
    "--resolution", "16", "--num_frames", "9", "--decoder_num_features", "8,8,4,4", "--decoder_blocks_per_stage",
    "1", "--train_samples", "4", "--train_batch_size", "2", "--report_to", "none", "--lr_warmup_steps", "0",
    "--num_validation_clips", "0", "--checkpointing_steps", "1", "--max_train_steps", "2",
    "--gradient_checkpointing",
]
QUICKSRNET = [
    "--resolution", "32", "--num_frames", "2", "--frames_per_clip", "2", "--crop_size", "16", "--train_samples", "4",
    "--train_batch_size", "2", "--report_to", "none", "--lr_warmup_steps", "0", "--learning_rate", "1e-2",
    "--num_validation_clips", "0", "--checkpointing_steps", "1", "--max_train_steps", "2", "--num_channels", "4",
    "--num_intermediate_layers", "1", "--gradient_checkpointing",
]
DMD = [
    "--train_samples", "4", "--train_batch_size", "2", "--max_sequence_length", "24", "--report_to", "none",
    "--num_validation_prompts", "0", "--first_frame_prob", "0.5", "--max_train_steps", "1",
    "--checkpointing_steps", "1", "--fake_updates_per_student", "1", "--lr_warmup_steps", "0",
    "--gradient_checkpointing", "--steps_per_stage", "2",
]


def launch(mode: str, script: str, *options: str) -> None:
    """The script's ``main`` in one process (``single``) or two (``ddp``, ``fsdp``); fails with its output."""
    if mode == "single":
        command = [sys.executable, WORKER, mode, FSDP_CONFIG, script, *options]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", WORKER,
                   mode, FSDP_CONFIG, script, *options]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{mode} {script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def run_modes(script, options, root: Path, modes=("single", "ddp", "fsdp")) -> dict[str, Path]:
    """Each mode's output folder; one process accumulates two micro-batches to match two processes' batches."""
    outputs = {}
    for mode in modes:
        out = root / mode
        extra = ["--gradient_accumulation_steps", "2"] if mode == "single" else []
        launch(mode, script, *options, *extra, "--output_dir", str(out))
        outputs[mode] = out
    return outputs


def assert_same_weights(expected: Path, actual: Path) -> None:
    want, got = load_file(str(expected)), load_file(str(actual))
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=ATOL, rtol=RTOL, msg=lambda m, k=key: f"{k}: {m}")


def assert_modes_agree(outputs: dict[str, Path], files: list[str], start: Path | None = None) -> None:
    """Every file equal across the modes, and the step moved the weights (else equality proves nothing)."""
    for name in files:
        for mode in outputs:
            if mode != "single":
                assert_same_weights(outputs["single"] / name, outputs[mode] / name)
    if start is not None:
        before, after = load_file(str(start)), load_file(str(outputs["single"] / files[0]))
        assert any(not torch.equal(before[k], after[k]) for k in before), "the step changed nothing"


TRANSFORMER = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def pyramidal_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pyramidal")
    tiny_causal_vae(seed=0).save_pretrained(root / "vae_folder" / "vae")
    # A teacher trained one step first, so that the runs below start from the same saved transformer.
    launch("single", "training/train_pyramidal_flow.py", *PYRAMIDAL, "--vae_path", str(root / "vae_folder"),
           "--output_dir", str(root / "teacher"), "--no-use_ema", "--checkpointing_steps", "0")
    options = [*PYRAMIDAL, "--pretrained_model_name_or_path", str(root / "teacher"), "--max_train_steps", "2",
               "--learning_rate", "1e-3"]
    return root, run_modes("training/train_pyramidal_flow.py", options, root), options


def test_pyramidal_flow_step_ddp_and_fsdp_equal_one_process(pyramidal_runs):
    root, outputs, _ = pyramidal_runs
    assert_modes_agree(outputs, [f"checkpoint-1/transformer/{TRANSFORMER}",  # after one optimiser step
                                 f"checkpoint-2/transformer_ema/{TRANSFORMER}",  # the EMA after two
                                 f"transformer/{TRANSFORMER}"],  # the saved (EMA) pipeline
                       start=root / "teacher" / "transformer" / TRANSFORMER)
    assert (outputs["fsdp"] / "checkpoint-2" / "pytorch_model_fsdp_0").is_dir()  # accelerate's sharded state


def test_fsdp_resumes_from_its_sharded_checkpoint(pyramidal_runs):
    root, outputs, options = pyramidal_runs
    resumed = root / "fsdp_resumed"
    resumed.mkdir()
    shutil.copytree(outputs["fsdp"] / "checkpoint-1", resumed / "checkpoint-1")
    launch("fsdp", "training/train_pyramidal_flow.py", *options, "--output_dir", str(resumed),
           "--resume_from_checkpoint", "latest")
    for name in (f"checkpoint-2/transformer/{TRANSFORMER}", f"transformer/{TRANSFORMER}"):
        assert_same_weights(outputs["fsdp"] / name, resumed / name)


def test_distill_pyramidal_dmd_step_ddp_and_fsdp_equal_one_process(pyramidal_runs, tmp_path):
    root, _, _ = pyramidal_runs
    outputs = run_modes("training/distill_pyramidal_dmd.py", [*DMD, "--teacher_path", str(root / "teacher")],
                        tmp_path)
    # Under FSDP the teacher is sharded too; the saved hybrid pipeline nests it whole (gathered from the shards).
    assert_modes_agree(outputs, [f"checkpoint-1/student/{TRANSFORMER}", f"checkpoint-1/fake/{TRANSFORMER}",
                                 f"checkpoint-1/student_ema/{TRANSFORMER}", f"transformer/{TRANSFORMER}",
                                 f"first_frame_pipeline/transformer/{TRANSFORMER}"],
                       start=root / "teacher" / "transformer" / TRANSFORMER)
    assert_same_weights(root / "teacher" / "transformer" / TRANSFORMER,
                        outputs["fsdp"] / "first_frame_pipeline" / "transformer" / TRANSFORMER)


def test_pruning_stage_2_with_a_sharded_teacher_equals_one_process(pyramidal_runs, tmp_path):
    root, _, options = pyramidal_runs
    launch("single", "training/prune_transformer.py", "prune", "--teacher", str(root / "teacher"), "--keep", "1",
           "--output_dir", str(tmp_path / "pruned"))
    stage2 = [*options, "--pretrained_model_name_or_path", str(tmp_path / "pruned"), "--teacher_path",
              str(root / "teacher"), "--force"]
    outputs = run_modes("training/train_pyramidal_flow.py", stage2, tmp_path)
    assert_modes_agree(outputs, [f"checkpoint-1/transformer/{TRANSFORMER}", f"transformer/{TRANSFORMER}"],
                       start=tmp_path / "pruned" / "transformer" / TRANSFORMER)


@pytest.fixture(scope="module")
def video_teacher(tmp_path_factory):
    """A tiny pipeline with the full causal decoder (decoder distillation's teacher) and a QuickSRNet."""
    from tests.tiny_components import monolithic_pipeline

    folder = tmp_path_factory.mktemp("video_teacher")
    pipe = monolithic_pipeline()
    pipe.register_modules(vae=tiny_causal_vae(seed=1))
    pipe.save_pretrained(folder)
    return folder


def test_distill_decoder_step_ddp_and_fsdp_equal_one_process(video_teacher, tmp_path):
    outputs = run_modes("training/distill_decoder.py", [*DECODER, "--teacher", str(video_teacher)], tmp_path)
    assert_modes_agree(outputs, [f"vae/{TRANSFORMER}", f"checkpoint-1/vae/{TRANSFORMER}"],
                       start=outputs["single"] / "checkpoint-1" / "vae" / TRANSFORMER)  # step 2 moved it


def test_quicksrnet_step_ddp_and_fsdp_equal_one_process(video_teacher, tmp_path):
    options = [*QUICKSRNET, "--teacher", str(video_teacher)]
    outputs = run_modes("training/train_quicksrnet.py", options, tmp_path)
    assert_modes_agree(outputs, [f"super_resolution/{TRANSFORMER}", f"checkpoint-1/super_resolution/{TRANSFORMER}"],
                       start=outputs["single"] / "checkpoint-1" / "super_resolution" / TRANSFORMER)


VAE = [
    "--resolution", "16", "--num_frames", "9", "--block_out_channels", "8,8,8,8", "--layers_per_block", "1,1,1,1",
    "--norm_num_groups", "4", "--latent_channels", "4", "--train_samples", "4", "--train_batch_size", "2",
    "--report_to", "none", "--lr_warmup_steps", "0", "--learning_rate", "1e-3", "--checkpointing_steps", "1",
    "--max_train_steps", "2", "--num_validation_clips", "0", "--gradient_checkpointing",
]


def test_train_vae_step_ddp_and_fsdp_equal_one_process(tmp_path):
    outputs = run_modes("training/train_vae.py", VAE, tmp_path)
    assert_modes_agree(outputs, [f"vae/{TRANSFORMER}", f"checkpoint-1/vae/{TRANSFORMER}"],
                       start=outputs["single"] / "checkpoint-1" / "vae" / TRANSFORMER)


def test_distill_text_encoder_step_ddp_equals_one_process(tmp_path):
    """Text-encoder distillation runs under DDP (its student fits one GPU; FSDP is refused)."""
    from tests.training.conftest import save_t5_reading_pipeline

    teacher = tmp_path / "teacher"
    save_t5_reading_pipeline(teacher)
    options = ["--pretrained_model_name_or_path", str(teacher), "--mode", "RM", "--student_d_model", "16",
               "--student_num_heads", "2", "--student_projection_dim", "24", "--adapter_hidden_features", "32,32",
               "--num_train_prompts", "8", "--train_batch_size", "2", "--num_validation_prompts", "0",
               "--validation_prompts", "none", "--report_to", "none", "--lr_warmup_steps", "0",
               "--max_train_steps", "2", "--checkpointing_steps", "1"]
    outputs = run_modes("training/distill_text_encoder.py", options, tmp_path, modes=("single", "ddp"))
    assert_modes_agree(outputs, [f"context_adapter/{TRANSFORMER}", f"checkpoint-1/context_adapter/{TRANSFORMER}"],
                       start=outputs["single"] / "checkpoint-1" / "context_adapter" / TRANSFORMER)


DEEPSPEED_RUNS = {  # script, its options, the saved weights compared
    "pyramidal_flow": ("training/train_pyramidal_flow.py", PYRAMIDAL, f"transformer/{TRANSFORMER}"),
    "pruning_stage_2": ("training/train_pyramidal_flow.py", PYRAMIDAL, f"transformer/{TRANSFORMER}"),
    "decoder": ("training/distill_decoder.py", DECODER, f"vae/{TRANSFORMER}"),
    "quicksrnet": ("training/train_quicksrnet.py", QUICKSRNET, f"super_resolution/{TRANSFORMER}"),
}


@pytest.mark.parametrize("run_name, stage", [("pyramidal_flow", 2), ("pyramidal_flow", 3), ("pruning_stage_2", 3),
                                             ("decoder", 2), ("quicksrnet", 3)])
def test_deepspeed_configs_train_and_resume(pyramidal_runs, video_teacher, tmp_path, run_name, stage):
    """``accelerate launch --config_file training/configs/deepspeed_zero{2,3}.yaml`` (fp32 master weights under
    DeepSpeed's torch_autocast, as the other configs keep them): the run trains, writes its folders, and a run resumed
    from its first checkpoint ends at the same weights. ZeRO-3 partitions the parameters, so the base script runs it
    without EMA (the decoder and QuickSRNet scripts keep none). Pruning stage 2's frozen teacher is partitioned by
    ZeRO-3 too."""
    pytest.importorskip("deepspeed")
    script, options, weights = DEEPSPEED_RUNS[run_name]
    root, _, _ = pyramidal_runs
    if run_name == "pyramidal_flow":
        teacher = ["--pretrained_model_name_or_path", str(root / "teacher")]
    elif run_name == "pruning_stage_2":
        launch("single", "training/prune_transformer.py", "prune", "--teacher", str(root / "teacher"), "--keep", "1",
               "--output_dir", str(tmp_path / "pruned"))
        teacher = ["--pretrained_model_name_or_path", str(tmp_path / "pruned"), "--teacher_path", str(root / "teacher"),
                   "--force"]
    else:
        teacher = ["--teacher", str(video_teacher)]
    no_ema = ["--no-use_ema"] if stage == 3 and script.endswith("train_pyramidal_flow.py") else []
    options = [*options, *teacher, "--max_train_steps", "2", *no_ema]
    config = str(REPO / "training" / "configs" / f"deepspeed_zero{stage}.yaml")

    def run(output, *extra):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, "--num_processes",
                   "1", script, *options, "--output_dir", str(output), *extra]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{script} zero{stage} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        partitioned = "ZeRO-3 partitions the frozen NeodragonTransformer3DModel" in done.stdout + done.stderr
        assert partitioned == (run_name == "pruning_stage_2")

    run(tmp_path / "whole")
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-1", resumed / "checkpoint-1")
    run(resumed, "--resume_from_checkpoint", "latest")
    assert_same_weights(tmp_path / "whole" / weights, resumed / weights)
    start, after = load_file(str(tmp_path / "whole" / "checkpoint-1" / weights)), load_file(
        str(tmp_path / "whole" / weights))
    assert all(v.dtype == torch.float32 for v in after.values())
    assert any(not torch.equal(start[k], after[k]) for k in start), "the second step changed nothing"
