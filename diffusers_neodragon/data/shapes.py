"""The synthetic Shapes world: templated captions and analytically rendered videos of moving coloured shapes.

Every clip is rendered from a few known attributes, so a small text-to-video model can be trained on it on a CPU,
``neodragon generate`` has something recognisable to make offline, and an analytic evaluator
(:mod:`diffusers_neodragon.evaluation.shapesbench`) can score any generated video against its caption.

Geometry (all in fractions of the frame, so one scene renders at any size):

* an object's size is its half-extent ``SIZE_RADIUS[size]`` in fractions of the frame *height*; every shape fills a
  ``2r x 2r`` pixel box (circle of radius r, axis-aligned square, diamond = square turned 45 degrees, triangle with
  its apex up and its base at the bottom of the box);
* ``start`` is the box centre at the first frame, ``(x, y)`` in fractions of width and height (y downwards);
* ``speed`` is the distance travelled between the first and the last frame, in fractions of the frame width
  (left/right) or height (up/down): motion is defined per clip, so a 9-frame and a 49-frame render of one scene
  show the same path.

Sampled scenes keep every object entirely inside the frame over the whole clip for any frame with
``width >= height`` (positions are chosen for the square case, the tightest one).
"""

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


SHAPES = ("circle", "square", "triangle", "diamond")
# Inset corners of the RGB cube: pairwise distance >= 215, and no colour is clipped by a tanh-bounded decoder.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (235, 20, 20),
    "green": (20, 235, 20),
    "blue": (20, 20, 235),
    "yellow": (235, 235, 20),
    "magenta": (235, 20, 235),
    "cyan": (20, 235, 235),
    "white": (235, 235, 235),
    "black": (20, 20, 20),
}
SIZES = ("small", "large")
SIZE_RADIUS = {"small": 0.1, "large": 0.2}
DIRECTIONS = ("left", "right", "up", "down", "still")
SPEED_RANGE = (0.25, 0.45)
# Free space kept between an object's path and the frame border (and between the paths of two objects).
MARGIN = 0.02

# Attribute pairs that the "train" split never produces and every "heldout" scene contains at least one of, so a
# benchmark on held-out prompts measures compositional generalisation: every word was seen, these pairings not.
# Each shape and four of the colours appear once in a held-out (shape, colour) pair.
HELDOUT_COMBINATIONS = {
    "shape_color": (("circle", "green"), ("square", "yellow"), ("triangle", "blue"), ("diamond", "red")),
    "color_background": (("white", "black"), ("magenta", "cyan"), ("red", "yellow")),
}

_DELTAS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeObject:
    """The second object of a two-object scene (same meaning as the first object's fields of :class:`ShapeScene`)."""

    shape: str
    color: str
    size: str
    direction: str
    speed: float
    start: tuple[float, float]

    def __post_init__(self):
        _check_object(self.shape, self.color, self.size, self.direction, self.speed, self.start)


@dataclass(frozen=True)
class ShapeScene:
    """One clip of the Shapes world: an object (and optionally a second one) moving over a plain background."""

    shape: str
    color: str
    size: str
    direction: str
    background: str
    speed: float
    start: tuple[float, float]
    second: ShapeObject | None = None

    def __post_init__(self):
        _check_object(self.shape, self.color, self.size, self.direction, self.speed, self.start)
        if self.background not in COLORS:
            raise ValueError(f"Unknown background colour {self.background!r}; expected one of {list(COLORS)}.")
        colors = [self.color] + ([self.second.color] if self.second is not None else [])
        if self.background in colors or len(set(colors)) != len(colors):
            raise ValueError(
                f"Object colours {colors} must differ from each other and from the background {self.background!r}."
            )

    @property
    def objects(self) -> list[ShapeObject]:
        """Every object of the scene, the first one first."""
        first = ShapeObject(self.shape, self.color, self.size, self.direction, self.speed, self.start)
        return [first] + ([self.second] if self.second is not None else [])

    @property
    def caption(self) -> str:
        """``"a small red circle moving left on a blue background"``; two objects are joined by ``and`` before
        ``on a ... background``, each with its own motion (``moving <direction>`` or ``standing still``)."""
        phrases = [
            f"a {o.size} {o.color} {o.shape} "
            + ("standing still" if o.direction == "still" else f"moving {o.direction}")
            for o in self.objects
        ]
        return " and ".join(phrases) + f" on a {self.background} background"

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python fields (``second`` is a dict or None), as the dataset returns them."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ShapeScene":
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["start"] = tuple(data["start"])
        if data.get("second") is not None:
            second = dict(data["second"])
            second["start"] = tuple(second["start"])
            data["second"] = ShapeObject(**second)
        return cls(**data)


