"""The four tokenizers the papers' authors released: where they are downloaded from, their
configs (in their own files' layout), and the download into torch.hub's cache. common/official.py
loads them.

A student may skip this file: it only fetches files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import UserError

HEIBOX = "https://heibox.uni-heidelberg.de/d/{}/files/?p=%2Fckpts%2Flast.ckpt&dl=1"
KAKAO = "https://twg.kakaocdn.net/brainrepo/models/RQVAE/{}.tar.gz"
RELEASED = {  # name -> (kind, download URL, codes K, attention resolution)
    "taming-imagenet-f16-1024": ("taming", HEIBOX.format("8088892a516d4e3baf92"), 1024, 16),
    "taming-imagenet-f16-16384": ("taming", HEIBOX.format("a7530b09fed84f80a887"), 16384, 16),
    "rqvae-ffhq-8x8x4": ("kakao", KAKAO.format("d47570aeff6ba300735606a806f54663/ffhq"), 2048, 16),
    "rqvae-imagenet-8x8x4": (
        "kakao",
        KAKAO.format("7518a004fe39120fcffbba76005dc6c3/imagenet_480M"),
        16384,
        8,
    ),
}


def released_config(name: str) -> dict:
    """The official config of a released model, in its own file's layout (taming's model.yaml,
    Kakao's config.yaml): the values of the authors' configs (256 px, 256-d codes)."""
    kind, _, K, attn = RELEASED[name]
    dd = dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128,
              num_res_blocks=2, attn_resolutions=[attn], dropout=0.0)  # fmt: skip
    if kind == "taming":
        return {
            "model": {
                "params": {"embed_dim": 256, "n_embed": K, "ddconfig": {**dd, "ch_mult": [1, 1, 2, 2, 4]}}
            }
        }
    hparams = {"embed_dim": 256, "n_embed": K, "code_shape": [8, 8, 4], "shared_codebook": True}
    return {"arch": {"hparams": hparams, "ddconfig": {**dd, "ch_mult": [1, 1, 2, 2, 4, 4]}}}


def cache() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"  # where torch.hub keeps downloaded weights


def released_path(name: str) -> Path:
    """Where a released model's checkpoint is kept in torch.hub's cache (it may not be there yet)."""
    return cache() / (f"{name}.ckpt" if RELEASED[name][0] == "taming" else f"{name}/stage1/model.pt")


def fetch_released(name: str) -> Path:
    """The checkpoint of a released model in torch.hub's cache, downloaded (and for Kakao's
    tarballs, its stage-1 model.pt extracted) once; offline: a UserError naming the file, the URL
    and the folder."""
    import tarfile

    from .device import echo

    kind, url, *_ = RELEASED[name]
    path = released_path(name)
    if path.exists():
        return path
    download = path if kind == "taming" else cache() / f"{name}.tar.gz"
    echo(f"tokenizer {name}: downloading {url} into {download} (once)")
    try:
        download.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(download))
    except Exception as e:
        put = path if kind == "taming" else f"{download} (or its stage1/model.pt as {path})"
        raise UserError(
            f"--tokenizer {name} needs {path.name}, which is not in {path.parent} and could not be downloaded "
            f"from {url} ({type(e).__name__}); put the file at {put}"
        ) from None
    if kind == "kakao":
        with tarfile.open(download) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("stage1/model.pt")), None)
            if member is None:
                raise UserError(f"{download} holds no stage1/model.pt; remove it and try again")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tar.extractfile(member).read())
    return path
