"""Device, seeds, precision (bf16 autocast, exact float32 for code distances), progress bars, echo.

A student may skip this folder: nothing in it is a concept the lessons teach.
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager, nullcontext

import torch
from tqdm import tqdm

from .dist import is_main
from .errors import UserError


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
        raise UserError(f"--device {name} is not available on this machine; use --device auto or cpu")
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


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast on CUDA, full precision elsewhere (--precision auto); --precision bf16 turns
    it on for any device (on a CPU: slower, but it runs the mixed-precision code paths), fp32 off.
    Quantizers switch it off for their math."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def exact_float32(device_type: str):
    """Inside: matmuls and convolutions in true float32, neither bf16 autocast nor TF32 (whose
    10-bit mantissa can make a distance matmul pick another nearest code than float32 does, and
    an encoder's convolutions give other features). For code distances and the codes of stage 2."""
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False  # cuDNN convolutions (get_device turns TF32 on for CUDA)
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


def progress(iterable, **kw):
    """The progress bar of every long loop."""
    return tqdm(iterable, dynamic_ncols=True, mininterval=1.0, disable=not is_main(), **kw)


def echo(msg: str) -> None:
    """Print a log line without breaking the progress bar (rank 0 only under torchrun)."""
    if is_main():
        tqdm.write(msg)
