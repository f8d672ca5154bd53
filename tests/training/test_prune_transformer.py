"""CPU smoke tests of training/prune_transformer.py and the two recovery stages of train_pyramidal_flow.py."""

import json

import pytest
import torch
from safetensors.torch import load_file

from diffusers_neodragon import NeodragonPipeline, NeodragonTransformer3DModel
from diffusers_neodragon.training_utils.pruning_recovery import (
    check_stage_2_start,
    feature_matching_losses,
    new_recovery_record,
    read_recovery_record,
    with_stage,
)
from tests.script_loading import load_script
from tests.tiny_components import tiny_causal_vae


prune = load_script("training/prune_transformer.py")
train = load_script("training/train_pyramidal_flow.py")

TINY = [
    "--resolution", "64", "--num_frames", "9", "--train_samples", "4", "--train_batch_size", "2",
    "--t5_dim", "32", "--t5_heads", "2", "--t5_layers", "1", "--clip_dim", "16", "--clip_heads", "2",
    "--clip_projection_dim", "8", "--max_sequence_length", "24", "--report_to", "none", "--lr_warmup_steps", "2",
    "--learning_rate", "1e-3", "--num_validation_prompts", "0", "--checkpointing_steps", "0", "--seed", "0",
]
SAMPLER = ["--num_frames", "9", "--num_inference_steps", "1", "--video_num_inference_steps", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny 4-block pipeline trained for one step by train_pyramidal_flow.py."""
    root = tmp_path_factory.mktemp("prune")
    tiny_causal_vae(seed=0).save_pretrained(root / "vae" / "vae")
    train.main(train.parse_args([*TINY, "--num_layers", "4", "--num_attention_heads", "2", "--attention_head_dim",
                                 "16", "--vae_path", str(root / "vae"), "--output_dir", str(root / "teacher"),
                                 "--max_train_steps", "1"]))
    return root / "teacher"


@pytest.fixture(scope="module")
def pruned(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "pruned"
    result = prune.main(prune.parse_args(["prune", "--teacher", str(teacher), "--output_dir", str(out),
                                          "--keep", "0,1,2"]))
    assert result["dropped"] == [3] and result["parameters_after"] < result["parameters_before"]
    return out


def test_score_writes_importance_and_drop_cost(teacher, tmp_path):
    out = tmp_path / "score"
    args = ["score", "--teacher", str(teacher), "--output_dir", str(out), "--num_prompts", "2", "--num_samples",
            "2", *SAMPLER, "--drop_cost", "--drop_cost_num_prompts", "1"]
    result = prune.main(prune.parse_args(args))
    assert len(result["bi_visual"]) == 4 and result["bi_text"][-1] is None
    assert all(0 <= v <= 2 for v in result["bi_visual"]) and all(t is not None for t in result["bi_text"][:-1])
    assert result["calls"] > 0 and len(result["drop_cost"]["cost"]) == 4
    saved = json.loads((out / "importance.json").read_text())
    assert saved["bi_visual"] == result["bi_visual"] and "| 3 |" in (out / "importance.md").read_text()
    # resumable: a second run reuses every drop-cost entry already measured
    cached = json.loads((out / "drop_cost.json").read_text())
    cached["blocks"]["0"] = {"seen": -1.0, "heldout": -1.0}
    (out / "drop_cost.json").write_text(json.dumps(cached))
    again = prune.main(prune.parse_args(args))
    assert again["drop_cost"]["totals"][0] == {"seen": -1.0, "heldout": -1.0}

    # the last block is kept by default even when it scores least; --no-keep_last lets the scores decide
    saved.update(bi_visual=[0.9, 0.8, 0.7, 0.01], bi_text=[0.9, 0.8, 0.7, None])
    (out / "least_last.json").write_text(json.dumps(saved))

    def keep(*flags):
        return prune.main(prune.parse_args(["prune", "--teacher", str(teacher), "--output_dir",
                                            str(tmp_path / "p"), "--scores", str(out / "least_last.json"),
                                            "--num_drop", "1", *flags]))["keep"]

    assert keep() == [0, 1, 3] and keep("--no-keep_last") == [0, 1, 2]


def test_pruned_folder_loads_everywhere(teacher, pruned):
    model = NeodragonTransformer3DModel.from_pretrained(pruned, subfolder="transformer")
    assert model.config.num_layers == 3 and list(model.config.block_origin) == [0, 1, 2]
    assert model.transformer_blocks[-1].context_pre_only
    assert read_recovery_record(pruned / "transformer")["stages"] == []
    card = (pruned / "README.md").read_text()
    assert "[0, 1, 2]" in card and "converted to context-pre-only" in card and "{{" not in card
    pipe = NeodragonPipeline.from_pretrained(pruned)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a small red circle moving left on a blue background", num_inference_steps=1,
                  video_num_inference_steps=1, output_type="np", generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 9, 64, 64, 3)


def test_prune_arguments():
    with pytest.raises(ValueError, match="either --keep"):
        prune.parse_args(["prune", "--teacher", "diffusers_neodragon/pretrained/shapes", "--output_dir", "x"])
    with pytest.raises(ValueError, match="neither"):
        prune.parse_args(["prune", "--teacher", "/nonexistent", "--output_dir", "x", "--keep", "0"])


def stage(folder, output_dir, *extra):
    args = train.parse_args([*TINY, "--pretrained_model_name_or_path", str(folder), "--output_dir", str(output_dir),
                             *extra])
    return train.main(args)


def weights(folder):
    return load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))


def perturbed_transformer(pipeline_folder, output_dir, seed):
    """A transformer folder: the pipeline's transformer with N(0, 0.05) added to every weight."""
    model = NeodragonTransformer3DModel.from_pretrained(pipeline_folder, subfolder="transformer")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(output_dir)
    return output_dir


def test_two_stages_guard_and_exact_stage_2_resume(teacher, pruned, tmp_path):
    # stage 2 straight from the pruned weights is refused, saying why
    with pytest.raises(ValueError, match="must follow stage 1"):
        stage(pruned, tmp_path / "direct", "--teacher_path", str(teacher), "--max_train_steps", "1")
    forced = stage(pruned, tmp_path / "direct", "--teacher_path", str(teacher), "--max_train_steps", "1", "--force")
    assert forced["global_step"] == 1
    record = read_recovery_record(tmp_path / "direct" / "transformer")
    assert record["stages"][-1]["stage"] == 2 and record["stages"][-1]["forced"] is True

    stage(pruned, tmp_path / "stage1", "--max_train_steps", "2")
    assert [s["stage"] for s in read_recovery_record(tmp_path / "stage1" / "transformer")["stages"]] == [1]

    s2 = ("--teacher_path", str(teacher), "--feature_loss_weights", "1,0.5,2,0.1", "--caption_dropout", "0.5",
          "--checkpointing_steps", "1")
    stage(tmp_path / "stage1", tmp_path / "full", *s2, "--max_train_steps", "3")
    stage(tmp_path / "stage1", tmp_path / "parts", *s2, "--max_train_steps", "2")
    stage(tmp_path / "stage1", tmp_path / "parts", *s2, "--max_train_steps", "3", "--resume_from_checkpoint", "latest")
    reference, resumed = weights(tmp_path / "full"), weights(tmp_path / "parts")
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(reference[k], weights(tmp_path / "stage1")[k]) for k in reference)
    record = read_recovery_record(tmp_path / "full" / "transformer")
    assert [s["stage"] for s in record["stages"]] == [1, 2] and record["stages"][1]["forced"] is False
    assert set(record["stages"][1]["loss_terms"]) == {"flow_data", "flow_teacher", "visual_mse", "text_cosine"}
    assert "recovery stages so far: [1, 2]" in (tmp_path / "full" / "README.md").read_text()


