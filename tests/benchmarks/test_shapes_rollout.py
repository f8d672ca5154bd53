"""benchmarks/shapes_rollout.py on a tiny random pipeline (CPU)."""

import json

from diffusers_neodragon import NeodragonPipeline
from tests.script_loading import load_script
from tests.tiny_components import components


def test_rollout_report_on_a_tiny_pipeline(tmp_path, capsys):
    folder = tmp_path / "tiny"
    NeodragonPipeline(**components(0, with_first_frame=False), mode="monolithic", default_height=64,
                      default_width=64, default_num_frames=17).save_pretrained(folder)
    out = tmp_path / "rollout.json"
    report = load_script("benchmarks/shapes_rollout.py").main(
        [str(folder), "--clips", "2", "--repeats", "1", "--steps", "1", "--device", "cpu", "--json", str(out)])
    # 17 frames = 3 latent frames: units 0, 1 and 2 (the last), each at the three stages.
    assert list(report["teacher_forced_loss"]) == [f"frame {u} stage {s}" for u in (0, 1, 2) for s in range(3)]
    for name, losses in report["teacher_forced_loss"].items():
        assert losses["true history"] > 0 and losses["other clip's history"] > 0
        if name.startswith("frame 0"):  # no history: swapping it changes nothing
            assert losses["true history"] == losses["other clip's history"]
    drift = report["rollout_relative_mse"]
    # (Frame 0 is the re-encoded true first frame: ~0 for a trained VAE, 0.000 for the shipped model; this random
    # VAE's posterior is wide, so its sample differs from the mode.)
    assert len(drift) == 3 and all(0 < d < float("inf") for d in drift)
    assert json.loads(out.read_text())["rollout_relative_mse"] == drift
    assert "rollout from the true first frame" in capsys.readouterr().out
