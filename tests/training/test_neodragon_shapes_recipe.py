"""The paper's whole chain on Shapes (training/recipes/neodragon_shapes.sh) runs end to end from a tiny teacher
(SMOKE=1: every step shrunk to a few CPU steps), each step starting from the folder of the one before."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from diffusers_neodragon import AsymmetricVAE, DT5EncoderModel, NeodragonPipeline
from tests.script_loading import load_script
from tests.tiny_components import tiny_causal_vae


RECIPE = Path(__file__).resolve().parents[2] / "training" / "recipes" / "neodragon_shapes.sh"
train = load_script("training/train_pyramidal_flow.py")


def tiny_teacher(folder: Path) -> Path:
    """A 3-block teacher with T5, the transformer's own context embedder and the full causal VAE."""
    tiny_causal_vae(seed=0).save_pretrained(folder / "vae" / "vae")
    train.main(train.parse_args([
        "--resolution", "64", "--num_frames", "9", "--train_samples", "4", "--train_batch_size", "2",
        "--num_layers", "3", "--num_attention_heads", "2", "--attention_head_dim", "16", "--t5_dim", "32",
        "--t5_heads", "2", "--t5_layers", "1", "--clip_dim", "16", "--clip_heads", "2", "--clip_projection_dim", "8",
        "--max_sequence_length", "24", "--report_to", "none", "--max_train_steps", "1", "--checkpointing_steps", "0",
        "--num_validation_prompts", "0", "--vae_path", str(folder / "vae"), "--output_dir", str(folder / "teacher"),
    ]))
    return folder / "teacher"


def test_chain_smoke_run_ends_in_a_mobile_pipeline(tmp_path):
    teacher = tiny_teacher(tmp_path)
    out = tmp_path / "chain"
    repo = str(RECIPE.parents[2])  # the scripts import this checkout's package, not an installed copy
    env = {**os.environ, "SMOKE": "1", "PYTHON": sys.executable, "TEACHER": str(teacher), "NUM_DROP": "1",
           "SHAPESBENCH_PROMPTS": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}

    def run_chain():
        done = subprocess.run(["bash", str(RECIPE), str(out)], env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-4000:]
        return done.stdout

    assert "done already" not in run_chain()
    steps = ("1-text", "2-decoder/run1", "2-decoder/run2", "2-decoder", "4-stage1", "5-stage2", "6-dmd444",
             "7-dmd111", "8-sr", "pipeline")
    for step in steps:
        assert (out / step / "README.md").is_file(), step

    # run again (after a crash, say): finished steps are skipped; a step whose output is gone runs again
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    (out / "pipeline" / "README.md").unlink()
    skipped = [line for line in run_chain().splitlines() if "done already" in line]
    assert len(skipped) == 10 and not any(line.endswith(f"{out}/pipeline/README.md") for line in skipped)
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    changed = {p.relative_to(out).parts[0] for p in before if after.get(p) != before[p]}
    assert changed == {"8-sr", "pipeline"} and (out / "pipeline" / "README.md").is_file()

    # DECODER_FROM: a decoder distilled before is validated and published as it is, without the three runs
    (out / "2-decoder" / "pipeline" / "README.md").unlink()
    env["DECODER_FROM"] = str(out / "2-decoder" / "run2")
    skipped = [line for line in run_chain().splitlines() if "done already" in line]
    del env["DECODER_FROM"]
    assert len(skipped) == 8 and not any("2-decoder/run" in line for line in skipped)  # run1, run2: not asked
    given = AsymmetricVAE.from_pretrained(out / "2-decoder" / "run2" / "vae").state_dict()
    published = AsymmetricVAE.from_pretrained(out / "2-decoder" / "pipeline" / "vae").state_dict()
    assert all(torch.equal(published[k], given[k]) for k in given)

    original = NeodragonPipeline.from_pretrained(teacher)
    pipe = NeodragonPipeline.from_pretrained(out / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    # each operation's trace: the distilled text path and decoder, the pruned transformer (last block kept), the
    # 1-1-1 student without CFG making its own first frame at 4-4-4, and super-resolution
    assert isinstance(pipe.text_encoder_3, DT5EncoderModel) and pipe.context_adapter is not None
    assert isinstance(pipe.vae, AsymmetricVAE) and pipe.super_resolution is not None
    assert pipe.transformer.config.num_layers == 2 and list(pipe.transformer.config.block_origin)[-1] == 2
    assert pipe.config.mode == "monolithic" and pipe.first_frame_pipeline is None
    steps = (pipe.config.default_num_inference_steps, pipe.config.default_video_num_inference_steps)
    assert steps == ([4, 4, 4], [1, 1, 1])
    assert pipe.config.default_guidance_scale == pipe.config.default_video_guidance_scale == 0.0
    encoder = original.vae.encoder.state_dict()
    assert all(torch.equal(pipe.vae.encoder.state_dict()[k], encoder[k]) for k in encoder)  # latents unchanged
    video = pipe("a small red circle moving left", output_type="np", generator=torch.Generator().manual_seed(0)).frames
    assert video.shape == (1, 9, 128, 128, 3) and np.isfinite(video).all()  # 64x64 made, 2x by SR
