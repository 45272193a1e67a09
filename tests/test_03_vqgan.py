"""Lesson 03: the adaptive weight, GAN losses, LPIPS plumbing, the discriminator schedule, tokenizers."""

import json
import math
from pathlib import Path

import pytest
import torch

import common
import stage1

ROOT = Path(__file__).resolve().parent.parent

# torchvision's vgg16().features state dict: (key, shape) for every parameter.
VGG16_FEATURE_KEYS = [
    ("features.0.weight", (64, 3, 3, 3)), ("features.0.bias", (64,)),
    ("features.2.weight", (64, 64, 3, 3)), ("features.2.bias", (64,)),
    ("features.5.weight", (128, 64, 3, 3)), ("features.5.bias", (128,)),
    ("features.7.weight", (128, 128, 3, 3)), ("features.7.bias", (128,)),
    ("features.10.weight", (256, 128, 3, 3)), ("features.10.bias", (256,)),
    ("features.12.weight", (256, 256, 3, 3)), ("features.12.bias", (256,)),
    ("features.14.weight", (256, 256, 3, 3)), ("features.14.bias", (256,)),
    ("features.17.weight", (512, 256, 3, 3)), ("features.17.bias", (512,)),
    ("features.19.weight", (512, 512, 3, 3)), ("features.19.bias", (512,)),
    ("features.21.weight", (512, 512, 3, 3)), ("features.21.bias", (512,)),
    ("features.24.weight", (512, 512, 3, 3)), ("features.24.bias", (512,)),
    ("features.26.weight", (512, 512, 3, 3)), ("features.26.bias", (512,)),
    ("features.28.weight", (512, 512, 3, 3)), ("features.28.bias", (512,)),
]  # fmt: skip
# LPIPS v0.1 vgg.pth: one 1x1 conv per tapped layer.
LPIPS_HEAD_KEYS = [(f"lin{i}.model.1.weight", (1, c, 1, 1)) for i, c in enumerate((64, 128, 256, 512, 512))]


@pytest.fixture(scope="module")
def gan():
    return common.lesson("03_vqgan")


@pytest.fixture(scope="module")
def lpips(gan):
    torch.manual_seed(0)
    return gan.LPIPS(pretrained=False)


# --- adaptive weight ---


@pytest.mark.exercise("03_vqgan.adaptive_weight")
def test_adaptive_weight_is_the_gradient_norm_ratio_on_a_toy_decoder(gan):
    torch.manual_seed(0)
    last = torch.nn.Linear(4, 3)
    h = torch.randn(5, 4)
    out = last(h)
    rec, g = out.pow(2).mean(), -(out * torch.randn(5, 3)).mean()
    lam = gan.adaptive_weight(rec, g, last.weight, delta=0.0)
    g_rec = 2 * out.detach().T @ h / out.numel()  # d rec / dW by hand
    g_gan = torch.autograd.grad(g, last.weight, retain_graph=True)[0]
    torch.testing.assert_close(lam, g_rec.norm() / g_gan.norm())
    torch.testing.assert_close(lam * g_gan.norm(), g_rec.norm())  # the two gradients balance


@pytest.mark.exercise("03_vqgan.adaptive_weight")
def test_adaptive_weight_carries_no_gradient_and_is_clamped(gan):
    w = torch.randn(3, requires_grad=True)
    lam = gan.adaptive_weight((w * 1e6).sum(), (w * 1e-6).sum(), w, max_lambda=100.0)
    assert not lam.requires_grad and lam.item() == 100.0


@pytest.mark.exercise("03_vqgan.adaptive_weight")
def test_adaptive_weight_falls_as_the_gan_loss_is_scaled_up(gan):
    torch.manual_seed(1)
    w = torch.randn(4, 4, requires_grad=True)
    x = torch.randn(8, 4)
    rec, g = (x @ w).pow(2).mean(), -(x @ w).mean()
    lam = gan.adaptive_weight(rec, g, w, delta=0.0)
    torch.testing.assert_close(gan.adaptive_weight(rec, 100 * g, w, delta=0.0), lam / 100)
    assert lam > 0


# --- GAN losses ---


@pytest.mark.exercise("03_vqgan.hinge_d_loss")
def test_hinge_loss_is_zero_beyond_its_margins(gan):
    assert gan.hinge_d_loss(torch.full((4,), 1.5), torch.full((4,), -1.2)).item() == 0.0
    torch.testing.assert_close(gan.hinge_d_loss(torch.zeros(4), torch.zeros(4)), torch.tensor(1.0))


@pytest.mark.exercise("03_vqgan.hinge_d_loss")
def test_hinge_loss_values_inside_the_margins(gan):
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([-2.0, 0.0])
    torch.testing.assert_close(gan.hinge_d_loss(real, fake), torch.tensor(0.5 * (0.25 + 0.5)))