def test_feature_weights_change_what_stage_2_learns(teacher, pruned, tmp_path):
    """With only the data term, stage 2 trains exactly like stage 1; the teacher terms change the loss and (after
    Adam's first, sign-only step) the weights. The teacher is a transformer folder here, perturbed so that its
    features differ from the pruned copy's (a one-step model's gates are still almost zero)."""
    teacher = perturbed_transformer(teacher, tmp_path / "noisy_teacher", seed=0)
    common = ("--max_train_steps", "2", "--no-use_ema")
    a = stage(pruned, tmp_path / "a", "--teacher_path", str(teacher), "--force", *common,
              "--feature_loss_weights", "1,0,0,0")
    b = stage(pruned, tmp_path / "b", "--teacher_path", str(teacher), "--force", *common,
              "--feature_loss_weights", "1,1,1,1")
    c = stage(pruned, tmp_path / "c", *common)
    assert a["loss"] == pytest.approx(c["loss"]) and b["loss"] > a["loss"]
    # each term is reported unweighted; with unit weights they add up to the loss, and stage 1 has none
    assert b["loss_terms"]["flow_data"] == pytest.approx(a["loss_terms"]["flow_data"]) == pytest.approx(c["loss"])
    assert sum(b["loss_terms"].values()) == pytest.approx(b["loss"], rel=1e-5)
    assert min(b["loss_terms"].values()) > 0 and "loss_terms" not in c
    wa, wb, wc = weights(tmp_path / "a"), weights(tmp_path / "b"), weights(tmp_path / "c")
    for key in wa:
        torch.testing.assert_close(wa[key], wc[key])
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(ValueError, match="four weights"):
        train.parse_args([*TINY, "--vae_path", "x", "--feature_loss_weights", "1,1"])


