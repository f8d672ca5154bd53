"""CPU smoke tests of training/train_pyramidal_flow.py: a complete loadable pipeline, card, and exact resume."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffusers_neodragon import (
    AsymmetricVAE,
    CausalVideoVAE,
    DT5EncoderModel,
    NeodragonPipeline,
    NeodragonTransformer3DModel,
)
from diffusers_neodragon.training_utils import encode_prompts
from tests.script_loading import load_script
from tests.tiny_components import monolithic_pipeline, tiny_causal_vae


SCRIPT = Path(__file__).resolve().parents[2] / "training" / "train_pyramidal_flow.py"


train = load_script("training/train_pyramidal_flow.py")


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A tiny random CausalVideoVAE folder standing in for train_vae.py's output."""
    vae = tiny_causal_vae(seed=0)
    folder = tmp_path_factory.mktemp("shapes_vae")
    vae.save_pretrained(folder / "vae")
    return folder


TINY = [
    "--resolution", "64", "--num_frames", "9", "--train_samples", "6", "--train_batch_size", "2",
    "--num_layers", "2", "--num_attention_heads", "2", "--attention_head_dim", "16",
    "--t5_dim", "32", "--t5_heads", "2", "--t5_layers", "1", "--clip_dim", "16", "--clip_heads", "2",
    "--clip_projection_dim", "8", "--max_sequence_length", "24", "--report_to", "none", "--lr_warmup_steps", "2",
    "--learning_rate", "1e-3", "--seed", "0",
]


def run(vae_dir, output_dir, *extra):
    args = train.parse_args([*TINY, "--vae_path", str(vae_dir), "--output_dir", str(output_dir), *extra])
    return train.main(args)


def transformer_weights(folder):
    return load_file(str(Path(folder) / "transformer" / "diffusion_pytorch_model.safetensors"))


def test_training_writes_a_complete_monolithic_pipeline(vae_dir, tmp_path):
    out = tmp_path / "out"
    result = run(
        vae_dir, out, "--max_train_steps", "3", "--train_samples", "4",
        "--checkpointing_steps", "0", "--num_validation_prompts", "1", "--validation_num_inference_steps", "2",
        "--validation_video_num_inference_steps", "1", "--eval_shapesbench", "--shapesbench_num_prompts", "1",
        "--shapesbench_num_inference_steps", "1", "--default_guidance_scale", "12", "--default_history_noise", "0.2",
    )
    assert result["global_step"] == 3 and np.isfinite(result["loss"])
    index = json.loads((out / "model_index.json").read_text())
    assert index["context_adapter"] == [None, None] and index["mode"] == "monolithic"
    assert (index["default_height"], index["default_width"], index["default_num_frames"]) == (64, 64, 9)
    assert (index["default_guidance_scale"], index["default_video_guidance_scale"]) == (12.0, 5.0)
    assert index["default_history_noise"] == 0.2
    assert "history mixed with noise of sigma 0.2" in (out / "README.md").read_text()
    for name in ("transformer", "scheduler", "vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer",
                 "tokenizer_2", "tokenizer_3"):
        assert (out / name).is_dir(), name

    pipe = NeodragonPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.context_adapter is None and pipe.transformer.config.context_embedder_dim == 32
    assert pipe.transformer.config.pooled_projection_dim == 16 and pipe.transformer.config.in_channels == 4
    frames = pipe("a small red circle moving left on a blue background", num_inference_steps=1,
                  video_num_inference_steps=1, output_type="np", generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 9, 64, 64, 3) and np.isfinite(frames).all()

    assert (out / "validation" / "final-step-000003.png").is_file()
    assert list((out / "validation").glob("final-step-000003-0.mp4"))
    card = (out / "README.md").read_text()
    assert "accelerate launch training/train_pyramidal_flow.py" in card and "--max_train_steps 3" in card
    assert "steps: 3;" in card and f"{result['loss']:.4g}" in card and "{{" not in card
    scores = result["shapesbench"]
    assert scores["seen"]["n"] == scores["heldout"]["n"] == 1 and 0 <= scores["seen"]["score"] <= 100
    assert "ShapesBench" in card and scores["table"].splitlines()[0] in card
    assert "CFG 12 / 5" in scores["sampler"] and "with 20 steps per stage and CFG 12, every later one" in card


