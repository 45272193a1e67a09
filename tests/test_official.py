"""The authors' released tokenizers converted into lesson-03 checkpoints (released.py): tiny
checkpoints in the official formats reproduce the official code's outputs once converted, and every
key of the four released models maps onto lesson 03's nets with lesson 02's quantizer.

tests/data/official/ holds, copied from the reference data the official code made: taming's
VQModel and Kakao's RQVAE at a tiny size (32 px, 8x8 codes) with their checkpoints, configs, a fixed
input and the official outputs; and the state-dict key lists (name -> shape) of the four releases.
"""

import json
import shutil
import urllib.error
from pathlib import Path

import pytest
import torch

import common
import released
import stage1

DATA = Path(__file__).resolve().parent / "data" / "official"
TINY = {"taming": "taming_vqgan_tiny", "kakao": "kakao_rqvae_tiny"}
KEY_LISTS = {
    "taming-imagenet-f16-1024": "taming_vqgan_imagenet_f16_1024",
    "taming-imagenet-f16-16384": "taming_vqgan_imagenet_f16_16384",
    "rqvae-ffhq-8x8x4": "kakao_rqvae_ffhq_8x8x4",
    "rqvae-imagenet-8x8x4": "kakao_rqvae_imagenet_8x8x4",
}


def converted(kind, folder):
    """The tiny official checkpoint of `kind`, converted into a lesson-03 checkpoint in folder."""
    return released.convert_file(
        DATA / f"{TINY[kind]}.ckpt", DATA / f"{TINY[kind]}.yaml", folder / f"{kind}.pt"
    )


def tiny(kind, folder):
    model, cfg = stage1.load_tokenizer(converted(kind, folder))
    return model, cfg, torch.load(DATA / f"{TINY[kind]}_io.pt", weights_only=True)


def channels_last(kind, z):  # Kakao's latents are (B, h, w, C), taming's (B, C, h, w) as ours
    return z.permute(0, 2, 3, 1) if kind == "kakao" else z


@pytest.mark.parametrize("kind", ["taming", "kakao"])
def test_the_tiny_official_checkpoints_reproduce_the_official_outputs(kind, tmp_path):
    model, cfg, io = tiny(kind, tmp_path)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    close = lambda a, b: torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    with torch.no_grad():
        enc = model.encoder.net(io["x"])
        z_e = model.encoder(io["x"])  # conv_out, then quant_conv
        z_q, codes, losses = model.quantizer(z_e)
        x_rec = model.decoder(z_q)
    close(enc, io["enc_out"])
    close(channels_last(kind, z_e), io["z_e"])
    assert torch.equal(codes if kind == "kakao" else codes[..., 0], io["codes"])  # exactly
    close(channels_last(kind, z_q), io["z_q"])
    close(x_rec, io["x_rec"])
    from_codes = model.quantizer.codebook[codes].sum(-2).permute(0, 3, 1, 2)  # sum over depths
    close(channels_last(kind, from_codes), io["z_q_from_codes"])
    with torch.no_grad():
        close(model.decoder(from_codes), io["x_rec_from_codes"])
    q_loss = losses["loss"] if kind == "taming" else losses["commit"]  # taming: 1.25 mse; Kakao: commitment
    torch.testing.assert_close(q_loss, io["q_loss"], rtol=1e-5, atol=0)


def test_the_tiny_rq_vae_decodes_coarse_to_fine_as_the_official_code(tmp_path):
    model, cfg, io = tiny("kakao", tmp_path)
    rq = common.lesson("02_rq")
    codes, partial, x_hat, _ = rq.decode_partial(model, io["x"])  # every partial depth, lesson 02's
    assert cfg.depth == 4 and x_hat.shape[1] == 4
    for d in range(4):  # entry d: the sum of the first d + 1 depths' code vectors, decoded
        torch.testing.assert_close(x_hat[:, d], io["partial_decodes"][d], atol=1e-4, rtol=0)
    z_partial = model.quantizer.codebook[io["codes"]].cumsum(-2)  # (B, h, w, D, C)
    torch.testing.assert_close(z_partial.movedim(-2, 0), io["z_q_partial"], atol=1e-5, rtol=0)


