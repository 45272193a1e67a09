"""The tokenizers the papers' authors released, converted once into a lesson-03 checkpoint: taming's
VQGAN (VQModel) and Kakao Brain's RQ-VAE become lesson 03's nets with lesson 02's quantizer, saved
in the lessons' own format, which lessons 04 and 05 read with --tokenizer.

Run: python released.py rqvae-ffhq-8x8x4             (download once; prints the file it writes)
     python released.py last.ckpt --config model.yaml  (an official file you have; --out FILE)

A student may skip this file: it only fetches files and renames tensors. What it has to get right,
each a fact of the official code:
- both checkpoints nest the weights under "state_dict"; taming's also holds the training loss's
  weights ("loss.*": LPIPS and the discriminator), which are dropped;
- both put a 1x1 quant_conv after the encoder and a post_quant_conv before the decoder
  (lesson 03's --z-channels);
- attention has separate 1x1 q, k, v convs (here one qkv conv: their weights are concatenated);
- Kakao's shared codebook appears under four aliases (quantizer.codebooks.{0..3}) and has a
  padding row at the end that is never chosen: codebooks.0.weight[:K] is the codebook, and its
  EMA statistics (cluster_size_ema, embed_ema) are lesson 01's cluster_size and embed_sum;
- taming's codebook is a learned embedding (lesson 01's --codebook loss), Kakao's an EMA one.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

import common
from common import UserError
from common.checkpoints import read_checkpoint, save_atomic

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

    kind, url, *_ = RELEASED[name]
    path = released_path(name)
    if path.exists():
        return path
    download = path if kind == "taming" else cache() / f"{name}.tar.gz"
    common.echo(f"tokenizer {name}: downloading {url} into {download} (once)")
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


# --- the official layouts and tensor names ---


def kind_of(ckpt) -> str | None:
    """The format of a checkpoint file's contents, from its keys: "taming", "kakao", or None
    (neither: a lesson's own). Both keep the model under "state_dict"."""
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        return None
    if "quantize.embedding.weight" in state:
        return "taming"
    if "quantizer.codebooks.0.weight" in state:
        return "kakao"
    return None


def read_config(path: Path) -> dict:
    """An official config file (taming's model.yaml, Kakao's config.yaml; JSON is YAML too)."""
    import yaml  # PyYAML comes with `datasets`

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"--config {path}: not a readable YAML file ({e})") from e


def config_next_to(ckpt: Path, kind: str) -> Path | None:
    """Where the released downloads keep the config: taming <run>/configs/*.yaml beside
    <run>/checkpoints/last.ckpt; Kakao config.yaml beside stage1/model.pt."""
    if kind == "taming":
        found = sorted((ckpt.parent.parent / "configs").glob("*.yaml"))
        return found[0] if found else None
    path = ckpt.parent / "config.yaml"
    return path if path.exists() else None


def lesson_config(kind: str, official: dict) -> dict:
    """The flags of lesson 03's Config that build the official architecture."""
    try:
        return _lesson_config(kind, official)
    except (KeyError, TypeError, IndexError) as e:
        layout = "model: params: ddconfig" if kind == "taming" else "arch: hparams, ddconfig"
        raise UserError(f"the config is not a {kind} config ({layout}): no {e}") from None


def _lesson_config(kind: str, official: dict) -> dict:
    if kind == "taming":
        params = official["model"]["params"]
        dd, K, d, depth, codebook = params["ddconfig"], params["n_embed"], params["embed_dim"], 1, "loss"
    else:
        arch = official["arch"]
        dd, hp = arch["ddconfig"], arch["hparams"]
        K, d, depth, codebook = hp["n_embed"], hp["embed_dim"], hp["code_shape"][-1], "ema"
        if not hp.get("shared_codebook", True):
            raise UserError("an RQ-VAE with one codebook per depth: the lessons share one (RQ-VAE's default)")
    if dd.get("double_z") or dd.get("in_channels", 3) != 3 or dd.get("out_ch", 3) != 3:
        raise UserError("an official config with double_z or other than 3 channels in and out")
    return dict(
        code_dim=d,
        codebook_size=K,
        depth=depth,
        codebook=codebook,
        ch=dd["ch"],
        ch_mult=tuple(dd["ch_mult"]),
        num_res_blocks=dd["num_res_blocks"],
        attn_resolutions=tuple(dd["attn_resolutions"]),
        z_channels=dd["z_channels"],
        image_size=dd["resolution"],
        perceptual_weight=0.0,
    )