def test_resume_reaches_the_uninterrupted_weights(vae_dir, tmp_path):
    """4 steps (checkpoints every 2) + resume to 6 == 6 uninterrupted: data order, noise, stage/unit choice, caption
    dropout, optimiser, LR schedule and EMA all resume exactly (3 steps per epoch: it resumes mid-epoch).

    The uninterrupted run encodes its clips on the fly and the interrupted one trains from a latent cache file
    (built by its first part, loaded by the second), so the test also shows that both data paths train alike.
    """
    common = ("--checkpointing_steps", "2", "--num_validation_prompts", "0", "--caption_dropout", "0.5")
    cached = ("--latent_cache_path", str(tmp_path / "latents.safetensors"))
    run(vae_dir, tmp_path / "full", "--max_train_steps", "6", "--no-cache_latents", *common)
    parts = tmp_path / "parts"
    run(vae_dir, parts, "--max_train_steps", "4", *common, *cached)
    assert (tmp_path / "latents.safetensors").is_file()
    interrupted = transformer_weights(parts)
    result = run(vae_dir, parts, "--max_train_steps", "6", "--resume_from_checkpoint", "latest", *common, *cached)
    assert result["global_step"] == 6
    assert sorted(p.name for p in parts.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    reference, resumed = transformer_weights(tmp_path / "full"), transformer_weights(parts)
    assert any(not torch.equal(interrupted[k], reference[k]) for k in reference)
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-5, atol=1e-6)


