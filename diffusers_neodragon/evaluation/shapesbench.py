"""ShapesBench: an analytic evaluator of videos of the Shapes world (:mod:`diffusers_neodragon.data.shapes`).

Every attribute of a Shapes caption can be read back from the pixels, so a generated video is scored against its
prompt without any learned model (a small, honest stand-in for VBench):

* background: the most common nearest-palette colour over whole frames (an object covers at most 16% of one);
* object: pixels farther than half the smallest palette distance from the background give the object colour (nearest
  palette colour of the mean of their core, those nearest the median distance); a per-pixel coverage ``alpha`` is
  then the projection of each pixel on the background-to-object colour segment (0 for pixels far off that
  segment), and the object is the connected run of rows and columns around the peak of ``alpha > 0.5`` after a
  morphological opening; coverage away from that solid blob (noise specks, lines a few pixels thin) and in the
  ``MARGIN`` band along the frame border (which sampled objects never enter, and where convolutional decoders leave
  dark or smeared edges) is ignored;
* shape: nearest prototype of three scale-free cumulants of the ``alpha`` mass: the mean fourth cumulant of the x and
  y marginals and the mixed (x^2 y^2) fourth cumulant over area^2 (separate circle, square and diamond), and the
  third cumulant of the y marginal over area^1.5 (the triangle's apex). Cumulants of order >= 3 and the area are
  unchanged by a Gaussian blur, so a blurred diamond is still a diamond (a fill ratio drifts to the circle's);
* size: half the larger sub-pixel extent (sum over columns of the column's maximum ``alpha``) in fractions of the
  frame height, split at the geometric mean of the size classes;
* direction: net displacement of a least-squares line through the centroid path; "still" below ``STILL_THRESHOLD``.

Sub-scores in [0, 1]: ``cleanliness`` (fraction of pixels within ``CLEAN_TOLERANCE`` of a palette colour or of the
background-object segment, i.e. anti-aliasing), ``sharpness`` (edge width ``6 * sum g(1-g) / sum |grad g|`` of the
rescaled coverage ``g``: about 1 px for a box-filtered edge, 3.4 * sigma for a Gaussian blur), ``identity`` (the same
shape and colour in every frame, times a steady area) and ``smoothness`` (small second differences of the centroid path,
times a steady background colour).

Aggregate, 0-100: ``score = 0.5 * semantic + 0.25 * quality + 0.25 * temporal``. ``semantic`` is half partial
credit (the fraction of the five attributes colour, shape, size, direction, background that are right) and half
prompt adherence (all five right at once), so a perfectly rendered video of a red circle for a green-circle prompt
scores 70, not 90; ``quality`` is the mean of cleanliness and sharpness and ``temporal`` the mean of identity and
smoothness. VBench weights its quality dimensions 4:1 over semantics; here semantics get half because a clean,
smooth video of the wrong object is worthless and the world is simple enough that quality is easy.

Every decision is made on soft, generated-looking video too: the tests check that colour, shape, size, direction and
background survive Gaussian blur, pixel noise, JPEG compression, a colour cast, darkened borders and 2x
down-and-up-sampling at 128x128, while the quality and temporal sub-scores register the damage.

Supported input: at least ``MIN_FRAMES`` frames of at least ``MIN_SIZE`` pixels a side; ground truth scores
>= 98 from 64x64x9 up (tests check 64x64x9 and 128x128x49). Two-object prompts are not supported (ValueError): they
stay out of :func:`diffusers_neodragon.data.shapes.fixed_prompt_set`, which is what the benchmark uses.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..data.shapes import COLORS, MARGIN, SHAPES, SIZE_RADIUS, SIZES, parse_caption


MIN_FRAMES = 3
MIN_SIZE = 48
ATTRIBUTES = ("color", "shape", "size", "direction", "background")
WEIGHTS = {"semantic": 0.5, "quality": 0.25, "temporal": 0.25}

_PALETTE_NAMES = list(COLORS)
_PALETTE = np.asarray([COLORS[c] for c in _PALETTE_NAMES], dtype=np.float32)
_MIN_PALETTE_DISTANCE = min(
    float(np.linalg.norm(a - b)) for i, a in enumerate(_PALETTE) for b in _PALETTE[i + 1 :]
)
# A pixel is an object candidate when it is past the midpoint between the background and the nearest other colour.
OBJECT_THRESHOLD = 0.5 * _MIN_PALETTE_DISTANCE
# Pixels farther than this (RGB, 0-255) from the background-object segment get no coverage.
LINE_TOLERANCE = 60.0
CLEAN_TOLERANCE = 32.0
# An object covers at least a quarter of the smallest shape (small triangle, 0.02 H^2) and at most half the frame.
MIN_OBJECT_AREA = 0.005
MAX_OBJECT_AREA = 0.5
MIN_FILL = 0.3  # below every shape's 0.5: a sparse blob (noise) is no object
STILL_THRESHOLD = 0.1  # fraction of the frame; sampled motions travel 0.25-0.45
SIZE_THRESHOLD = float(np.sqrt(SIZE_RADIUS["small"] * SIZE_RADIUS["large"]))
# Shape features (100 k4 / A^2, 100 k22 / A^2, 20 k3_y / A^1.5) of the unit shapes, analytic (e.g. circle:
# k4 = -1/16, k22 = -1/48, A = pi; triangle: k4 = -5/216, k22 = -1/135, k3_y = -8/135, A = 2). Prototypes are
# >= 0.29 apart; anti-aliased renders of 6 px and more fall within 0.01 of theirs.
SHAPE_PROTOTYPES = {
    "circle": (-100 / (16 * np.pi**2), -100 / (48 * np.pi**2), 0.0),
    "square": (-100 / 120, 0.0, 0.0),
    "triangle": (-125 / 216, -5 / 27, -16 / (27 * np.sqrt(2))),
    "diamond": (-100 / 240, -100 / 240, 0.0),
}
# Edge width (px) scored 1 at or below SHARP_EDGE and 0 at or above BLURRED_EDGE.
SHARP_EDGE, BLURRED_EDGE = 1.5, 4.0
PATH_JERK_SCALE = 0.02  # rms second difference of the centroid (frame fractions) that scores 1/2
BACKGROUND_FLICKER_SCALE = 8.0  # mean frame-to-frame change of the background colour (RGB) that scores exp(-1)
AREA_CV_LIMIT = 0.25  # coefficient of variation of the object area that scores 0


def _as_planar_video(frames) -> np.ndarray:
    """``[3, F, H, W]`` float32 in 0-255 from ``[F, H, W, 3]`` uint8 / float-in-[0, 1] arrays (or CPU tensors) or a
    list of PIL images. Channel planes make every per-pixel colour computation a contiguous vector operation."""
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise ValueError("`frames` is an empty list.")
        frames = np.stack([np.asarray(f.convert("RGB") if hasattr(f, "convert") else f) for f in frames])
    video = np.asarray(frames)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"`frames` must be [F, H, W, 3] RGB, got shape {video.shape}.")
    num_frames, height, width, _ = video.shape
    if num_frames < MIN_FRAMES or min(height, width) < MIN_SIZE:
        raise ValueError(
            f"ShapesBench needs >= {MIN_FRAMES} frames of >= {MIN_SIZE}x{MIN_SIZE} pixels, got {video.shape[:3]}."
        )
    planar = np.moveaxis(video, 3, 0).copy()
    if planar.dtype == np.uint8:
        return planar.astype(np.float32)
    if not np.issubdtype(planar.dtype, np.floating):
        raise ValueError(f"`frames` must be uint8 or float in [0, 1], got dtype {video.dtype}.")
    if not np.isfinite(planar).all() or planar.min() < -0.01 or planar.max() > 1.01:
        raise ValueError("Float `frames` must be finite and in [0, 1].")
    return np.clip(planar.astype(np.float32), 0.0, 1.0) * 255.0


def _palette_distance2(x: np.ndarray) -> np.ndarray:
    """Squared RGB distance of every pixel of planar ``x`` ``[3, ...]`` to every palette colour, ``[K, ...]``."""
    flat = x.reshape(3, -1)
    d2 = (_PALETTE * _PALETTE).sum(1)[:, None] - 2.0 * (_PALETTE @ flat) + (flat * flat).sum(0)
    return np.maximum(d2, 0.0).reshape(len(_PALETTE), *x.shape[1:])


def _nearest_palette(x: np.ndarray, exclude: int | None = None) -> np.ndarray:
    """Index of the nearest palette colour of every pixel of planar ``x`` ``[3, ...]`` (never ``exclude``)."""
    d2 = _palette_distance2(x)
    if exclude is not None:
        d2[exclude] = np.inf
    return d2.argmin(0)


def _project(x: np.ndarray, a: np.ndarray, b: np.ndarray, segment: bool = False):
    """For planar pixels ``x`` ``[3, ...]`` and colours ``a``, ``b`` (broadcastable ``[3, ...]``): the position ``t`` of
    each pixel's projection on the line a->b (0 at a, 1 at b, unclipped) and its squared distance to that line (or,
    with ``segment``, to the segment a-b). Accumulated plane by plane, in place, to keep temporaries few."""
    v = b - a
    vv = (v * v).sum(0)
    dot, dd = np.zeros(x.shape[1:], dtype=np.float32), np.zeros(x.shape[1:], dtype=np.float32)
    for c in range(3):
        d = x[c] - a[c]
        dot += d * v[c]
        d *= d
        dd += d
    t = dot / vv
    dot *= t
    dd -= dot  # |d|^2 - (d.v)^2 / |v|^2
    if segment:
        dd += (t - np.clip(t, 0.0, 1.0)) ** 2 * vv
    return t, np.maximum(dd, 0.0, out=dd)


def _run_around_peak(profile: np.ndarray) -> slice:
    """The maximal run of non-zero entries of ``profile`` that contains its maximum."""
    peak = int(profile.argmax())
    empty = np.flatnonzero(profile == 0)
    start = int(empty[empty < peak].max()) + 1 if (empty < peak).any() else 0
    stop = int(empty[empty > peak].min()) if (empty > peak).any() else len(profile)
    return slice(start, stop)


def _classify_shape(features: Sequence[float]) -> str:
    return min(SHAPE_PROTOTYPES, key=lambda s: float(np.sum((np.asarray(features) - SHAPE_PROTOTYPES[s]) ** 2)))


def _box_count(mask: np.ndarray, r: int) -> np.ndarray:
    """Number of true pixels of ``mask`` ``[F, H, W]`` in each ``(2r+1) x (2r+1)`` window (zero outside the frame)."""
    k = 2 * r + 1
    c = np.pad(mask, ((0, 0), (r + 1, r), (r + 1, r))).cumsum(1, dtype=np.int32).cumsum(2)
    return c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    return _box_count(mask, r) > 0


def _open(mask: np.ndarray, r: int) -> np.ndarray:
    """Morphological opening by a ``(2r+1)``-square: removes specks and lines thinner than ``2r+1`` pixels (noise,
    the darkened or smeared frame borders of convolutional decoders) and keeps every solid blob as it was."""
    return _dilate(_box_count(mask, r) == (2 * r + 1) ** 2, r)


def _frame_object(coverage: np.ndarray, hard: np.ndarray, min_area: float, max_area: float, pad: int):
    """Measurements of the object in one frame's coverage map (unclipped), or None when there is no object-sized,
    solid blob. ``hard`` is the opened ``coverage > 0.5`` mask (and ``coverage`` is zero away from it). Moments use
    the unclipped coverage, whose zero-mean pixel noise averages out; clipping it to [0, 1] first would add a
    positive pedestal over the whole window."""
    alpha = np.clip(coverage, 0.0, 1.0)
    if not min_area <= hard.sum() <= max_area:
        return None
    rows, cols = _run_around_peak(hard.sum(1)), _run_around_peak(hard.sum(0))
    height, width = alpha.shape
    # Padding catches the partially covered rim (anti-aliasing or blur) that carries part of the mass.
    r0, r1 = max(rows.start - pad, 0), min(rows.stop + pad, height)
    c0, c1 = max(cols.start - pad, 0), min(cols.stop + pad, width)
    a = alpha[r0:r1, c0:c1]
    area = float(a.sum())
    extent_x, extent_y = float(a.max(0).sum()), float(a.max(1).sum())
    fill = area / max(extent_x * extent_y, 1e-6)
    if not (min_area <= area <= max_area and fill >= MIN_FILL):
        return None
    c = coverage[r0:r1, c0:c1]
    mass = float(c.sum())
    if mass <= 0:  # soft, generated pixels can give a net-negative signed coverage: no measurable object
        return None
    row_mass, col_mass = c.sum(1), c.sum(0)
    ys, xs = np.arange(r0, r1) + 0.5, np.arange(c0, c1) + 0.5
    cy, cx = float(row_mass @ ys) / mass, float(col_mass @ xs) / mass
    y, x = ys - cy, xs - cx
    var_x, var_y = float(col_mass @ x**2) / mass, float(row_mass @ y**2) / mass
    k4 = (float(col_mass @ x**4) / mass - 3 * var_x**2 + float(row_mass @ y**4) / mass - 3 * var_y**2) / 2
    k22 = float(y**2 @ c @ x**2) / mass - var_x * var_y - 2 * (float(y @ c @ x) / mass) ** 2
    k3_y = float(row_mass @ y**3) / mass
    return {
        "area": area, "cx": cx, "cy": cy, "radius": max(extent_x, extent_y) / 2,
        "features": (100 * k4 / mass**2, 100 * k22 / mass**2, 20 * k3_y / mass**1.5),
        "box": (r0, r1, c0, c1),
    }


def _background(x: np.ndarray):
    """Palette index of the background, each frame's own most common colour, and each frame's mean background-pixel
    colour ``[3, F]`` (to follow flicker).

    The background is the most common nearest-palette colour over whole frames (on a grid of about 64x64 samples):
    an object covers at most 16% of a frame, and unlike a border ring the whole frame is not fooled by the darkened
    or smeared borders that convolutional decoders often produce."""
    _, num_frames, height, width = x.shape
    step = max(1, min(height, width) // 64)
    sample = x[:, :, ::step, ::step].reshape(3, num_frames, -1)  # [3, F, N]
    labels = _nearest_palette(sample)  # [F, N]
    counts = _count_per_frame(labels, np.ones(labels.shape, dtype=bool))
    bg_idx = int(counts.sum(0).argmax())
    # Per-frame median (not mean) of the background pixels: the anti-aliased rim of the object, which is nearer the
    # background colour and moves with the object, would otherwise read as background flicker.
    background_pixels = np.where(labels == bg_idx, sample, np.nan)
    present = (labels == bg_idx).any(1)
    colors = np.full((3, num_frames), np.nan, dtype=np.float32)
    colors[:, present] = np.nanmedian(background_pixels[:, present], axis=2)
    colors[:, ~present] = _PALETTE[bg_idx][:, None]
    return bg_idx, counts.argmax(1), colors


def _count_per_frame(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``[F, K]`` counts of each palette label among the masked pixels of each frame (``labels`` holds the labels of
    the masked pixels of ``mask`` ``[F, ...]`` in order, or is the full label map)."""
    num_frames = mask.shape[0]
    frame = np.nonzero(mask.reshape(num_frames, -1))[0]
    labels = labels[mask] if labels.shape == mask.shape else labels
    return np.bincount(frame * len(_PALETTE) + labels, minlength=num_frames * len(_PALETTE)).reshape(num_frames, -1)


