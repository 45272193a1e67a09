"""The sample-quality evaluator: its classifier on real images, class accuracy of generators whose
answer is known, and the Frechet distance in its feature space."""

import pytest
import torch

import common
import sample_quality as sq


@pytest.fixture(scope="module")
def real():
    """Validation images of shapes-plain (the generative lessons' default) and their classes."""
    return common.first_images(common.Shapes("val", 32, 0, plain=True), 1000)


def test_the_classifier_recognises_held_out_real_images_of_both_builtin_datasets():
    x, y = sq._shapes("val")  # 1000 shapes + 1000 shapes-plain validation images, never trained on
    with torch.no_grad():
        acc = (sq.classifier()(x).argmax(-1) == y).double().mean().item()
    assert acc >= 0.97


def test_the_classifier_is_cached_and_reloaded_equal(tmp_path, monkeypatch):
    net = sq.classifier()
    assert torch.load(sq.cache_path())["digest"] == sq.code_digest()  # the file this code makes
    sq._LOADED.clear()  # as a new process would: load the file
    x = common.first_images(common.Shapes("val"), 8)[0]
    torch.testing.assert_close(sq.classifier()(x), net(x))


@pytest.mark.slow
def test_a_classifier_file_from_other_code_is_trained_again_from_scratch_to_97_percent(tmp_path, monkeypatch):
    """(The student's tier loads the committed tests/data/shapes_classifier.pt instead.)"""
    monkeypatch.setenv("SHAPES_CLASSIFIER", str(tmp_path / "clf.pt"))
    torch.save({"digest": "other code", "model": {}}, tmp_path / "clf.pt")
    x, y = sq._shapes("val")
    with torch.no_grad():
        acc = (sq.classifier()(x).argmax(-1) == y).double().mean().item()
    assert acc >= 0.97 and torch.load(tmp_path / "clf.pt")["digest"] == sq.code_digest()


def test_a_generator_that_returns_real_images_of_the_class_scores_about_one(real):
    x, y = real
    q = sq.judge(x[:256], y[:256], common.Shapes("val", 32, 0, plain=True), "shapes-plain")
    assert q["class_acc"] >= 0.97 and q["confidence"] > 0.9


def test_a_class_shuffled_generator_scores_about_chance(real):
    x, y = real
    wrong = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    q = sq.judge(x, wrong, common.Shapes("val", 32, 0, plain=True), "shapes-plain")
    assert abs(q["class_acc"] - 1 / 8) < 0.05


def test_frechet_distance_of_two_halves_of_real_images_is_small_and_grows_with_corruption(real):
    net, (x, _) = sq.classifier(), real
    f = lambda images: sq._features_and_probs(net, images)[0]
    a, b = f(x[:500]), f(x[500:])
    g = torch.Generator().manual_seed(1)
    noisy = [f((x[500:] + s * torch.randn(x[500:].shape, generator=g)).clamp(-1, 1)) for s in (0.2, 0.5)]
    same, slightly, very = sq.frechet(a, b), sq.frechet(a, noisy[0]), sq.frechet(a, noisy[1])
    assert same < 0.2 * slightly and slightly < very


def test_the_floor_is_the_distance_of_as_many_real_images(real):
    x, y = real
    q = sq.judge(x[:64], y[:64], common.Shapes("val", 32, 0, plain=True), "shapes-plain")
    blobs = sq.judge(
        torch.zeros(64, 3, 32, 32), y[:64], common.Shapes("val", 32, 0, plain=True), "shapes-plain"
    )
    assert q["shapes_fd"] < 2 * q["shapes_fd_floor"] < blobs["shapes_fd"]


def test_other_datasets_without_inception_weights_get_no_measure(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert sq.judge(torch.zeros(4, 3, 32, 32), None, None, "ffhq") == {}
    assert sq.summary({}) == "no sample-quality measure for this dataset"
