"""Checkpoints and downloaded weights: atomic saves, clear errors for bad files, RNG state.

A student may skip this folder: nothing in it is a concept the lessons teach.
"""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import torch
import torch.nn as nn

from .errors import UserError


def fetch_weights(url: str, file_name: str, needed_by: str, otherwise: str) -> dict:
    """A state dict through torch.hub's download cache (downloaded once); offline and not cached:
    a UserError that names the file, the folder to put it in, and `otherwise` (what else to do)."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if not path.exists():
        try:
            torch.hub.load_state_dict_from_url(
                url, file_name=file_name, map_location="cpu", weights_only=True
            )
        except Exception as e:
            raise UserError(
                f"{needed_by} needs {file_name}, which is not in {path.parent} and could not be downloaded from "
                f"{url} ({type(e).__name__}); put the file there, or {otherwise}"
            ) from None
    return torch.load(path, map_location="cpu", weights_only=True)


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # (two processes never share one)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # a full disk, a read-only folder: the old file stays
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"cannot write {path} ({str(e).splitlines()[0]}); the previous file is as it was"
        ) from None


def read_checkpoint(path):
    """torch.load(weights_only=True) of any checkpoint file, with errors that name the file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder; pass the file in it, {path / 'ckpt.pt'}")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} is corrupt or not a checkpoint ({type(e).__name__})") from None


def lessons_checkpoint(ckpt, path) -> dict:
    """ckpt, if a lesson wrote it (step, config, model); else a UserError."""
    if not isinstance(ckpt, dict) or not {"step", "config", "model"} <= ckpt.keys():
        raise UserError(f"checkpoint {path} lacks step/config/model: not written by these lessons")
    return ckpt


def load_checkpoint(path) -> dict:
    """A lesson's checkpoint file, with errors that name the file and what is wrong."""
    return lessons_checkpoint(read_checkpoint(path), path)


def saved_config(config_class, saved: dict) -> dict:
    """Config(**saved_config(Config, ckpt["config"])): lists as tuples, flags that have since left
    the Config dropped (a run from before --hf-id joined --dataset: its hub id is its dataset)."""
    saved = {**saved, "dataset": saved.get("hf_id") or saved.get("dataset")}
    fields = {f.name for f in dataclasses.fields(config_class)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields}


def load_state(module: nn.Module, state: dict, path) -> None:
    """load_state_dict whose mismatch error names the checkpoint file."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
        raise UserError(f"checkpoint {path} does not fit this model: {first.strip()}") from None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
