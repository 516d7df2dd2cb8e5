"""A small, procedurally generated image-text retrieval dataset in LAVIS's COCO-retrieval layout.

Each image is a scene of 1-3 coloured shapes (colour, shape, size, position on a 3x3 grid) on a plain,
gradient or grainy background, with 5 captions from varied templates and synonyms. Captions mention all
or some of the objects, so an image's relevance to another image's captions is naturally graded by the
attributes the two scenes share. Everything follows from ``seed``: every image has its own
``random.Random``, so the same parameters give byte-identical JSON and identical JPEG files.

Layout under ``root`` (LAVIS's ``coco_retrieval`` builder reads it with ``images.storage = root``)::

    images/{train,val,test}/<split>_NNNNNN.jpg
    annotations/train.json   one entry per caption: {"image", "caption", "image_id"}
    annotations/{val,test}.json   one entry per image: {"image", "caption": [5 captions]}
    scenes.json              structured attributes of every image and the statements of each of its
                             captions, per split
    relevance/{train,val,test}.npy   ground-truth relevance [n_images, n_captions] (float32)
    COMPLETE.json            parameters and file sizes, written last

**Caption statements and ground-truth relevance.** Every caption is generated from explicit
statements, stored next to it in ``scenes.json``::

    {"caption": "...", "objects": [{"colour": "red", "shape": "circle", "size": "small"}, ...],
     "background": {"colour": "white", "style": "plain"} | null, "count": 2 | null}

Each mentioned object lists only the attributes the caption states (colour and shape always; size
and position when the caption says them); ``background`` holds the background colour and, when the
caption names it, its style; ``count`` is the number of objects when the caption says it ("two
shapes", "just one star"). The graded relevance of caption ``t`` to image ``i``
(:func:`caption_relevance`, vectorised in :func:`ground_truth_relevance`) is the share of the
caption's statements that hold in image ``i``::

    stated(t)     = sum_m |A_m| + [background colour stated] + [background style stated] + [count stated]
    matched(i, t) = max over one-to-one assignments s of t's mentioned objects m to distinct objects
                    of image i of  sum_m #{a in A_m : attribute a of object s(m) equals m's}
                    + [background colour holds] + [background style holds] + [count holds]
    r(i, t)       = matched(i, t) / stated(t)   in [0, 1]

``A_m`` is the set of attributes stated for mentioned object ``m``. Attributes are bound per object
(a "red circle" needs one object that is both red and a circle) and every statement weighs the same.
A mentioned object left without a partner (the image has fewer objects) matches nothing.
``r(i, t) = 1`` exactly when every statement holds: the caption is a *plausible positive* of the
image, the analog of ECCV Caption's human-verified positives (every caption is one of its own
image). The files under ``relevance/`` hold ``r`` for each split in LAVIS's order: rows are images
in annotation order, columns are captions in annotation order (train) or in the flattened order
of each image's caption list (val/test, LAVIS's ``dataset.text``), the format
``run.gt_relevance`` reads (:mod:`lavis_listwise.evaluation.ground_truth`).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["generate_synthetic_dataset", "ensure_synthetic_dataset", "sample_scene", "caption_scene"]
__all__ += ["render_scene", "GENERATOR_VERSION", "COLOURS", "SHAPE_WORDS", "POSITIONS"]
__all__ += ["caption_scene_with_statements", "caption_relevance", "ground_truth_relevance"]
__all__ += ["relevance_file", "RELEVANCE_DIR"]

logger = logging.getLogger(__name__)

#: Bumped whenever the output for given parameters changes; part of the reuse check.
#: Version 2 adds the caption statements to ``scenes.json`` and the ``relevance/`` files.
GENERATOR_VERSION = 2
#: Version of the random streams: images and captions are those of generator version 1.
_RANDOM_STREAM_VERSION = 1
SPLITS = ("train", "val", "test")
CAPTIONS_PER_IMAGE = 5
#: Ground-truth relevance files, ``relevance/<split>.npy`` (see the module docstring).
RELEVANCE_DIR = "relevance"
_OWN_ENTRIES = {"images", "annotations", RELEVANCE_DIR, "scenes.json", "COMPLETE.json"}

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
#: Background colours share no word with the object colours, so a caption's colour words are unambiguous.
BACKGROUNDS = {
    "white": (240, 240, 240),
    "grey": (150, 150, 150),
    "black": (25, 25, 25),
    "cream": (240, 230, 200),
}
#: Background style -> adjectives captions may use for it.
BACKGROUND_STYLES = {
    "plain": ("plain ", ""),
    "gradient": ("shaded ", "graded "),
    "noisy": ("grainy ", "speckled "),
}
SHAPE_WORDS = {
    "circle": ("circle", "disc", "round shape"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "triangular shape"),
    "star": ("star", "five-pointed star"),
    "cross": ("cross", "plus sign"),
}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
#: Grid cell (column, row) of each position on a 3x3 grid, and ways to say it.
POSITIONS = {
    "top left": ((0, 0), ("in the top left corner", "at the top left", "in the upper left")),
    "top": ((1, 0), ("at the top", "near the top edge", "in the upper middle")),
    "top right": ((2, 0), ("in the top right corner", "at the top right", "in the upper right")),
    "left": ((0, 1), ("on the left", "at the left side", "on the left-hand side")),
    "centre": ((1, 1), ("in the centre", "in the middle", "at the center")),
    "right": ((2, 1), ("on the right", "at the right side", "on the right-hand side")),
    "bottom left": ((0, 2), ("in the bottom left corner", "at the bottom left", "in the lower left")),
    "bottom": ((1, 2), ("at the bottom", "near the bottom edge", "in the lower middle")),
    "bottom right": ((2, 2), ("in the bottom right corner", "at the bottom right", "in the lower right")),
}
_RADIUS = {"small": 0.08, "large": 0.13}  # fraction of the side; a grid cell is 1/3 wide, so no overlaps
_COUNT = {2: "two", 3: "three"}


def sample_scene(rng: random.Random) -> dict[str, Any]:
    """Draws one scene: 1-3 objects in distinct grid cells with distinct (colour, shape) pairs."""
    objects, used = [], set()
    for position in rng.sample(sorted(POSITIONS), rng.randint(1, 3)):
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(sorted(SHAPE_WORDS))
        while (colour, shape) in used:
            colour, shape = rng.choice(sorted(COLOURS)), rng.choice(sorted(SHAPE_WORDS))
        used.add((colour, shape))
        size = rng.choice(("small", "large"))
        (col, row), _ = POSITIONS[position]
        objects.append(
            {
                "colour": colour,
                "shape": shape,
                "size": size,
                "position": position,
                "x": round((col + 0.5) / 3 + rng.uniform(-0.02, 0.02), 4),
                "y": round((row + 0.5) / 3 + rng.uniform(-0.02, 0.02), 4),
                "radius": round(_RADIUS[size] * rng.uniform(0.9, 1.05), 4),
                "angle": round(rng.uniform(-15, 15), 2),
                "rgb": [min(255, max(0, c + rng.randint(-12, 12))) for c in COLOURS[colour]],
            }
        )
    style = rng.choice(sorted(BACKGROUND_STYLES))
    background = {
        "colour": rng.choice(sorted(BACKGROUNDS)),
        "style": style,
        "direction": rng.choice(("vertical", "horizontal", "diagonal")),
        "noise": round(rng.uniform(6, 10) if style == "noisy" else rng.uniform(0, 2), 2),
        "noise_seed": rng.getrandbits(32),
    }
    return {"objects": objects, "background": background}


def _with_article(phrase: str) -> str:
    """``phrase`` after the indefinite article it takes ("a" or "an")."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _noun_phrase(obj: dict, rng: random.Random, size_p: float = 0.6) -> tuple[str, dict]:
    """A noun phrase for ``obj`` and the attributes it states (colour, shape and maybe size)."""
    stated = {"colour": obj["colour"], "shape": obj["shape"]}
    size = rng.choice(SIZE_WORDS[obj["size"]]) + " " if rng.random() < size_p else ""
    if size:
        stated["size"] = obj["size"]
    return _with_article(f"{size}{obj['colour']} {rng.choice(SHAPE_WORDS[obj['shape']])}"), stated


