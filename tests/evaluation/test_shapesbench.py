import dataclasses
import io
import json

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_neodragon.data.shapes import COLORS, SHAPES, ShapeScene, fixed_prompt_set, render_scene, sample_scene
from diffusers_neodragon.evaluation import evaluate_video, format_shape_confusion, format_table, summarize
from diffusers_neodragon.evaluation.shapesbench import ATTRIBUTES
from tests.script_loading import load_script


SPLITS = {"seen": "seen", "held-out": "heldout"}


def _scenes(n, seed=0, moving=False):
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, "train" if i % 2 else "heldout") for i in range(n)]
    if moving:  # reversing or shuffling a still clip changes nothing
        scenes = [dataclasses.replace(s, direction="right", speed=0.3, start=(0.3, s.start[1]))
                  if s.direction == "still" else s for s in scenes]
    return scenes


def _blur(video, sigma):
    """Separable Gaussian blur of every frame (replicated borders)."""
    x = torch.from_numpy(video).float().permute(0, 3, 1, 2).reshape(-1, 1, *video.shape[1:3])
    r = int(3 * sigma) + 1
    k = torch.exp(-torch.arange(-r, r + 1).float() ** 2 / (2 * sigma**2))
    k = k / k.sum()
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return x.reshape(video.shape[0], 3, *video.shape[1:3]).permute(0, 2, 3, 1).round().clamp(0, 255).byte().numpy()


@pytest.mark.parametrize("size, n", [((49, 128, 128), 12), ((9, 64, 64), 60), ((5, 48, 48), 30)])
def test_ground_truth_scores_near_100(size, n):
    results = [evaluate_video(render_scene(s, *size), s.caption) for s in _scenes(n, seed=sum(size))]
    temporal_floor = 95 if size[1] >= 64 else 88  # the area of a 5 px object wobbles with its sub-pixel position
    for r in results:
        assert all(r["correct"].values()), (r["prompt"], r["predicted"])
        assert r["score"] >= 98 and r["semantic"] == 100 and r["quality"] >= 99 and r["temporal"] >= temporal_floor, r
    summary = summarize(results)
    assert summary["accuracy"]["all_correct"] == 1.0 and summary["score"] >= 99


def test_input_forms_agree_and_bad_inputs_are_rejected():
    scene = _scenes(1)[0]
    video = render_scene(scene, 9, 64, 80)
    reference = evaluate_video(video, scene.caption)
    for frames in (video.astype(np.float32) / 255, [PIL.Image.fromarray(f) for f in video], torch.from_numpy(video)):
        result = evaluate_video(frames, scene.caption)
        assert result["predicted"] == reference["predicted"]
        assert result["score"] == pytest.approx(reference["score"], abs=1e-3)
    two = "a small red circle moving left and a large blue square standing still on a white background"
    for frames, prompt in [
        (video, two),  # two objects: unsupported
        (video, "a red thing"),
        (video[0], scene.caption),
        (video[:2], scene.caption),
        (video[:, :32, :32], scene.caption),
        (video.astype(np.float32), scene.caption),  # float beyond [0, 1]
        (video.astype(np.int32), scene.caption),
        ([], scene.caption),
    ]:
        with pytest.raises(ValueError):
            evaluate_video(frames, prompt)


def _corruptions(scene, video):
    num_frames, height, width, _ = video.shape
    other_color = next(c for c in COLORS if c not in (scene.color, scene.background))
    other_shape = SHAPES[(SHAPES.index(scene.shape) + 1) % len(SHAPES)]
    half_blank = video.copy()
    half_blank[1::2] = COLORS[scene.background]
    rng = np.random.default_rng(0)
    return {
        "noise": rng.integers(0, 256, video.shape, dtype=np.uint8),
        "blur": _blur(video, 2.0),
        "recolor": render_scene(dataclasses.replace(scene, color=other_color), num_frames, height, width),
        "reversed": video[::-1],
        "shuffled": video[rng.permutation(num_frames)],
        "blank": np.broadcast_to(np.asarray(COLORS[scene.background], np.uint8), video.shape),
        "half_blank": half_blank,
        "shape": render_scene(dataclasses.replace(scene, shape=other_shape), num_frames, height, width),
    }


