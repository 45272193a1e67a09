"""The built-in procedural datasets `shapes` and `shapes-plain`: 8 classes of shapes, no download,
each image with a caption made from its own parameters.

A student may skip this folder: nothing in it is a concept the lessons teach.
"""

from __future__ import annotations

import functools
import math
import random
import re

import numpy as np
import torch
from PIL import Image, ImageDraw

from .device import progress
from .errors import UserError

#
# Every dataset yields {"image": (3, S, S) float in [-1, 1], "label": int, "caption": str}; label 0
# when unlabelled, caption "" when the data has none.

SHAPE_CLASSES = ("circle", "ring", "square", "triangle", "star", "cross", "crescent", "half-disc")
SHAPES_TRAIN, SHAPES_VAL = 10_000, 1_000  # fixed split: val images use their own seeds
BUILTIN = ("shapes", "shapes-plain")  # procedural datasets, no download
# shapes-plain: one of 4 flat dark backgrounds and one of 4 bright shape colours. Colour then
# carries 4 bits per image instead of about 70, so a small prior (lessons 04-05) spends its
# capacity on the geometry that tells the classes apart, and its samples can be judged by eye.
PLAIN_BACKGROUNDS = ((30, 30, 60), (60, 30, 30), (30, 60, 30), (50, 50, 50))
PLAIN_COLOURS = ((240, 200, 40), (60, 200, 240), (240, 80, 160), (240, 240, 240))


def _shape_outline(cls: str, cx: float, cy: float, r: float, angle: float):
    """Polygon vertices of one shape class, centred at (cx, cy) with radius r, rotated by angle."""

    def polar(radii, phases):
        return [(cx + q * math.cos(a + angle), cy + q * math.sin(a + angle)) for q, a in zip(radii, phases)]

    full = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    if cls == "circle":
        return [polar([r] * len(full), full)]
    if cls == "ring":  # drawn as a disc, then a background-coloured hole
        return [polar([r] * len(full), full), polar([0.55 * r] * len(full), full)]
    if cls == "square":
        return [polar([r] * 4, np.arange(4) * math.pi / 2 + math.pi / 4)]
    if cls == "triangle":
        return [polar([r] * 3, np.arange(3) * 2 * math.pi / 3)]
    if cls == "star":
        return [polar([r, 0.45 * r] * 5, np.arange(10) * math.pi / 5)]
    if cls == "cross":
        w = 0.33 * r
        pts = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r)]
        pts = pts + [(-x, -y) for x, y in pts]
        return [polar([math.hypot(x, y) for x, y in pts], [math.atan2(y, x) for x, y in pts])]
    if cls == "crescent":  # a disc with an offset disc cut out
        hole = [(cx + 0.45 * r * math.cos(angle), cy + 0.45 * r * math.sin(angle))]
        return [
            polar([r] * len(full), full),
            [(hole[0][0] + 0.8 * r * math.cos(a), hole[0][1] + 0.8 * r * math.sin(a)) for a in full],
        ]
    if cls == "half-disc":
        half = np.linspace(0, math.pi, 25)
        return [polar([r] * len(half), half)]
    raise ValueError(cls)


def _gradient_and_colour(rng: random.Random):
    """The `shapes` background, a gradient between two random colours c0 -> c1 at a random angle,
    and a random shape colour that stands out from the background's mean."""
    c0, c1 = (np.array([rng.randrange(256) for _ in range(3)], np.float32) for _ in range(2))
    theta = rng.uniform(0, 2 * math.pi)
    while True:
        fg = np.array([rng.randrange(256) for _ in range(3)], np.float32)
        if np.abs(fg - (c0 + c1) / 2).sum() > 120:
            return (c0, c1, theta), fg