def test_foreground_weight_trains_alike_from_the_cache_and_on_the_fly(vae_dir, tmp_path):
    """--foreground_weight: the cached object masks are those computed from the clips on the fly (same weights
    after 2 steps), the term changes what is learnt, and the card states it. (Both runs also move the stage
    boundaries with --stage_range, which the saved scheduler keeps.)"""
    common = ("--max_train_steps", "2", "--train_samples", "4", "--checkpointing_steps", "0",
              "--num_validation_prompts", "0", "--first_frame_prob", "0.5")
    run(vae_dir, tmp_path / "plain", *common)
    weighted = (*common, "--foreground_weight", "5", "--stage_range", "0,0.25,0.5,1")
    run(vae_dir, tmp_path / "fly", *weighted, "--no-cache_latents")
    run(vae_dir, tmp_path / "cached", *weighted)
    plain, fly, cached = (transformer_weights(tmp_path / n) for n in ("plain", "fly", "cached"))
    for key in fly:
        torch.testing.assert_close(cached[key], fly[key], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(plain[k], fly[k], rtol=1e-4, atol=1e-5) for k in fly)
    assert "+ 5 x the MSE over the objects' latent cells only" in (tmp_path / "fly" / "README.md").read_text()
    assert "objects'" not in (tmp_path / "plain" / "README.md").read_text()
    scheduler = json.loads((tmp_path / "cached" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["stage_range"] == [0.0, 0.25, 0.5, 1.0]
    # A continued pipeline keeps its stage boundaries unless --stage_range is given again.
    run(vae_dir, tmp_path / "continued", *common, "--pretrained_model_name_or_path", str(tmp_path / "cached"))
    continued = json.loads((tmp_path / "continued" / "scheduler" / "scheduler_config.json").read_text())
    assert continued["stage_range"] == [0.0, 0.25, 0.5, 1.0]
    assert "stage\nboundaries 0, 0.25, 0.5, 1 on" in (tmp_path / "fly" / "README.md").read_text()


def test_bad_arguments():
    with pytest.raises(ValueError, match="vae_path"):
        train.parse_args(["--output_dir", "x"])
    with pytest.raises(ValueError, match="num_frames"):
        train.parse_args(["--vae_path", "v", "--num_frames", "12"])
    with pytest.raises(ValueError, match="foreground_weight"):
        train.parse_args(["--vae_path", "v", "--foreground_weight", "-1"])
    with pytest.raises(ValueError, match="default_history_noise"):
        train.parse_args(["--vae_path", "v", "--default_history_noise", "1"])
    with pytest.raises(ValueError, match="generated_history_prob"):
        train.parse_args(["--vae_path", "v", "--generated_history_prob", "1.5"])
    with pytest.raises(ValueError, match="trained transformer"):
        train.parse_args(["--vae_path", "v", "--generated_history_prob", "0.5"])
    with pytest.raises(ValueError, match="cache_latents"):
        train.parse_args(["--vae_path", "v", "--generated_history_prob", "0.5", "--transformer_path", "t",
                          "--no-cache_latents"])


def test_defaults_are_the_recipe_values():
    """The recipe states only what differs from the defaults, so the defaults are its values."""
    args = train.parse_args(["--vae_path", "v"])
    assert (args.sample_ratios, args.corrupt_ratio, args.first_frame_prob) == ((1, 2, 3), 0.5, 0.3)
    assert args.cache_latents and args.use_ema and args.ema_decay == 0.995 and args.allow_tf32
    assert (args.train_samples, args.train_batch_size, args.num_layers, args.patch_size) == (8192, 128, 10, 2)
    assert (args.default_guidance_scale, args.default_video_guidance_scale) == (7.0, 5.0)
    assert train.parse_args(["--vae_path", "v", "--first_frame_prob", "-1"]).first_frame_prob is None  # 1/T


def test_latent_cache_key_follows_the_vae_weights(vae_dir, tmp_path):
    args = train.parse_args([*TINY, "--vae_path", str(vae_dir), "--output_dir", str(tmp_path)])
    vae = CausalVideoVAE.from_pretrained(vae_dir / "vae")
    key = train.cache_metadata(args, vae)
    assert train.cache_metadata(args, vae) == key
    with torch.no_grad():
        next(vae.parameters()).view(-1)[0] += 1e-3  # a retrained VAE with the same config
    assert train.cache_metadata(args, vae) != key


SHARDED_ENCODE = """
import importlib.util, json, sys
import torch
from accelerate import Accelerator
from safetensors.torch import save_file
spec = importlib.util.spec_from_file_location("train_script", sys.argv[1])
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)
args = train.parse_args(json.loads(sys.argv[2]))
accelerator = Accelerator(cpu=True)
latents, foreground, captions = train.encode_training_set(args, train.load_vae(args), accelerator)
if accelerator.is_main_process:
    save_file({"latents": latents, "foreground": foreground}, sys.argv[3], metadata={"captions": json.dumps(captions),
                                                          "processes": str(accelerator.num_processes)})
accelerator.wait_for_everyone()
if torch.distributed.is_initialized():  # an undestroyed gloo group can abort a rank at exit
    torch.distributed.destroy_process_group()
"""


def test_latent_cache_sharded_over_two_processes_equals_one_process(vae_dir, tmp_path):
    """Each process encodes a contiguous shard (5 clips: 3 + 2, the last padded); the gather restores the order."""
    import os
    import subprocess
    import sys

    from safetensors import safe_open

    script = tmp_path / "encode.py"
    script.write_text(SHARDED_ENCODE)
    argv = json.dumps([*TINY, "--vae_path", str(vae_dir), "--output_dir", str(tmp_path), "--train_samples", "5",
                       "--encode_batch_size", "2"])
    repo = str(SCRIPT.parents[1])  # the subprocesses import this checkout's package, not an installed copy
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    outputs = {}
    for name, launcher in (("one", [sys.executable]),
                           ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                    "--nproc_per_node", "2"])):
        out = tmp_path / f"{name}.safetensors"
        done = subprocess.run([*launcher, str(script), str(SCRIPT), argv, str(out)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        with safe_open(str(out), framework="pt") as f:
            outputs[name] = (f.get_tensor("latents"), f.metadata(), f.get_tensor("foreground"))
    (one, one_meta, one_mask), (two, two_meta, two_mask) = outputs["one"], outputs["two"]
    assert one_mask.shape == (5, 1, 2, 8, 8) and one_mask.dtype == torch.uint8 and torch.equal(one_mask, two_mask)
    assert (one_meta["processes"], two_meta["processes"]) == ("1", "2")
    assert one.shape[0] == 5 and json.loads(one_meta["captions"]) == json.loads(two_meta["captions"])
    torch.testing.assert_close(two, one, rtol=0, atol=1e-6)


def test_compiled_blocks_train_like_eager_blocks(vae_dir, tmp_path, monkeypatch):
    """--compile (regional torch.compile of the blocks) changes kernels, not the maths: after 2 steps on the same
    data and noise the weights equal the eager run's to float tolerance.

    The blocks are compiled with the ``aot_eager`` backend: Dynamo's trace of our blocks (dynamic shapes) and
    AOTAutograd's backward are what this code can get wrong; Inductor's C++ code generation for them took about 4
    minutes on a 2-core CPU and tests torch rather than this project (the GPU runs use Inductor)."""
    compiled_with = []
    original = NeodragonTransformer3DModel.compile_repeated_blocks

    def compile_with_aot_eager(self, *args, **kwargs):
        compiled_with.append(kwargs)
        return original(self, *args, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(NeodragonTransformer3DModel, "compile_repeated_blocks", compile_with_aot_eager)
    common = ("--max_train_steps", "2", "--train_samples", "4", "--checkpointing_steps", "0",
              "--num_validation_prompts", "0")
    run(vae_dir, tmp_path / "eager", *common)
    assert not compiled_with
    run(vae_dir, tmp_path / "compiled", *common, "--compile")
    assert compiled_with == [{"dynamic": True}]
    eager, compiled = transformer_weights(tmp_path / "eager"), transformer_weights(tmp_path / "compiled")
    assert eager.keys() == compiled.keys()
    moved = max(float((eager[k] - compiled[k]).abs().max()) for k in eager)
    assert moved < 1e-4, moved


def test_generated_history_trains_and_resumes_exactly(vae_dir, tmp_path):
    """--generated_history_prob: the initial transformer's own frames (sampled once, before any checkpoint is
    loaded) replace history frames; it changes what is learnt, and a resumed run still reaches the uninterrupted
    run's weights."""
    quick = ("--checkpointing_steps", "2", "--num_validation_prompts", "0", "--train_samples", "4")
    run(vae_dir, tmp_path / "base", "--max_train_steps", "1", *quick)
    base = ("--transformer_path", str(tmp_path / "base" / "transformer"), "--first_frame_prob", "0")
    run(vae_dir, tmp_path / "true", "--max_train_steps", "4", *quick, *base)
    run(vae_dir, tmp_path / "full", "--max_train_steps", "4", *quick, *base, "--generated_history_prob", "1")
    parts = tmp_path / "parts"
    run(vae_dir, parts, "--max_train_steps", "2", *quick, *base, "--generated_history_prob", "1")
    run(vae_dir, parts, "--max_train_steps", "4", *quick, *base, "--generated_history_prob", "1",
        "--resume_from_checkpoint", "latest")
    true, full, resumed = (transformer_weights(tmp_path / n) for n in ("true", "full", "parts"))
    assert any(not torch.allclose(true[k], full[k]) for k in full)
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=1e-5, atol=1e-6)
    card = (tmp_path / "full" / "README.md").read_text()
    assert "--generated_history_prob 1" in card and "replaced with probability 1 by" in card
    assert "replaced with probability" not in (tmp_path / "true" / "README.md").read_text()


def test_a_text_distilled_pipeline_with_a_streaming_decoder_trains_through_its_frozen_parts(tmp_path):
    """The compression chain's later steps (pruning recovery) train the transformer of a pipeline whose text goes
    DT5 -> ContextAdapter and whose VAE is an AsymmetricVAE: both are loaded, frozen and saved unchanged, and the
    cached text features are what the pipeline itself feeds the transformer."""
    source = tmp_path / "distilled"
    monolithic_pipeline(num_frames=9).save_pretrained(source)
    original = NeodragonPipeline.from_pretrained(source)
    components = train.load_text_encoders(str(source))
    assert isinstance(components["text_encoder_3"], DT5EncoderModel) and "context_adapter" in components
    prompt = "a small red circle moving left"
    embeds, mask, pooled = encode_prompts(components, [prompt], "cpu", 24)
    expected, _, expected_pooled, *_ = original.encode_prompt(prompt, do_classifier_free_guidance=False)
    keep = int(mask.sum())
    torch.testing.assert_close(embeds[:, :keep], expected)
    torch.testing.assert_close(pooled, expected_pooled)

    out = tmp_path / "out"
    result = train.main(train.parse_args([
        "--pretrained_model_name_or_path", str(source), "--output_dir", str(out), "--resolution", "64",
        "--num_frames", "9", "--train_samples", "4", "--train_batch_size", "2", "--max_sequence_length", "24",
        "--report_to", "none", "--max_train_steps", "2", "--checkpointing_steps", "0", "--num_validation_prompts", "0",
        "--learning_rate", "1e-3", "--lr_warmup_steps", "0",
    ]))
    assert result["global_step"] == 2 and np.isfinite(result["loss"])
    trained = NeodragonPipeline.from_pretrained(out)
    assert isinstance(trained.vae, AsymmetricVAE)
    for name in ("context_adapter", "vae", "text_encoder_3"):
        before, after = getattr(original, name).state_dict(), getattr(trained, name).state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), name
    moved = trained.transformer.state_dict()
    assert any(not torch.equal(v, moved[k]) for k, v in original.transformer.state_dict().items())