def test_corruptions_score_low_in_the_right_part():
    scenes = _scenes(6, seed=5, moving=True)
    by_case = {}
    for scene in scenes:
        video = render_scene(scene, 17, 96, 96)
        by_case.setdefault("clean", []).append(evaluate_video(video, scene.caption))
        for name, corrupted in _corruptions(scene, video).items():
            by_case.setdefault(name, []).append(evaluate_video(corrupted, scene.caption))
    s = {name: summarize(results) for name, results in by_case.items()}
    clean = s["clean"]
    assert clean["score"] > 99

    def others_right(name, wrong):
        return all(s[name]["accuracy"][k] == 1.0 for k in ATTRIBUTES if k != wrong)

    # Pure noise: nothing is found, nothing is clean.
    assert s["noise"]["score"] < 10 and s["noise"]["subscores"]["cleanliness"] < 0.3
    assert s["noise"]["accuracy"]["shape"] == 0 and s["noise"]["accuracy"]["color"] == 0
    # Heavy blur: sharpness collapses while every attribute is still read correctly.
    assert s["blur"]["subscores"]["sharpness"] < 0.3 and clean["subscores"]["sharpness"] == 1.0
    assert s["blur"]["subscores"]["cleanliness"] > 0.99 and others_right("blur", None) and s["blur"]["quality"] < 60
    # Wrong colour / shape / reversed motion: exactly that attribute is wrong, quality untouched, and the prompt is not
    # followed, so the semantic part halves (partial credit 4/5, adherence 0).
    for name, attribute in (("recolor", "color"), ("shape", "shape"), ("reversed", "direction")):
        assert s[name]["accuracy"][attribute] == 0 and others_right(name, attribute), name
        assert s[name]["quality"] > 99 and s[name]["semantic"] == pytest.approx(40)
        assert s[name]["score"] == pytest.approx(clean["score"] - 30, abs=1)
    # Shuffled frames: the path jerks, temporal collapses; identity stays.
    shuffled = s["shuffled"]
    assert shuffled["subscores"]["smoothness"] < 0.1 and shuffled["temporal"] < 60 and shuffled["score"] < 75
    assert s["shuffled"]["subscores"]["identity"] > 0.95
    # Blank frames: only the background is right; half blank: the object flickers in and out.
    assert s["blank"]["accuracy"] == {**{k: 0.0 for k in ATTRIBUTES}, "background": 1.0, "all_correct": 0.0}
    assert s["blank"]["score"] < 20 and s["blank"]["subscores"]["identity"] == 0
    assert s["half_blank"]["subscores"]["identity"] < 0.6 and s["half_blank"]["semantic"] == 100
    for result in by_case["shape"]:
        assert result["predicted"]["shape"] == SHAPES[(SHAPES.index(result["expected"]["shape"]) + 1) % len(SHAPES)]


def _noise(video, sigma, seed=0):
    return np.clip(video + np.random.default_rng(seed).normal(0, sigma, video.shape), 0, 255).astype(np.uint8)


def _jpeg(video, quality):
    frames = []
    for frame in video:
        buffer = io.BytesIO()
        PIL.Image.fromarray(frame).save(buffer, "JPEG", quality=quality)
        frames.append(np.asarray(PIL.Image.open(buffer).convert("RGB")))
    return np.stack(frames)


def _down_up(video, factor):
    x = torch.from_numpy(video).float().permute(0, 3, 1, 2)
    x = torch.nn.functional.interpolate(x, scale_factor=1 / factor, mode="area")
    x = torch.nn.functional.interpolate(x, size=video.shape[1:3], mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).round().clamp(0, 255).byte().numpy()


def _dark_border(video, width=3, gain=0.4):
    out = video.astype(np.float32)
    for index in ((slice(None), slice(0, width)), (slice(None), slice(-width, None))):
        out[index] *= gain  # top and bottom rows
        out[(index[0], slice(None), index[1])] *= gain  # left and right columns
    return out.astype(np.uint8)