@pytest.mark.exercise("03_vqgan.vanilla_d_loss")
def test_vanilla_loss_is_the_binary_cross_entropy(gan):
    real, fake = torch.randn(6), torch.randn(6)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = 0.5 * (bce(real, torch.ones(6)) + bce(fake, torch.zeros(6)))
    torch.testing.assert_close(gan.vanilla_d_loss(real, fake), expected)


@pytest.mark.exercise("03_vqgan.vanilla_d_loss")
def test_vanilla_loss_stays_finite_for_confidently_wrong_logits(gan):
    """-log sigmoid(-200) = 200 exactly in float32 via softplus; log(sigmoid(-200)) is log 0."""
    loss = gan.vanilla_d_loss(torch.tensor([-200.0, 0.0]), torch.tensor([150.0, 0.0]))
    expected = 0.5 * ((200.0 + math.log(2)) / 2 + (150.0 + math.log(2)) / 2)
    torch.testing.assert_close(loss, torch.tensor(expected))


def test_generator_loss_is_minus_the_mean_logit(gan):
    torch.testing.assert_close(gan.generator_loss(torch.tensor([1.0, 3.0])), torch.tensor(-2.0))


# --- LPIPS ---


def test_vgg16_feature_keys_and_shapes_match_torchvision(gan):
    got = [(k, tuple(v.shape)) for k, v in gan.LPIPS(pretrained=False).state_dict().items()]
    assert got == VGG16_FEATURE_KEYS + LPIPS_HEAD_KEYS


def test_a_torchvision_style_state_dict_loads_strictly(gan):
    features = common.lpips.vgg16_features()
    state = {k[len("features.") :]: torch.zeros(s) for k, s in VGG16_FEATURE_KEYS}
    features.load_state_dict(state)  # strict by default: no missing or unexpected key


def test_lpips_is_zero_for_identical_images_and_symmetric(lpips):
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(lpips(x, x), torch.zeros(2))
    torch.testing.assert_close(lpips(x, y), lpips(y, x))
    assert (lpips(x, y) != 0).all()


def test_lpips_stays_in_eval_mode(lpips):
    lpips.train()
    assert not lpips.training and not any(m.training for m in lpips.modules())
    assert not any(p.requires_grad for p in lpips.parameters())


