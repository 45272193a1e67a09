"""Plumbing shared by every lesson: nothing here is a concept the lessons teach.

Config -> argparse, device and seeds, datasets (built-in `shapes`, Hugging Face hub, local
folders and parquet files), the small conv encoder/decoder of lessons 01-02, checkpoints
(atomic, with the config inside), the metrics log, image grids and simple metrics.
Lessons import it as `import common`; earlier lessons are loaded with `common.lesson("01_vq")`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import hashlib
import importlib
import inspect
import io
import json
import math
import os
import random
import signal
import sys
import textwrap
import time
import tokenize
import types
import typing
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageDraw
from tqdm import tqdm


def lesson(name: str) -> types.ModuleType:
    """Import a numbered lesson by file name: `vq = lesson("01_vq")` (names start with digits)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module(name)


class UserError(Exception):
    """A mistake the user can fix (a flag, a path, a checkpoint): printed as one line, exit 2."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped training after a checkpoint was saved: exit 128 + signal."""

    def __init__(self, msg: str, code: int):
        super().__init__(msg)
        self.code = code


def main(train_fn, config_cls, argv=None):
    """The CLI of every lesson: parse flags into a Config, train, and turn UserError into exit 2."""
    cfg = parse(config_cls, argv)
    try:
        train_fn(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(e.code)  # 130 after Ctrl-C, 143 after SIGTERM, as a shell reports them
    teardown()


# --- config -> command line ---


@dataclass
class TrainConfig:
    """Flags every lesson shares. A lesson's Config subclasses this and adds its own fields."""

    dataset: str = "shapes"  # a name (see the list at the end), an image folder or a .parquet file
    image_size: int | None = (
        None  # pixels (default: shapes/mnist/cifar10 32, flowers 64, others 256)
    )
    hf_id: str | None = None  # any Hugging Face hub dataset id (overrides --dataset)
    image_column: str | None = None  # image column of --hf-id or a local dataset (default: image)
    label_column: str | None = None  # label column of --hf-id or a local dataset (default: none)
    streaming: bool | None = None  # stream from the hub, no download (default: on for imagenet)
    batch_size: int = 64  # images per step (per process under torchrun)
    grad_accum: int = 1  # micro-batches of --batch-size per optimizer step (gradient accumulation)
    compile: bool = False  # torch.compile the network (on a CPU it needs a C++ compiler)
    steps: int = 1500  # optimizer steps
    lr: float = 1e-3  # Adam learning rate
    seed: int = 0  # seeds data order, initialisation and code restarts
    device: str = "auto"  # auto | cpu | cuda | mps
    num_workers: int = 0  # DataLoader worker processes (0 = load in the main process)
    out: str = "runs/lesson"  # run folder: ckpt.pt, metrics.jsonl, figures
    log_every: int = 100  # print and log metrics every this many steps
    ckpt_every: int = 500  # save ckpt.pt every this many steps (and at the end)
    ckpt_minutes: float = 2.0  # also save ckpt.pt after this many minutes without a save (0 = off)
    eval_images: int = 512  # validation images used for the final metrics
    resume: bool = False  # continue the run in --out from its ckpt.pt
    overwrite: bool = False  # start afresh even if --out already holds a checkpoint

    def __post_init__(self):
        """Checks of the shared flags; a lesson's __post_init__ adds its own and calls this."""
        for name in ("steps", "batch_size", "grad_accum", "log_every", "ckpt_every", "eval_images"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
                )
        if not (0 < self.lr < math.inf) or self.num_workers < 0 or not self.ckpt_minutes >= 0:
            raise ValueError(
                f"--lr must be a finite number > 0 (got {self.lr}), --num-workers and --ckpt-minutes >= 0"
            )
        if not self.out.strip():
            raise ValueError("--out must name a run folder, got an empty string")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError(
                f"unknown --device '{self.device}'; choose one of: auto, cpu, cuda, mps"
            )
        is_path = (
            "/" in self.dataset or self.dataset.endswith(".parquet") or Path(self.dataset).exists()
        )
        if self.hf_id is None and self.dataset not in (*BUILTIN, *DATASETS) and not is_path:
            raise ValueError(
                f"unknown dataset '{self.dataset}'; choose one of: {dataset_choices()}"
            )
        size = default_image_size(self)
        if size % 8 or not 8 <= size <= (256 if self.dataset in BUILTIN else 4096):
            raise ValueError(
                f"--image-size must be a multiple of 8 from 8 to {256 if self.dataset in BUILTIN else 4096}, got {size}"
            )


def _field_help(cls) -> dict[str, str]:
    """The trailing `# comment` of each dataclass field, read from the source (the --help text)."""
    helps = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        src = textwrap.dedent(inspect.getsource(klass))
        comments = {
            tok.start[0]: tok.string.lstrip("#").strip()
            for tok in tokenize.generate_tokens(io.StringIO(src).readline)
            if tok.type == tokenize.COMMENT
        }
        for node in ast.parse(src).body[0].body:
            if isinstance(node, ast.AnnAssign):  # `name: type = default  # help`, maybe wrapped
                lines = range(node.lineno, node.end_lineno + 1)
                found = [comments[n] for n in lines if n in comments]
                if found:
                    helps[node.target.id] = found[-1]
    return helps


def parse(config_cls, argv=None):
    """Build an argparse CLI from a Config dataclass, parse argv and return the Config.

    Fields become `--kebab-case` flags; booleans become `--x/--no-x`; `Literal[...]` types give
    choices; `tuple[int, ...]` takes several values. Config.__post_init__ may raise ValueError,
    which is reported like any other bad flag (one line, exit code 2).
    """
    hints = typing.get_type_hints(config_cls)
    helps = _field_help(config_cls)
    p = argparse.ArgumentParser(
        description=(sys.modules[config_cls.__module__].__doc__ or "").split("\n")[0],
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
        epilog=f"datasets: {dataset_choices()}. Hub ids: "
        + ", ".join(f"{k} = {v.hub_id}" for k, v in DATASETS.items())
        + ". ImageNet is gated (run `hf auth login`); an ungated 256 px copy: "
        "--hf-id benjamin-paine/imagenet-1k-256x256 --label-column label.",
    )
    for f in dataclasses.fields(config_cls):
        kind = hints[f.name]
        args = typing.get_args(kind)
        if type(None) in args:  # `int | None` -> int, default None
            kind = next(a for a in args if a is not type(None))
            args = typing.get_args(kind)
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kw = dict(default=default, help=helps.get(f.name, ""))
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(kind) is typing.Literal:
            p.add_argument(flag, choices=args, type=type(args[0]), **kw)
        elif typing.get_origin(kind) is tuple:
            p.add_argument(flag, nargs="+", type=args[0], **kw)
        else:
            p.add_argument(flag, type=kind, **kw)
    ns = p.parse_args(argv)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(ns).items()}
    try:
        cfg = config_cls(**values)
    except (ValueError, UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print("config:", json.dumps(dataclasses.asdict(cfg)))
    return cfg


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' unless the default is None (the help text then says what happens)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


# --- device, seeds, precision ---


def get_device(name: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu. An unavailable device is a UserError."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if name not in available:
        raise UserError(f"unknown device '{name}'; choose one of: auto, cpu, cuda, mps")
    if not available[name]:
        raise UserError(
            f"--device {name} is not available on this machine; use --device auto or cpu"
        )
    if name == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))  # torchrun: one GPU per process
        torch.cuda.set_device(local)
        torch.set_float32_matmul_precision("high")  # TF32 matmuls/convs: same speed class as bf16
        torch.backends.cudnn.allow_tf32 = True  # (code distances opt out: exact_float32)
        return torch.device("cuda", local)
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision elsewhere. Quantizers switch it off for their math."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def exact_float32(device_type: str):
    """Inside: matmuls in true float32, neither bf16 autocast nor TF32 (whose 10-bit mantissa can
    make a distance matmul pick another nearest code than float32 does). For code distances."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(before)


def progress(iterable, **kw):
    """The progress bar of every long loop."""
    return tqdm(iterable, dynamic_ncols=True, mininterval=1.0, disable=not is_main(), **kw)


def echo(msg: str) -> None:
    """Print a log line without breaking the progress bar (rank 0 only under torchrun)."""
    if is_main():
        tqdm.write(msg)


# --- datasets ---
#
# Every dataset yields {"image": (3, S, S) float in [-1, 1], "label": int}; label 0 when unlabelled.

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
        return [
            (cx + q * math.cos(a + angle), cy + q * math.sin(a + angle))
            for q, a in zip(radii, phases)
        ]

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
            [
                (hole[0][0] + 0.8 * r * math.cos(a), hole[0][1] + 0.8 * r * math.sin(a))
                for a in full
            ],
        ]
    if cls == "half-disc":
        half = np.linspace(0, math.pi, 25)
        return [polar([r] * len(half), half)]
    raise ValueError(cls)


def _gradient_and_colour(rng: random.Random, size: int):
    """The `shapes` background, a gradient between two random colours at a random angle, and a
    random shape colour that stands out from the background's mean."""
    c0, c1 = (np.array([rng.randrange(256) for _ in range(3)], np.float32) for _ in range(2))
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    t = (xx * math.cos(theta) + yy * math.sin(theta)) / math.sqrt(2) + 0.5  # in [0, 1]
    bg = c0 * (1 - t[..., None]) + c1 * t[..., None]  # (size, size, 3)
    while True:
        fg = np.array([rng.randrange(256) for _ in range(3)], np.float32)
        if np.abs(fg - (c0 + c1) / 2).sum() > 120:
            return bg, fg