DEGRADATIONS = {
    "blur": lambda v: _blur(v, 1.5),
    "noise": lambda v: _noise(v, 15),
    "jpeg": lambda v: _jpeg(v, 40),
    "low_res": lambda v: _down_up(v, 2),
    "color_cast": lambda v: np.clip(v.astype(np.int16) + np.array([25, -20, 15]), 0, 255).astype(np.uint8),
    "dark_border": _dark_border,
    "soft_noisy_jpeg": lambda v: _jpeg(_noise(_blur(v, 1.0), 8), 60),
}


def test_decisions_survive_the_softness_of_generated_video_at_128():
    """A small trained model's output is blurry, noisy and compressed: every attribute must still be read at 128x128,
    while the matching quality sub-score drops; a wrong direction or colour stays wrong under the same damage."""
    scenes = _scenes(8, seed=11, moving=True)
    by_case = {}
    for i, scene in enumerate(scenes):
        video = render_scene(scene, 9, 128, 128)
        wrong = dataclasses.replace(scene, color=next(c for c in COLORS if c not in (scene.color, scene.background)))
        for name, degrade in DEGRADATIONS.items():
            by_case.setdefault(name, []).append(evaluate_video(degrade(video), scene.caption))
            if i < 2:
                reversed_video = degrade(video[::-1].copy())
                by_case.setdefault(f"{name}+reversed", []).append(evaluate_video(reversed_video, scene.caption))
                by_case.setdefault(f"{name}+recolor", []).append(
                    evaluate_video(degrade(render_scene(wrong, 9, 128, 128)), scene.caption)
                )
    s = {name: summarize(results) for name, results in by_case.items()}
    for name in DEGRADATIONS:
        accuracy = s[name]["accuracy"]
        assert all(accuracy[k] == 1.0 for k in ("color", "size", "direction", "background")), (name, accuracy)
        assert accuracy["shape"] >= 0.9, (name, accuracy)
        assert s[name]["score"] > 80, (name, s[name]["score"])
        assert s[f"{name}+reversed"]["accuracy"]["direction"] == 0, name
        assert s[f"{name}+recolor"]["accuracy"]["color"] == 0, name
    assert s["blur"]["subscores"]["sharpness"] < 0.5 and s["soft_noisy_jpeg"]["subscores"]["sharpness"] < 0.5
    assert s["noise"]["subscores"]["cleanliness"] < 0.95 and s["color_cast"]["subscores"]["cleanliness"] < 0.8


def test_blank_video_predictions_are_none_and_measurements_json_safe():
    scene = ShapeScene("circle", "red", "small", "left", "blue", 0.3, (0.6, 0.5))
    blank = np.broadcast_to(np.asarray(COLORS["blue"], np.uint8), (9, 64, 64, 3))
    result = evaluate_video(blank, scene.caption)
    assert result["predicted"] == {"background": "blue", "color": None, "shape": None, "size": None, "direction": None}
    json.loads(json.dumps(result, allow_nan=False))
    for key in ("semantic", "quality", "temporal", "score"):
        assert 0 <= result[key] <= 100
    assert all(0 <= v <= 1 for v in result["subscores"].values())


def test_summarize_and_format_table():
    scenes = _scenes(4)
    results = [evaluate_video(render_scene(s, 9, 64, 64), s.caption) for s in scenes]
    results.append(evaluate_video(render_scene(scenes[0], 9, 64, 64)[::-1], scenes[0].caption))
    summary = summarize(results)
    assert summary["n"] == 5
    assert set(summary["accuracy"]) == {*ATTRIBUTES, "all_correct"}
    assert summary["accuracy"]["color"] == 1.0
    assert summary["accuracy"]["all_correct"] == (0.8 if scenes[0].direction != "still" else 1.0)
    assert summary["score"] == pytest.approx(np.mean([r["score"] for r in results]))
    table = format_table(summary)
    assert "total" in table and "shape acc" in table and f"{summary['score']:.1f}" in table
    both = format_table({"seen": summary, "held-out": summary})
    assert both.splitlines()[0].split() == ["seen", "held-out"]
    with pytest.raises(ValueError):
        summarize([])


