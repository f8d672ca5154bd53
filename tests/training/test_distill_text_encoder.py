"""CPU smoke tests of training/distill_text_encoder.py on a tiny teacher pipeline (T5 stand-in + context_embedder):
every mode, the saved pipeline (loads and generates), exact resume, the target cache and push_to_hub."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from diffusers_neodragon import ContextAdapter, NeodragonPipeline
from tests.script_loading import load_script
from tests.training.conftest import save_t5_reading_pipeline


distill = load_script("training/distill_text_encoder.py")

TINY = ["--student_d_model", "16", "--student_num_heads", "2", "--student_projection_dim", "24",
        "--adapter_hidden_features", "32,32", "--num_train_prompts", "12", "--train_batch_size", "4",
        "--num_validation_prompts", "4", "--report_to", "none", "--lr_warmup_steps", "1", "--seed", "0"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """The tiny pipeline whose transformer reads the T5 stand-in through its context_embedder."""
    folder = tmp_path_factory.mktemp("teacher")
    save_t5_reading_pipeline(folder)
    return folder


@pytest.fixture(scope="module")
def pretrained_dt5(teacher, tmp_path_factory):
    """A DT5 folder made from the teacher's T5 folder by a short TDT5 run (a T5 folder starts only TDT5)."""
    out = tmp_path_factory.mktemp("tdt5")
    run(teacher, out, "--mode", "TDT5", "--student_model_name_or_path", str(teacher / "text_encoder_3"),
        "--max_train_steps", "1", "--checkpointing_steps", "0", "--validation_prompts", "none")
    return out / "text_encoder_3"


def run(teacher, output_dir, *extra):
    args = distill.parse_args([*TINY, "--pretrained_model_name_or_path", str(teacher), "--output_dir",
                               str(output_dir), *extra])
    return distill.main(args)


def tiny_generate(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe("a small red circle moving left on a blue background", num_frames=9, height=64, width=64,
                num_inference_steps=1, video_num_inference_steps=1, output_type="latent",
                generator=torch.Generator().manual_seed(0)).frames


def test_rm_with_a_new_dt5_saves_a_loadable_neodragon_layout_pipeline(teacher, tmp_path):
    import diffusers_neodragon  # noqa: F401  (registers the pipeline class with diffusers)

    result = run(teacher, tmp_path, "--mode", "RM", "--max_train_steps", "3", "--validation_steps", "2",
                 "--checkpointing_steps", "0")
    assert result["global_step"] == 3 and result["loss"] > 0 and 0 < result["heldout"]["tokens"]
    pipe = DiffusionPipeline.from_pretrained(tmp_path, dtype=torch.float32)
    assert type(pipe) is NeodragonPipeline
    assert pipe.transformer.context_embedder is None and pipe.transformer.config.context_embedder_dim is None
    assert type(pipe.context_adapter) is ContextAdapter and pipe.context_adapter.config.out_features == 16
    assert type(pipe.text_encoder_3).__name__ == "DT5EncoderModel" and pipe.text_encoder_3.config.d_model == 16
    teacher_pipe = NeodragonPipeline.from_pretrained(teacher, dtype=torch.float32)
    for name, value in teacher_pipe.transformer.state_dict().items():  # the blocks are the teacher's
        if not name.startswith("context_embedder."):
            assert torch.equal(value, pipe.transformer.state_dict()[name]), name
    assert np.isfinite(tiny_generate(pipe).numpy()).all()
    card = (tmp_path / "README.md").read_text()
    assert "**RM**" in card and "new, from a config" in card and "{{" not in card
    assert f"{result['heldout']['cosine']:.4g}" in card and "context_embedder removed" in card
    metrics = json.loads((tmp_path / "distillation_metrics.json").read_text())
    assert metrics["student_dt5_parameters"] < metrics["teacher_t5_parameters"]


def test_rm_keeps_a_pretrained_dt5_frozen_and_em_keeps_the_context_embedder(teacher, pretrained_dt5, tmp_path):
    """RM from a DT5 folder trains only the adapter (a T5 folder is refused: its DT5 head would be new and frozen);
    EM saves a pipeline whose adapter feeds the kept, unchanged context_embedder."""
    with pytest.raises(ValueError, match="is a T5 encoder"):
        run(teacher, tmp_path / "refused", "--mode", "RM", "--student_model_name_or_path",
            str(teacher / "text_encoder_3"), "--max_train_steps", "1")
    run(teacher, tmp_path / "rm", "--mode", "RM", "--student_model_name_or_path", str(pretrained_dt5),
        "--max_train_steps", "2", "--checkpointing_steps", "0")
    source = load_file(str(pretrained_dt5 / "model.safetensors"))
    dt5 = load_file(str(tmp_path / "rm" / "text_encoder_3" / "model.safetensors"))
    assert dt5.keys() == source.keys() and all(torch.equal(dt5[k], v) for k, v in source.items())

    run(teacher, tmp_path / "em", "--mode", "EM", "--max_train_steps", "2", "--checkpointing_steps", "0",
        "--validation_prompts", "none")
    pipe = NeodragonPipeline.from_pretrained(tmp_path / "em", dtype=torch.float32)
    teacher_pipe = NeodragonPipeline.from_pretrained(teacher, dtype=torch.float32)
    assert pipe.context_adapter.config.out_features == 32 == pipe.transformer.config.context_embedder_dim
    assert torch.equal(pipe.transformer.context_embedder.weight, teacher_pipe.transformer.context_embedder.weight)
    assert np.isfinite(tiny_generate(pipe).numpy()).all()
    assert "**EM**" in (tmp_path / "em" / "README.md").read_text()


def weights(folder):
    found = {}
    for name in ("context_adapter/diffusion_pytorch_model.safetensors", "text_encoder_3/model.safetensors"):
        found.update({f"{name}:{k}": v for k, v in load_file(str(Path(folder) / name)).items()})
    return found


def test_tdt5_resume_reaches_the_uninterrupted_weights(teacher, tmp_path):
    """2 steps (checkpoint at 2) + resume to 5 == 5 uninterrupted steps (12 prompts, batch 4: 3 steps per epoch, so
    the resumed run starts mid-epoch and crosses into the next one)."""
    common = ("--mode", "TDT5", "--checkpointing_steps", "2", "--validation_prompts", "none")
    run(teacher, tmp_path / "full", "--max_train_steps", "5", *common)
    run(teacher, tmp_path / "parts", "--max_train_steps", "2", *common)
    interrupted = weights(tmp_path / "parts")
    result = run(teacher, tmp_path / "parts", "--max_train_steps", "5", "--resume_from_checkpoint", "latest", *common)
    assert result["global_step"] == 5
    reference, resumed = weights(tmp_path / "full"), weights(tmp_path / "parts")
    assert any(not torch.equal(interrupted[k], reference[k]) for k in reference)
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-5, atol=1e-6)