def render_shape(
    seed: int, size: int = 32, supersample: int = 4, plain: bool = False
) -> tuple[np.ndarray, int]:
    """One image of the `shapes` dataset: (size, size, 3) uint8 and its class, fixed by `seed`.

    A coloured shape of a random class, position, size and rotation on a background that is a
    linear gradient between two random colours at a random angle. plain=True (`shapes-plain`):
    a flat background and a shape colour from the two small palettes above.
    """
    rng = random.Random(seed)
    if plain:
        bg = np.broadcast_to(np.array(rng.choice(PLAIN_BACKGROUNDS), np.float32), (size, size, 3))
        fg = np.array(rng.choice(PLAIN_COLOURS), np.float32)
    else:
        bg, fg = _gradient_and_colour(rng, size)
    label = rng.randrange(len(SHAPE_CLASSES))
    S = size * supersample  # the shape's mask is drawn larger, then box-filtered: smooth edges
    r = rng.uniform(0.22, 0.42) * S
    cx, cy = rng.uniform(r, S - r), rng.uniform(r, S - r)
    polys = _shape_outline(SHAPE_CLASSES[label], cx, cy, r, rng.uniform(0, 2 * math.pi))
    mask = Image.new("L", (S, S), 0)
    draw = ImageDraw.Draw(mask)
    draw.polygon(polys[0], fill=255)
    for hole in polys[1:]:
        draw.polygon(hole, fill=0)
    alpha = (
        np.asarray(mask.resize((size, size), Image.BOX), np.float32)[..., None] / 255
    )  # (size, size, 1)
    return (bg * (1 - alpha) + fg * alpha).round().astype(np.uint8), label


