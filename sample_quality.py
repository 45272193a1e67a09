"""Sample quality of the generative lessons (04, 05): is a generated image what it was asked for?

On the built-in datasets (`shapes`, `shapes-plain`) a small classifier, trained here on the
procedural images themselves (seeded, about a minute on a CPU, cached; no download), judges
generated images three ways:
  - class accuracy: the fraction of class-conditional samples classified as the class they were
    drawn for (chance 1/8; real validation images score about 99 %),
  - confidence: the classifier's mean top probability (confident on shapes, unsure on blobs),
  - shapes-FD: the Frechet distance (as FID) between the classifier's penultimate features of
    the samples and of validation images, next to its floor, the same distance for as many REAL
    images (a Frechet distance of a small set is biased upwards: compare the two).
On any other dataset the same call returns Inception FID (`fid.py`) against validation images,
when its weights are in torch.hub's cache (a GPU user's gFID on FFHQ or ImageNet), else nothing.

Use: `sample_quality.judge(images, labels, val_set, dataset)`; lessons 04 and 05 draw and judge
their samples.png with `samples_png` (and prompts.png with `prompts_png`), at the end of this file.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import fid
from common import stage2

SIZE = 32  # the classifier sees 32 px images; other sizes are resized to it


class ShapesClassifier(nn.Module):
    """Four conv stages (32 -> 16 -> 8 -> 4 px), global average pooling, a linear head.
    x: (B, 3, S, S) in [-1, 1] -> logits (B, 8); features(x): (B, 128)."""

    def __init__(self, classes: int = len(common.SHAPE_CLASSES), ch: int = 16):
        super().__init__()
        layers, c_in = [], 3
        for c_out in (ch, 2 * ch, 4 * ch, 8 * ch):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
            layers += [nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
            layers += [nn.MaxPool2d(2)] if c_out < 8 * ch else []
            c_in = c_out
        self.net = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != SIZE:
            x = F.interpolate(x.float(), size=(SIZE, SIZE), mode="bilinear", antialias=True)
        return self.net(x.float()).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _shapes(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Both built-in datasets' images of a split, at 32 px: (N, 3, 32, 32), (N,)."""
    parts = [common.Shapes(split, SIZE, seed=0, plain=plain).images() for plain in (False, True)]
    x = torch.cat([images for images, _ in parts]).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, torch.cat([labels for _, labels in parts])


def train_classifier(steps: int = 600, batch_size: int = 128, seed: int = 0) -> ShapesClassifier:
    """Fit the classifier on the training images of `shapes` and `shapes-plain` (20k images),
    with a light blur on a third of each batch: generated images are tokenizer decodes, softer
    than the rendered ones."""
    torch.manual_seed(seed)
    x, y = _shapes("train")
    model = ShapesClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    blur = torch.tensor([1.0, 2.0, 1.0])
    kernel = (blur[:, None] * blur[None] / 16).expand(3, 1, 3, 3)
    for _ in common.progress(range(steps), desc="shapes classifier", leave=False):
        idx = torch.randint(len(x), (batch_size,))
        xb = x[idx]
        soft = torch.rand(batch_size) < 1 / 3
        xb[soft] = F.conv2d(xb[soft], kernel, padding=1, groups=3)
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def cache_path() -> Path:
    """Where the trained classifier is kept: $SHAPES_CLASSIFIER, else the user cache."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tokenizer-lessons"
    return Path(os.environ.get("SHAPES_CLASSIFIER", default / "shapes_classifier.pt"))


def code_digest() -> str:
    """A digest of the code the classifier comes from (its network, its images, its training): a
    file saved by other code is stale and trained again."""
    sources = [inspect.getsource(obj) for obj in (ShapesClassifier, _shapes, train_classifier)]
    sources.append(inspect.getsource(sys.modules[common.Shapes.__module__]))
    return hashlib.sha256("\n".join(sources).encode()).hexdigest()[:16]


_LOADED: dict[str, ShapesClassifier] = {}


def classifier(device="cpu") -> ShapesClassifier:
    """The shapes classifier: loaded from cache_path() if that file comes from this code, else
    trained once (about a minute) and saved there, its weights in float16 (0.6 MB). Frozen, eval
    mode."""
    path = cache_path()
    if str(path) not in _LOADED:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True) if path.exists() else {}
        except Exception:  # a damaged file is a cache miss
            saved = {}
        if not isinstance(saved, dict) or saved.get("digest") != code_digest():
            why = "its code changed since" if path.exists() else "once"
            common.echo(f"sample quality: training the shapes classifier ({why}) into {path}")
            with torch.enable_grad():  # judge() runs under no_grad
                state = train_classifier().state_dict()
            saved = {"digest": code_digest(), "model": {k: v.half() if v.is_floating_point() else v
                                                        for k, v in state.items()}}  # fmt: skip
            path.parent.mkdir(parents=True, exist_ok=True)
            common.save_atomic(saved, path)
        model = ShapesClassifier()
        common.load_state(model, saved["model"], path)  # (float16 -> float32: as every later load)
        _LOADED[str(path)] = model.eval().requires_grad_(False)
    return _LOADED[str(path)].to(device)


@torch.no_grad()
def _features_and_probs(net: ShapesClassifier, images: torch.Tensor):
    feats, probs = [], []
    for x in images.split(256):
        f = net.features(x.to(next(net.parameters()).device))
        feats.append(f.double().cpu())
        probs.append(net.head(f).softmax(-1).cpu())
    return torch.cat(feats), torch.cat(probs)


def frechet(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Frechet distance between two feature sets (N_a, F) and (N_b, F), as in FID."""
    return fid.fid(features_a, features_b)


