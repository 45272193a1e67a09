"""Stage 1 for lessons 04 and 05: the frozen tokenizer their prior is trained on. It is found
(--tokenizer, else a lesson-02 run on the same data, else lesson 02 trains one) and rebuilt by the
file that wrote its checkpoint (02_rq.py, 03_vqgan.py or beyond/fsq.py); a released tokenizer is
converted once into a lesson-03 checkpoint by released.py.

A student may skip this file: it finds and loads files. The lessons pass `tokenizer` to
common.stage2.setup, so that the plumbing in common/ imports no lesson.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import common
import released
from common import UserError
from common.checkpoints import lessons_checkpoint, load_checkpoint, load_state, read_checkpoint
from common.dist import barrier


def load_tokenizer(path, device="cpu"):
    """(model, cfg) rebuilt from a checkpoint of 02_rq.py or 03_vqgan.py, or a released tokenizer
    by name (released.py converts it once); frozen, eval mode.

    model.encoder, model.quantizer (with .codebook (K, d) and .quantize) and model.decoder are
    the pieces stage 2 needs; cfg is the Config the checkpoint was trained with.
    """
    if str(path) in released.RELEASED:  # a released tokenizer by name
        path = released.converted(str(path))
    ckpt = read_checkpoint(path)
    if kind := released.kind_of(ckpt):  # the authors' own file format
        raise UserError(
            f"{path} is an official {kind} checkpoint: convert it once with `python released.py {path} "
            "--config CONFIG.yaml` and pass the file it writes as --tokenizer"
        )
    name = lessons_checkpoint(ckpt, path).get("lesson")
    if name == "fsq":  # beyond/fsq.py: lesson 02's or 03's autoencoder with FSQ, rebuilt there
        return importlib.import_module("beyond.fsq").load_tokenizer(ckpt, path, device)
    if name not in ("02_rq", "03_vqgan"):
        raise UserError(
            f"checkpoint {path} was written by {name or 'an unknown script'}, not by 02_rq.py, 03_vqgan.py or beyond/fsq.py: it holds no tokenizer"
        )
    maker = common.lesson(name)  # the lesson that wrote it rebuilds it
    cfg = maker.Config(**common.saved_config(maker.Config, ckpt["config"]))
    model = maker.build(cfg)
    load_state(model, ckpt["model"], path)
    return model.to(device).eval().requires_grad_(False), cfg


def tokenizer_path(cfg) -> Path:
    """--tokenizer, else the first of runs/02_rq/ckpt.pt (lesson 02's default run),
    runs/04_rq_transformer/tokenizer/ckpt.pt (the one lesson 04 trains) and
    <out>/tokenizer/ckpt.pt that was trained on this dataset with the shape the lesson's
    TOKENIZER names, else a lesson-02 RQ-VAE of that shape trained (once) into <out>/tokenizer.
    Only a finished tokenizer (its log holds the final record) is reused; an interrupted one in
    <out>/tokenizer is resumed."""
    if cfg.tokenizer:
        return Path(cfg.tokenizer)
    # the depth always; K on the built-in shapes only (elsewhere lesson 02's preset for the data)
    shape = {k: v for k, v in cfg.TOKENIZER.items() if k == "depth" or cfg.dataset in common.BUILTIN}
    same = lambda ckpt_cfg: (  # (a run from before --hf-id joined --dataset: its hub id in "hf_id")
        (ckpt_cfg.get("hf_id") or ckpt_cfg["dataset"], ckpt_cfg["image_size"])
        == (cfg.dataset, cfg.image_size)
        and all(ckpt_cfg.get(k) == v for k, v in shape.items())
    )
    folders = ("runs/02_rq", "runs/04_rq_transformer/tokenizer", f"{cfg.out}/tokenizer")
    out, unfinished = Path(cfg.out) / "tokenizer", False
    for path in (Path(folder) / "ckpt.pt" for folder in folders):
        if path.exists() and same((ckpt := load_checkpoint(path))["config"]):
            final = [r for r in common.read_log(path.parent) if r.get("final")]
            if not final:  # stopped before its end: never reused as if it were trained
                unfinished = unfinished or path.parent == out
                continue
            common.echo(
                f"tokenizer: reusing {path} ({ckpt['step']} steps, validation PSNR {final[-1]['val_psnr']:.2f} dB); "
                f"pass --tokenizer, or train a fresh one with `python 02_rq.py --dataset {cfg.dataset} --overwrite`"
            )
            return path
    doing = "resuming the interrupted" if unfinished else "none given; training a"
    common.echo(f"tokenizer: {doing} lesson-02 RQ-VAE in {out}")
    rq = common.lesson("02_rq")  # imported here, when a tokenizer must be trained
    flags = dict(dataset=cfg.dataset, image_size=cfg.image_size, image_column=cfg.image_column)
    rq.train(
        rq.Config(
            **flags, label_column=cfg.label_column, device=cfg.device, seed=cfg.seed, out=str(out),
            overwrite=not unfinished, resume=unfinished, **shape,
        )
    )  # fmt: skip
    barrier()  # under torchrun: rank 0 has written the checkpoint before anyone reads it
    return out / "ckpt.pt"


def tokenizer(cfg, path=None) -> tuple:
    """What common.stage2.setup asks for: (path, frozen model, its Config); path None: found as
    tokenizer_path says (--sample-only passes the one the prior was trained on)."""
    path = Path(path) if path else tokenizer_path(cfg)
    return (path, *load_tokenizer(path))