def test_guidance_term_matches_the_teachers_caption_minus_empty_caption_direction(pruned, tmp_path, capsys):
    """--guidance_loss_weight adds the relative squared error of (prediction for the caption - prediction for "") to
    the teacher's. With
    the student's own weights as the teacher every teacher term of the first step is exactly 0, the guidance term
    too (both directions are computed from the same inputs); against a different teacher it is positive, enters the
    loss with its weight and changes what is learnt."""
    common = ("--max_train_steps", "1", "--no-use_ema", "--force", "--caption_dropout", "0.5")
    same = stage(pruned, tmp_path / "same", "--teacher_path", str(pruned), "--guidance_loss_weight", "1", *common)
    assert same["loss_terms"]["guidance"] == 0.0 and same["loss_terms"]["flow_teacher"] == 0.0
    assert same["loss"] == pytest.approx(same["loss_terms"]["flow_data"])

    other = perturbed_transformer(pruned, tmp_path / "other", seed=1)
    # two steps: Adam's first step is sign-only and may move both runs alike
    other = ("--teacher_path", str(other), *common, "--max_train_steps", "2")
    plain = stage(pruned, tmp_path / "plain", *other)
    capsys.readouterr()
    guided = stage(pruned, tmp_path / "guided", *other, "--guidance_loss_weight", "3")
    terms = guided["loss_terms"]
    assert f"guidance {terms['guidance']:.4g}" in capsys.readouterr().out  # the terms in the log, too
    assert "guidance" not in plain["loss_terms"] and terms["guidance"] > 0
    assert guided["loss"] == pytest.approx(sum(terms.values()) + 2 * terms["guidance"], rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(weights(tmp_path / "plain").values(),
                                                     weights(tmp_path / "guided").values()))
    record = read_recovery_record(tmp_path / "guided" / "transformer")
    assert record["stages"][-1]["guidance_loss_weight"] == 3.0
    assert "3 x relative squared error of the guidance direction" in (tmp_path / "guided" / "README.md").read_text()
    for bad in (["--guidance_loss_weight", "1"], ["--teacher_path", "t", "--guidance_loss_weight", "-1"]):
        with pytest.raises(ValueError, match="guidance_loss_weight"):
            train.parse_args([*TINY, "--vae_path", "x", *bad])


def test_record_guard_and_feature_losses():
    record = new_recovery_record("t", 4, [0, 2])
    with pytest.raises(ValueError, match="without stage 1"):
        check_stage_2_start(record)
    with pytest.raises(ValueError, match="no pruning_recovery.json"):
        check_stage_2_start(None)
    assert "--force" in check_stage_2_start(record, force=True)
    assert check_stage_2_start(with_stage(record, 1, steps=3)) is None
    img = torch.randn(2, 6, 4)
    txt = torch.randn(2, 3, 4)
    teacher = [(img, txt), (img * 0, txt), (img + 1, -txt), (img[:, -2:], None)]
    student = [(img, txt), (img[:, -2:] + 1, None)]  # blocks 0 and 2; the student's last block: last tokens only
    visual, text = feature_matching_losses(student, teacher, [0, 2])
    assert float(visual) == pytest.approx(0.0) and float(text) == pytest.approx(0.0, abs=1e-6)
    student = [(img + 2, -txt), (img[:, -2:], None)]
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    visual, text = feature_matching_losses(student, teacher, [0, 2], mask)
    assert float(visual) == pytest.approx((4 + 1) / 2) and float(text) == pytest.approx(2.0)
