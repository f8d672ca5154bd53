import dataclasses
import itertools

import numpy as np
import pytest
import torch

from diffusers_neodragon.data.shapes import (
    COLORS,
    DIRECTIONS,
    HELDOUT_COMBINATIONS,
    SHAPES,
    SIZE_RADIUS,
    SIZES,
    ShapeObject,
    ShapeScene,
    ShapesVideoDataset,
    collate_fn,
    fixed_prompt_set,
    is_heldout,
    parse_caption,
    render_scene,
    sample_scene,
    scene_from_caption,
    shapes_vocabulary,
    to_unit_range,
)
from diffusers_neodragon.data.vocab_tokenizer import build_word_level_tokenizer


def _scenes(n, split="train", two_objects_prob=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, split, two_objects_prob) for _ in range(n)]


def _coverage(video, scene):
    """Per-pixel object coverage recovered from a single-object render: position between background and colour."""
    bg, fg = (np.asarray(COLORS[c], dtype=np.float64) for c in (scene.background, scene.color))
    return ((video - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg))


def test_vocabulary_is_well_separated_and_covers_every_caption():
    assert {"circle", "square", "triangle"} <= set(SHAPES)
    assert {"red", "green", "blue", "yellow", "white", "black"} <= set(COLORS)
    assert min(np.linalg.norm(np.subtract(a, b)) for a, b in itertools.combinations(COLORS.values(), 2)) >= 200
    assert SIZES == ("small", "large") and DIRECTIONS == ("left", "right", "up", "down", "still")
    words = shapes_vocabulary()
    assert len(words) == len(set(words))
    captions = [s.caption for s in _scenes(500, two_objects_prob=0.5)] + [s.caption for s in _scenes(200, "heldout")]
    assert {w for c in captions for w in c.split()} == set(words)
    tokenizer = build_word_level_tokenizer(words, model_max_length=32)
    ids = tokenizer(captions)["input_ids"]
    assert all(tokenizer.unk_token_id not in seq for seq in ids)


def test_captions_round_trip_through_parse_caption():
    for scene in _scenes(2000, two_objects_prob=0.3) + _scenes(300, "heldout", 0.3):
        parsed = parse_caption(scene.caption)
        assert {k: parsed[k] for k in ("shape", "color", "size", "direction", "background")} == {
            k: getattr(scene, k) for k in ("shape", "color", "size", "direction", "background")
        }
        keys = ("shape", "color", "size", "direction")
        second = None if scene.second is None else {k: getattr(scene.second, k) for k in keys}
        assert parsed["second"] == second
    assert ShapeScene("square", "green", "large", "still", "black", 0.0, (0.5, 0.5)).caption == (
        "a large green square standing still on a black background"
    )
    two = "a small red circle moving left and a large blue square standing still on a white background"
    assert parse_caption(two)["second"] == {"shape": "square", "color": "blue", "size": "large", "direction": "still"}
    # Case, spacing and a final period are tolerated.
    assert parse_caption("  A Small RED circle moving   left on a blue background.")["color"] == "red"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a red circle moving left on a blue background",  # no size
        "a small red circle moving left",  # no background
        "a small red circle moving sideways on a blue background",
        "a small purple circle moving left on a blue background",
        "a small red circle moving left on a red background",  # background = object colour
        "a small red hexagon standing still on a blue background",
        "a small red circle standing still and a large red square moving up on a blue background",
        "a small red circle moving left on a blue background, please",
    ],
)
def test_parse_caption_rejects_what_the_templates_cannot_produce(text):
    with pytest.raises(ValueError):
        parse_caption(text)


def test_heldout_combinations_never_appear_in_train():
    train = _scenes(4000, two_objects_prob=0.2)
    assert not any(is_heldout(s) for s in train)
    pairs = {(o.shape, o.color) for s in train for o in s.objects}
    backgrounds = {(o.color, s.background) for s in train for o in s.objects}
    assert not pairs & set(HELDOUT_COMBINATIONS["shape_color"])
    assert not backgrounds & set(HELDOUT_COMBINATIONS["color_background"])
    # Every single word still occurs in training.
    for name, vocabulary in (("shape", SHAPES), ("color", COLORS), ("size", SIZES), ("direction", DIRECTIONS),
                             ("background", COLORS)):
        assert {getattr(s, name) for s in train} == set(vocabulary)
    heldout = _scenes(500, "heldout")
    assert all(is_heldout(s) for s in heldout)
    assert {(s.shape, s.color) for s in heldout} >= set(HELDOUT_COMBINATIONS["shape_color"])
    with pytest.raises(ValueError):
        sample_scene(np.random.default_rng(0), "test")


