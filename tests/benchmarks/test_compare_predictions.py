"""benchmarks/compare_predictions.py on tiny random pipelines (CPU)."""

import json

import torch

from tests.script_loading import load_script
from tests.tiny_components import monolithic_pipeline


def test_a_pipeline_against_itself_and_against_a_perturbed_copy(tmp_path):
    script = load_script("benchmarks/compare_predictions.py")
    pipe = monolithic_pipeline(num_frames=17)
    pipe.save_pretrained(tmp_path / "teacher")
    common = ["--clips", "2", "--repeats", "1", "--guidance-scales", "0,1,4", "--device", "cpu"]

    same = script.main([str(tmp_path / "teacher"), str(tmp_path / "teacher"), *common])
    # 17 frames = 3 latent frames: units 0, 1 and 2 (the last), each at the three stages
    assert list(same["relative_l2"]) == [f"frame {u} stage {s}" for u in (0, 1, 2) for s in range(3)]
    assert all(v == 0.0 for row in same["relative_l2"].values() for v in row.values())

    with torch.no_grad():
        for param in pipe.transformer.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=torch.Generator().manual_seed(0)))
    pipe.save_pretrained(tmp_path / "student")
    out = tmp_path / "compare.json"
    report = script.main([str(tmp_path / "teacher"), str(tmp_path / "student"), *common, "--json", str(out)])
    for row in report["relative_l2"].values():
        assert list(row) == ["c", "u", "c - u", "cfg 0", "cfg 1", "cfg 4"]
        assert min(row.values()) > 0
        # CFG at scale 0 is the empty-caption prediction and at scale 1 the caption's
        assert abs(row["cfg 0"] - row["u"]) < 1e-6 and abs(row["cfg 1"] - row["c"]) < 1e-6
    assert json.loads(out.read_text())["relative_l2"] == report["relative_l2"]