# --- official tensor names, in the order the lesson's Sequential layers hold them ---


def encoder_names(cfg) -> list[str | None]:
    """The official prefix of each layer of lesson 03's Encoder.net (None: no weights)."""
    names, size = ["conv_in"], cfg.image_size
    for i in range(len(cfg.ch_mult)):
        for j in range(cfg.num_res_blocks):
            names.append(f"down.{i}.block.{j}")
            if size in cfg.attn_resolutions:
                names.append(f"down.{i}.attn.{j}")
        if i < len(cfg.ch_mult) - 1:
            names += [None, f"down.{i}.downsample.conv"]
            size //= 2
    return [*names, "mid.block_1", "mid.attn_1", "mid.block_2", "norm_out", None, "conv_out"]


def decoder_names(cfg) -> list[str | None]:
    """The official prefix of each layer of lesson 03's Decoder.net (None: no weights)."""
    names = ["conv_in", "mid.block_1", "mid.attn_1", "mid.block_2"]
    size = cfg.image_size // 2 ** (len(cfg.ch_mult) - 1)
    for i in reversed(range(len(cfg.ch_mult))):
        for j in range(cfg.num_res_blocks + 1):
            names.append(f"up.{i}.block.{j}")
            if size in cfg.attn_resolutions:
                names.append(f"up.{i}.attn.{j}")
        if i > 0:
            names += [None, f"up.{i}.upsample.conv"]
            size *= 2
    return [*names, "norm_out", None, "conv_out"]


# lesson 03's ResBlock / Attention parameter -> the official one (".weight" / ".bias" follow)
RESBLOCK = {"net.0": "norm1", "net.2": "conv1", "net.3": "norm2", "net.5": "conv2", "skip": "nin_shortcut"}
ATTENTION = {"norm": "norm", "proj": "proj_out"}


def _layer(ours: str, theirs: str, module: torch.nn.Module, state: dict, out: dict) -> None:
    """Copy the official tensors of one layer into `out` under the lesson's names."""
    for name, _ in module.named_parameters():
        sub, kind = name.rsplit(".", 1) if "." in name else ("", name)
        if sub == "qkv":  # one conv for the official q, k and v
            out[f"{ours}.{name}"] = torch.cat([state[f"{theirs}.{x}.{kind}"] for x in "qkv"])
            continue
        table = RESBLOCK if "net.0" in dict(module.named_modules()) else ATTENTION
        theirs_sub = table.get(sub, sub) if sub else ""
        out[f"{ours}.{name}"] = state[".".join(p for p in (theirs, theirs_sub, kind) if p)]


