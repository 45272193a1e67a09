"""The command line: a lesson's typed Config -> argparse flags (help from the field comments), the
run entry point, the two exceptions a user sees, and `lesson()` to import a numbered lesson.

A student may skip this folder: nothing in it is a concept the lessons teach.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import io
import json
import math
import sys
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .datasets import DATASETS, dataset_choices, default_image_size
from .dist import is_main, teardown
from .errors import Interrupted, UserError
from .shapes import BUILTIN


def lesson(name: str) -> types.ModuleType:
    """Import a numbered lesson by file name, e.g. lesson("01_vq") (file names start with digits)."""
    here = str(Path(__file__).resolve().parent.parent)  # the repository root
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module(name)


def main(train_fn, config_cls, argv=None):
    """The CLI of every lesson: parse flags into a Config, train, and turn UserError into exit 2
    and Ctrl-C / SIGTERM into 130 / 143. Under torchrun the process group is left whatever
    happened, before the process exits (gloo's threads must not outlive it)."""
    cfg = parse(config_cls, argv)
    code, together = 0, False  # together: every rank got here at the same step
    try:
        train_fn(cfg)
        together = True
    except UserError as e:  # maybe this rank's alone: no barrier, the others may be mid-step
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except Interrupted as e:  # every rank saved at the same step (Run.save_due agreed on it)
        if is_main():
            print(e, file=sys.stderr)
        code, together = e.code, True  # 130 after Ctrl-C, 143 after SIGTERM, as a shell reports them
    finally:
        teardown(wait=together)
    if code:
        sys.exit(code)


# --- config -> command line ---


@dataclass
class TrainConfig:
    """Flags every lesson shares. A lesson's Config subclasses this and adds its own fields."""

    dataset: str = "shapes"  # a name (see the list at the end), an image folder, a .parquet file or a hub id
    image_size: int | None = None  # pixels (default: shapes/mnist/cifar10 32, flowers 64, others 256)
    image_column: str | None = None  # image column of a hub id or a local dataset (default: image)
    label_column: str | None = None  # label column of a hub id or a local dataset (default: none)
    caption_column: str | None = None  # caption column (a folder: in its metadata.jsonl) for --condition text
    streaming: bool | None = None  # stream from the hub, no download (default: on for imagenet)
    batch_size: int = 64  # images per step (per process under torchrun)
    grad_accum: int = 1  # micro-batches of --batch-size per optimizer step (gradient accumulation)
    compile: bool = False  # torch.compile the network (on a CPU it needs a C++ compiler)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # autocast: auto is bf16 on CUDA, fp32 elsewhere
    steps: int = 1500  # optimizer steps
    lr: float = 1e-3  # Adam learning rate
    seed: int = 0  # seeds data order, initialisation and code restarts
    device: str = "auto"  # auto | cpu | cuda | mps
    out: str = "runs/lesson"  # run folder: ckpt.pt, metrics.jsonl, figures
    log_every: int = 100  # print and log metrics every this many steps
    ckpt_minutes: float = 2.0  # save ckpt.pt after this many minutes without a save, and at the end
    eval_images: int = 512  # validation images used for the final metrics
    resume: bool = False  # continue the run in --out from its ckpt.pt
    overwrite: bool = False  # start afresh even if --out already holds a checkpoint

    def __post_init__(self):
        """Checks of the shared flags; a lesson's __post_init__ adds its own and calls this."""
        for name in ("steps", "batch_size", "grad_accum", "log_every", "eval_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not (0 < self.lr < math.inf) or not self.ckpt_minutes > 0:
            raise ValueError(f"--lr must be a finite number > 0 (got {self.lr}), --ckpt-minutes > 0")
        if not self.out.strip():
            raise ValueError("--out must name a run folder, got an empty string")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError(f"unknown --device '{self.device}'; choose one of: auto, cpu, cuda, mps")
        is_path = "/" in self.dataset or self.dataset.endswith(".parquet") or Path(self.dataset).exists()
        if self.dataset not in (*BUILTIN, *DATASETS) and not is_path:
            raise ValueError(f"unknown dataset '{self.dataset}'; choose one of: {dataset_choices()}")
        size = default_image_size(self)
        if size % 8 or not 8 <= size <= (256 if self.dataset in BUILTIN else 4096):
            raise ValueError(
                f"--image-size must be a multiple of 8 from 8 to {256 if self.dataset in BUILTIN else 4096}, got {size}"
            )


def require(*checks: tuple[bool, str]) -> None:
    """A Config's flag checks as a table of (condition, message): the first false one is a
    ValueError with its message (parse() prints it as a one-line error)."""
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


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
    epilog = textwrap.fill(
        f"datasets: {dataset_choices()}. Hub ids: "
        + ", ".join(f"{k} = {v.hub_id}" for k, v in DATASETS.items())
        + ". ImageNet is gated (run `hf auth login`); an ungated 256 px copy: "
        "--dataset benjamin-paine/imagenet-1k-256x256 --label-column label. Any other hub "
        "dataset: --dataset owner/name (a hub id: one slash, no such local path).",
        78,
    )
    if presets := getattr(config_cls, "PRESETS", None):  # what --dataset gives the flags left unset
        epilog += "\n\npresets: what --dataset gives the flags left unset (small: other data of <= 64 px)"
        for name, values in presets.items():
            flags = ", ".join(
                f"{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, tuple) else v}"
                for k, v in values.items()
            )
            epilog += "\n" + textwrap.fill(
                f"{name}: {flags}", 78, initial_indent="  ", subsequent_indent="    "
            )
    p = argparse.ArgumentParser(
        description=(sys.modules[config_cls.__module__].__doc__ or "").split("\n")[0],
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
        epilog=epilog,
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
        elif typing.get_origin(kind) is tuple and args[0] is str:  # repeatable: --prompt A --prompt B
            p.add_argument(flag, action="extend", nargs="+", type=str, **{**kw, "default": list(default)})
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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows '(default: X)' unless the default is None (the help text then says what happens)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)
