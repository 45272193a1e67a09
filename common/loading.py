"""Loading images: Hugging Face datasets (hub, streaming, local), batches for one or many
processes, and the first n images of a split.

A student may skip this folder: nothing in it is a concept the lessons teach.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from .datasets import (
    DATASETS,
    HELD_OUT,
    HubDataset,
    _hold_out_stream,
    dataset_choices,
    default_image_size,
    held_out_indices,
    is_hub_id,
    native_image_size,
)
from .device import echo
from .errors import UserError
from .images import _to_pil, image_to_tensor
from .shapes import BUILTIN, SHAPE_CLASSES, Shapes

SKIPPED: set = set()  # the unreadable images met so far (each is named once)


def _image(value, size: int) -> torch.Tensor | None:
    """An image value -> (3, size, size), or None (and a warning naming it, once) if it cannot be
    read: training skips it (the batch is one image smaller), rather than stopping hours in."""
    try:
        return image_to_tensor(_to_pil(value), size)
    except (OSError, ValueError, SyntaxError) as e:  # empty, truncated, not an image
        where = value.get("path") if isinstance(value, dict) else None
        key = where or hash(value.get("bytes") if isinstance(value, dict) else repr(value)[:200])
        if key not in SKIPPED:
            SKIPPED.add(key)
            what = (
                where
                or f"an image of {len(value.get('bytes') or b'') if isinstance(value, dict) else '?'} bytes"
            )
            echo(
                f"skipping an unreadable image ({len(SKIPPED)} so far): {what} ({str(e).splitlines()[0][:100]})"
            )
        return None


def _caption(value, column: str) -> str:
    if value is None:
        return ""  # a missing caption is no caption (what guidance contrasts with)
    if not isinstance(value, str):
        raise UserError(f"caption column '{column}' holds a {type(value).__name__} ({value!r:.60}), not text")
    return value


def _hf_transform(image_col, label_col, caption_col, size: int, classes_of: dict | None = None):
    """The lazy per-batch map from the dataset's columns to {"image", "label", "caption"};
    classes_of: label value -> class index, when the column is not a ClassLabel."""

    def fn(batch):  # runs lazily on access (with_transform): nothing is written to disk
        n = len(batch[image_col])
        labels = [classes_of[v] if classes_of else int(v) for v in batch[label_col]] if label_col else [0] * n
        return {
            "image": [_image(v, size) for v in batch[image_col]],
            "label": labels,
            "caption": [_caption(v, caption_col) for v in batch[caption_col]] if caption_col else [""] * n,
        }

    return fn


def _classes(ds, column: str, streaming: bool) -> tuple[tuple, dict | None]:
    """(class names, label value -> class index or None) of the label column. A ClassLabel has
    its names; integers or names are counted from the values (sorted; the log says so). A null or
    another kind of value is a UserError naming its row."""
    feature = (ds.features or {}).get(column)
    if hasattr(feature, "names"):
        return tuple(feature.names), None
    if streaming:
        raise UserError(
            f"--label-column {column} of a stream must be a ClassLabel (its classes cannot be counted without reading it all)"
        )
    values = ds[column]
    bad = next(
        (i for i, v in enumerate(values) if not isinstance(v, (int, str)) or isinstance(v, bool)), None
    )
    if bad is not None:
        raise UserError(
            f"label column '{column}' row {bad}: {values[bad]!r} is not a class (an integer or a name)"
        )
    names = sorted(set(values), key=lambda v: (isinstance(v, str), v))
    shown = ", ".join(map(str, names[:8])) + (", ..." if len(names) > 8 else "")
    echo(
        f"labels: {len(names)} classes counted from the values of column '{column}' (not a ClassLabel): {shown}"
    )
    return tuple(map(str, names)), {v: i for i, v in enumerate(names)}


def _check_captions(ds, column: str) -> None:
    """Every caption is text or null (null: no caption); else a UserError naming the row."""
    values = ds[column]
    bad = next((i for i, v in enumerate(values) if v is not None and not isinstance(v, str)), None)
    if bad is not None:
        v = values[bad]
        raise UserError(f"caption column '{column}' row {bad}: a {type(v).__name__} ({v!r:.60}), not text")


def _spec(cfg) -> HubDataset:
    """What to load for --dataset, with the column and streaming flags applied."""
    path = Path(cfg.dataset)
    if cfg.dataset in DATASETS:
        spec = DATASETS[cfg.dataset]
    elif is_hub_id(cfg.dataset):
        spec = HubDataset(cfg.dataset, "image", None, "train", None, 256)
    elif path.exists() or "/" in cfg.dataset or cfg.dataset.endswith(".parquet"):
        if not path.exists():
            raise UserError(f"--dataset {cfg.dataset}: no such file or folder")
        spec = HubDataset(str(path), "image", None, "train", None, 256)
    else:
        raise UserError(f"unknown dataset '{cfg.dataset}'; choose one of: {dataset_choices()}")
    return dataclasses.replace(
        spec,
        image_column=cfg.image_column or spec.image_column,
        label_column=cfg.label_column if cfg.label_column is not None else spec.label_column,
        streaming=spec.streaming if cfg.streaming is None else cfg.streaming,
        caption_column=cfg.caption_column or spec.caption_column,
    )


def _open_hf(cfg, split: str | None):
    """(dataset, spec) for cfg's hub dataset or local path. Errors become one-line UserErrors."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import datasets

    datasets.logging.set_verbosity_error()
    name, path, spec = cfg.dataset, Path(cfg.dataset), _spec(cfg)
    split, kind = split or spec.train_split, None
    try:
        if path.is_file() or (path.is_dir() and cfg.dataset not in DATASETS):
            if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
                raise UserError(f"--dataset {path}: the folder holds no files")
            kind = "parquet" if path.suffix == ".parquet" or any(path.rglob("*.parquet")) else "imagefolder"
            key = "data_files" if path.is_file() else "data_dir"
            ds = datasets.load_dataset(kind, **{key: str(path)}, split="train", streaming=spec.streaming)
        else:
            ds = datasets.load_dataset(
                spec.hub_id, split=split, streaming=spec.streaming, token=os.environ.get("HF_TOKEN")
            )
    except UserError:
        raise
    except Exception as e:  # network, auth, missing split, unreadable files: one line, not a traceback
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = "; check the hub id and the network, and for gated datasets (imagenet) run `hf auth login` or set HF_TOKEN"
        hint = "" if path.exists() else hint
        raise UserError(f"cannot load dataset '{name}' (split {split}): {msg}{hint}") from None
    columns = ds.column_names or list((ds.features or {}).keys())
    for role, col in (
        ("image", spec.image_column),
        ("label", spec.label_column),
        ("caption", spec.caption_column),
    ):
        if col is not None and col not in columns:
            if role == "label" and path.is_dir() and kind == "imagefolder":
                raise UserError(
                    f"--dataset {path}: no labels: an image folder has them when its images sit in class folders, at least two, all at the same depth"
                )
            raise UserError(
                f"dataset '{name}' has no {role} column '{col}'; its columns are: {', '.join(columns)} (pass --{role}-column)"
            )
    feature = (ds.features or {}).get(spec.image_column)
    if isinstance(feature, datasets.Image) and feature.decode:  # decoded by _image: unreadable ones skipped
        ds = ds.cast_column(spec.image_column, datasets.Image(decode=False))
    return ds, spec