def test_target_cache_gives_the_on_the_fly_result_and_is_reused(teacher, tmp_path):
    common = ("--mode", "RM", "--max_train_steps", "2", "--checkpointing_steps", "0", "--validation_prompts", "none")
    run(teacher, tmp_path / "live", *common)
    run(teacher, tmp_path / "cached", "--target_cache_dir", str(tmp_path / "cache"), *common)
    assert (tmp_path / "cache" / "index.json").is_file()
    stamp = (tmp_path / "cache" / "shard-00000.safetensors").stat().st_mtime_ns
    run(teacher, tmp_path / "again", "--target_cache_dir", str(tmp_path / "cache"), *common)
    assert (tmp_path / "cache" / "shard-00000.safetensors").stat().st_mtime_ns == stamp  # not rewritten
    live, cached = weights(tmp_path / "live"), weights(tmp_path / "cached")
    for key in live:
        torch.testing.assert_close(cached[key], live[key], rtol=1e-5, atol=1e-6)


def test_prompt_files_and_push_to_hub(teacher, tmp_path, monkeypatch):
    import huggingface_hub

    pushed = []
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: type("Repo", (), {"repo_id": repo_id})())
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kw: pushed.append(kw))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\n\na blue square moving up on a green background\n" * 4)
    out = tmp_path / "out"
    result = run(teacher, out, "--train_prompts", str(prompts), "--validation_prompts", str(prompts),
                 "--max_train_steps", "1", "--checkpointing_steps", "0", "--push_to_hub", "--hub_model_id", "me/dt5")
    assert result["heldout"]["tokens"] > 0
    assert pushed and pushed[0]["repo_id"] == "me/dt5" and pushed[0]["folder_path"] == str(out)
    assert "# me/dt5" in (out / "README.md").read_text()


def test_lora_trains_adapters_and_saves_them_merged_or_beside_the_pipeline(teacher, pretrained_dt5, tmp_path):
    pytest.importorskip("peft")
    source = str(pretrained_dt5)
    common = ("--mode", "LORA", "--student_model_name_or_path", source, "--lora_rank", "2", "--learning_rate", "1e-2",
              "--max_train_steps", "2", "--checkpointing_steps", "0", "--validation_prompts", "none")
    run(teacher, tmp_path / "merged", *common)
    t5 = load_file(str(pretrained_dt5 / "model.safetensors"))
    merged = load_file(str(tmp_path / "merged" / "text_encoder_3" / "model.safetensors"))
    assert not any("lora" in k for k in merged)
    query = "encoder.encoder.block.0.layer.0.SelfAttention.q.weight"
    assert not torch.equal(merged[query], t5[query])  # the adapters are merged in
    pipe = NeodragonPipeline.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert np.isfinite(tiny_generate(pipe).numpy()).all()

    run(teacher, tmp_path / "adapters", *common, "--lora_save", "adapters")
    base = load_file(str(tmp_path / "adapters" / "text_encoder_3" / "model.safetensors"))
    assert torch.equal(base[query], t5[query])
    assert (tmp_path / "adapters" / "text_encoder_3_lora" / "adapter_model.safetensors").is_file()


def test_lora_needs_a_pretrained_student_and_weights_must_not_vanish():
    with pytest.raises(ValueError, match="LORA"):
        distill.parse_args(["--mode", "LORA"])
    with pytest.raises(ValueError, match="weight"):
        distill.parse_args(["--mse_weight", "0", "--cd_weight", "0"])