def test_sampling_and_dataset_are_deterministic():
    assert _scenes(50, two_objects_prob=0.5, seed=3) == _scenes(50, two_objects_prob=0.5, seed=3)
    assert _scenes(50, seed=3) != _scenes(50, seed=4)
    a, b = ShapesVideoDataset(8, 9, 64, 64, seed=1), ShapesVideoDataset(8, 9, 64, 64, seed=1)
    for i in (0, 5, 7, 5):
        assert torch.equal(a[i]["video"], b[i]["video"]) and a[i]["caption"] == b[i]["caption"]
    other = ShapesVideoDataset(8, 9, 64, 64, seed=2)
    assert [a[i]["caption"] for i in range(8)] != [other[i]["caption"] for i in range(8)]
    scene = _scenes(1)[0]
    assert np.array_equal(render_scene(scene, 9, 64, 80), render_scene(scene, 9, 64, 80))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", SIZES)
def test_render_shape_area_palette_and_anti_aliasing(shape, size):
    scene = ShapeScene(shape, "red", size, "right", "blue", 0.3, (0.35, 0.5))
    video = render_scene(scene, 5, 128, 128)
    assert video.shape == (5, 128, 128, 3) and video.dtype == np.uint8
    r = SIZE_RADIUS[size] * 128
    area = {"circle": np.pi * r * r, "square": 4 * r * r, "triangle": 2 * r * r, "diamond": 2 * r * r}[shape]
    coverage = _coverage(video.astype(np.float64), scene)
    np.testing.assert_allclose(coverage.sum((1, 2)), area, rtol=0.02)  # 4x4 point samples per pixel
    # Away from edges, pixels hold exact palette values; edges are blends.
    pixels = video.reshape(-1, 3)
    exact = (pixels == COLORS["red"]).all(1) | (pixels == COLORS["blue"]).all(1)
    assert exact.mean() > 0.95 and not exact.all()
    assert ((coverage > 0.02) & (coverage < 0.98)).sum() > 0
    # The shape's extent: a 2r x 2r box; the triangle's apex is up (more mass in the lower half).
    frame = coverage[0]
    rows, cols = np.flatnonzero(frame.max(1) > 0.5), np.flatnonzero(frame.max(0) > 0.5)
    assert abs(rows.size - 2 * r) <= 2 and abs(cols.size - 2 * r) <= 2
    cy = 0.5 * 128
    lower, upper = frame[int(cy) :].sum(), frame[: int(cy)].sum()
    assert (lower > 1.5 * upper) if shape == "triangle" else abs(lower - upper) < 0.02 * area


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_render_motion_follows_direction_and_speed(direction):
    speed = 0.0 if direction == "still" else 0.3
    scene = ShapeScene("circle", "yellow", "small", direction, "black", speed, (0.5, 0.5))
    coverage = _coverage(render_scene(scene, 9, 64, 96).astype(np.float64), scene)
    ys, xs = np.arange(64) + 0.5, np.arange(96) + 0.5
    cx = (coverage.sum(1) * xs).sum(1) / coverage.sum((1, 2))
    cy = (coverage.sum(2) * ys).sum(1) / coverage.sum((1, 2))
    dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}[direction]
    np.testing.assert_allclose(cx, 96 * (0.5 + dx * speed * np.linspace(0, 1, 9)), atol=0.05)
    np.testing.assert_allclose(cy, 64 * (0.5 + dy * speed * np.linspace(0, 1, 9)), atol=0.05)


def test_sampled_objects_stay_inside_the_frame_and_apart():
    for scene in _scenes(300, two_objects_prob=0.5, seed=7):
        video = render_scene(scene, 9, 64, 64)
        ring = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], axis=1)
        assert (ring == COLORS[scene.background]).all(), scene
        if scene.second is not None:
            # No occlusion: each object shows as many exact-colour pixels as when rendered alone.
            first = dataclasses.replace(scene, second=None)
            s = scene.second
            alone = ShapeScene(s.shape, s.color, s.size, s.direction, scene.background, s.speed, s.start)
            for obj, single in ((scene, first), (s, alone)):
                exact = lambda v: (v == COLORS[obj.color]).all(-1).sum()
                assert exact(video) == exact(render_scene(single, 9, 64, 64))