def shape_params(seed: int, plain: bool = False) -> dict:
    """What image `seed` shows, fixed by the seed: its class, colours (RGB), the shape's radius
    and centre as fractions of the image side, and its rotation. Images and captions use it."""
    rng = random.Random(seed)
    if plain:
        bg = (np.array(rng.choice(PLAIN_BACKGROUNDS), np.float32),) * 2 + (0.0,)  # flat: c0 = c1
        fg = np.array(rng.choice(PLAIN_COLOURS), np.float32)
    else:
        bg, fg = _gradient_and_colour(rng)
    label = rng.randrange(len(SHAPE_CLASSES))
    r = rng.uniform(0.22, 0.42)
    cx, cy = rng.uniform(r, 1 - r), rng.uniform(r, 1 - r)
    return dict(label=label, bg=bg, fg=fg, r=r, cx=cx, cy=cy, angle=rng.uniform(0, 2 * math.pi))


def render_shape(
    seed: int, size: int = 32, supersample: int = 4, plain: bool = False
) -> tuple[np.ndarray, int]:
    """One image of the `shapes` dataset: (size, size, 3) uint8 and its class, fixed by `seed`.

    A coloured shape of a random class, position, size and rotation on a background that is a
    linear gradient between two random colours at a random angle. plain=True (`shapes-plain`):
    a flat background and a shape colour from the two small palettes above.
    """
    p = shape_params(seed, plain)
    (c0, c1, theta), fg = p["bg"], p["fg"]
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    t = (xx * math.cos(theta) + yy * math.sin(theta)) / math.sqrt(2) + 0.5  # in [0, 1]
    bg = c0 * (1 - t[..., None]) + c1 * t[..., None]  # (size, size, 3)
    S = size * supersample  # the shape's mask is drawn larger, then box-filtered: smooth edges
    polys = _shape_outline(SHAPE_CLASSES[p["label"]], p["cx"] * S, p["cy"] * S, p["r"] * S, p["angle"])
    mask = Image.new("L", (S, S), 0)
    draw = ImageDraw.Draw(mask)
    draw.polygon(polys[0], fill=255)
    for hole in polys[1:]:
        draw.polygon(hole, fill=0)
    alpha = np.asarray(mask.resize((size, size), Image.BOX), np.float32)[..., None] / 255  # (size, size, 1)
    return (bg * (1 - alpha) + fg * alpha).round().astype(np.uint8), p["label"]


# --- captions: each image's own parameters in words ---

PLAIN_COLOUR_NAMES = ("yellow", "light blue", "pink", "white")  # PLAIN_COLOURS, in order
PLAIN_BACKGROUND_NAMES = ("dark blue", "dark red", "dark green", "grey")  # PLAIN_BACKGROUNDS
NAMED = {  # the colour words of `shapes` (random RGB colours get the nearest one)
    "red": (220, 40, 40), "orange": (240, 140, 30), "yellow": (240, 220, 40), "green": (50, 170, 60),
    "cyan": (60, 210, 220), "blue": (40, 70, 220), "purple": (140, 60, 200), "pink": (240, 120, 190),
    "white": (240, 240, 240), "grey": (128, 128, 128), "black": (20, 20, 20), "brown": (130, 80, 40),
}  # fmt: skip
TEMPLATES = (  # {size} may be empty; {where} is a phrase like "near the top left"
    "a {size} {colour} {shape} {where} on a {bg} background",
    "{bg} background, {size} {colour} {shape}",
    "a {colour} {shape} on {bg}",
    "{size} {colour} {shape} {where}, {bg} background",
    "a {bg} background with a {colour} {shape} {where}",
    "{colour} {shape}, {size}, {where}",
)


def colour_name(rgb, plain: bool = False) -> str:
    """The word for a colour: its palette name in shapes-plain, else the nearest NAMED colour."""
    for names, palette in ((PLAIN_COLOUR_NAMES, PLAIN_COLOURS), (PLAIN_BACKGROUND_NAMES, PLAIN_BACKGROUNDS)):
        if plain and tuple(int(v) for v in rgb) in palette:
            return names[palette.index(tuple(int(v) for v in rgb))]
    words = list(NAMED)
    dist = ((np.array([NAMED[w] for w in words], np.float32) - np.asarray(rgb, np.float32)) ** 2).sum(1)
    return words[int(dist.argmin())]


def _where(cx: float, cy: float) -> str:
    """The shape centre (fractions of the side) as a phrase: "near the top left", "in the centre"."""
    row = "top" if cy < 0.4 else "bottom" if cy > 0.6 else ""
    col = "left" if cx < 0.4 else "right" if cx > 0.6 else ""
    place = " ".join(w for w in (row, col) if w)
    return f"near the {place}" if place else "in the centre"