def test_the_config_is_found_where_the_released_downloads_put_it(tmp_path):
    taming = tmp_path / "2021-vqgan" / "checkpoints" / "last.ckpt"
    kakao = tmp_path / "ffhq" / "stage1" / "model.pt"
    for path, name, config in ((taming, "taming", "../configs/model.yaml"), (kakao, "kakao", "config.yaml")):
        path.parent.mkdir(parents=True)
        shutil.copyfile(DATA / f"{TINY[name]}.ckpt", path)
        (path.parent / config).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DATA / f"{TINY[name]}.yaml", path.parent / config)
        out = released.convert_file(path)  # beside it, <stem>.lessons.pt
        assert out == path.with_name(f"{path.stem}.lessons.pt")
        model, cfg = stage1.load_tokenizer(out)
        assert cfg.z_channels == 16 and cfg.image_size == 32
    shutil.copyfile(DATA / "taming_vqgan_tiny.yaml", kakao.parent / "config.yaml")  # the other kind's
    with pytest.raises(common.UserError, match=r"not a kakao config \(arch: hparams, ddconfig\): no 'arch'"):
        released.convert_file(kakao)
    (kakao.parent / "config.yaml").unlink()
    with pytest.raises(common.UserError, match=r"without its config .*pass --config FILE"):
        released.convert_file(kakao)
    with pytest.raises(
        common.UserError, match=r"official kakao checkpoint: convert it once with `python released.py"
    ):
        stage1.load_tokenizer(kakao)  # --tokenizer reads converted files only


class Reads(dict):
    """A state dict that remembers which keys were read."""

    def __init__(self, *a):
        super().__init__(*a)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


@pytest.mark.parametrize("name", list(KEY_LISTS))
def test_every_key_of_a_released_model_maps_onto_the_lessons_modules_with_its_shape(name):
    listed = json.loads((DATA / f"{KEY_LISTS[name]}.keys.json").read_text())
    state = Reads({k: torch.empty(shape, device="meta") for k, shape in listed["state_dict_shapes"].items()})
    kind = released.kind_of({"state_dict": state})  # the nesting of both official formats
    assert len(state) == listed["num_keys"] and kind == RELEASED_KIND[name]
    gan = common.lesson("03_vqgan")
    cfg = gan.Config(**released.lesson_config(kind, released.released_config(name)))
    with torch.device("meta"):  # shapes only: no memory for the 70-90M weights
        model = gan.build(cfg)
    converted = released.convert(kind, state, model, cfg)
    model.load_state_dict(converted, strict=True)  # every lesson tensor, with its shape
    aliases = {
        k
        for k in state
        if k.startswith(("quantizer.codebooks.1.", "quantizer.codebooks.2.", "quantizer.codebooks.3."))
    }
    assert state.read == set(state) - aliases  # every official tensor used (the aliases are one tensor)


RELEASED_KIND = {name: kind for name, (kind, *_) in released.RELEASED.items()}


def test_a_released_name_downloads_once_into_the_hub_cache_and_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, dst, *a, **kw):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(common.UserError) as e:
        stage1.load_tokenizer("taming-imagenet-f16-1024")
    where = tmp_path / "hub" / "checkpoints" / "taming-imagenet-f16-1024.ckpt"
    assert released.RELEASED["taming-imagenet-f16-1024"][1] in str(e.value) and str(where) in str(e.value)
    # a file that is not the released model (here: the tiny one) is refused with a reason
    fetched = []
    monkeypatch.setattr(
        torch.hub,
        "download_url_to_file",
        lambda url, dst, *a, **kw: fetched.append(shutil.copyfile(DATA / "taming_vqgan_tiny.ckpt", dst)),
    )
    with pytest.raises(common.UserError, match="does not match its config"):
        stage1.load_tokenizer("taming-imagenet-f16-1024")
    with pytest.raises(common.UserError, match="does not match its config"):
        stage1.load_tokenizer("taming-imagenet-f16-1024")
    assert len(fetched) == 1 and where.exists()  # downloaded once