@functools.lru_cache(maxsize=4)
def _render_all(base: int, n: int, size: int, plain: bool) -> tuple[torch.Tensor, torch.Tensor]:
    items = [
        render_shape(base + i, size, plain=plain)
        for i in progress(range(n), desc="rendering shapes", leave=False)
    ]
    return torch.from_numpy(np.stack([im for im, _ in items])), torch.tensor(
        [lab for _, lab in items]
    )  # (n, S, S, 3) uint8, (n,)


class Shapes(torch.utils.data.Dataset):
    """The built-in datasets: `n` procedural images, item i always the same for the same seed
    (plain=True: `shapes-plain`)."""

    def __init__(self, split: str, size: int = 32, seed: int = 0, plain: bool = False):
        if size % 8 or not 8 <= size <= 256:
            raise UserError(
                f"shapes: --image-size must be a multiple of 8 from 8 to 256, got {size}"
            )
        self.n = SHAPES_TRAIN if split == "train" else SHAPES_VAL
        self.base = seed * 10_000_019 + (0 if split == "train" else SHAPES_TRAIN)
        self.size, self.plain = size, plain
        self.classes = SHAPE_CLASSES
        # Small sizes are rendered once into memory (10k images at 32 px take a few seconds);
        # large ones are rendered on access, so workers share the load.
        self.cache = None
        if self.n * size * size * 3 <= 64 * 2**20:
            self.cache, self.labels = _render_all(self.base, self.n, size, plain)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.cache is not None:
            img, label = self.cache[i], int(self.labels[i])
        else:
            img, label = render_shape(self.base + i, self.size, plain=self.plain)
            img = torch.from_numpy(img)
        return {"image": img.permute(2, 0, 1).float() / 127.5 - 1, "label": label}


@dataclass(frozen=True)
class HubDataset:
    hub_id: str
    image_column: str
    label_column: str | None
    train_split: str
    eval_split: str | None  # None: the last 1000 training images are held out
    size: int  # default --image-size
    streaming: bool = False


# Short names -> hub datasets. Column and split names differ between repos (cifar10's image column
# is `img`); these were checked against the dataset cards.
DATASETS = {
    "mnist": HubDataset("ylecun/mnist", "image", "label", "train", "test", 32),
    "cifar10": HubDataset("uoft-cs/cifar10", "img", "label", "train", "test", 32),
    "ffhq": HubDataset("merkol/ffhq-256", "image", None, "train", None, 256),
    "celebahq": HubDataset(
        "korexyz/celeba-hq-256x256", "image", "label", "train", "validation", 256
    ),
    # Gated: accept the terms on the hub, then `hf auth login` or set HF_TOKEN. Ungated 256 px mirror
    # with the same labels: --hf-id benjamin-paine/imagenet-1k-256x256 --label-column label
    "imagenet": HubDataset(
        "ILSVRC/imagenet-1k", "image", "label", "train", "validation", 256, streaming=True
    ),
    "lsun-church": HubDataset("tglcourse/lsun_church_train", "image", None, "train", "test", 256),
    "flowers": HubDataset("nelorth/oxford-flowers", "image", "label", "train", "test", 64),
}
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


def dataset_choices() -> str:
    return (
        ", ".join([*BUILTIN, *DATASETS])
        + ", --hf-id <hub id>, or a path to an image folder or .parquet file"
    )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@functools.lru_cache(maxsize=16)