def test_format_shape_confusion_counts_verdicts_per_prompted_size_and_shape():
    scenes = _scenes(4)
    results = [evaluate_video(render_scene(s, 9, 64, 64), s.caption) for s in scenes]
    blank = np.zeros((9, 64, 64, 3), dtype=np.uint8)  # no object: the verdict is "none"
    results.append(evaluate_video(blank, scenes[0].caption))
    lines = format_shape_confusion(results).splitlines()
    assert lines[0].split() == ["circle", "square", "triangle", "diamond", "none"]
    table = {" ".join(line.split()[:2]): [int(v) for v in line.split()[2:]] for line in lines[1:]}
    for s in scenes:
        assert table[f"{s.size} {s.shape}"][["circle", "square", "triangle", "diamond"].index(s.shape)] >= 1
    assert table[f"{scenes[0].size} {scenes[0].shape}"][4] == 1
    assert sum(map(sum, table.values())) == 5
    with pytest.raises(ValueError):
        format_shape_confusion([])


def _benchmark_script():
    return load_script("benchmarks/shapesbench.py")


def test_benchmark_script_ground_truth(tmp_path, capsys):
    script = _benchmark_script()
    out = tmp_path / "gt.json"
    argv = ["--ground-truth", "--num-prompts", "3", "--height", "64", "--width", "64", "--frames", "9",
            "--json", str(out)]
    report = script.main(argv)
    printed = capsys.readouterr().out
    assert "seen" in printed and "held-out" in printed and "total" in printed
    saved = json.loads(out.read_text())
    assert saved["summary"]["seen"]["n"] == saved["summary"]["held-out"]["n"] == 3
    assert saved["summary"]["held-out"]["accuracy"]["all_correct"] == 1.0 and report["video_size_fhw"] == [9, 64, 64]
    assert [r["prompt"] for r in saved["results"]["held-out"]] == fixed_prompt_set("heldout", 3)
    for argv in ([], ["--ground-truth", "some/folder"], ["--ground-truth", "--steps", "x"],
                 ["--ground-truth", "--num-prompts", "0"]):
        with pytest.raises(SystemExit):
            script.main(argv)
    assert script._steps("2") == 2 and script._steps("1,2,1") == [1, 2, 1]


def test_benchmark_script_refuses_cuda_graphs_off_cuda(tmp_path):
    from tests.tiny_components import monolithic_pipeline

    folder = tmp_path / "tiny"
    monolithic_pipeline().save_pretrained(folder)
    with pytest.raises(ValueError, match="--cuda-graphs needs a CUDA device"):
        _benchmark_script().main([str(folder), "--device", "cpu", "--cuda-graphs"])


def test_benchmark_script_on_a_tiny_random_pipeline(tmp_path, capsys):
    """The whole path on CPU: load a saved pipeline folder, generate at its configured default size, score, print."""
    from tests.tiny_components import monolithic_pipeline

    folder = tmp_path / "tiny"
    pipe = monolithic_pipeline()
    pipe.save_pretrained(folder)
    out = tmp_path / "tiny.json"
    report = _benchmark_script().main([str(folder), "--num-prompts", "1", "--steps", "1", "--first-frame-steps", "1",
                                       "--seed", "3", "--device", "cpu", "--json", str(out)])
    printed = capsys.readouterr().out
    lines = printed.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == ["seen", "held-out"])
    rows = lines[start + 1:start + 16]
    assert rows[-1].split()[0] == "total" and lines[start + 16] == ""
    assert "shape verdicts, seen (rows: prompted, columns: judged)" in printed
    assert "shape verdicts, held-out" in printed
    assert "ShapesBench: " + str(folder) in printed
    # 64x64x9 from the config, doubled by the super-resolution component.
    assert report["video_size_fhw"] == [9, 128, 128]
    saved = json.loads(out.read_text())
    assert saved["settings"]["steps"] == 1 and saved["settings"]["seed"] == 3
    for name in ("seen", "held-out"):
        summary = saved["summary"][name]
        assert summary["n"] == 1 and 0 <= summary["score"] <= 100
        assert [r["prompt"] for r in saved["results"][name]] == fixed_prompt_set(SPLITS[name], 1)