def test_dataset_items_and_collate():
    dataset = ShapesVideoDataset(6, num_frames=9, height=64, width=96, seed=0, two_objects_prob=0.5)
    assert len(dataset) == 6
    item = dataset[3]
    assert set(item) == {"video", "caption", "scene"}
    video = item["video"]
    assert video.shape == (3, 9, 64, 96) and video.dtype == torch.float32 and video.is_contiguous()
    assert -1.0 <= video.min() and video.max() <= 1.0
    scene = ShapeScene.from_dict(item["scene"])
    assert scene.caption == item["caption"] == dataset.scene(3).caption
    expected = torch.from_numpy(render_scene(scene, 9, 64, 96)).permute(3, 0, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(video, expected)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_fn)))
    assert batch["video"].shape == (4, 3, 9, 64, 96)
    assert batch["caption"] == [dataset[i]["caption"] for i in range(4)] and len(batch["scene"]) == 4
    assert ShapesVideoDataset.collate_fn is collate_fn
    heldout = ShapesVideoDataset(20, 3, 64, 64, split="heldout")
    assert all(is_heldout(ShapeScene.from_dict(heldout[i]["scene"])) for i in range(20))
    with pytest.raises(IndexError):
        dataset[6]
    for kwargs in ({"num_samples": 0}, {"num_samples": 2, "split": "val"}, {"num_samples": 2, "height": 0},
                   {"num_samples": 2, "two_objects_prob": 2.0}):
        with pytest.raises(ValueError):
            ShapesVideoDataset(**kwargs)


def test_scene_validation():
    with pytest.raises(ValueError, match="differ"):
        ShapeScene("circle", "red", "small", "left", "red", 0.3, (0.5, 0.5))
    with pytest.raises(ValueError, match="shape"):
        ShapeScene("hexagon", "red", "small", "left", "blue", 0.3, (0.5, 0.5))
    with pytest.raises(ValueError, match="speed"):
        ShapeScene("circle", "red", "small", "still", "blue", 0.3, (0.5, 0.5))
    with pytest.raises(ValueError, match="differ"):
        ShapeScene("circle", "red", "small", "left", "blue", 0.3, (0.5, 0.5),
                   ShapeObject("square", "red", "small", "up", 0.3, (0.2, 0.8)))
    with pytest.raises(ValueError):
        render_scene(_scenes(1)[0], 0, 64, 64)


def test_fixed_prompt_sets_and_scene_from_caption():
    seen, heldout = fixed_prompt_set("seen", 40), fixed_prompt_set("heldout", 40)
    assert seen == fixed_prompt_set("seen", 40) and fixed_prompt_set("seen", 10) == seen[:10]
    assert len(set(seen)) == 40 and len(set(heldout)) == 40 and not set(seen) & set(heldout)
    for i, prompt in enumerate(seen + heldout):
        parsed = parse_caption(prompt)
        assert parsed["second"] is None
        assert parsed["direction"] == DIRECTIONS[i % 5] and parsed["size"] == SIZES[(i % 40 // 5) % 2]
        scene = scene_from_caption(prompt, np.random.default_rng(i))
        assert scene.caption == prompt and is_heldout(scene) == (i >= 40)
    two = "a small red circle moving left and a large blue square standing still on a white background"
    assert scene_from_caption(two).caption == two
    with pytest.raises(ValueError):
        fixed_prompt_set("train")


def test_uint8_items_become_the_float_items_bit_for_bit():
    """``as_uint8`` hands over a quarter of the bytes; ``to_unit_range`` (on any device) restores the float clip."""
    floats = ShapesVideoDataset(3, num_frames=9, height=32, width=32, seed=4)
    raw = ShapesVideoDataset(3, num_frames=9, height=32, width=32, seed=4, as_uint8=True)
    for index in range(3):
        video = raw[index]["video"]
        assert video.dtype == torch.uint8 and video.shape == (3, 9, 32, 32)
        assert torch.equal(to_unit_range(video), floats[index]["video"])
        assert raw[index]["caption"] == floats[index]["caption"]
    clip = floats[0]["video"]
    assert to_unit_range(clip) is clip  # float clips pass through
