"""Which dataset a flag names: the hub registry, local folders and parquet files, image sizes,
per-dataset presets, and the held-out validation images of datasets that have no split.

A student may skip this folder: nothing in it is a concept the lessons teach.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .errors import UserError
from .images import _to_pil, _to_pil_bytes
from .shapes import BUILTIN


@dataclass(frozen=True)
class HubDataset:
    hub_id: str
    image_column: str
    label_column: str | None
    train_split: str
    eval_split: str | None  # None: the last 1000 training images are held out
    size: int  # default --image-size
    streaming: bool = False
    caption_column: str | None = None  # text-conditional priors (--condition text)


# Short names -> hub datasets. Column and split names differ between repos (cifar10's image column
# is `img`); these were checked against the dataset cards.
DATASETS = {
    "mnist": HubDataset("ylecun/mnist", "image", "label", "train", "test", 32),
    "cifar10": HubDataset("uoft-cs/cifar10", "img", "label", "train", "test", 32),
    "ffhq": HubDataset("merkol/ffhq-256", "image", None, "train", None, 256),
    "celebahq": HubDataset("korexyz/celeba-hq-256x256", "image", "label", "train", "validation", 256),
    # Gated: accept the terms on the hub, then `hf auth login` or set HF_TOKEN. Ungated 256 px mirror
    # with the same labels: --dataset benjamin-paine/imagenet-1k-256x256 --label-column label
    "imagenet": HubDataset(
        "ILSVRC/imagenet-1k", "image", "label", "train", "validation", 256, streaming=True
    ),
    "lsun-church": HubDataset("tglcourse/lsun_church_train", "image", None, "train", "test", 256),
    "flowers": HubDataset("nelorth/oxford-flowers", "image", "label", "train", "test", 64),
}


def dataset_choices() -> str:
    return (
        ", ".join([*BUILTIN, *DATASETS])
        + ", a hub id (owner/name), or a path to an image folder or .parquet file"
    )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@functools.lru_cache(maxsize=16)
def native_image_size(path: str, image_column: str = "image") -> int | None:
    """The short side of a local folder's or parquet file's images when the first 64 readable ones
    share one size and it is a multiple of 8 from 8 to 4096; else None. A folder none of whose
    first 64 images can be read is a UserError."""
    p = Path(path)
    parquet = [p] if p.suffix == ".parquet" else sorted(p.rglob("*.parquet"))[:1] if p.is_dir() else []
    try:
        if parquet:
            import pyarrow.parquet as pq

            rows = next(pq.ParquetFile(parquet[0]).iter_batches(64, columns=[image_column]))
            sizes = {_to_pil(v).size for v in rows.column(0).to_pylist()}
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)[:64]
            sizes = set()
            for f in files:
                try:
                    sizes.add(Image.open(f).size)
                except (OSError, ValueError, SyntaxError) as e:  # skipped, as training skips it
                    error = f"{f} ({str(e).splitlines()[0][:80]})"
            if files and not sizes:
                raise UserError(
                    f"--dataset {path}: none of its first {len(files)} images can be read, e.g. {error}"
                )
        else:
            return None
    except UserError:
        raise
    except Exception:  # unreadable: load_data reports it
        return None
    side = min(next(iter(sizes))) if len(sizes) == 1 else None
    return side if side and side % 8 == 0 and 8 <= side <= 4096 else None


def is_hub_id(name: str) -> bool:
    """Whether --dataset names a Hugging Face hub dataset, owner/name: one slash, and no local
    file or folder of that name (a path with more slashes, or a .parquet file, is local)."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def default_image_size(cfg) -> int:
    """--image-size, else the dataset's: shapes 32, the table's size for hub names, a local
    dataset's own size when its images share one, else 256."""
    if cfg.image_size is not None:
        return cfg.image_size
    if cfg.dataset in DATASETS:
        return DATASETS[cfg.dataset].size
    if cfg.dataset in BUILTIN:
        return 32
    if Path(cfg.dataset).exists():
        return native_image_size(cfg.dataset, cfg.image_column or "image") or 256
    return 256


def preset_name(cfg) -> str:
    """Which per-dataset defaults a lesson takes: the dataset's name when it has its own, else
    "small" for images of 64 px or less (a CPU-scale run) and "large" for the others."""
    if cfg.dataset in BUILTIN or cfg.dataset in DATASETS:
        return cfg.dataset
    return "small" if default_image_size(cfg) <= 64 else "large"


def apply_preset(cfg, presets: dict, fallback: dict) -> None:
    """Give each flag left unset (None) its value in the preset of cfg's dataset (preset_name)."""
    for name, value in presets.get(preset_name(cfg), fallback).items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, value)


HELD_OUT = 1000  # validation images held out of datasets that have no validation split


HOLD_OUT_SEED = 1234  # fixed, not --seed: a tokenizer and its prior hold out the same images


def held_out_indices(n: int, held: int, labels=None) -> tuple[list[int], list[int]]:
    """(train, val) indices: `held` of n picked at random with a fixed seed, the same on every
    rank, and stratified by class where labels are given (each class gives its share). Folders
    and many hub datasets are sorted by class: their LAST images would be one class alone."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(HOLD_OUT_SEED))
    if labels is not None:  # classes in blocks, random order inside each block
        perm = perm[torch.as_tensor(labels)[perm].argsort(stable=True)]
    val = perm[torch.linspace(0, n - 1, held).round().long()]  # evenly spaced over the blocks
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[val] = True
    return (~is_val).nonzero().squeeze(1).tolist(), val.sort().values.tolist()


def _hold_out_stream(stream, image_col: str, buffer: int = 10_000):
    """A stream without a validation split: the first HELD_OUT images of a seeded shuffle buffer
    are read once (undecoded bytes) and held out; training skips them by a hash of their bytes,
    which stays right whatever order workers and ranks later read the stream in."""
    import datasets

    if isinstance((stream.features or {}).get(image_col), datasets.Image):
        stream = stream.cast_column(image_col, datasets.Image(decode=False))
    key = lambda ex: hashlib.blake2b(_to_pil_bytes(ex[image_col]), digest_size=16).digest()
    held = list(stream.shuffle(seed=HOLD_OUT_SEED, buffer_size=buffer).take(HELD_OUT))
    keys = {key(ex) for ex in held}
    val = datasets.Dataset.from_list(held, features=stream.features)
    return stream.filter(lambda ex: key(ex) not in keys), val
