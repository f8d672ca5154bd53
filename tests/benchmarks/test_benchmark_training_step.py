"""benchmarks/benchmark_training_step.py on a tiny configuration (CPU): every case is timed and reported."""

import json

import pytest

from tests.script_loading import load_script


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """The benchmark makes its own bf16 Accelerator; accelerate's process-wide state from earlier tests would refuse
    a different mixed precision (as it would in a fresh process, nothing is shared)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


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


def test_dmd_step_with_checkpointing_and_the_full_size_presets(capsys):
    bench = load_script("benchmarks/benchmark_training_step.py")
    report = bench.main([
        "--mode", "dmd", "--gradient-checkpointing", "--stages", "1", "--batch", "2", "--latent-channels", "4",
        "--latent-frames", "2", "--latent-size", "8", "16", "--num-layers", "1", "--heads", "2", "--head-dim", "8",
        "--text-dim", "16", "--pooled-dim", "8", "--text-tokens", "3", "--steps", "1", "--device", "cpu",
    ])
    assert [(c["stage"], c["num_history"]) for c in report["cases"]] == [(1, 0), (1, 1)]
    for case in report["cases"]:  # the four parts of a Pyramidal DMD step, all timed
        assert set(case["ms"]) == {"batch", "student", "teacher + fake scores", "student backward + optimizer",
                                   "fake score update"}
        assert all(v > 0 for v in case["ms"].values()) and case["model_gflop"] > 0
    # stage 1 of 3 is half the resolution: (4 x 8 latents) / patch 2 = 8 tokens per frame, two frames with history
    assert [c["visual_tokens_per_sample"] for c in report["cases"]] == [8, 16]
    assert report["transformer_parameters"] > 0 and report["num_processes"] == 1
    # The presets fill what is not given; sizes the pyramid cannot halve are refused.
    args = bench.parse_args(["--preset", "pyramid-flow", "--batch", "2"])
    assert (args.num_layers, args.heads * args.head_dim, args.latent_size, args.batch) == (24, 1536, [40, 64], 2)
    with pytest.raises(ValueError, match="multiple of 8"):
        bench.parse_args(["--latent-size", "12"])
    with pytest.raises(ValueError, match="stages 0 to 2"):
        bench.main(["--stages", "3", "--batch", "1", "--num-layers", "1", "--latent-size", "8", "--device", "cpu"])
