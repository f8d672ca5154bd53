"""benchmarks/shapes_rollout.py on a tiny random pipeline (CPU)."""

import json

from diffusers_neodragon.data.shapes import ShapeObject, ShapeScene
from tests.script_loading import load_script
from tests.tiny_components import monolithic_pipeline


def test_rollout_report_on_a_tiny_pipeline(tmp_path, capsys):
    folder = tmp_path / "tiny"
    monolithic_pipeline(num_frames=17).save_pretrained(folder)
    out = tmp_path / "rollout.json"
    report = load_script("benchmarks/shapes_rollout.py").main(
        [str(folder), "--clips", "2", "--repeats", "1", "--steps", "1", "--device", "cpu", "--json", str(out)])
    # 17 frames = 3 latent frames: units 0, 1 and 2 (the last), each at the three stages.
    assert list(report["teacher_forced_loss"]) == [f"frame {u} stage {s}" for u in (0, 1, 2) for s in range(3)]
    for name, losses in report["teacher_forced_loss"].items():
        assert losses["true history"] > 0 and losses["other clip's history"] > 0
        if name.startswith("frame 0"):  # no history: swapping it changes nothing
            assert losses["true history"] == losses["other clip's history"]
    # Caption use: the first frame per stage, true caption vs one word swapped. The random text encoders turn every
    # known word into its own embedding, so the shape and colour swaps (words of the tiny vocabulary for these two
    # clips) change the loss; "small" and "large" are both <unk> to the tiny tokenizers, so the size swap cannot.
    assert list(report["caption_use_loss"]) == [f"frame 0 stage {s}" for s in range(3)]
    for losses in report["caption_use_loss"].values():
        assert list(losses) == ["true caption", "shape swapped", "color swapped", "size swapped"]
        assert losses["shape swapped"] != losses["true caption"] != losses["color swapped"]
        assert losses["size swapped"] == losses["true caption"] > 0
    drift = report["rollout_relative_mse"]
    # (Frame 0 is the re-encoded true first frame: ~0 for a trained VAE, 0.000 for the shipped model; this random
    # VAE's posterior is wide, so its sample differs from the mode.)
    assert len(drift) == 3 and all(0 < d < float("inf") for d in drift)
    assert json.loads(out.read_text())["rollout_relative_mse"] == drift
    assert "rollout from the true first frame" in capsys.readouterr().out


def test_swap_attribute_changes_one_word_and_keeps_the_scene_valid():
    rollout = load_script("benchmarks/shapes_rollout.py")
    scene = ShapeScene(shape="diamond", color="white", size="large", direction="left", background="black", speed=0.3,
                       start=(0.6, 0.5), second=ShapeObject("circle", "red", "small", "up", 0.3, (0.2, 0.7)))
    assert rollout.swap_attribute(scene, "shape").caption.startswith("a large white circle moving left")
    assert rollout.swap_attribute(scene, "size").caption.startswith("a small white diamond")
    # white -> black is the background and red is the second object's colour: the next valid colour is skipped to.
    swapped = rollout.swap_attribute(scene, "color")
    assert swapped.color not in ("white", "black", "red") and swapped.second == scene.second
