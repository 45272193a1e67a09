"""A faster row argmin for CPUs: the same answer as `x.min(1).indices`.

PyTorch's CPU reduction that returns an index (min, argmin) is not vectorised: over a (512, 512)
matrix it costs about 10x an `amin` (values only) and as much as the matmul that produced the
distances. Cut each row into blocks of g: the vectorised `amin` finds every block's minimum, the
slow index reduction then runs only over K / g block minima and over the g entries of the
winning block. Ties resolve as `min` does: the first block holding the minimum, the first entry
in it, so the result is the first minimal index of the row.
"""

import torch


def argmin_rows(x: torch.Tensor, block: int = 64) -> torch.Tensor:
    """x: (n, K) -> (n,) long, equal to x.min(1).indices (first minimal index of each row)."""
    n, K = x.shape
    if x.is_cuda or K % block or K < 2 * block:  # GPUs have a fast argmin; short rows gain nothing
        return x.min(1).indices
    blocks = x.view(n, K // block, block)  # (n, K/g, g)
    b = blocks.amin(2).min(1).indices  # (n,) the first block holding the row's minimum
    inside = blocks[torch.arange(n, device=x.device), b].min(1).indices  # (n,) where in that block
    return b * block + inside
