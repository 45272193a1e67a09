"""What lessons 04 and 05 need to turn codes into pictures: codes decoded to images through the
tokenizer, and the inpainting square. (samples.png and prompts.png, judged for sample quality,
are drawn by sample_quality.py, next to the judge.)

A student may skip this folder: nothing in it is a concept the lessons teach.
"""

from __future__ import annotations

import torch
from einops import rearrange


@torch.no_grad()
def decode(tok, codes: torch.Tensor, H: int) -> torch.Tensor:
    """codes (B, T, D) -> images (B, 3, S, S) through the tokenizer: z^ = sum_d e(S_td). A tokenizer
    with codes of another layout (beyond/var.py's scales) decodes them itself."""
    if hasattr(tok, "decode_codes"):
        return tok.decode_codes(codes)
    z_q = rearrange(tok.quantizer.codebook[codes].sum(2), "b (h w) d -> b d h w", h=H)
    return tok.decoder(z_q)


def centre_square(H: int, device=None) -> torch.Tensor:
    """(H, H) bool, True on the centre half of an H x H code grid: what the inpainting figures hide."""
    lo, hi = H // 4, H - H // 4
    square = torch.zeros(H, H, dtype=torch.bool, device=device)
    square[lo:hi, lo:hi] = True
    return square