def convert(kind: str, state: dict, model: torch.nn.Module, cfg) -> dict:
    """An official stage-1 state dict -> the state dict of the lesson's `model` (VQGAN)."""
    out = {}
    for part, names in (("encoder", encoder_names(cfg)), ("decoder", decoder_names(cfg))):
        layers = getattr(model, part).net
        if len(names) != len(layers):
            raise UserError(f"the official {part} has {len(names)} layers, the lesson's {len(layers)}")
        for i, (layer, name) in enumerate(zip(layers, names)):
            if name is not None:
                _layer(f"{part}.net.{i}", f"{part}.{name}", layer, state, out)
    for ours, theirs in (
        ("encoder.quant_conv", "quant_conv"),
        ("decoder.post_quant_conv", "post_quant_conv"),
    ):
        for kind_ in ("weight", "bias"):
            out[f"{ours}.{kind_}"] = state[f"{theirs}.{kind_}"]
    K, book = cfg.codebook_size, "quantizer.books.0"
    if kind == "taming":
        out[f"{book}.codebook"] = state["quantize.embedding.weight"]
        out[f"{book}.cluster_size"] = torch.zeros_like(out[f"{book}.codebook"][:, 0])  # no EMA statistics
        out[f"{book}.embed_sum"] = torch.zeros_like(out[f"{book}.codebook"])
    else:  # one shared codebook under four aliases, with a padding row last
        out[f"{book}.codebook"] = state["quantizer.codebooks.0.weight"][:K]
        out[f"{book}.cluster_size"] = state["quantizer.codebooks.0.cluster_size_ema"]
        out[f"{book}.embed_sum"] = state["quantizer.codebooks.0.embed_ema"]
    return out


def load_official(path: Path, ckpt: dict, config: Path | dict | None = None):
    """(frozen lesson-03 VQGAN in eval mode, its Config) from an official checkpoint's contents
    (taming's training-loss tensors, "loss.*", dropped); config: a file, or an official config as
    a dict, or None: the file next to the checkpoint."""
    kind = kind_of(ckpt)
    config = config or config_next_to(path, kind)
    if config is None:
        where = "<run>/configs/*.yaml" if kind == "taming" else "config.yaml next to it"
        raise UserError(
            f"{path}: an official {kind} checkpoint without its config ({where}); pass --config FILE"
        )
    gan = common.lesson("03_vqgan")
    cfg = gan.Config(**lesson_config(kind, config if isinstance(config, dict) else read_config(Path(config))))
    model = gan.build(cfg)
    state = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("loss.")}
    try:
        model.load_state_dict(convert(kind, state, model, cfg), strict=True)
    except (KeyError, RuntimeError) as e:
        raise UserError(f"{path} does not match its config: {str(e).splitlines()[0]}") from e
    return model.eval().requires_grad_(False), cfg


def convert_file(path, config=None, out=None) -> Path:
    """Convert an official checkpoint file once into a lesson-03 checkpoint at `out` (default: beside
    it, <stem>.lessons.pt) that --tokenizer reads -> out. config: as load_official."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    if kind_of(ckpt) is None:
        raise UserError(f"{path} is not an official taming or Kakao checkpoint (no state_dict of either)")
    model, cfg = load_official(path, ckpt, config)
    out = Path(out) if out else path.with_name(f"{path.stem}.lessons.pt")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(
        {"step": 0, "lesson": "03_vqgan", "config": dataclasses.asdict(cfg), "model": model.state_dict()}, out
    )
    return out


def converted(name: str, out=None) -> Path:
    """The lesson-03 checkpoint of a released tokenizer by name: downloaded and converted once
    (default: into torch.hub's cache, <name>.lessons.pt), with its known config."""
    out = Path(out) if out else cache() / f"{name}.lessons.pt"
    if not out.exists():
        path = fetch_released(name)
        if kind_of(read_checkpoint(path)) is None:
            raise UserError(f"{path} is not the {name} checkpoint; remove it and download it again")
        convert_file(path, released_config(name), out)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "checkpoint", help=f"a released name ({', '.join(RELEASED)}) or an official checkpoint file"
    )
    p.add_argument("--config", help="the official config of a file (default: where the downloads keep it)")
    p.add_argument("--out", help="the converted file (default: <checkpoint>.lessons.pt, beside it)")
    args = p.parse_args(argv)
    try:
        if args.checkpoint in RELEASED and not args.config:
            out = converted(args.checkpoint, args.out)
        else:
            out = convert_file(args.checkpoint, args.config, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {out}; pass it to lessons 04 and 05 as --tokenizer {out}")


if __name__ == "__main__":
    main()