def _opening_radius(height: int, width: int) -> int:
    """1 px per 48 px of frame (a 3x3 opening at 48-95 px, 5x5 at 96-143 px): lines up to 2 px thin (4 px at 128x128)
    go, while a (2r+1)-square still fits inside the smallest object, a small triangle (inscribed square 0.1 H)."""
    return max(1, min(height, width) // 48)


def _object_coverage(x: np.ndarray, bg_idx: int, bg_colors: np.ndarray, min_area: float):
    """Palette index of the object colour (None without candidates), each frame's (-1: none) and the unclipped
    coverage ``[F, H, W]``: the position of each pixel along the background -> object colour line, 0 far off it.

    Colours are means over the core of the candidate pixels far from the background, those within 90% of their
    median distance (anti-aliasing and blur pull the rim towards the background), over the clip and per frame."""
    num_frames = x.shape[1]
    bg_planar = bg_colors[:, :, None, None]
    distance2 = sum((x[c] - bg_planar[c]) ** 2 for c in range(3))  # [F, H, W]
    candidates = _open(distance2 > OBJECT_THRESHOLD**2, _opening_radius(x.shape[2], x.shape[3]))
    if candidates.sum() < min_area:
        return None, np.full(num_frames, -1), np.zeros(x.shape[1:], dtype=np.float32)
    core = candidates & (distance2 >= 0.81 * np.median(distance2[candidates]))
    core_count = core.sum((1, 2))
    core_sum = np.stack([(x[c] * core).sum((1, 2)) for c in range(3)])  # [3, F]
    obj_color = (core_sum.sum(1) / core_count.sum()).astype(np.float32)
    obj_idx = int(_nearest_palette(obj_color, exclude=bg_idx))
    frame_colors = _nearest_palette(core_sum / np.maximum(core_count, 1), exclude=bg_idx)
    frame_obj_idx = np.where(candidates.sum((1, 2)) >= min_area, frame_colors, -1)
    t, off2 = _project(x, bg_planar, obj_color[:, None, None, None])
    return obj_idx, frame_obj_idx, np.where(off2 < LINE_TOLERANCE**2, t, 0.0).astype(np.float32)


def _cleanliness(x: np.ndarray, bg_idx: int, obj_idx: int | None) -> float:
    """Fraction of pixels within ``CLEAN_TOLERANCE`` of the palette background-object segment or of any palette
    colour. Most pixels lie on the segment; only the others are compared with the whole palette."""
    bg_end = _PALETTE[bg_idx][:, None, None, None]
    if obj_idx is None:
        clean = ((x - bg_end) ** 2).sum(0) <= CLEAN_TOLERANCE**2
    else:
        clean = _project(x, bg_end, _PALETTE[obj_idx][:, None, None, None], segment=True)[1] <= CLEAN_TOLERANCE**2
    clean[~clean] = _palette_distance2(x[:, ~clean]).min(0) <= CLEAN_TOLERANCE**2
    return float(clean.mean())


def _edge_width(coverage: np.ndarray, per_frame: list[dict[str, Any] | None]) -> float | None:
    """Edge width in pixels around the found objects, ``6 sum g(1-g) / sum |grad g|`` of the rescaled coverage ``g``:
    by the coarea formula the total variation is the perimeter whatever the blur, while ``sum g(1-g)`` grows with
    the width of the ramp (a box-filtered edge: about 1 px; a Gaussian blur: about 3.4 sigma)."""
    transition, total_variation = 0.0, 0.0
    for f, m in enumerate(per_frame):
        if m is not None:
            r0, r1, c0, c1 = m["box"]
            g = np.clip((coverage[f, r0:r1, c0:c1] - 0.1) / 0.8, 0.0, 1.0)
            gy, gx = np.gradient(g)
            transition += float((g * (1.0 - g)).sum())
            total_variation += float(np.sqrt(gx * gx + gy * gy).sum())
    return 6.0 * transition / total_variation if total_variation > 1e-6 else None


def evaluate_video(frames, prompt: str) -> dict[str, Any]:
    """Score one video against a single-object Shapes ``prompt``.

    Args:
        frames: ``[F, H, W, 3]`` uint8 or float in [0, 1] (numpy or CPU tensor), or a list of PIL images.
        prompt: a caption the Shapes world can produce (see :func:`~diffusers_neodragon.data.shapes.parse_caption`).

    Returns:
        ``{"prompt", "expected", "predicted", "correct"}`` (per attribute of :data:`ATTRIBUTES`; a prediction is None
        when no object is found), ``"subscores"`` (cleanliness, sharpness, identity, smoothness in [0, 1]),
        ``"measurements"`` (raw features; None where undefined, e.g. without an object) and ``"semantic"``,
        ``"quality"``, ``"temporal"``, ``"score"`` in 0-100.
    """
    parsed = parse_caption(prompt)
    if parsed["second"] is not None:
        raise ValueError(f"ShapesBench scores single-object prompts only, got two objects in {prompt!r}.")
    expected = {k: parsed[k] for k in ATTRIBUTES}
    x = _as_planar_video(frames)
    _, num_frames, height, width = x.shape

    bg_idx, frame_bg_idx, bg_colors = _background(x)
    min_area, max_area = MIN_OBJECT_AREA * height * height, MAX_OBJECT_AREA * height * width
    obj_idx, frame_obj_idx, coverage = _object_coverage(x, bg_idx, bg_colors, min_area)
    band = int(round(MARGIN * min(height, width)))  # objects keep MARGIN inside: what colours the border is an artifact
    if band:
        coverage[:, :band], coverage[:, -band:], coverage[:, :, :band], coverage[:, :, -band:] = 0, 0, 0, 0
    pad = max(4, height // 16)
    hard = _open(coverage > 0.5, _opening_radius(height, width))
    coverage *= _dilate(hard, pad)  # what is not near a solid blob (specks, thin lines) is no object
    per_frame = [_frame_object(coverage[f], hard[f], min_area, max_area, pad) for f in range(num_frames)]
    found = [m for m in per_frame if m is not None]

    # Semantics.
    predicted: dict[str, str | None] = {"background": _PALETTE_NAMES[bg_idx], "color": None, "shape": None,
                                        "size": None, "direction": None}
    measurements: dict[str, Any] = {"present_fraction": len(found) / num_frames, "shape_features": None,
                                    "radius": None, "displacement": None}
    frame_shapes = [None] * num_frames
    if found:
        features = np.median([m["features"] for m in found], axis=0)
        radius = float(np.median([m["radius"] for m in found])) / height
        predicted.update(color=_PALETTE_NAMES[obj_idx], shape=_classify_shape(features),
                         size=SIZES[int(radius > SIZE_THRESHOLD)])
        frame_shapes = [_classify_shape(m["features"]) if m else None for m in per_frame]
        measurements.update(shape_features=[float(f) for f in features], radius=radius)
    path = np.array([[m["cx"] / width, m["cy"] / height] for m in found]).reshape(-1, 2)
    if len(found) >= 2:
        times = np.array([f for f, m in enumerate(per_frame) if m is not None]) / (num_frames - 1)
        displacement = np.polyfit(times, path, 1)[0]  # slope per clip = net displacement
        axis = int(np.abs(displacement).argmax())
        if np.abs(displacement).max() < STILL_THRESHOLD:
            predicted["direction"] = "still"
        else:
            predicted["direction"] = (("left", "right"), ("up", "down"))[axis][int(displacement[axis] > 0)]
        measurements["displacement"] = [float(d) for d in displacement]
    correct = {k: predicted[k] == expected[k] for k in ATTRIBUTES}

    # Quality; undefined measurements (no object, too few frames with one) score 0.
    cleanliness = _cleanliness(x, bg_idx, obj_idx)
    edge_width = _edge_width(coverage, per_frame)
    sharpness = 0.0 if edge_width is None else float(
        np.clip((BLURRED_EDGE - edge_width) / (BLURRED_EDGE - SHARP_EDGE), 0.0, 1.0))

    # Temporal.
    same = [m is not None and s == predicted["shape"] and o == obj_idx
            for m, s, o in zip(per_frame, frame_shapes, frame_obj_idx)]
    areas = np.array([m["area"] for m in found])
    area_cv = float(areas.std() / areas.mean()) if len(found) >= 2 else None
    steady_area = 0.0 if area_cv is None else float(np.clip(1.0 - area_cv / AREA_CV_LIMIT, 0.0, 1.0))
    identity = float(np.mean(same)) * steady_area
    jerk = float(np.sqrt((np.diff(path, n=2, axis=0) ** 2).sum(1).mean())) if len(found) >= 3 else None
    smooth_path = 0.0 if jerk is None else 1.0 / (1.0 + (jerk / PATH_JERK_SCALE) ** 2)
    flicker = float(np.linalg.norm(np.diff(bg_colors, axis=1), axis=0).mean())
    background_consistency = float((frame_bg_idx == bg_idx).mean())
    smoothness = smooth_path * background_consistency * float(np.exp(-flicker / BACKGROUND_FLICKER_SCALE))
    measurements.update(
        edge_width_px=edge_width, area_cv=area_cv, path_jerk=jerk, background_flicker=flicker,
        background_consistency=background_consistency,
    )

    semantic = 100.0 * (0.5 * float(np.mean([correct[k] for k in ATTRIBUTES])) + 0.5 * float(all(correct.values())))
    quality = 50.0 * (cleanliness + sharpness)
    temporal = 50.0 * (identity + smoothness)
    return {
        "prompt": prompt,
        "expected": expected,
        "predicted": predicted,
        "correct": correct,
        "subscores": {"cleanliness": cleanliness, "sharpness": sharpness, "identity": identity,
                      "smoothness": smoothness},
        "measurements": measurements,
        "semantic": semantic,
        "quality": quality,
        "temporal": temporal,
        "score": WEIGHTS["semantic"] * semantic + WEIGHTS["quality"] * quality + WEIGHTS["temporal"] * temporal,
    }


def summarize(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Means over a list of :func:`evaluate_video` results: per-attribute accuracy (and ``all_correct``, every
    attribute right at once) in [0, 1], sub-scores in [0, 1], and ``semantic`` / ``quality`` / ``temporal`` /
    ``score`` in 0-100."""
    if not results:
        raise ValueError("`results` is empty.")
    accuracy = {k: float(np.mean([r["correct"][k] for r in results])) for k in ATTRIBUTES}
    accuracy["all_correct"] = float(np.mean([all(r["correct"].values()) for r in results]))
    return {
        "n": len(results),
        "accuracy": accuracy,
        "subscores": {k: float(np.mean([r["subscores"][k] for r in results])) for k in results[0]["subscores"]},
        **{k: float(np.mean([r[k] for r in results])) for k in ("semantic", "quality", "temporal", "score")},
    }


def format_shape_confusion(results: Sequence[Mapping[str, Any]]) -> str:
    """How the shapes of :func:`evaluate_video` results were judged, one row per prompted size and shape, one column
    per verdict (``none``: no object found). Shows at a glance which shapes a model or VAE loses, and to what."""
    if not results:
        raise ValueError("`results` is empty.")
    verdicts = [*SHAPES, "none"]
    rows = {f"{size} {shape}": dict.fromkeys(verdicts, 0) for size in SIZES for shape in SHAPES}
    for r in results:
        rows[f"{r['expected']['size']} {r['expected']['shape']}"][r["predicted"]["shape"] or "none"] += 1
    label_width = max(len(label) for label in rows)
    lines = [" " * label_width + "  " + "  ".join(v.rjust(8) for v in verdicts)]
    lines += [label.ljust(label_width) + "  " + "  ".join(f"{counts[v]:8d}" for v in verdicts)
              for label, counts in rows.items() if any(counts.values())]
    return "\n".join(lines)


def format_table(summary: Mapping[str, Any] | Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table of one :func:`summarize` output, or of several side by side (``{"seen": s1, "heldout": s2}``);
    accuracies and sub-scores in percent."""
    columns = {"": summary} if "accuracy" in summary else dict(summary)
    if not columns:
        raise ValueError("Nothing to format: `summary` is empty.")
    rows: list[tuple] = [("prompts", [f"{s['n']:d}" for s in columns.values()])]
    for k in (*ATTRIBUTES, "all_correct"):
        rows.append((f"{k} acc", [f"{100 * s['accuracy'][k]:.1f}" for s in columns.values()]))
    for k in next(iter(columns.values()))["subscores"]:
        rows.append((k, [f"{100 * s['subscores'][k]:.1f}" for s in columns.values()]))
    for k in ("semantic", "quality", "temporal", "score"):
        rows.append(("total" if k == "score" else k, [f"{s[k]:.1f}" for s in columns.values()]))
    label_width = max(len(label) for label, _ in rows)
    widths = [max(len(name), *(len(values[i]) for _, values in rows)) for i, name in enumerate(columns)]
    lines = []
    if any(columns):
        lines.append(" " * label_width + "  " + "  ".join(name.rjust(w) for name, w in zip(columns, widths)))
    for label, values in rows:
        lines.append(label.ljust(label_width) + "  " + "  ".join(v.rjust(w) for v, w in zip(values, widths)))
    return "\n".join(lines)