def native_image_size(path: str, image_column: str = "image") -> int | None:
    """The short side of a local folder's or parquet file's images when the first 64 share one
    size and it is a multiple of 8 from 8 to 4096; else None."""
    p = Path(path)
    parquet = (
        [p] if p.suffix == ".parquet" else sorted(p.rglob("*.parquet"))[:1] if p.is_dir() else []
    )
    try:
        if parquet:
            import pyarrow.parquet as pq

            rows = next(pq.ParquetFile(parquet[0]).iter_batches(64, columns=[image_column]))
            sizes = {_to_pil(v).size for v in rows.column(0).to_pylist()}
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)[:64]
            sizes = {Image.open(f).size for f in files}
        else:
            return None
    except Exception:  # unreadable: load_data reports it
        return None
    side = min(next(iter(sizes))) if len(sizes) == 1 else None
    return side if side and side % 8 == 0 and 8 <= side <= 4096 else None


def default_image_size(cfg) -> int:
    """--image-size, else the dataset's: shapes 32, the table's size for hub names, a local
    dataset's own size when its images share one, else 256."""
    if cfg.image_size is not None:
        return cfg.image_size
    if cfg.dataset in DATASETS and cfg.hf_id is None:
        return DATASETS[cfg.dataset].size
    if cfg.dataset in BUILTIN and cfg.hf_id is None:
        return 32
    if cfg.hf_id is None and Path(cfg.dataset).exists():
        return native_image_size(cfg.dataset, cfg.image_column or "image") or 256
    return 256


def preset_name(cfg) -> str:
    """Which per-dataset defaults a lesson takes: the dataset's name when it has its own, else
    "small" for images of 64 px or less (a CPU-scale run) and "large" for the others."""
    if cfg.hf_id is None and (cfg.dataset in BUILTIN or cfg.dataset in DATASETS):
        return cfg.dataset
    return "small" if default_image_size(cfg) <= 64 else "large"


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


def image_to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """PIL image of any mode/size -> (3, size, size) float in [-1, 1]: RGB, resize the short side, centre crop."""
    img = img.convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 127.5 - 1


def _hf_transform(image_col: str, label_col: str | None, size: int):
    def fn(batch):  # runs lazily on access (with_transform): nothing is written to disk
        n = len(batch[image_col])
        return {
            "image": [image_to_tensor(_to_pil(v), size) for v in batch[image_col]],
            "label": [int(v) for v in batch[label_col]] if label_col else [0] * n,
        }

    return fn