def _validation_split(cfg, train, spec: HubDataset, classes_of: dict | None = None):
    """(train, val): the dataset's own validation split, else held-out images (a hash-chosen 1000
    of a stream; a seeded, class-stratified 1000, or a tenth of a small dataset, of the others)."""
    if spec.eval_split is not None:
        return train, _open_hf(cfg, spec.eval_split)[0]
    if spec.streaming:
        return _hold_out_stream(train, spec.image_column)
    n = len(train)
    held = min(HELD_OUT, n // 10)
    if held < 1:
        raise UserError(
            f"dataset '{cfg.dataset}' has only {n} images; it needs at least 10 to hold some out for validation"
        )
    labels = train[spec.label_column] if spec.label_column else None
    labels = [classes_of[v] for v in labels] if classes_of and labels else labels
    train_idx, val_idx = held_out_indices(n, held, labels)
    return train.select(train_idx), train.select(val_idx)


def load_data(cfg, rank: int = 0, world: int = 1):
    """(train, val, classes) for cfg.dataset: torch-style datasets of {"image", "label"} dicts.

    `classes` is a tuple of class names, or None for unlabelled data. Streaming datasets are
    `datasets.IterableDataset`s split by rank; map-style ones are split by `batches`.
    """
    size = default_image_size(cfg)
    if cfg.dataset in BUILTIN:
        plain = cfg.dataset == "shapes-plain"
        train, val = (Shapes(split, size, cfg.seed, plain) for split in ("train", "val"))
        return train, val, SHAPE_CLASSES
    if size % 8 or size < 8:
        raise UserError(f"--image-size must be a positive multiple of 8, got {size}")
    train, spec = _open_hf(cfg, None)  # its errors first
    if cfg.image_size is None and Path(cfg.dataset).exists():
        own = native_image_size(cfg.dataset, cfg.image_column or "image")
        why = "the images' own size" if own else "the images differ in size (or are not a multiple of 8)"
        echo(f"--image-size {size}: {why}" + ("" if own else "; pass --image-size"))
    classes, classes_of = None, None
    if spec.label_column is not None:
        classes, classes_of = _classes(train, spec.label_column, spec.streaming)
    if spec.caption_column is not None and not spec.streaming:
        _check_captions(train, spec.caption_column)
    train, val = _validation_split(cfg, train, spec, classes_of)
    fn = _hf_transform(spec.image_column, spec.label_column, spec.caption_column, size, classes_of)
    if spec.streaming:  # IterableDataset has no with_transform; its map is lazy and writes nothing
        from datasets.distributed import split_dataset_by_node

        train = split_dataset_by_node(train, rank=rank, world_size=world)
        keep = [c for c in (spec.image_column, spec.label_column, spec.caption_column) if c]
        lazy = lambda d: d.select_columns(keep).map(fn, batched=True, remove_columns=keep)
        train = lazy(train)
        val = lazy(val) if isinstance(val, torch.utils.data.IterableDataset) else val.with_transform(fn)
    else:
        train, val = train.with_transform(fn), val.with_transform(fn)
    return train, val, classes


def _collate(items):
    items = [it for it in items if it["image"] is not None]  # unreadable images are skipped (_image)
    images, labels = torch.stack([it["image"] for it in items]), torch.tensor([it["label"] for it in items])
    return images, labels, [it.get("caption", "") for it in items]  # (B, 3, S, S), (B,), B strings


def workers_for(cfg) -> int:
    """DataLoader worker processes: none on a CPU (the model needs the cores), else up to 8."""
    return 0 if cfg.device == "cpu" or not torch.cuda.is_available() else min(8, os.cpu_count() or 1)


def _stream_batches(stream, cfg, start_step: int, pin: bool):
    """batches() of a streaming dataset: no length, no index; the shuffle buffer is seeded."""
    B, epoch = cfg.batch_size, 0
    stream = stream.shuffle(seed=cfg.seed, buffer_size=10_000).skip(start_step * B)
    while True:
        stream.set_epoch(epoch)
        workers = min(workers_for(cfg), getattr(stream, "num_shards", 1))
        gen = torch.Generator().manual_seed(epoch)
        loader = torch.utils.data.DataLoader(
            stream, B, collate_fn=_collate, num_workers=workers, pin_memory=pin, drop_last=True, generator=gen
        )
        n = 0
        for n, batch in enumerate(loader, 1):
            yield batch
        if n == 0:
            raise UserError(
                f"the stream holds fewer than {B} training images (after {HELD_OUT} held out for validation, and {start_step} batches skipped by --resume)"
            )
        epoch += 1


def batches(dataset, cfg, start_step: int = 0, rank: int = 0, world: int = 1):
    """Yield (images (B, 3, S, S), labels (B,), captions: B strings) forever, in an order fixed by cfg.seed.

    Epoch e shuffles with seed (cfg.seed, e); each rank takes every world-th index. The first
    `start_step` batches are skipped without loading them, so --resume sees the same data.
    """
    B = cfg.batch_size
    pin = torch.cuda.is_available()
    if isinstance(dataset, torch.utils.data.IterableDataset):
        yield from _stream_batches(dataset, cfg, start_step, pin)
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
        perm = perm[rank::world][: per_epoch * B].view(per_epoch, B)  # (steps, B): this rank's batches
        loader = torch.utils.data.DataLoader(  # own generator: creating a loader must not consume the global RNG
            dataset,
            batch_sampler=perm[skip:].tolist(),
            collate_fn=_collate,
            num_workers=workers_for(cfg),
            pin_memory=pin,
            generator=torch.Generator().manual_seed(epoch),
        )
        yield from loader
        epoch, skip = epoch + 1, 0


def first_images(dataset, n: int, captions: bool = False):
    """The first n validation images and labels, in a fixed order: (n, 3, S, S), (n,); with
    captions=True also their n captions."""
    items = []
    for item in (
        dataset
        if isinstance(dataset, torch.utils.data.IterableDataset)
        else (dataset[i] for i in range(min(n, len(dataset))))
    ):
        items.append(item)
        if len(items) == n:
            break
    return _collate(items) if captions else _collate(items)[:2]