def shape_caption(seed: int, plain: bool = False) -> str:
    """The caption of image `seed`: its class, its shape colour, and (in most wordings) its size,
    place and background, in one of TEMPLATES chosen by the seed. Deterministic; drawing the
    caption's own choices from a separate generator leaves the image unchanged."""
    p = shape_params(seed, plain)
    rng = random.Random(f"caption {seed}")
    c0, c1, _ = p["bg"]
    bg = colour_name(c0, plain) if plain else f"{colour_name(c0)} to {colour_name(c1)}"
    if not plain and colour_name(c0) == colour_name(c1):
        bg = colour_name(c0)
    size = "small" if p["r"] < 0.29 else "large" if p["r"] > 0.35 else rng.choice(("", "medium"))
    words = dict(
        size=size, colour=colour_name(p["fg"], plain), shape=SHAPE_CLASSES[p["label"]].replace("-", " ")
    )
    text = rng.choice(TEMPLATES).format(**words, where=_where(p["cx"], p["cy"]), bg=bg)
    text = re.sub(r"(\s*,)+", ",", " ".join(text.split())).strip(", ")  # an empty {size}: no ",,"
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def class_prompts(classes, plain: bool = True) -> list[str]:
    """One prompt naming each class, in a shape colour that cycles with the class ("a pink star")."""
    colours = PLAIN_COLOUR_NAMES if plain else ("red", "yellow", "green", "blue")
    return [f"a {colours[i % len(colours)]} {name.replace('-', ' ')}" for i, name in enumerate(classes)]


@functools.lru_cache(maxsize=4)
def _store(base: int, n: int, size: int, plain: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Memory for a dataset's images, filled as they are first read and shared by every instance
    of the same dataset in the process: (n, S, S, 3) uint8, and labels (n,) with -1 = not drawn yet."""
    return torch.zeros(n, size, size, 3, dtype=torch.uint8), torch.full((n,), -1, dtype=torch.long)


class Shapes(torch.utils.data.Dataset):
    """The built-in datasets: `n` procedural images, item i always the same for the same seed
    (plain=True: `shapes-plain`)."""

    def __init__(self, split: str, size: int = 32, seed: int = 0, plain: bool = False):
        if size % 8 or not 8 <= size <= 256:
            raise UserError(f"shapes: --image-size must be a multiple of 8 from 8 to 256, got {size}")
        self.n = SHAPES_TRAIN if split == "train" else SHAPES_VAL
        self.base = seed * 10_000_019 + (0 if split == "train" else SHAPES_TRAIN)
        self.size, self.plain = size, plain
        self.classes = SHAPE_CLASSES
        # Small sizes are kept in memory once drawn (a short run draws only the images it reads);
        # large ones are drawn at every access, so that workers share the load.
        small = self.n * size * size * 3 <= 64 * 2**20
        self.cache, self.labels = _store(self.base, self.n, size, plain) if small else (None, None)

    def __len__(self):
        return self.n

    def _draw(self, i: int) -> tuple[torch.Tensor, int]:
        if self.cache is None:
            img, label = render_shape(self.base + i, self.size, plain=self.plain)
            return torch.from_numpy(img), label
        if self.labels[i] < 0:
            img, self.labels[i] = render_shape(self.base + i, self.size, plain=self.plain)
            self.cache[i] = torch.from_numpy(img)
        return self.cache[i], int(self.labels[i])

    def images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image and label at once: (n, S, S, 3) uint8, (n,) long (the classifier's data)."""
        drawn = [self._draw(i) for i in progress(range(self.n), desc="rendering shapes", leave=False)]
        if self.cache is not None:
            return self.cache, self.labels
        return torch.stack([img for img, _ in drawn]), torch.tensor([label for _, label in drawn])

    def __getitem__(self, i):
        img, label = self._draw(i)
        caption = shape_caption(self.base + i, self.plain)  # its class, colours, size and place
        return {"image": img.permute(2, 0, 1).float() / 127.5 - 1, "label": label, "caption": caption}
