import os
from pathlib import Path

import PIL.Image
import pytest

from diffusers_neodragon_cli import build_parser, frame_strip, main
from tests.tiny_components import pipeline


ROOT = Path(__file__).resolve().parents[1]


def test_generate_writes_mp4_and_strip(tmp_path):
    model = tmp_path / "model"
    pipeline(with_first_frame=False).save_pretrained(model)
    out = tmp_path / "videos" / "cat.mp4"
    code = main([
        "generate", "a red circle moving left", "--model", str(model), "--mode", "monolithic", "--frames", "9",
        "--height", "64", "--width", "64", "--steps", "1,2,1", "--first-frame-steps", "1", "--seed", "3",
        "--output", str(out),
    ])
    assert code == 0 and out.stat().st_size > 0
    strip = PIL.Image.open(tmp_path / "videos" / "cat_frames.png")
    assert strip.size == (8 * 128, 128)  # 8 frames of the 2x super-resolved 128x128 video


def test_generate_from_an_image(tmp_path):
    model = tmp_path / "model"
    pipeline(with_first_frame=False, with_super_resolution=False).save_pretrained(model)
    image = tmp_path / "first.png"
    PIL.Image.new("RGB", (80, 80), (200, 30, 30)).save(image)
    out = tmp_path / "i2v.mp4"
    assert main(["generate", "a red circle", "--model", str(model), "--image", str(image), "--frames", "9",
                 "--height", "64", "--width", "64", "--output", str(out)]) == 0
    assert out.exists()


def test_bad_arguments_are_rejected():
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "a cat", "--model", "m", "--steps", "one"])
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "a cat", "--model", "m", "--mode", "fast"])


def test_frame_strip_picks_evenly_spaced_frames():
    frames = [PIL.Image.new("RGB", (20, 10), (i * 10, 0, 0)) for i in range(25)]
    strip = frame_strip(frames, count=5, height=10)
    assert strip.size == (100, 10)
    assert [strip.getpixel((x * 20 + 5, 5))[0] for x in range(5)] == [0, 60, 120, 180, 240]


def test_generate_defaults_to_the_embedded_shapes_model(tmp_path, capsys):
    out = tmp_path / "shapes.mp4"
    code = main(["generate", "a small red circle moving left on a blue background", "--frames", "9", "--steps", "1",
                 "--first-frame-steps", "1", "--output", str(out)])
    assert code == 0 and out.stat().st_size > 0
    assert "using the embedded Shapes model" in capsys.readouterr().out
    assert PIL.Image.open(tmp_path / "shapes_frames.png").size == (8 * 128, 128)  # 9 frames at 128x128


def test_generate_passes_the_memory_and_history_noise_switches(tmp_path, monkeypatch):
    from diffusers_neodragon import NeodragonPipeline

    model = tmp_path / "model"
    pipeline(with_first_frame=False, with_super_resolution=False).save_pretrained(model)
    seen = {}
    quantize, call = NeodragonPipeline.enable_float8_weights, NeodragonPipeline.__call__
    monkeypatch.setattr(NeodragonPipeline, "enable_float8_weights",
                        lambda self, *a, **k: seen.update(float8=k, saved=quantize(self, *a, **k)))
    monkeypatch.setattr(NeodragonPipeline, "__call__",
                        lambda self, *a, **k: seen.update(chunk=k["decode_chunk_size"], noise=k["history_noise"])
                        or call(self, *a, **k))
    out = tmp_path / "small.mp4"
    assert main(["generate", "a red circle", "--model", str(model), "--mode", "monolithic", "--frames", "17",
                 "--height", "64", "--width", "64", "--steps", "1", "--first-frame-steps", "1",
                 "--decode-chunk-size", "1", "--float8-matmuls", "--history-noise", "0.2", "--output", str(out)]) == 0
    assert out.stat().st_size > 0 and seen["chunk"] == 1 and seen["noise"] == 0.2
    assert seen["float8"] == {"float8_matmuls": True}
    assert seen["saved"] == 0  # tiny layers stay as they are


def test_a_successful_run_leaves_just_the_video_and_its_strip(tmp_path, monkeypatch):
    """The outputs are renamed from temporary files: nothing else is left, with the usual (umask) permissions, and the
    thread count asked for is used for the run and restored after it."""
    import torch

    model = tmp_path / "model"
    pipeline(with_first_frame=False, with_super_resolution=False).save_pretrained(model)
    threads, seen = torch.get_num_threads(), []
    set_threads = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.append(n) or set_threads(n))
    out = tmp_path / "new" / "clip.gif"
    assert main(["generate", "a red circle", "--model", str(model), "--mode", "monolithic", "--frames", "9",
                 "--height", "64", "--width", "64", "--steps", "1", "--first-frame-steps", "1", "--threads", "3",
                 "--fps", "8", "--output", str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip.gif", "clip_frames.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    assert PIL.Image.open(out).n_frames == 9
    assert seen == [3, threads] and torch.get_num_threads() == threads
