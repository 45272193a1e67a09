"""The released tokenizers of the papers' authors, in the lessons' own modules: taming's VQGAN
(VQModel) and Kakao Brain's RQ-VAE, loaded into lesson 03's nets with lesson 02's quantizer.

A student may skip this file: it only renames tensors. What it has to get right, each a fact of
the official code:
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

from pathlib import Path

import torch

from .errors import UserError


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
        raise UserError(f"--tokenizer-config {path}: not a readable YAML file ({e})") from e


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
    from .cli import lesson

    kind = kind_of(ckpt)
    config = config or config_next_to(path, kind)
    if config is None:
        where = "<run>/configs/*.yaml" if kind == "taming" else "config.yaml next to it"
        raise UserError(
            f"{path}: an official {kind} checkpoint without its config ({where}); pass --tokenizer-config FILE"
        )
    gan = lesson("03_vqgan")
    cfg = gan.Config(**lesson_config(kind, config if isinstance(config, dict) else read_config(Path(config))))
    model = gan.build(cfg)
    state = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("loss.")}
    try:
        model.load_state_dict(convert(kind, state, model, cfg), strict=True)
    except (KeyError, RuntimeError) as e:
        raise UserError(f"{path} does not match its config: {str(e).splitlines()[0]}") from e
    return model.eval().requires_grad_(False), cfg


def load_released(name: str, config=None):
    """A released model by name (downloaded once) -> (model, cfg), with its known config."""
    from .checkpoints import read_checkpoint
    from .released import fetch_released, released_config

    path = fetch_released(name)
    ckpt = read_checkpoint(path)
    if kind_of(ckpt) is None:
        raise UserError(f"{path} is not the {name} checkpoint; remove it and download it again")
    return load_official(path, ckpt, config or released_config(name))
