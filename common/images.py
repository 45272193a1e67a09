"""Images: PIL and hub image values <-> tensors, and the image grids a run writes.

A student may skip this folder: nothing in it is a concept the lessons teach.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image

from .errors import UserError


def _to_pil_bytes(value) -> bytes:
    """The bytes of an image value (encoded bytes, else the decoded pixels): a hash key."""
    if isinstance(value, dict) and value.get("bytes"):
        return value["bytes"]
    return _to_pil(value).tobytes()


def _to_pil(value) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and value.get("bytes"):  # an undecoded image struct
        return Image.open(io.BytesIO(value["bytes"]))
    if isinstance(value, dict) and value.get("path"):
        return Image.open(value["path"])
    raise UserError(f"cannot read an image from a value of type {type(value).__name__}")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB of the same picture. 16-bit (I;16, and I holding values above
    255) and float (F, in [0, 1]) pixels are scaled to 0..255 first: convert("RGB") alone clips
    them, and a 16-bit PNG would become a white image."""
    if img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        peak = (
            1.0
            if img.mode == "F" and a.max() <= 1
            else 65535.0
            if img.mode.startswith("I;16") or a.max() > 255
            else 255.0
        )
        img = Image.fromarray((a * (255 / peak)).round().clip(0, 255).astype(np.uint8))
    return img.convert("RGB")


def image_to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """PIL image of any mode/size -> (3, size, size) float in [-1, 1]: RGB, resize the short side, centre crop."""
    img = to_rgb(img)
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 127.5 - 1


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [-1, 1] -> (..., H, W, 3) uint8."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().movedim(-3, -1).cpu().numpy()


def grid_array(rows, pad: int = 2) -> np.ndarray:
    """Images as one uint8 array on a white background, one row per tensor (n, 3, H, W) in [-1, 1]."""
    n, (H, W) = max(len(r) for r in rows), rows[0].shape[-2:]
    grid = np.full((len(rows) * (H + pad) + pad, n * (W + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(to_uint8(row)):
            top, left = pad + i * (H + pad), pad + j * (W + pad)
            grid[top : top + H, left : left + W] = img
    return grid


def save_titled_grid(images: torch.Tensor, titles: list[str], path) -> None:
    """images (B, C, 3, H, W) in [-1, 1] -> a figure of B rows and C columns, a title over each column."""
    from matplotlib.figure import Figure  # drawn straight to a file: no GUI backend needed

    B, C, _, H, W = images.shape
    fig = Figure(figsize=(1.2 * C, 1.2 * B + 0.3))
    ax = fig.add_axes((0, 0, 1, 1.2 * B / (1.2 * B + 0.3)))  # one axes for the whole grid: fast
    ax.imshow(grid_array(list(images)), interpolation="nearest")
    ax.set_axis_off()
    for j, title in enumerate(titles):  # over each column's centre
        ax.text(2 + j * (W + 2) + W / 2, -2, title, fontsize=8, ha="center", va="bottom")
    fig.savefig(path, dpi=100)


def save_grid(rows: list[torch.Tensor], path, min_size: int = 64) -> None:
    """Save images as a grid, one row per tensor (n, 3, H, W) in [-1, 1]; small images are
    enlarged (nearest neighbour) to at least min_size pixels so that they can be seen."""
    im = Image.fromarray(grid_array(rows))
    scale = max(1, math.ceil(min_size / rows[0].shape[-2]))
    im.resize((im.width * scale, im.height * scale), Image.NEAREST).save(path)
