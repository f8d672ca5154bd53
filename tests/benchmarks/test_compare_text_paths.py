"""benchmarks/compare_text_paths.py: a pipeline against itself agrees exactly; against a distilled student the
figures are the student's held-out ones and the parameters are each text path's."""

import torch

from tests.script_loading import load_script
from tests.training.test_distill_text_encoder import run, teacher  # noqa: F401  (the tiny teacher fixture)


compare = load_script("benchmarks/compare_text_paths.py")


def test_compare_text_paths(teacher, tmp_path):  # noqa: F811
    same = compare.main([str(teacher), str(teacher), "--num-prompts", "4", "--latency-prompts", "1"])
    assert same["tokens"]["cosine"] > 0.99999 and same["tokens"]["mse"] < 1e-10
    assert same["denoiser"]["relative_l2"] == 0.0
    run(teacher, tmp_path, "--mode", "RM", "--max_train_steps", "1", "--checkpointing_steps", "0",
        "--validation_prompts", "shapes-heldout")
    figures = compare.main([str(teacher), str(tmp_path), "--num-prompts", "4", "--latency-prompts", "1",
                            "--json", str(tmp_path / "figures.json")])
    assert 0 < figures["denoiser"]["relative_l2"] and figures["tokens"]["cosine"] < 0.99999
    t5 = sum(p.numel() for p in compare.NeodragonPipeline.from_pretrained(teacher).text_encoder_3.parameters())
    assert figures["text_path_parameters"]["a"] == t5 + 32 * 16 + 16  # T5 + the context_embedder Linear(32 -> 16)
    assert (tmp_path / "figures.json").is_file() and torch.isfinite(torch.tensor(figures["tokens"]["mse"]))