@torch.no_grad()
def shape_colour(images: torch.Tensor) -> torch.Tensor:
    """Which of shapes-plain's 4 shape colours each image (B, 3, S, S) in [-1, 1] shows: the
    background is the median colour of the image's border, the shape the median of the pixels far
    from it, and that colour's nearest palette entry wins. -> (B,) index into PLAIN_COLOURS, -1
    where no pixel stands out from the background."""
    rgb = (images.float().clamp(-1, 1) + 1) * 127.5  # (B, 3, S, S) in [0, 255]
    border = torch.cat([rgb[..., 0, :], rgb[..., -1, :], rgb[..., :, 0], rgb[..., :, -1]], -1)  # (B, 3, 4S)
    bg = border.median(-1).values  # (B, 3)
    far = (rgb - bg[..., None, None]).abs().sum(1) > 90  # (B, S, S): not background
    palette = torch.tensor(common.PLAIN_COLOURS, dtype=torch.float32)  # (4, 3)
    out = torch.full((len(images),), -1, dtype=torch.long)
    for i in range(len(images)):
        if far[i].any():
            fg = rgb[i][:, far[i]].median(-1).values  # (3,)
            out[i] = (palette - fg).abs().sum(1).argmin()
    return out


def class_scores(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The shapes classifier's probability of the intended class: (B,), what rejection sampling ranks."""
    _, probs = _features_and_probs(classifier(), images.float().clamp(-1, 1).cpu())
    return probs.gather(1, labels.cpu()[:, None])[:, 0]


def judge(images: torch.Tensor, labels: torch.Tensor | None, val_set, dataset: str, colours=None) -> dict:
    """Quality of generated images (B, 3, S, S) in [-1, 1], drawn for classes `labels` (B,) (None
    when unconditional), against the validation images of `dataset`.

    Built-in data -> class_acc (if labels), confidence, shapes_fd and shapes_fd_floor (the same
    distance for B real training images); shapes-plain with the colours (B,) the prompts named ->
    colour_acc. Otherwise -> fid, when the Inception weights are cached (computed against up to 1000
    validation images), else {}.
    """
    images = images.float().clamp(-1, 1).cpu()
    if dataset in common.BUILTIN:
        net = classifier()
        real, _ = common.first_images(val_set, 1000)
        train_like = common.Shapes("train", images.shape[-1], 0, dataset == "shapes-plain")
        floor_imgs, _ = common.first_images(train_like, len(images))
        f_fake, p_fake = _features_and_probs(net, images)
        f_real, _ = _features_and_probs(net, real)
        f_floor, _ = _features_and_probs(net, floor_imgs)
        out = {"confidence": p_fake.max(-1).values.mean().item()}
        if labels is not None:
            out["class_acc"] = (p_fake.argmax(-1) == labels.cpu()).double().mean().item()
        if colours is not None and dataset == "shapes-plain":
            out["colour_acc"] = (shape_colour(images) == colours.cpu()).double().mean().item()
        out["shapes_fd"] = frechet(f_fake, f_real)
        out["shapes_fd_floor"] = frechet(f_floor, f_real)
        return out
    weights = Path(torch.hub.get_dir()) / "checkpoints" / fid.WEIGHTS_FILE
    if not weights.exists():
        common.echo(f"sample quality: no FID ({weights} is not there; fid.py says how to get it)")
        return {}
    net = fid.inception()
    real, _ = common.first_images(val_set, 1000)
    return {"fid": fid.fid(fid.features(net, images), fid.features(net, real))}


def summary(quality: dict) -> str:
    """One log line: 'class accuracy 93.8 % | confidence 0.95 | shapes-FD 12.3 (real: 4.1)'."""
    parts = []
    if "class_acc" in quality:
        parts.append(f"class accuracy {100 * quality['class_acc']:.1f} %")
    if "colour_acc" in quality:
        parts.append(f"colour accuracy {100 * quality['colour_acc']:.1f} %")
    if "confidence" in quality:
        parts.append(f"confidence {quality['confidence']:.2f}")
    if "shapes_fd" in quality:
        parts.append(f"shapes-FD {quality['shapes_fd']:.2f} (real images: {quality['shapes_fd_floor']:.2f})")
    if "fid" in quality:
        parts.append(f"FID {quality['fid']:.2f}")
    return " | ".join(parts) or "no sample-quality measure for this dataset"


# --- the pictures of lessons 04 and 05: samples.png and prompts.png, judged; rejection sampling ---


def candidates(per_row: int, keep: float) -> int:
    """How many images to draw per row so that keeping the best fraction `keep` leaves per_row."""
    return math.ceil(per_row / keep - 1e-9)


def reject(scores: torch.Tensor, per_row: int, drawn: int) -> torch.Tensor:
    """Rejection sampling (the ImageNet tables of both papers use it): of the `drawn` candidates of
    each row, keep the per_row best-scored, best first. scores: (rows * drawn,) -> indices (rows * per_row,)."""
    best = scores.view(-1, drawn).argsort(1, descending=True)[:, :per_row]  # (rows, per_row)
    return (best + torch.arange(len(best), device=best.device)[:, None] * drawn).flatten()


def draw_rows(s, cfg, draw, c: torch.Tensor, labels: torch.Tensor | None, per_row: int):
    """per_row images for each row's condition c (rows,) or (rows, L), drawn by draw(c) -> codes
    (B, T, D). With --reject-keep f < 1, rejection sampling: 1/f candidates per row are drawn and
    the per_row that the shapes classifier finds most surely of the row's class `labels` (rows,)
    are kept, best first. -> (rows * per_row, 3, S, S)."""
    n = candidates(per_row, cfg.reject_keep)
    images = stage2.decode(s.tok, draw(c.repeat_interleave(n, 0)), s.H)
    if n == per_row:
        return images
    if labels is None:
        common.echo("rejection sampling: these prompts name no class to score; keeping the first draws")
        return images.view(len(c), n, *images.shape[1:])[:, :per_row].flatten(0, 1)
    return images[reject(class_scores(images, labels.repeat_interleave(n)), per_row, n).cpu()]


def samples_png(s, cfg, draw, name: str = "samples.png") -> dict:
    """samples.png (or `name`): a row of --samples-per-class images per class (text: from a caption
    naming the class) drawn by draw(c) -> codes, judged for sample quality (printed). -> the
    metrics, with "sample_" before each name."""
    per_row = cfg.samples_per_class
    c, labels, prompts = stage2.sample_conditions(s)
    images = draw_rows(s, cfg, draw, c, labels, per_row)
    common.save_grid(list(images.view(-1, per_row, *images.shape[1:])), s.run.dir / name)
    colours = stage2.prompt_colours(prompts) if prompts else None
    labels, colours = (None if v is None else v.repeat_interleave(per_row) for v in (labels, colours))
    quality = judge(images, labels, s.val_set, cfg.dataset, colours)
    common.echo(f"{name} ({len(images)} images): {summary(quality)}")
    return {f"sample_{k}": v for k, v in quality.items()}


def pictures(s, cfg, draw) -> dict:
    """What lessons 04 and 05 draw after training: samples.png (samples_png) and, for --prompt,
    prompts.png; --sample-only with --prompt draws prompts.png only. -> samples.png's metrics."""
    quality = {} if cfg.sample_only and cfg.prompt else samples_png(s, cfg, draw)
    if cfg.prompt:
        prompts_png(s, cfg, draw)
    return quality


def prompts_png(s, cfg, draw) -> None:
    """prompts.png: a row of --samples-per-class images for each --prompt."""
    labels = stage2.prompt_classes(cfg.prompt)
    images = draw_rows(s, cfg, draw, s.condition_of(None, list(cfg.prompt)), labels, cfg.samples_per_class)
    common.save_grid(
        list(images.view(-1, cfg.samples_per_class, *images.shape[1:])), s.run.dir / "prompts.png"
    )
    common.echo(
        f"wrote {s.run.dir / 'prompts.png'}: "
        + " | ".join(f"row {i + 1}: {p}" for i, p in enumerate(cfg.prompt))
    )