def _position_phrase(obj: dict, rng: random.Random) -> str:
    """One of the ways to say where ``obj`` is ("in the top left corner", ...)."""
    return rng.choice(POSITIONS[obj["position"]][1])


def _join(parts: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _background_phrase(scene: dict, rng: random.Random) -> tuple[str, dict]:
    """A background phrase and what it states: the colour, and the style unless the adjective is empty."""
    bg = scene["background"]
    adjective = rng.choice(BACKGROUND_STYLES[bg["style"]])
    stated = {"colour": bg["colour"], **({"style": bg["style"]} if adjective else {})}
    phrase = rng.choice(("on {} background", "against {} backdrop"))
    text = phrase.format(_with_article(f"{adjective}{bg['colour']}"))
    return text, stated


def _statements(objects: list[dict], background: dict | None = None, count: int | None = None) -> dict:
    return {"objects": objects, "background": background, "count": count}


def _caption(template: int, scene: dict, rng: random.Random) -> tuple[str, dict]:
    """One caption from template ``template`` (0-5) and its statements; 2 describes one object, the
    others all of them. The random draws are those of generator version 1, so the texts are too."""
    objs = rng.sample(scene["objects"], len(scene["objects"]))
    one, n = objs[0], len(objs)
    shape = rng.choice(SHAPE_WORDS[one["shape"]])
    if template == 0:
        parts, stated = [], []
        for o in objs:
            phrase, attrs = _noun_phrase(o, rng)
            parts.append(f"{phrase} {_position_phrase(o, rng)}")
            stated.append({**attrs, "position": o["position"]})
        return _join(parts), _statements(stated)
    if template == 1 and n == 1:
        phrase, attrs = _noun_phrase(one, rng)
        where = _position_phrase(one, rng)
        return f"there is {phrase} {where}", _statements([{**attrs, "position": one["position"]}])
    if template == 1:
        noun = rng.choice(("shapes", "objects"))
        phrases = [_noun_phrase(o, rng) for o in objs]
        text = f"there are {_COUNT[n]} {noun}: {_join([p for p, _ in phrases])}"
        return text, _statements([a for _, a in phrases], count=n)
    if template == 2:
        # all three variants are drawn, then one is chosen (version 1's order of draws)
        where = _position_phrase(one, rng)
        phrase, attrs = _noun_phrase(one, rng)
        first = (f"{where} there is {phrase}", _statements([{**attrs, "position": one["position"]}]))
        phrase, attrs = _noun_phrase(one, rng)
        where = _position_phrase(one, rng)
        second = (f"{phrase} sits {where}", _statements([{**attrs, "position": one["position"]}]))
        bound = {"colour": one["colour"], "shape": one["shape"], "position": one["position"]}
        third = (f"the {shape} {_position_phrase(one, rng)} is {one['colour']}", _statements([bound]))
        return rng.choice((first, second, third))
    if template == 3:
        intro = rng.choice(("a picture of", "an image showing", "a drawing of", "a simple scene with"))
        phrases = [_noun_phrase(o, rng, 0.3) for o in objs]
        return f"{intro} {_join([p for p, _ in phrases])}", _statements([a for _, a in phrases])
    if template == 4:
        phrases = [_noun_phrase(o, rng, 0.4) for o in objs]
        background, bg_stated = _background_phrase(scene, rng)
        return f"{_join([p for p, _ in phrases])} {background}", _statements(
            [a for _, a in phrases], bg_stated
        )
    if n == 1:
        bound = {"colour": one["colour"], "shape": one["shape"], "position": one["position"]}
        where = _position_phrase(one, rng)
        return f"just one {shape}, coloured {one['colour']}, {where}", _statements([bound], count=1)
    phrases = [_noun_phrase(o, rng, 0.0) for o in objs]
    background, bg_stated = _background_phrase(scene, rng)
    text = f"{_COUNT[n]} shapes, {_join([p for p, _ in phrases])}, {background}"
    return text, _statements([a for _, a in phrases], bg_stated, count=n)


def caption_scene(scene: dict, rng: random.Random, n: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """``n`` distinct captions of ``scene``, from different templates while there are enough of them."""
    return [c["caption"] for c in caption_scene_with_statements(scene, rng, n)]


def caption_scene_with_statements(scene: dict, rng: random.Random, n: int = CAPTIONS_PER_IMAGE) -> list[dict]:
    """:func:`caption_scene` with each caption's statements: ``[{"caption", "objects", "background",
    "count"}]`` (see the module docstring)."""
    order = rng.sample(range(6), 6)
    captions: list[dict] = []
    for attempt in range(50 * n):
        text, stated = _caption(order[attempt % len(order)], scene, rng)
        text = text[0].upper() + text[1:] + "."
        if all(text != c["caption"] for c in captions):
            captions.append({"caption": text, **stated})
            if len(captions) == n:
                return captions
    raise RuntimeError(f"could not draw {n} distinct captions for scene {scene}")


#: Codes of each object attribute, in the column order of the arrays below.
_ATTRIBUTE_CODES = {
    "colour": {c: k for k, c in enumerate(sorted(COLOURS))},
    "shape": {c: k for k, c in enumerate(sorted(SHAPE_WORDS))},
    "size": {c: k for k, c in enumerate(sorted(SIZE_WORDS))},
    "position": {c: k for k, c in enumerate(sorted(POSITIONS))},
}
_BACKGROUND_CODES = {
    "colour": {c: k for k, c in enumerate(sorted(BACKGROUNDS))},
    "style": {c: k for k, c in enumerate(sorted(BACKGROUND_STYLES))},
}
_MAX_OBJECTS = 3


def caption_relevance(scene: dict, statements: dict) -> float:
    """Ground-truth relevance ``r(i, t)`` of a caption (its ``statements``) to an image (its ``scene``).

    The share of the caption's statements that hold in the scene, objects matched one to one so as
    to make the most statements hold (see the module docstring for the formula). The reference
    definition, one pair at a time; :func:`ground_truth_relevance` computes whole matrices.
    """
    objects, background = scene["objects"], scene["background"]
    mentioned = statements["objects"]
    stated = sum(len(m) for m in mentioned)
    matched = 0
    if statements.get("background"):
        stated += len(statements["background"])
        matched += sum(background[k] == v for k, v in statements["background"].items())
    if statements.get("count") is not None:
        stated += 1
        matched += statements["count"] == len(objects)
    # pad with None (no object) so that every injective assignment is a permutation
    slots = objects + [None] * max(0, len(mentioned) - len(objects))
    best = 0
    for chosen in itertools.permutations(slots, len(mentioned)):
        held = sum(o is not None and o[k] == v for m, o in zip(mentioned, chosen) for k, v in m.items())
        best = max(best, held)
    if stated == 0:
        raise ValueError(f"a caption must state something, got {statements}")
    return (matched + best) / stated


def _scene_codes(scenes: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[I, 3, 4]`` attribute codes of each image's objects (``-2`` for absent objects), ``[I, 2]``
    background colour and style codes, ``[I]`` object counts."""
    objects = np.full((len(scenes), _MAX_OBJECTS, len(_ATTRIBUTE_CODES)), -2, dtype=np.int8)
    background = np.empty((len(scenes), len(_BACKGROUND_CODES)), dtype=np.int8)
    for i, scene in enumerate(scenes):
        for o, obj in enumerate(scene["objects"]):
            objects[i, o] = [codes[obj[a]] for a, codes in _ATTRIBUTE_CODES.items()]
        background[i] = [codes[scene["background"][a]] for a, codes in _BACKGROUND_CODES.items()]
    counts = np.array([len(s["objects"]) for s in scenes], dtype=np.int8)
    return objects, background, counts


def _statement_codes(statements: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[T, 3, 4]`` stated attribute codes of each caption's mentioned objects (``-1``: not stated),
    ``[T, 2]`` stated background codes (``-1``: not stated), ``[T]`` stated count (``-1``: none)."""
    objects = np.full((len(statements), _MAX_OBJECTS, len(_ATTRIBUTE_CODES)), -1, dtype=np.int8)
    background = np.full((len(statements), len(_BACKGROUND_CODES)), -1, dtype=np.int8)
    counts = np.full(len(statements), -1, dtype=np.int8)
    for t, st in enumerate(statements):
        if len(st["objects"]) > _MAX_OBJECTS:
            raise ValueError(f"a caption mentions more than {_MAX_OBJECTS} objects: {st}")
        for m, mention in enumerate(st["objects"]):
            objects[t, m] = [
                codes[mention[a]] if a in mention else -1 for a, codes in _ATTRIBUTE_CODES.items()
            ]
        stated_bg = st.get("background") or {}
        background[t] = [
            codes[stated_bg[a]] if a in stated_bg else -1 for a, codes in _BACKGROUND_CODES.items()
        ]
        counts[t] = -1 if st.get("count") is None else st["count"]
    return objects, background, counts


#: The 6 orders of 3 slots: every one-to-one assignment of (padded) mentions to (padded) objects.
_PERMUTATIONS = tuple(itertools.permutations(range(_MAX_OBJECTS)))
#: Elements (images x captions) per chunk of :func:`ground_truth_relevance`.
_GT_CHUNK_ELEMENTS = 1 << 22


def ground_truth_relevance(scenes: list[dict], statements: list[dict]) -> np.ndarray:
    """``[I, T]`` ground-truth relevance :func:`caption_relevance` of every caption to every image.

    Args:
        scenes: ``I`` scenes (``objects`` and ``background``, as in ``scenes.json``).
        statements: ``T`` caption statements (``objects``, ``background``, ``count``).
    Returns:
        float32 ``[I, T]`` in ``[0, 1]``; exactly 1 where every statement of the caption holds.
    """
    img_obj, img_bg, img_count = _scene_codes(scenes)
    cap_obj, cap_bg, cap_count = _statement_codes(statements)
    stated = (cap_obj >= 0).sum(axis=(1, 2)) + (cap_bg >= 0).sum(axis=1) + (cap_count >= 0)
    if (stated == 0).any():
        raise ValueError(f"caption {int(np.argmin(stated))} states nothing")
    # Captions draw their mentions from a few hundred distinct ones: count the statements of each
    # distinct mention u that hold for object o of image i once, as per_mention[o][i, u], and look
    # them up per caption. Unstated attributes are -1 and absent objects -2, so neither ever matches;
    # a caption's empty mention slots (all -1) match nothing.
    mentions, mention_of = np.unique(cap_obj.reshape(-1, cap_obj.shape[-1]), axis=0, return_inverse=True)
    mention_of = mention_of.reshape(len(statements), _MAX_OBJECTS)
    per_mention = [
        sum(
            (img_obj[:, o, a, None] == mentions[None, :, a]).astype(np.int8) for a in range(mentions.shape[1])
        )
        for o in range(_MAX_OBJECTS)
    ]
    stated = stated.astype(np.float64)  # the quotient in float64, rounded once into float32
    out = np.empty((len(scenes), len(statements)), dtype=np.float32)
    rows = max(1, _GT_CHUNK_ELEMENTS // max(1, len(statements)))
    for i0 in range(0, len(scenes), rows):
        chunk = slice(i0, i0 + rows)
        # held[m][o][i, t] = statements of mention m of caption t that hold for object o of image i
        held = [
            [np.take(per_mention[o][chunk], mention_of[:, m], axis=1) for o in range(_MAX_OBJECTS)]
            for m in range(_MAX_OBJECTS)
        ]
        # the best one-to-one assignment of mentions to objects: a written-out max over the 6 orders
        best = None
        for order in _PERMUTATIONS:
            total = held[0][order[0]] + held[1][order[1]]
            total += held[2][order[2]]
            best = total if best is None else np.maximum(best, total, out=best)
        for a in range(cap_bg.shape[1]):
            best += cap_bg[None, :, a] == img_bg[chunk, None, a]
        best += cap_count[None] == img_count[chunk, None]
        out[chunk] = best / stated[None]
    return out


def _ring(radii: list[float]) -> list[tuple[float, float]]:
    """Vertices at evenly spaced angles from the top, at the given distances from the centre."""
    angles = [math.radians(-90 + 360 * k / len(radii)) for k in range(len(radii))]
    return [(q * math.cos(a), q * math.sin(a)) for q, a in zip(radii, angles)]


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Outline of ``shape`` centred at (cx, cy), ``r`` from centre to tip, turned by ``angle`` degrees."""
    if shape == "square":
        pts = [(x * 0.85, y * 0.85) for x, y in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    elif shape == "triangle":
        pts = _ring([1.0] * 3)
    elif shape == "star":
        pts = _ring([1.0, 0.45] * 5)
    else:  # cross: a plus sign with arms a third of the radius wide
        w = 0.33
        pts, arm = [], [(w, -1), (w, -w), (1, -w)]
        for _ in range(4):  # one arm's outline, turned by 90 degrees each time
            pts, arm = pts + arm, [(-y, x) for x, y in arm]
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def render_scene(scene: dict, image_size: int) -> Image.Image:
    """Draws ``scene`` as an RGB image; a pure function of its arguments."""
    ss = 4 if image_size <= 128 else 2  # supersampling for smooth edges
    side = image_size * ss
    bg = scene["background"]
    base = np.array(BACKGROUNDS[bg["colour"]], dtype=np.float32)
    canvas = np.broadcast_to(base, (side, side, 3)).copy()
    if bg["style"] == "gradient":
        t = np.linspace(0.0, 1.0, side, dtype=np.float32)
        ramp = {"vertical": t[:, None], "horizontal": t[None, :], "diagonal": (t[:, None] + t[None, :]) / 2}
        shade = base + (-60 if base.mean() > 128 else 60)
        canvas += (shade - base) * ramp[bg["direction"]][..., None]
    image = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for obj in scene["objects"]:
        cx, cy, r, fill = obj["x"] * side, obj["y"] * side, obj["radius"] * side, tuple(obj["rgb"])
        if obj["shape"] == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon(_polygon(obj["shape"], cx, cy, r, obj["angle"]), fill=fill)
    pixels = np.asarray(image.reduce(ss), dtype=np.float32)
    if bg["noise"] > 0:
        noise = np.random.default_rng(bg["noise_seed"]).normal(0.0, bg["noise"], pixels.shape)
        pixels = pixels + noise.astype(np.float32)
    return Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8))


def _params(n_train: int, n_val: int, n_test: int, image_size: int, seed: int) -> dict[str, int]:
    for name, value, low in (("n_train", n_train, 1), ("n_val", n_val, 1), ("n_test", n_test, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    sizes = {"n_train": n_train, "n_val": n_val, "n_test": n_test}
    return {"generator_version": GENERATOR_VERSION, "seed": seed, **sizes, "image_size": image_size}


def generate_synthetic_dataset(
    root: str | os.PathLike,
    n_train: int = 1000,
    n_val: int = 200,
    n_test: int = 200,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Writes the dataset into ``root`` (absent or empty) and returns its absolute path.

    ``n_*`` count images; train has 5 annotation entries per image. Besides images, annotations and
    ``scenes.json``, it writes each split's ground-truth relevance (:func:`relevance_file`).
    ``COMPLETE.json`` is written last. Use :func:`ensure_synthetic_dataset` to reuse or atomically
    replace an existing dataset.
    """
    params = _params(n_train, n_val, n_test, image_size, seed)
    root = Path(root).expanduser().resolve()
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"root {str(root)!r} is not empty")
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / RELEVANCE_DIR).mkdir()
    scenes: dict[str, list] = {}
    for split, count in zip(SPLITS, (n_train, n_val, n_test)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        annotations, scenes[split] = [], []
        for i in range(count):
            rng = random.Random(f"lavis-listwise-synthetic/v{_RANDOM_STREAM_VERSION}/{seed}/{split}/{i}")
            scene = sample_scene(rng)
            described = caption_scene_with_statements(scene, rng)
            captions = [c["caption"] for c in described]
            image_id, image = f"{split}_{i:06d}", f"images/{split}/{split}_{i:06d}.jpg"
            render_scene(scene, image_size).save(root / image, format="JPEG", quality=95, subsampling=0)
            scenes[split].append({"image": image, "image_id": image_id, **scene, "captions": described})
            if split == "train":
                annotations += [{"image": image, "caption": c, "image_id": image_id} for c in captions]
            else:
                annotations.append({"image": image, "caption": captions})
        (root / "annotations" / f"{split}.json").write_text(json.dumps(annotations, indent=1) + "\n")
        # captions in annotation order = each image's captions in turn, for train and eval alike
        statements = [c for scene in scenes[split] for c in scene["captions"]]
        np.save(relevance_file(root, split), ground_truth_relevance(scenes[split], statements))
    (root / "scenes.json").write_text(json.dumps(scenes, indent=1) + "\n")
    files = {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
    marker = {"params": params, "file_count": len(files), "files": files}
    (root / "COMPLETE.json").write_text(json.dumps(marker, indent=1) + "\n")
    return root


def relevance_file(root: str | os.PathLike, split: str) -> Path:
    """``root/relevance/<split>.npy``: the split's ground-truth relevance, float32 ``[n_images,
    n_captions]`` in LAVIS's order (see the module docstring); ``run.gt_relevance.<split>`` reads it."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return Path(root) / RELEVANCE_DIR / f"{split}.npy"


def _incomplete_reason(root: Path, params: dict) -> str | None:
    """Why ``root`` is not a complete dataset for ``params``; ``None`` if it is."""
    try:
        marker = json.loads((root / "COMPLETE.json").read_text())
    except FileNotFoundError:
        return "it has no COMPLETE.json"
    except (OSError, ValueError) as err:
        return f"its COMPLETE.json is unreadable ({err})"
    if marker.get("params") != params:
        return f"it was generated with {marker.get('params')}, not {params}"
    for rel, size in marker.get("files", {}).items():
        path = root / rel
        if not path.is_file() or path.stat().st_size != size or size == 0:
            return f"{rel} is missing or has the wrong size"
    return None


def ensure_synthetic_dataset(
    root: str | os.PathLike,
    n_train: int = 1000,
    n_val: int = 200,
    n_test: int = 200,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Reuses the dataset at ``root`` if it is complete for these parameters, else regenerates it.

    A new dataset is generated into a temporary sibling directory and renamed into place, so ``root``
    never holds a half-written dataset. Refuses (``FileExistsError``) to replace a directory holding
    anything this generator does not write. Returns the absolute path of ``root``.
    """
    params = _params(n_train, n_val, n_test, image_size, seed)
    root = Path(root).expanduser().resolve()
    reason = _incomplete_reason(root, params) if root.exists() else "it does not exist"
    if reason is None:
        logger.info("Reusing the synthetic dataset at %s", root)
        return root
    if root.exists():
        foreign = sorted(p.name for p in root.iterdir() if p.name not in _OWN_ENTRIES)
        if foreign:
            raise FileExistsError(f"will not replace {str(root)!r}: it holds foreign entries {foreign}")
    logger.info("Generating the synthetic dataset at %s because %s", root, reason)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    old = None
    try:
        generate_synthetic_dataset(tmp, n_train, n_val, n_test, image_size, seed)
        if root.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            root.rename(old / "dataset")
        try:
            tmp.rename(root)
        except OSError:  # another process put a dataset there meanwhile
            if _incomplete_reason(root, params) is not None:
                raise
            logger.info("Another process completed %s first; using it", root)
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    logger.info("Synthetic dataset ready at %s", root)
    return root