def test_benchmark_script_passes_sampling_overrides_and_leaves_the_rest_to_the_pipeline(tmp_path, monkeypatch):
    """CFG scales, steps and history noise given on the command line reach every pipeline call; options not given
    are not passed, so the folder's configured defaults apply."""
    from diffusers_neodragon import NeodragonPipeline
    from tests.tiny_components import monolithic_pipeline

    folder = tmp_path / "tiny"
    monolithic_pipeline().save_pretrained(folder)
    calls = []
    original = NeodragonPipeline.__call__
    monkeypatch.setattr(NeodragonPipeline, "__call__", lambda self, *a, **k: calls.append(k) or original(self, *a, **k))
    script = _benchmark_script()
    script.main([str(folder), "--num-prompts", "1", "--steps", "1", "--first-frame-steps", "1", "--device", "cpu",
                 "--guidance-scale", "2.5", "--video-guidance-scale", "1.5", "--history-noise", "0.1"])
    assert len(calls) == 2
    assert all(k["guidance_scale"] == 2.5 and k["video_guidance_scale"] == 1.5 and k["history_noise"] == 0.1
               for k in calls)
    calls.clear()
    script.main([str(folder), "--num-prompts", "1", "--steps", "1", "--first-frame-steps", "1", "--device", "cpu"])
    assert calls and not {"guidance_scale", "video_guidance_scale", "history_noise"} & set(calls[0])


def test_benchmark_script_first_frame(tmp_path, capsys):
    """--first-frame: one frame per prompt, judged on colour, shape, size and background only. Rendered first frames
    score 100 on all four; a tiny random pipeline is asked for one frame (doubled in size by its super-resolution)."""
    from tests.tiny_components import monolithic_pipeline

    script = _benchmark_script()
    report = script.main(["--ground-truth", "--first-frame", "--num-prompts", "4"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].split() == ["first", "frame", "seen", "held-out"] and report["video_size_fhw"] == [1, 128, 128]
    assert [line.split()[0] for line in lines[2:7]] == ["color", "shape", "size", "background", "all"]
    assert all(line.split()[-2:] == ["100.0", "100.0"] for line in lines[2:7]) and lines[7] == ""
    folder = tmp_path / "tiny"
    monolithic_pipeline().save_pretrained(folder)
    report = script.main([str(folder), "--first-frame", "--num-prompts", "1", "--first-frame-steps", "1",
                          "--device", "cpu"])
    assert report["video_size_fhw"] == [1, 128, 128] and "shape acc" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        script.main([str(folder), "--first-frame", "--frames", "9"])


def test_benchmark_script_vae_roundtrip_scores_the_pipelines_vae(tmp_path, capsys, monkeypatch):
    """--vae-roundtrip renders, encodes and decodes with the pipeline's own VAE (checked by counting its calls)."""
    from tests.tiny_components import monolithic_pipeline

    folder = tmp_path / "tiny"
    monolithic_pipeline().save_pretrained(folder)
    script = _benchmark_script()
    calls = []
    original = script._vae_roundtrip

    def counting(vae, default_size, args):
        decode = vae.decode
        vae.decode = lambda *a, **k: calls.append(1) or decode(*a, **k)
        return original(vae, default_size, args)

    monkeypatch.setattr(script, "_vae_roundtrip", counting)
    report = script.main([str(folder), "--vae-roundtrip", "--num-prompts", "2", "--device", "cpu"])
    assert len(calls) == 4 and report["video_size_fhw"] == [9, 64, 64]
    assert "(VAE round trip)" in capsys.readouterr().out
    # A VAE alone (a train_vae.py run folder holding vae/, or the VAE folder itself) needs no pipeline; the same
    # weights give the same scores.
    (folder / "model_index.json").unlink()
    for vae_folder in (folder, folder / "vae"):
        calls.clear()
        alone = script.main([str(vae_folder), "--vae-roundtrip", "--num-prompts", "2", "--device", "cpu",
                             "--frames", "9", "--height", "64", "--width", "64"])
        assert len(calls) == 4 and alone["summary"] == report["summary"]
    with pytest.raises(SystemExit):
        script.main(["--ground-truth", "--vae-roundtrip"])
