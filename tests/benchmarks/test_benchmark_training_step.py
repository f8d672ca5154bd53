"""benchmarks/benchmark_training_step.py on a tiny configuration (CPU): every case is timed and reported."""

import json

from tests.script_loading import load_script


def test_training_step_breakdown_on_cpu(tmp_path, capsys):
    out = tmp_path / "step.json"
    report = load_script("benchmarks/benchmark_training_step.py").main([
        "--batch", "2", "--latent-channels", "4", "--latent-frames", "3", "--latent-size", "8", "--num-layers", "1",
        "--heads", "2", "--head-dim", "8", "--text-dim", "16", "--pooled-dim", "8", "--text-tokens", "3",
        "--steps", "1", "--device", "cpu", "--profile", "--json", str(out),
    ])
    # Three stages, each for the first frame (no history) and a frame with the whole history.
    assert [(c["stage"], c["num_history"]) for c in report["cases"]] == [(s, u) for s in range(3) for u in (0, 2)]
    for case in report["cases"]:
        assert set(case["ms"]) == {"batch", "forward + backward", "optimizer"}
        assert all(v > 0 for v in case["ms"].values()) and case["model_tflops_per_s"] > 0
        assert abs(case["step_ms"] - sum(case["ms"].values())) < 1e-9
    # The history adds tokens, so the counted FLOPs of the forward + backward grow with it.
    gflop = {(c["stage"], c["num_history"]): c["model_gflop"] for c in report["cases"]}
    assert all(gflop[(s, 2)] > gflop[(s, 0)] > 0 for s in range(3))
    assert json.loads(out.read_text())["cases"] == report["cases"]
    printed = capsys.readouterr().out
    assert "stage 2 history 2:" in printed and "Self CPU" in printed  # the profiler table