def _check_object(shape, color, size, direction, speed, start) -> None:
    for value, vocabulary, name in ((shape, SHAPES, "shape"), (color, COLORS, "colour"), (size, SIZES, "size"),
                                    (direction, DIRECTIONS, "direction")):
        if value not in vocabulary:
            raise ValueError(f"Unknown {name} {value!r}; expected one of {list(vocabulary)}.")
    if not speed >= 0 or (direction == "still") != (speed == 0):
        raise ValueError(f"`speed` must be 0 for 'still' and > 0 for a moving object, got {speed!r} for {direction!r}.")
    if len(start) != 2:
        raise ValueError(f"`start` must be an (x, y) pair of frame fractions, got {start!r}.")


# ---------------------------------------------------------------------------------------------------- captions

_MOTION_RE = r"(?:moving (left|right|up|down)|standing still)"
_OBJECT_RE = rf"a ({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) {_MOTION_RE}"
_CAPTION_RE = re.compile(rf"{_OBJECT_RE}(?: and {_OBJECT_RE})? on a ({'|'.join(COLORS)}) background")


def parse_caption(text: str) -> dict[str, Any]:
    """Inverse of :attr:`ShapeScene.caption`: ``{"shape", "color", "size", "direction", "background", "second"}``
    where ``second`` is None or ``{"shape", "color", "size", "direction"}``.

    Case, repeated whitespace and a final period are tolerated; anything else the templates cannot produce (unknown
    words, a missing background, the background colour on an object) raises ValueError.
    """
    if not isinstance(text, str):
        raise ValueError(f"A caption must be a string, got {type(text).__name__}.")
    normalized = " ".join(text.lower().replace(".", " . ").split()).removesuffix(" .")
    match = _CAPTION_RE.fullmatch(normalized)
    if match is None:
        raise ValueError(
            f"Cannot parse {text!r} as a Shapes caption; expected e.g. 'a small red circle moving left on a blue "
            "background' or 'a large green square standing still and a small white diamond moving up on a black "
            "background'."
        )
    g = match.groups()

    def obj(size, color, shape, direction):
        return {"shape": shape, "color": color, "size": size, "direction": direction or "still"}

    parsed = {**obj(*g[0:4]), "background": g[8], "second": obj(*g[4:8]) if g[4] is not None else None}
    colors = [parsed["color"]] + ([parsed["second"]["color"]] if parsed["second"] else [])
    if parsed["background"] in colors or len(set(colors)) != len(colors):
        raise ValueError(f"Caption {text!r} gives two things the same colour; the Shapes world never does.")
    return parsed


def shapes_vocabulary() -> list[str]:
    """Every word a caption can contain, in a fixed order (for word-level tokenizers)."""
    return ["a", "and", "on", "background", "moving", "standing", *SIZES, *COLORS, *SHAPES, *DIRECTIONS]


# ---------------------------------------------------------------------------------------------------- sampling


def is_heldout(scene: ShapeScene) -> bool:
    """Whether any object of ``scene`` forms a pair listed in :data:`HELDOUT_COMBINATIONS`."""
    return any(
        (o.shape, o.color) in HELDOUT_COMBINATIONS["shape_color"]
        or (o.color, scene.background) in HELDOUT_COMBINATIONS["color_background"]
        for o in scene.objects
    )


def _pick(rng: np.random.Generator, options) -> str:
    options = list(options)
    return options[int(rng.integers(len(options)))]