def test_offline_lpips_error_names_the_file_and_the_flag(gan, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(
        torch.hub,
        "load_state_dict_from_url",
        lambda *a, **k: (_ for _ in ()).throw(OSError("offline")),
    )
    with pytest.raises(common.UserError, match=r"vgg16-397923af\.pth.*--perceptual-weight 0"):
        gan.LPIPS(pretrained=True)


def test_cached_weights_are_loaded_from_the_hub_folder(gan, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    torch.save(
        {k: torch.full(s, 0.5) for k, s in VGG16_FEATURE_KEYS},
        tmp_path / "checkpoints" / "vgg16-397923af.pth",
    )
    torch.save(
        {k: torch.full(s, 2.0) for k, s in LPIPS_HEAD_KEYS},
        tmp_path / "checkpoints" / "lpips_vgg_v0.1.pth",
    )
    model = gan.LPIPS(pretrained=True)
    assert (model.features[28].bias == 0.5).all() and (model.lin4.model[1].weight == 2.0).all()


# --- discriminator and schedule ---


def test_patch_discriminator_gives_a_grid_of_logits_and_its_init(gan):
    d = gan.PatchDiscriminator(layers=3, ch=8)
    assert d(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    first = d.net[0].weight
    assert abs(first.std().item() - 0.02) < 0.005 and any(
        isinstance(m, torch.nn.BatchNorm2d) for m in d.modules()
    )


def small(gan, tmp_path, **kw):
    base = dict(
        steps=6,
        batch_size=8,
        log_every=1,
        eval_images=16,
        perceptual_weight=0.0,
        depth=2,
        out=str(tmp_path),
        ch=8,
        disc_ch=8,
    )
    return gan.Config(**{**base, **kw})


def test_discriminator_is_inactive_before_disc_start(gan, tmp_path):
    gan.train(small(gan, tmp_path, disc_start=4, disc_warmup=1))
    log = [json.loads(line) for line in open(tmp_path / "metrics.jsonl") if '"final"' not in line]
    assert all("d_loss" not in r and r["lam"] == 0 for r in log[:4])  # steps 1-4: no D at all
    assert "d_loss" in log[4] and log[4]["lam"] == 0  # step 5: D trains, G does not see it yet
    assert "d_loss" in log[5] and log[5]["lam"] > 0  # step 6: lambda L_GAN reaches G


def test_no_discriminator_loss_reaches_the_generator(gan, tmp_path):
    model = gan.build(small(gan, tmp_path))
    disc = gan.PatchDiscriminator(2, 8)
    x = torch.randn(2, 3, 32, 32)
    x_hat = model(x)[0]
    d_loss = gan.hinge_d_loss(disc(x), disc(x_hat.detach()))
    d_loss.backward()
    assert all(p.grad is None for p in model.parameters())
    assert any(p.grad is not None for p in disc.parameters())


# --- tokenizers for stage 2 ---


def test_load_tokenizer_round_trips_a_02_and_a_03_checkpoint(gan, tmp_path):
    rq = common.lesson("02_rq")
    m2 = rq.train(rq.Config(steps=3, batch_size=8, eval_images=16, out=str(tmp_path / "rq"), depth=2))
    m3 = gan.train(small(gan, tmp_path / "gan", steps=3))
    x = torch.randn(2, 3, 32, 32)
    for trained, folder in ((m2, "rq"), (m3, "gan")):
        tok, cfg = stage1.load_tokenizer(tmp_path / folder / "ckpt.pt")
        assert cfg.depth == 2 and not tok.training and not any(p.requires_grad for p in tok.parameters())
        trained.eval()
        with torch.no_grad():
            torch.testing.assert_close(tok(x)[0], trained(x)[0])
            assert torch.equal(tok(x)[1], trained(x)[1])


def test_load_tokenizer_rejects_a_lesson_01_checkpoint(gan, vq, tmp_path):
    vq.train(vq.Config(steps=2, batch_size=8, eval_images=16, out=str(tmp_path)))
    with pytest.raises(
        common.UserError, match=r"written by 01_vq, not by 02_rq\.py, 03_vqgan\.py or beyond/fsq\.py"
    ):
        stage1.load_tokenizer(tmp_path / "ckpt.pt")


def test_cpu_run_without_perceptual_loss_trains_the_gan_without_nan(gan, tmp_path):
    gan.train(small(gan, tmp_path, steps=12, disc_start=4, disc_warmup=2, log_every=4))
    log = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert log[-1]["final"] and log[-1]["val_psnr"] > 5 and (tmp_path / "coarse_to_fine.png").exists()
    assert all(v == v for r in log for v in r.values() if isinstance(v, float))  # no NaN


def test_command_line_without_lpips_weights_exits_2_with_the_flag(script, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache; downloads fail here
    code, _, err = script("03_vqgan.py", "--steps", "1", "--out", tmp_path / "o", cwd=tmp_path)
    assert code == 2 and "--perceptual-weight 0" in err and len(err.splitlines()) == 1


def test_resume_restores_both_players_exactly(gan, tmp_path):
    straight = gan.train(small(gan, tmp_path / "a", steps=4, disc_start=1, disc_warmup=1))
    gan.train(small(gan, tmp_path / "b", steps=2, disc_start=1, disc_warmup=1))
    resumed = gan.train(small(gan, tmp_path / "b", steps=4, disc_start=1, disc_warmup=1, resume=True))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    disc_a = common.load_checkpoint(tmp_path / "a" / "ckpt.pt")["disc"]
    disc_b = common.load_checkpoint(tmp_path / "b" / "ckpt.pt")["disc"]
    assert all(torch.equal(disc_a[k], disc_b[k]) for k in disc_a)


def test_contradicting_downsample_and_ch_mult_exit_2(script, tmp_path):
    code, _, err = script("03_vqgan.py", "--downsample", "8", "--ch-mult", "1", "2", cwd=tmp_path)
    assert code == 2 and "--downsample 8 contradicts --ch-mult 1 2 (f = 2)" in err


def test_gradient_accumulation_is_refused_by_the_gan_loop_with_exit_2(script, tmp_path):
    code, _, err = script("03_vqgan.py", "--grad-accum", "2", cwd=tmp_path)
    assert code == 2 and "--grad-accum is not supported by the two-player loop" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("lesson", ["02_rq", "03_vqgan"])
def test_help_lists_the_presets_each_dataset_gives_and_they_are_what_the_config_takes(lesson, capsys):
    module = common.lesson(lesson)
    for name in ("shapes", "mnist", "flowers", "ffhq", "imagenet"):
        cfg = module.Config(dataset=name)
        for flag, value in module.Config.PRESETS[name].items():
            assert getattr(cfg, flag) == value, (name, flag)
    with pytest.raises(SystemExit):
        common.parse(module.Config, ["--help"])
    out = capsys.readouterr().out
    assert "presets: what --dataset gives the flags left unset" in out
    assert "  imagenet: " in out and "codebook-size 16384" in out.split("  imagenet: ")[1]
