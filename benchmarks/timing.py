"""Wall-clock timing shared by the benchmarks: medians, and ratios measured in alternating pairs.

This machine is shared and its speed drifts from minute to minute, so a benchmark warms up first
(the first call of a large operation pays for page faults), quotes medians, and times the two
sides of a ratio alternately rather than one block after the other.
"""

import sys
import time

import torch


def use_device(name: str) -> torch.device:
    """--device of a speed benchmark, picked as the lessons pick theirs (common.get_device: auto,
    and TF32 matmuls on CUDA); every tensor and model made from here on lives there."""
    import common  # the benchmarks put the repository root on sys.path before importing this file

    try:
        device = common.get_device(name)
    except common.UserError as e:  # one line and exit 2, as the lessons report a bad flag
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    torch.set_default_device(device)
    return device


def sync() -> None:
    """Wait for queued GPU work (CUDA runs asynchronously: a timer must not stop before it ends)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def seconds(fn) -> float:
    """Seconds one call of fn takes."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def median_seconds(fn, repeats: int, warmup: bool = True) -> float:
    """Median seconds over repeats calls of fn, after one untimed call when warmup."""
    if warmup:
        fn()
    return median([seconds(fn) for _ in range(repeats)])


def paired_seconds(fn_a, fn_b, repeats: int) -> tuple[float, float, float]:
    """Median seconds of a and of b, and the median of the per-pair ratios b / a. Calls alternate
    (a, b, a, b, ...) so that a slow spell of the machine hits both sides of a ratio alike."""
    fn_a(), fn_b()  # warm-up
    pairs = [(seconds(fn_a), seconds(fn_b)) for _ in range(repeats)]
    return (
        median([a for a, _ in pairs]),
        median([b for _, b in pairs]),
        median([b / a for a, b in pairs]),
    )