def _sample_motion(rng: np.random.Generator, size: str, direction: str) -> tuple[float, tuple[float, float]]:
    """A speed and a start position whose whole path (object included) stays ``MARGIN`` inside a square frame."""
    r = SIZE_RADIUS[size]
    speed = 0.0 if direction == "still" else float(rng.uniform(*SPEED_RANGE))
    dx, dy = _DELTAS[direction]
    lo, hi = r + MARGIN, 1.0 - r - MARGIN
    # A positive delta needs room after the start, a negative one before it.
    x = rng.uniform(lo + speed * (dx < 0), hi - speed * (dx > 0))
    y = rng.uniform(lo + speed * (dy < 0), hi - speed * (dy > 0))
    return speed, (float(x), float(y))


def _swept_box(o: ShapeObject) -> tuple[float, float, float, float]:
    r = SIZE_RADIUS[o.size]
    dx, dy = _DELTAS[o.direction]
    (x0, y0), (x1, y1) = o.start, (o.start[0] + dx * o.speed, o.start[1] + dy * o.speed)
    return min(x0, x1) - r, min(y0, y1) - r, max(x0, x1) + r, max(y0, y1) + r


def _paths_disjoint(a: ShapeObject, b: ShapeObject) -> bool:
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = _swept_box(a), _swept_box(b)
    return ax1 + MARGIN <= bx0 or bx1 + MARGIN <= ax0 or ay1 + MARGIN <= by0 or by1 + MARGIN <= ay0


def _sample_object(rng: np.random.Generator, color: str, shape=None, size=None, direction=None) -> ShapeObject:
    shape = shape or _pick(rng, SHAPES)
    size = size or _pick(rng, SIZES)
    direction = direction or _pick(rng, DIRECTIONS)
    speed, start = _sample_motion(rng, size, direction)
    return ShapeObject(shape, color, size, direction, speed, start)


def _place_second(rng: np.random.Generator, first: ShapeObject, attrs: dict[str, str] | None = None, tries: int = 100):
    """Sample the second object's attributes (those not given) and motion until its path misses the first's."""
    attrs = attrs or {}
    for _ in range(tries):
        color = attrs.get("color") or _pick(rng, [c for c in COLORS if c not in (first.color, attrs.get("background"))])
        second = _sample_object(rng, color, attrs.get("shape"), attrs.get("size"), attrs.get("direction"))
        if _paths_disjoint(first, second):
            return second
    return None


def sample_scene(rng: np.random.Generator, split: str = "train", two_objects_prob: float = 0.0) -> ShapeScene:
    """Draw a random scene from ``rng``: uniform attributes, then rejection so that ``"train"`` scenes never contain a
    held-out pair and ``"heldout"`` scenes always do. With probability ``two_objects_prob`` a second object with its own
    colour is added on a path that never overlaps the first one's."""
    if split not in ("train", "heldout"):
        raise ValueError(f"`split` must be 'train' or 'heldout', got {split!r}.")
    if not 0.0 <= two_objects_prob <= 1.0:
        raise ValueError(f"`two_objects_prob` must be in [0, 1], got {two_objects_prob!r}.")
    while True:
        background = _pick(rng, COLORS)
        first = _sample_object(rng, _pick(rng, [c for c in COLORS if c != background]))
        second = None
        if two_objects_prob > 0 and rng.random() < two_objects_prob:
            second = _place_second(rng, first, {"background": background})
            if second is None:
                continue
        scene = ShapeScene(first.shape, first.color, first.size, first.direction, background, first.speed, first.start,
                           second)
        if is_heldout(scene) == (split == "heldout"):
            return scene


def scene_from_caption(text: str, rng: np.random.Generator | None = None, tries: int = 1000) -> ShapeScene:
    """A scene that ``text`` describes, its unstated speed and positions drawn from ``rng`` (default: seed 0); used to
    render the ground truth of a benchmark prompt."""
    parsed = parse_caption(text)
    rng = rng if rng is not None else np.random.default_rng(0)
    for _ in range(tries):
        first = _sample_object(rng, parsed["color"], parsed["shape"], parsed["size"], parsed["direction"])
        second = None
        if parsed["second"] is not None:
            second = _place_second(rng, first, parsed["second"])
            if second is None:
                continue
        return ShapeScene(first.shape, first.color, first.size, first.direction, parsed["background"], first.speed,
                          first.start, second)
    raise ValueError(f"Could not place the two objects of {text!r} on non-overlapping paths in {tries} tries.")