@pytest.mark.parametrize("lesson, kind", [("04_rq_transformer", "kakao"), ("05_vq_diffusion", "taming")])
def test_the_stage_two_lessons_train_on_a_released_tokenizers_codes(lesson, kind, tmp_path):
    prior = common.lesson(lesson)
    cfg = prior.Config(
        tokenizer=str(converted(kind, tmp_path)),
        steps=2,
        batch_size=4,
        eval_images=4,
        samples_per_class=1,
        log_every=1,
        width=16,
        heads=2,
        out=str(tmp_path / "prior"),
        **({"spatial_layers": 1, "depth_layers": 1} if kind == "kakao" else {"layers": 1, "steps_T": 4}),
    )
    prior.train(cfg)
    log = [r for r in common.read_log(tmp_path / "prior") if "loss" in r]
    assert log and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    assert (tmp_path / "prior" / "samples.png").exists()


def test_an_unreachable_released_tokenizer_is_a_one_line_error_exit_2(script, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache; downloads fail here
    code, _, err = script(
        "05_vq_diffusion.py", "--tokenizer", "rqvae-ffhq-8x8x4", "--steps", "1", cwd=tmp_path
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert released.RELEASED["rqvae-ffhq-8x8x4"][1] in err and "rqvae-ffhq-8x8x4.tar.gz" in err


def test_a_kakao_tarball_is_unpacked_once_to_its_stage1_model(tmp_path, monkeypatch):
    import tarfile

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def download(url, dst, *a, **kw):  # a tarball laid out as the released ones: <name>/stage1/model.pt
        with tarfile.open(dst, "w:gz") as tar:
            tar.add(DATA / "kakao_rqvae_tiny.ckpt", arcname="ffhq/stage1/model.pt")
            tar.add(DATA / "kakao_rqvae_tiny.yaml", arcname="ffhq/stage1/config.yaml")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    path = released.fetch_released("rqvae-ffhq-8x8x4")
    assert path == tmp_path / "hub" / "checkpoints" / "rqvae-ffhq-8x8x4" / "stage1" / "model.pt"
    assert path.read_bytes() == (DATA / "kakao_rqvae_tiny.ckpt").read_bytes()
    model, cfg = stage1.load_tokenizer(
        released.convert_file(path, DATA / "kakao_rqvae_tiny.yaml")
    )  # the file works
    assert cfg.depth == 4 and cfg.codebook_size == 64
    with pytest.raises(common.UserError, match="does not match its config"):  # the 256-px release's config
        stage1.load_tokenizer("rqvae-ffhq-8x8x4")


def test_the_converter_writes_a_checkpoint_the_lessons_read_and_a_bad_file_is_one_line_exit_2(
    script, tmp_path
):
    code, out, err = script("released.py", DATA / "taming_vqgan_tiny.ckpt", "--config",
                            DATA / "taming_vqgan_tiny.yaml", "--out", "tok.pt", cwd=tmp_path)  # fmt: skip
    assert code == 0 and "--tokenizer tok.pt" in out, err
    ckpt = common.load_checkpoint(tmp_path / "tok.pt")
    assert ckpt["lesson"] == "03_vqgan" and ckpt["config"]["codebook"] == "loss"
    model, cfg, io = tiny("taming", tmp_path)  # the same weights as converted in-process
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ckpt["model"].items())
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    for args in (["bad.ckpt"], [tmp_path / "tok.pt"]):  # corrupt; a lesson's own file
        code, _, err = script("released.py", *args, cwd=tmp_path)
        assert code == 2 and len(err.strip().splitlines()) == 1
    assert ckpt["model"].keys() == common.load_checkpoint(tmp_path / "tok.pt")["model"].keys()  # untouched
