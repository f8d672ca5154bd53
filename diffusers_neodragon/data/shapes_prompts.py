"""Rewriting what a user types into the one caption form a Shapes model was trained on.

A Shapes model has only seen :attr:`~diffusers_neodragon.data.shapes.ShapeScene.caption` strings, always in one
form: ``a <size> <colour> <shape> moving <direction> | standing still [and a ...] on a <colour> background``. Its text
encoders are fixed functions of the word ids, so "The red circle moves to the left, on a blue background." reaches
the transformer as a different, never-seen sequence (and "the", "to" as unknown tokens) although it means the same
scene. :func:`normalize_shapes_prompt` reads the scene's attributes out of a free phrasing and writes them back in
the training form; a training caption comes back unchanged, so scores on canonical prompts do not move.

What a caption never lacks is filled in: an object without a size word is ``large`` (the size of the README's
example, and the one the model draws best: small diamonds turn into circles), one without a motion is ``standing
still``. A missing colour, shape or background has no sensible default and is left out. Words that carry no meaning
in the Shapes world (articles, prepositions, motion verbs, punctuation, case) are dropped silently; every other word
that is not understood, or that contradicts an attribute already given, is left out and returned in ``ignored`` so
that the caller can warn about it.
"""

import re
from dataclasses import dataclass

from .shapes import COLORS, SHAPES, SIZES


DEFAULT_SIZE = "large"

_SIZE_WORDS = {**{s: s for s in SIZES}, "big": "large", "huge": "large", "little": "small", "tiny": "small"}
_COLOR_WORDS = {c: c for c in COLORS}
_SHAPE_WORDS = {**{s: s for s in SHAPES}, "rhombus": "diamond", "disc": "circle", "disk": "circle"}
_DIRECTION_WORDS = {f"{d}{suffix}": d for d in ("left", "right", "up", "down") for suffix in ("", "ward", "wards")}
_MOTION_VERBS = {
    "moving", "moves", "move", "going", "goes", "go", "heading", "heads", "travelling", "traveling", "travels",
    "sliding", "slides", "gliding", "glides", "drifting", "drifts", "flying", "flies",
}
_STILL_WORDS = {"still", "stationary", "static", "motionless", "unmoving", "standing", "stands", "staying", "stays",
                "resting", "rests", "sitting", "sits"}
_BACKGROUND_WORDS = {"background", "backdrop"}
# No meaning of their own in the Shapes world: the structure is read from the attribute words around them.
_FILLERS = {"a", "an", "the", "and", "with", "while", "plus", "on", "over", "against", "in", "front", "of", "to",
            "towards", "toward", "is", "are", "that", "which", "it", "colored", "coloured", "shape", "object"}


@dataclass(frozen=True)
class NormalizedPrompt:
    """``text``: the prompt in the training captions' form; ``ignored``: the prompt's words that were left out
    because they are not understood or contradict an attribute given before (in order of appearance, no repeats)."""

    text: str
    ignored: tuple[str, ...] = ()


def _words(prompt: str) -> list[str]:
    # Case, punctuation and hyphens ("left-moving") only separate words.
    return re.findall(r"[^\W_]+", prompt.lower())


class _Object:
    def __init__(self):
        self.size = self.color = self.shape = self.direction = None
        self.verbs: list[str] = []

    def empty(self) -> bool:
        # Without a colour or a shape there is nothing to draw ("a purple elephant moving left").
        return not (self.color or self.shape)

    def phrase(self) -> str:
        motion = "standing still" if self.direction in (None, "still") else f"moving {self.direction}"
        return " ".join(w for w in ("a", self.size or DEFAULT_SIZE, self.color, self.shape, motion) if w)


def normalize_shapes_prompt(prompt: str) -> NormalizedPrompt:
    """``prompt`` rewritten to the Shapes captions' form, with the words that were left out.

    >>> normalize_shapes_prompt("The red circle moves to the left, on a blue background.").text
    'a large red circle moving left on a blue background'
    >>> normalize_shapes_prompt("a small red circle moving left on a blue background").text  # a caption: unchanged
    'a small red circle moving left on a blue background'

    Attributes are read in any order: size and colour before the shape in either order, the motion after or before
    them, the background anywhere (``on a blue background``, ``blue backdrop``, ``background: blue``). An object ends
    when a size, colour or shape word follows its shape, which starts the next (``and`` / ``with`` between them are
    optional). Motions: ``moving left``, ``moves to the left``, ``heading towards the left``, ``leftwards``, ``left``;
    ``standing still``, ``still``, ``stationary``, ``not moving``. Synonyms: big/huge = large, little/tiny = small,
    rhombus = diamond, disc/disk = circle. The empty prompt (the unconditional caption) stays empty.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"A prompt must be a string, got {type(prompt).__name__}.")
    objects = [_Object()]
    background = None
    background_pending = False  # "background" seen before its colour ("background: blue")
    ignored: list[str] = []
    words = _words(prompt)
    negated = False

    def current() -> _Object:
        return objects[-1]

    def set_attribute(name: str, value: str, word: str):
        obj = current()
        if name in ("size", "color", "shape") and obj.shape is not None:
            objects.append(_Object())  # an attribute after the shape starts the next object
            obj = current()
        if getattr(obj, name) is None:
            setattr(obj, name, value)
        elif getattr(obj, name) != value:
            ignored.append(word)

    for i, word in enumerate(words):
        following = words[i + 1] if i + 1 < len(words) else None
        if word in _COLOR_WORDS and (following in _BACKGROUND_WORDS or background_pending):
            if background is None:
                background = word
            elif background != word:
                ignored.append(word)
            background_pending = False
        elif word in _BACKGROUND_WORDS:
            previous = words[i - 1] if i else None
            if previous not in _COLOR_WORDS and background is None:
                background_pending = True
        elif word in _SIZE_WORDS:
            set_attribute("size", _SIZE_WORDS[word], word)
        elif word in _COLOR_WORDS:
            set_attribute("color", word, word)
        elif word in _SHAPE_WORDS:
            set_attribute("shape", _SHAPE_WORDS[word], word)
        elif word in _DIRECTION_WORDS or word in _STILL_WORDS:
            direction = "still" if word in _STILL_WORDS else _DIRECTION_WORDS[word]
            if word in _STILL_WORDS and following == "still":
                continue  # "standing still": the next word says it
            set_attribute("direction", direction, word)
        elif word == "not" and following in _MOTION_VERBS:
            negated = True
        elif word in _MOTION_VERBS:
            if negated:
                set_attribute("direction", "still", word)
                negated = False
            else:
                current().verbs.append(word)
        elif word not in _FILLERS:
            ignored.append(word)
    for obj in objects:
        if obj.verbs and obj.direction is None:  # "moving" with no direction: not a motion the model knows
            ignored.extend(obj.verbs)
    phrases = [obj.phrase() for obj in objects if not obj.empty()]
    text = " and ".join(phrases)
    if background is not None:
        text = f"{text} on a {background} background".strip()
    return NormalizedPrompt(text, tuple(dict.fromkeys(ignored)))