def fixed_prompt_set(split: str = "seen", n: int = 32) -> list[str]:
    """``n`` distinct deterministic single-object benchmark captions: ``"seen"`` ones use only training combinations,
    ``"heldout"`` ones each contain a held-out pair. Prompt ``i`` moves ``DIRECTIONS[i % 5]`` and has size
    ``SIZES[(i // 5) % 2]``, so every block of ten is balanced in motion and size; a smaller ``n`` gives a prefix."""
    if split not in ("seen", "heldout"):
        raise ValueError(f"`split` must be 'seen' or 'heldout', got {split!r}.")
    if not isinstance(n, int) or not 1 <= n <= 200:
        raise ValueError(f"`n` must be an int in [1, 200], got {n!r}.")
    rng = np.random.default_rng(1000 if split == "seen" else 2000)
    prompts: list[str] = []
    while len(prompts) < n:
        i = len(prompts)
        scene = sample_scene(rng, "train" if split == "seen" else "heldout")
        if scene.direction == DIRECTIONS[i % 5] and scene.size == SIZES[(i // 5) % 2] and scene.caption not in prompts:
            prompts.append(scene.caption)
    return prompts


# ---------------------------------------------------------------------------------------------------- rendering


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of points (u, v) in the unit shape (box [-1, 1]^2, v downwards); u, v broadcast."""
    if shape == "circle":
        return (u * u) + (v * v) <= 1.0
    if shape == "square":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    return (v <= 1.0) & (2.0 * np.abs(u) <= v + 1.0)  # triangle, apex (0, -1), base v = 1


def _draw(video: np.ndarray, obj: ShapeObject) -> None:
    """Composite one anti-aliased object into ``video`` in place: coverage on a 4x4 supersampled grid of a window
    that follows the object, box-averaged to pixels."""
    num_frames, height, width, _ = video.shape
    r_px = SIZE_RADIUS[obj.size] * height
    dx, dy = _DELTAS[obj.direction]
    progress = np.linspace(0.0, 1.0, num_frames)
    cx = (obj.start[0] + dx * obj.speed * progress) * width
    cy = (obj.start[1] + dy * obj.speed * progress) * height
    win = int(np.ceil(2 * r_px)) + 3
    x0 = np.floor(cx - r_px).astype(int) - 1
    y0 = np.floor(cy - r_px).astype(int) - 1
    sub = (np.arange(win * _SUPERSAMPLE, dtype=np.float32) + 0.5) / _SUPERSAMPLE
    u = (x0[:, None] + sub[None] - cx[:, None]).astype(np.float32) / r_px  # [F, win*S]
    v = (y0[:, None] + sub[None] - cy[:, None]).astype(np.float32) / r_px
    inside = _inside(obj.shape, u[:, None, :], v[:, :, None]).view(np.uint8)  # [F, win*S, win*S]
    # Box-average in two uint8 sums (sub-rows, then sub-columns): several times faster than one mean over (2, 4).
    counts = inside.reshape(num_frames, win, _SUPERSAMPLE, win * _SUPERSAMPLE).sum(axis=2, dtype=np.uint8)
    counts = counts.reshape(num_frames, win, win, _SUPERSAMPLE).sum(axis=3, dtype=np.uint8)
    alpha = counts.astype(np.float32) / _SUPERSAMPLE**2
    color = np.asarray(COLORS[obj.color], dtype=np.float32)
    for f in range(num_frames):
        ya, yb, xa, xb = max(y0[f], 0), min(y0[f] + win, height), max(x0[f], 0), min(x0[f] + win, width)
        if ya >= yb or xa >= xb:
            continue
        a = alpha[f, ya - y0[f] : yb - y0[f], xa - x0[f] : xb - x0[f], None]
        region = video[f, ya:yb, xa:xb].astype(np.float32)
        video[f, ya:yb, xa:xb] = np.rint(region + (color - region) * a).astype(np.uint8)


def _check_video_size(num_frames, height, width) -> None:
    for value, name in ((num_frames, "num_frames"), (height, "height"), (width, "width")):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}.")


def render_scene(scene: ShapeScene, num_frames: int, height: int, width: int) -> np.ndarray:
    """Render ``scene`` as ``[num_frames, height, width, 3]`` uint8 RGB. Deterministic; pixels away from edges hold
    exact palette values and edges are anti-aliased."""
    _check_video_size(num_frames, height, width)
    frame = np.tile(np.asarray(COLORS[scene.background], dtype=np.uint8), (height, width, 1))
    video = np.broadcast_to(frame, (num_frames, height, width, 3)).copy()  # whole-frame copies: fastest fill
    for obj in scene.objects:
        _draw(video, obj)
    return video


# ---------------------------------------------------------------------------------------------------- dataset


_TO_UNIT_RANGE = (np.arange(256) / 127.5 - 1.0).astype(np.float32)


def to_unit_range(video: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (0..255) -> float32 in [-1, 1], on the tensor's device, bit for bit what the float items of
    :class:`ShapesVideoDataset` hold; a float tensor is returned as it is."""
    if video.dtype != torch.uint8:
        return video
    return torch.from_numpy(_TO_UNIT_RANGE).to(video.device)[video.int()]


def collate_fn(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack videos to ``[B, 3, F, H, W]``; captions and scene dicts stay lists (``second`` may be None, which the
    default collate cannot batch)."""
    return {
        "video": torch.stack([item["video"] for item in batch]),
        "caption": [item["caption"] for item in batch],
        "scene": [item["scene"] for item in batch],
    }


class ShapesVideoDataset(torch.utils.data.Dataset):
    """``num_samples`` Shapes clips rendered on the fly; item ``i`` depends only on ``(seed, i)`` and the arguments,
    so workers, epochs and machines see identical data. Use :func:`collate_fn` in the DataLoader. ``as_uint8``
    keeps the pixels in uint8, a quarter of the bytes for data-loader workers to hand over; :func:`to_unit_range`
    then makes the same float clip on the GPU."""

    collate_fn = staticmethod(collate_fn)

    def __init__(
        self,
        num_samples: int,
        num_frames: int = 49,
        height: int = 128,
        width: int = 128,
        seed: int = 0,
        split: str = "train",
        two_objects_prob: float = 0.0,
        as_uint8: bool = False,
    ):
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"`num_samples` must be a positive int, got {num_samples!r}.")
        if split not in ("train", "heldout"):
            raise ValueError(f"`split` must be 'train' or 'heldout', got {split!r}.")
        if not 0.0 <= two_objects_prob <= 1.0:
            raise ValueError(f"`two_objects_prob` must be in [0, 1], got {two_objects_prob!r}.")
        _check_video_size(num_frames, height, width)
        self.num_samples, self.num_frames, self.height, self.width = num_samples, num_frames, height, width
        self.seed, self.split, self.two_objects_prob = seed, split, two_objects_prob
        self.as_uint8 = as_uint8

    def __len__(self) -> int:
        return self.num_samples

    def scene(self, index: int) -> ShapeScene:
        """The scene of item ``index`` (without rendering it)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"Index {index} out of range for {self.num_samples} samples.")
        return sample_scene(np.random.default_rng([self.seed, index]), self.split, self.two_objects_prob)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``{"video": float [3, F, H, W] in [-1, 1] (``as_uint8``: uint8 0..255), "caption": str, "scene": dict}``."""
        scene = self.scene(index)
        # Channels-first copy in uint8, then a lookup table to [-1, 1]: several times faster than torch's permute/float.
        video = np.moveaxis(render_scene(scene, self.num_frames, self.height, self.width), 3, 0).copy()
        video = torch.from_numpy(video if self.as_uint8 else _TO_UNIT_RANGE[video])
        return {"video": video, "caption": scene.caption, "scene": scene.to_dict()}
