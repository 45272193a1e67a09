"""Text encoders for text-conditional priors: captions -> token ids (B, L) -> features (B, L, width).

`small`: hashed words through a small transformer, trained with the prior (no download). A hub id
(e.g. openai/clip-vit-base-patch32, VQ-Diffusion's): a frozen CLIP text model from `transformers`.
The empty caption "" is the "no text" of classifier-free guidance; padding is a token like any other
(as in DALL-E), so the priors need no attention masks.

A student may skip this folder: nothing in it is a concept the lessons teach.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import torch
import torch.nn as nn

from .errors import UserError

VOCAB = 4096  # hashed word ids: 0 is padding, 1 starts every caption, words take 2..VOCAB-1


def word_ids(captions: list[str], length: int) -> torch.Tensor:
    """[start, w_1, ..., pad, ...] per caption: (B, length) long. A word's id is a CRC32 hash of it
    (stable across runs and machines, no vocabulary to build); collisions are rare at 4096."""
    out = torch.zeros(len(captions), length, dtype=torch.long)
    for i, text in enumerate(captions):
        words = re.findall(r"[a-z0-9]+", text.lower())[: length - 1]
        out[i, : len(words) + 1] = torch.tensor(
            [1] + [2 + zlib.crc32(w.encode()) % (VOCAB - 2) for w in words]
        )
    return out


class SmallTextEncoder(nn.Module):
    """Hashed words -> a pre-LN transformer encoder (full attention). Trained jointly with the prior."""

    trainable = True

    def __init__(self, width: int = 128, length: int = 16, layers: int = 2, heads: int = 4):
        super().__init__()
        self.width, self.length = width, length
        self.embed = nn.Embedding(VOCAB, width)
        self.pos = nn.Parameter(torch.randn(length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, 0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(width)

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        return word_ids(captions, self.length)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(self.embed(tokens) + self.pos))  # (B, L, width)


class CLIPText(nn.Module):
    """A frozen CLIP text model (VQ-Diffusion uses ViT-B/32's): its last hidden states. The weights
    stay out of the prior's checkpoint (they are reloaded from the hub id) and are never trained."""

    trainable = False

    def __init__(self, hub_id: str, length: int = 77):
        super().__init__()
        try:
            import transformers
            from transformers import AutoTokenizer, CLIPTextModel
        except ImportError:
            raise UserError(f"--text-encoder {hub_id} needs transformers: pip install transformers") from None
        if hub_id.startswith((".", "/", "~")) and not Path(hub_id).expanduser().is_dir():
            raise UserError(
                f"--text-encoder {hub_id}: no such folder (a CLIP text model saved by transformers)"
            )
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(hub_id)
            self.model = CLIPTextModel.from_pretrained(hub_id).eval().requires_grad_(False)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(
                f"cannot load text encoder '{hub_id}' ({first}); it is downloaded from the Hugging Face hub "
                f"on first use: connect once, or `hf download {hub_id}` elsewhere and pass its folder"
            ) from None
        self.width = self.model.config.hidden_size
        self.length = min(length, self.model.config.max_position_embeddings)
        # the frozen weights are not part of the prior's state: dropped on save, kept on load
        self.register_state_dict_post_hook(self._drop_frozen)
        self.register_load_state_dict_pre_hook(self._keep_frozen)

    @staticmethod
    def _drop_frozen(module, state, prefix, local_metadata):
        for key in [k for k in state if k.startswith(prefix + "model.")]:
            del state[key]

    @staticmethod
    def _keep_frozen(module, state, prefix, *args):
        state.update({prefix + "model." + k: v for k, v in module.model.state_dict().items()})

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # frozen: no dropout whatever the prior does
        return self

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        kw = dict(padding="max_length", max_length=self.length, truncation=True, return_tensors="pt")
        return self.tokenizer(list(captions), **kw).input_ids

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=tokens).last_hidden_state.float()  # (B, L, width)


def text_encoder(name: str, width: int, length: int = 16) -> nn.Module:
    """--text-encoder: "small" (width `width`) or a CLIP hub id / local folder; captions are cut
    to `length` tokens (short captions: 16 is enough)."""
    return SmallTextEncoder(width, length) if name == "small" else CLIPText(name, length)
