"""Wall-clock timing shared by the benchmarks: medians, and ratios measured in alternating pairs.

This machine is shared and its speed drifts from minute to minute, so a benchmark warms up first
(the first call of a large operation pays for page faults), quotes medians, and times the two
sides of a ratio alternately rather than one block after the other.
"""

import time

import torch


def use_device(name: str) -> torch.device:
    """--device of a speed benchmark: every tensor and model it makes from here on lives there."""
    device = torch.device(
        "cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name
    )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: no CUDA device on this machine")
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