def _open_hf(cfg, split: str | None):
    """(dataset, spec) for cfg's hub dataset or local path. Errors become one-line UserErrors."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import datasets

    datasets.logging.set_verbosity_error()
    name, path = cfg.hf_id or cfg.dataset, Path(cfg.dataset)
    if cfg.hf_id:
        spec = HubDataset(cfg.hf_id, "image", None, "train", None, 256)
    elif cfg.dataset in DATASETS:
        spec = DATASETS[cfg.dataset]
    elif path.exists() or "/" in cfg.dataset or cfg.dataset.endswith(".parquet"):
        if not path.exists():
            raise UserError(f"--dataset {cfg.dataset}: no such file or folder")
        spec = HubDataset(str(path), "image", None, "train", None, 256)
    else:
        raise UserError(f"unknown dataset '{cfg.dataset}'; choose one of: {dataset_choices()}")
    spec = dataclasses.replace(
        spec,
        image_column=cfg.image_column or spec.image_column,
        label_column=cfg.label_column if cfg.label_column is not None else spec.label_column,
        streaming=spec.streaming if cfg.streaming is None else cfg.streaming,
    )
    split = split or spec.train_split
    try:
        if path.is_file() or (path.is_dir() and not cfg.hf_id and cfg.dataset not in DATASETS):
            if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
                raise UserError(f"--dataset {path}: the folder holds no files")
            kind = (
                "parquet"
                if path.suffix == ".parquet" or any(path.rglob("*.parquet"))
                else "imagefolder"
            )
            key = "data_files" if path.is_file() else "data_dir"
            ds = datasets.load_dataset(
                kind, **{key: str(path)}, split="train", streaming=spec.streaming
            )
        else:
            ds = datasets.load_dataset(
                spec.hub_id, split=split, streaming=spec.streaming, token=os.environ.get("HF_TOKEN")
            )
    except UserError:
        raise
    except (
        Exception
    ) as e:  # network, auth, missing split, unreadable files: one line, not a traceback
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = (
            ""
            if path.exists()
            else "; check the hub id and the network, and for gated datasets (imagenet) run `hf auth login` or set HF_TOKEN"
        )
        raise UserError(f"cannot load dataset '{name}' (split {split}): {msg}{hint}") from None
    columns = ds.column_names or list((ds.features or {}).keys())
    for role, col in (("image", spec.image_column), ("label", spec.label_column)):
        if col is not None and col not in columns:
            raise UserError(
                f"dataset '{name}' has no {role} column '{col}'; its columns are: {', '.join(columns)} (pass --{role}-column)"
            )
    return ds, spec


def load_data(cfg, rank: int = 0, world: int = 1):
    """(train, val, classes) for cfg.dataset: torch-style datasets of {"image", "label"} dicts.

    `classes` is a tuple of class names, or None for unlabelled data. Streaming datasets are
    `datasets.IterableDataset`s split by rank; map-style ones are split by `batches`.
    """
    size = default_image_size(cfg)
    if cfg.dataset in BUILTIN and cfg.hf_id is None:
        plain = cfg.dataset == "shapes-plain"
        train, val = (Shapes(split, size, cfg.seed, plain) for split in ("train", "val"))
        return train, val, SHAPE_CLASSES
    if size % 8 or size < 8:
        raise UserError(f"--image-size must be a positive multiple of 8, got {size}")
    if cfg.image_size is None and cfg.hf_id is None and Path(cfg.dataset).exists():
        own = native_image_size(cfg.dataset, cfg.image_column or "image")
        echo(
            f"--image-size {size}: "
            + (
                "the images' own size"
                if own
                else "the images differ in size (or are not a multiple of 8); pass --image-size"
            )
        )
    train, spec = _open_hf(cfg, None)
    if spec.eval_split is not None:
        val, _ = _open_hf(cfg, spec.eval_split)
    elif spec.streaming:
        train, val = _hold_out_stream(train, spec.image_column)
    else:  # no validation split: hold out a random 1000 (a tenth of a small dataset)
        n = len(train)
        held = min(HELD_OUT, n // 10)
        if held < 1:
            raise UserError(
                f"dataset '{cfg.hf_id or cfg.dataset}' has only {n} images; it needs at least 10 to hold some out for validation"
            )
        labels = train[spec.label_column] if spec.label_column else None
        train_idx, val_idx = held_out_indices(n, held, labels)
        val, train = train.select(val_idx), train.select(train_idx)
    classes = None
    if spec.label_column is not None:
        feature = (train.features or {}).get(spec.label_column)
        classes = tuple(feature.names) if hasattr(feature, "names") else None
    fn = _hf_transform(spec.image_column, spec.label_column, size)
    if spec.streaming:  # IterableDataset has no with_transform; its map is lazy and writes nothing
        from datasets.distributed import split_dataset_by_node

        train = split_dataset_by_node(train, rank=rank, world_size=world)
        keep = [spec.image_column] + ([spec.label_column] if spec.label_column else [])
        lazy = lambda d: d.select_columns(keep).map(fn, batched=True, remove_columns=keep)
        train = lazy(train)
        val = (
            lazy(val)
            if isinstance(val, torch.utils.data.IterableDataset)
            else val.with_transform(fn)
        )
    else:
        train, val = train.with_transform(fn), val.with_transform(fn)
    return train, val, classes


def _collate(items):
    return torch.stack([it["image"] for it in items]), torch.tensor([it["label"] for it in items])


def batches(dataset, cfg, start_step: int = 0, rank: int = 0, world: int = 1):
    """Yield (images (B, 3, S, S), labels (B,)) forever, in an order fixed by cfg.seed.

    Epoch e shuffles with seed (cfg.seed, e); each rank takes every world-th index. The first
    `start_step` batches are skipped without loading them, so --resume sees the same data.
    """
    B = cfg.batch_size
    pin = torch.cuda.is_available()
    if isinstance(dataset, torch.utils.data.IterableDataset):  # streaming: no length, no index
        epoch = 0
        stream = dataset.shuffle(seed=cfg.seed, buffer_size=10_000).skip(start_step * B)
        while True:
            stream.set_epoch(epoch)
            workers = min(cfg.num_workers, getattr(stream, "num_shards", 1))
            n = 0
            loader = torch.utils.data.DataLoader(
                stream,
                batch_size=B,
                collate_fn=_collate,
                num_workers=workers,
                pin_memory=pin,
                drop_last=True,
                generator=torch.Generator().manual_seed(epoch),
            )
            for n, batch in enumerate(loader, 1):
                yield batch
            if n == 0:
                raise UserError(
                    f"the stream holds fewer than {B} training images (after {HELD_OUT} held out for validation, and {start_step} batches skipped by --resume)"
                )
            epoch += 1
    per_epoch = len(dataset) // (B * world)
    if per_epoch == 0:
        raise UserError(
            f"the dataset has {len(dataset)} images, fewer than one batch of {B} per process; lower --batch-size"
        )
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        perm = torch.randperm(
            len(dataset), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        )
        perm = perm[rank::world][: per_epoch * B].view(
            per_epoch, B
        )  # (steps, B): this rank's batches
        loader = torch.utils.data.DataLoader(  # own generator: creating a loader must not consume the global RNG
            dataset,
            batch_sampler=perm[skip:].tolist(),
            collate_fn=_collate,
            num_workers=cfg.num_workers,
            pin_memory=pin,
            generator=torch.Generator().manual_seed(epoch),
        )
        yield from loader
        epoch, skip = epoch + 1, 0


def first_images(dataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n validation images and labels, in a fixed order: (n, 3, S, S), (n,)."""
    items = []
    for item in (
        dataset
        if isinstance(dataset, torch.utils.data.IterableDataset)
        else (dataset[i] for i in range(min(n, len(dataset))))
    ):
        items.append(item)
        if len(items) == n:
            break
    return _collate(items)


# --- the conv encoder and decoder of lessons 01-02 (VQ-VAE paper, Sec. 4.1) ---


class ResBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))): the VQ-VAE residual block."""

    def __init__(self, ch: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, ch, 1)
        )

    def forward(self, x):
        return x + self.net(x)


def _levels(downsample: int) -> int:
    m = round(math.log2(downsample)) if downsample > 0 else -1
    if m < 1 or 2**m != downsample:
        raise UserError(f"--downsample must be a power of two >= 2, got {downsample}")
    return m


def _width(ch: int, level: int) -> int:
    return ch * min(2**level, 4)  # channels double per halving of resolution, up to 4x


class Encoder(nn.Module):
    """x: (B, 3, S, S) -> z_e: (B, d, S/f, S/f). Strided 4x4 convs halve the size log2(f) times."""

    def __init__(self, d: int, ch: int = 64, downsample: int = 4, res_blocks: int = 2):
        super().__init__()
        m = _levels(downsample)
        layers = [nn.Conv2d(3, ch, 3, padding=1)]
        for i in range(m):
            layers += [
                nn.ReLU(),
                nn.Conv2d(_width(ch, i), _width(ch, i + 1), 4, stride=2, padding=1),
            ]
        top = _width(ch, m)
        layers += [ResBlock(top) for _ in range(res_blocks)] + [nn.ReLU(), nn.Conv2d(top, d, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    """z_q: (B, d, S/f, S/f) -> x_hat: (B, 3, S, S). The encoder's mirror with transposed convs."""

    def __init__(self, d: int, ch: int = 64, downsample: int = 4, res_blocks: int = 2):
        super().__init__()
        m = _levels(downsample)
        top = _width(ch, m)
        layers = [nn.Conv2d(d, top, 3, padding=1)] + [ResBlock(top) for _ in range(res_blocks)]
        for i in reversed(range(m)):
            layers += [
                nn.ReLU(),
                nn.ConvTranspose2d(_width(ch, i + 1), _width(ch, i), 4, stride=2, padding=1),
            ]
        layers += [nn.ReLU(), nn.Conv2d(ch, 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


# --- metrics ---


def psnr(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, for images in [-1, 1] (peak-to-peak 2)."""
    mse = (x.float() - x_hat.float().clamp(-1, 1)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4 / mse.clamp_min(1e-10))


def codebook_stats(counts: torch.Tensor) -> dict[str, float]:
    """counts: (K,) how often each code was chosen -> usage (fraction used), perplexity, unused."""
    p = counts.double() / counts.sum().clamp_min(1)
    entropy = -(p * p.clamp_min(1e-30).log()).sum()
    return {
        "usage": (counts > 0).double().mean().item(),
        "perplexity": entropy.exp().item(),
        "unused": int((counts == 0).sum()),
    }


# --- runs: folder, metrics log, checkpoints, figures ---


class Run:
    """A run folder: ckpt.pt (atomic), metrics.jsonl (one JSON object per line), figures.

    A fresh run refuses to write over an existing checkpoint unless --overwrite, and replaces
    the old files only when it writes its own (a run that fails on its data loses nothing);
    --resume loads the checkpoint, checks that the flags that shape the model match the saved
    config, and cuts metrics.jsonl back to the checkpoint's step. The training loops iterate
    `run.steps(start)`, which turns Ctrl-C / SIGTERM into a checkpoint and exit 130 / 143.
    """

    RESUMABLE = frozenset(  # flags that may change between a run and its --resume
        {"steps", "compile", "resume", "overwrite", "log_every", "ckpt_every", "ckpt_minutes"}
        | {"num_workers", "device", "eval_images", "out"}  # the folder may have moved
    )

    def __init__(self, cfg):
        self.cfg, self.dir = cfg, Path(cfg.out)
        self.ckpt_path = self.dir / "ckpt.pt"
        if self.ckpt_path.exists() and not (cfg.resume or cfg.overwrite):
            raise UserError(
                f"{self.ckpt_path} exists; pass --resume to continue that run, --overwrite to replace it, or another --out"
            )
        if cfg.resume and not self.ckpt_path.exists():
            raise UserError(f"--resume: no checkpoint at {self.ckpt_path}")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create run folder {self.dir}: {e.strerror}") from None
        self.fresh_log = not cfg.resume  # the first log() of a fresh run replaces the old file
        self.saved_step, self.saved_at, self.signalled = None, time.monotonic(), None

    def log(self, record: dict) -> None:
        if is_main():  # under torchrun, rank 0 writes for everyone
            with open(self.dir / "metrics.jsonl", "w" if self.fresh_log else "a") as f:
                f.write(json.dumps(record) + "\n")
            self.fresh_log = False

    def steps(self, start: int):
        """start, ..., cfg.steps - 1 with a progress bar. While it runs, Ctrl-C and SIGTERM (what
        a cluster sends before preemption) only set a flag: the loop saves at the end of that
        step (save_due is True), and then Interrupted says how to resume."""

        def on_signal(signum, frame):
            self.signalled = signum

        old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for step in progress(
                range(start, self.cfg.steps), initial=start, total=self.cfg.steps, desc=self.cfg.out
            ):
                yield step
                if self.signalled is not None:
                    name = signal.Signals(self.signalled).name
                    again = [a for a in sys.argv if a != "--overwrite"]
                    again += [] if "--resume" in again else ["--resume"]
                    raise Interrupted(
                        f"{name} at step {step + 1}: saved {self.ckpt_path}; continue with: python {' '.join(again)}",
                        128 + self.signalled,
                    )
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def check_finite(self, loss: torch.Tensor, step: int, flags: str = "--lr") -> None:
        """Stop at the first NaN or infinite loss, before it reaches a checkpoint (a device sync)."""
        if not torch.isfinite(loss.detach()).all():
            kept = (
                f"{self.ckpt_path} keeps step {self.saved_step}"
                if self.saved_step
                else "nothing was saved"
            )
            raise UserError(
                f"the loss became {loss.item()} at step {step}; training stopped and {kept}; lower {flags}"
            )

    def save_due(self, step: int) -> bool:
        """Save now? Every --ckpt-every steps, at the last step, after --ckpt-minutes without a
        save, and after Ctrl-C / SIGTERM (agreed by every process under torchrun)."""
        stop = torch.tensor(float(self.signalled is not None))
        if dist_on():  # nccl reduces CUDA tensors only
            if torch.distributed.get_backend() == "nccl":
                stop = stop.cuda()
            torch.distributed.all_reduce(stop, op=torch.distributed.ReduceOp.MAX)
            self.signalled = self.signalled or (signal.SIGTERM if stop.item() else None)
        late = 0 < self.cfg.ckpt_minutes * 60 <= time.monotonic() - self.saved_at
        return (
            step % self.cfg.ckpt_every == 0 or step == self.cfg.steps or late or bool(stop.item())
        )

    def save(self, step: int, **state) -> None:
        """Write ckpt.pt atomically: {"step", "lesson", "config", "rng", **state} (state dicts).
        Rank 0 only under torchrun (every rank holds the same weights). Weights that are not
        finite never replace a checkpoint."""
        self.saved_at = time.monotonic()
        if not is_main():
            return
        model = state.get("model", {})
        if not all(v.isfinite().all() for v in model.values() if v.is_floating_point()):
            raise UserError(
                f"the weights became NaN or infinite by step {step}; {self.ckpt_path} was not overwritten; lower --lr"
            )
        payload = {
            "step": step,
            "lesson": lesson_name(self.cfg),  # whose Config and build() rebuild the model
            "config": dataclasses.asdict(self.cfg),
            "rng": rng_state(),
            **state,
        }
        save_atomic(payload, self.ckpt_path)
        self.saved_step = step
        if self.fresh_log:  # the old run's log must not outlive its checkpoint
            (self.dir / "metrics.jsonl").write_text("")
            self.fresh_log = False

    def load(self) -> dict:
        ckpt = load_checkpoint(self.ckpt_path)
        mine = lesson_name(self.cfg)
        if ckpt.get("lesson") != mine:
            raise UserError(
                f"--resume: {self.ckpt_path} was written by {ckpt.get('lesson') or 'another script'}, not {mine}; pass another --out"
            )
        saved, now = ckpt["config"], dataclasses.asdict(self.cfg)
        diff = [
            f"--{k.replace('_', '-')} {saved.get(k)} (now {now[k]})"
            for k in now
            if k not in self.RESUMABLE and saved.get(k) != now[k]
        ]
        if diff:
            raise UserError(
                f"--resume: {self.ckpt_path} was made with different flags: {'; '.join(diff)}"
            )
        if ckpt["step"] > self.cfg.steps:
            raise UserError(
                f"--resume: {self.ckpt_path} is at step {ckpt['step']}, past --steps {self.cfg.steps}; pass --steps above {ckpt['step']} to train on"
            )
        set_rng_state(ckpt["rng"])
        return ckpt

    def restore(self, **state) -> int:
        """With --resume, load every named module or optimizer from ckpt.pt (and the RNG state),
        and drop the metrics.jsonl lines after its step (they are about to be redone); return the
        step to continue from (0 for a fresh run)."""
        if not self.cfg.resume:
            return 0
        ckpt = self.load()
        for key, obj in state.items():
            if key not in ckpt:
                raise UserError(
                    f"checkpoint {self.ckpt_path} has no '{key}': it was not written by this lesson"
                )
            if isinstance(obj, nn.Module):
                load_state(obj, ckpt[key], self.ckpt_path)
            else:
                obj.load_state_dict(ckpt[key])
        self.saved_step = ckpt["step"]
        if (self.dir / "metrics.jsonl").exists() and is_main():
            kept = [
                r
                for r in read_log(self.dir)
                if r.get("step", 0) <= ckpt["step"] and not r.get("final")
            ]
            (self.dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
        return ckpt["step"]


def read_log(run_dir) -> list[dict]:
    """The records of a run folder's metrics.jsonl ([] when it has none)."""
    log = Path(run_dir) / "metrics.jsonl"
    return (
        [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        if log.exists()
        else []
    )


def lesson_name(cfg) -> str:
    """The file stem of the lesson whose Config this is ("02_rq"), also when that lesson runs as
    the script (its module is then called __main__)."""
    return Path(sys.modules[type(cfg).__module__].__file__).stem


def fetch_weights(url: str, file_name: str, needed_by: str, otherwise: str) -> dict:
    """A state dict through torch.hub's download cache (downloaded once); offline and not cached:
    a UserError that names the file, the folder to put it in, and `otherwise` (what else to do)."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if not path.exists():
        try:
            torch.hub.load_state_dict_from_url(
                url, file_name=file_name, map_location="cpu", weights_only=True
            )
        except Exception as e:
            raise UserError(
                f"{needed_by} needs {file_name}, which is not in {path.parent} and could not be downloaded from "
                f"{url} ({type(e).__name__}); put the file there, or {otherwise}"
            ) from None
    return torch.load(path, map_location="cpu", weights_only=True)


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    """torch.load(weights_only=True) with errors that name the file and what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder; pass the file in it, {path / 'ckpt.pt'}")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(
            f"checkpoint {path} is corrupt or not a checkpoint ({type(e).__name__})"
        ) from None
    if not isinstance(ckpt, dict) or not {"step", "config", "model"} <= ckpt.keys():
        raise UserError(f"checkpoint {path} lacks step/config/model: not written by these lessons")
    return ckpt


def load_state(module: nn.Module, state: dict, path) -> None:
    """load_state_dict whose mismatch error names the checkpoint file."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
        raise UserError(f"checkpoint {path} does not fit this model: {first.strip()}") from None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [-1, 1] -> (..., H, W, 3) uint8."""
    return (
        ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().movedim(-3, -1).cpu().numpy()
    )


def save_grid(rows: list[torch.Tensor], path, min_size: int = 64) -> None:
    """Save images as a grid, one row per tensor (n, 3, H, W) in [-1, 1]; small images are
    enlarged (nearest neighbour) to at least min_size pixels so that they can be seen."""
    n, (H, W) = max(len(r) for r in rows), rows[0].shape[-2:]
    pad = 2
    grid = np.full((len(rows) * (H + pad) + pad, n * (W + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(to_uint8(row)):
            grid[
                pad + i * (H + pad) : pad + i * (H + pad) + H,
                pad + j * (W + pad) : pad + j * (W + pad) + W,
            ] = img
    im = Image.fromarray(grid)
    scale = max(1, math.ceil(min_size / H))
    im.resize((im.width * scale, im.height * scale), Image.NEAREST).save(path)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers (for saving and attributes)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum tensors over all processes in place (a no-op in a single process)."""
    if dist_on():
        for t in tensors:
            torch.distributed.all_reduce(t)


# --- several processes: torchrun + DistributedDataParallel ---
#
# `torchrun --nproc_per_node N lesson.py ...` starts N copies of the script with RANK, WORLD_SIZE
# and LOCAL_RANK set. Each copy reads its own slice of every batch (--batch-size is per process,
# so the global batch is N times it; scale --lr yourself if you want it to follow), gradients
# are averaged by DDP, the EMA codebook statistics are summed over processes before each EMA
# step (01's ema_update) and dead codes are restarted from rank 0's vectors on every rank.
# Rank 0 alone writes logs, checkpoints and figures.


def dist_on() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if dist_on() else 0


def is_main() -> bool:
    return rank() == 0


def distributed() -> tuple[int, int]:
    """(rank, world size). Under torchrun the first call joins the process group (nccl on CUDA,
    gloo on CPU); without it, (0, 1)."""
    if not dist_on() and "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (rank(), torch.distributed.get_world_size()) if dist_on() else (0, 1)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around model when several processes train, else model itself.
    Buffers are not broadcast from rank 0 at each forward: the EMA codebook is kept equal on
    every rank by its all-reduced statistics, and broadcasting would hide a rank that drifts."""
    if not dist_on():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def broadcast_from_main(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's values of t on every process, in place (a no-op in a single process)."""
    if dist_on():
        torch.distributed.broadcast(t, src=0)
    return t


def compiled(model: nn.Module, cfg) -> nn.Module:
    """torch.compile(model) with --compile, else model. The first steps are slow while it
    compiles; the quantizers' data-dependent restarts run eagerly (graph breaks)."""
    return torch.compile(model) if cfg.compile else model


def accumulating(model: nn.Module, micro: int, n: int):
    """Context for micro-batch `micro` of `n`: under DDP, every micro-batch but the last skips
    the gradient all-reduce (DDP.no_sync), so that n micro-batches cost one reduction."""
    model = getattr(model, "_orig_mod", model)  # under --compile
    if micro < n - 1 and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return nullcontext()


def barrier() -> None:
    """Wait until every process gets here (a no-op in a single process)."""
    if dist_on():
        torch.distributed.barrier()


def teardown() -> None:
    """Wait for every process, then leave the process group (end of a torchrun job)."""
    if dist_on():
        barrier()
        torch.distributed.destroy_process_group()
