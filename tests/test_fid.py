"""FID: the network against the weights file's key names and shapes, the Frechet distance against
cases with a known answer, rFID, and the offline message."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import common
import fid

ROOT = Path(__file__).resolve().parent.parent
SHAPES = json.loads((Path(__file__).parent / "data" / "fid_inception_state_dict_shapes.json").read_text())[
    "keys"
]


def test_the_network_has_exactly_the_keys_and_shapes_of_pytorch_fids_weights_file():
    net = fid.FIDInception()
    mine = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert mine == SHAPES


def released_stand_in() -> dict:
    """A well-scaled random tensor under every key name and shape of the weights file (the list in
    tests/data, not the network's own state dict): what the file holds, but for the values."""
    torch.manual_seed(0)

    def tensor(key, shape):
        if not shape:
            return torch.tensor(0)  # num_batches_tracked
        if key.endswith("conv.weight") or key == "fc.weight":
            return torch.randn(shape) / torch.tensor(shape[1:]).prod().sqrt()
        return (
            torch.rand(shape) + 0.5
            if key.endswith(("bn.weight", "running_var"))
            else torch.randn(shape) * 0.1
        )

    return {k: tensor(k, s) for k, s in SHAPES.items()}


def test_the_weights_files_names_load_through_the_hub_cache_into_a_frozen_network(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    state = released_stand_in()
    torch.save(state, tmp_path / "checkpoints" / fid.WEIGHTS_FILE)
    net = fid.inception()  # strict: a name of the file the network lacks, or the reverse, fails here
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    with torch.no_grad():
        out = net(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert out.shape == (2, 2048) and torch.isfinite(out).all() and (out >= 0).all()  # pool3 of ReLUs


def test_frechet_distance_of_identical_gaussians_is_zero():
    torch.manual_seed(1)
    a = torch.randn(50, 6, dtype=torch.float64)
    mu, s = fid.gaussian(a)
    assert fid.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
    assert fid.fid(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_diagonal_gaussians():
    """Diagonal covariances: ||mu1 - mu2||^2 + sum_i (sigma1_i - sigma2_i)^2."""
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, -1.0])
    sd1, sd2 = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([3.0, 2.0, 1.5])
    want = (mu1 - mu2).pow(2).sum() + (sd1 - sd2).pow(2).sum()
    got = fid.frechet_distance(mu1, torch.diag(sd1**2), mu2, torch.diag(sd2**2))
    assert got == pytest.approx(want.item(), rel=1e-10)


def test_frechet_distance_of_a_scaled_full_covariance():
    """S2 = c^2 S1 (not diagonal): Tr(S1 + c^2 S1 - 2 c S1) = (1 - c)^2 Tr S1."""
    torch.manual_seed(2)
    A = torch.randn(5, 5, dtype=torch.float64)
    s1, c = A @ A.T + 0.1 * torch.eye(5, dtype=torch.float64), 3.0
    mu = torch.zeros(5, dtype=torch.float64)
    got = fid.frechet_distance(mu, s1, mu + 2, c**2 * s1)
    assert got == pytest.approx(5 * 4 + (1 - c) ** 2 * s1.trace().item(), rel=1e-9)


def test_fid_of_samples_approaches_the_distance_of_their_gaussians():
    torch.manual_seed(3)
    a = torch.randn(200_000, 2, dtype=torch.float64)
    b = torch.randn(200_000, 2, dtype=torch.float64) * torch.tensor([2.0, 1.0]) + torch.tensor([1.0, 0.0])
    assert fid.fid(a, b) == pytest.approx(1 + 1, abs=0.03)  # ||(1, 0)||^2 + (2 - 1)^2


class Identity(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x, None, None


def tiny_net():
    """A stand-in feature network with pool3's interface (the real one is tested above)."""
    torch.manual_seed(4)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )


def test_rfid_is_zero_for_a_perfect_reconstruction_and_grows_with_noise():
    torch.manual_seed(5)
    images = torch.rand(64, 3, 16, 16) * 2 - 1
    loader = [(x, torch.zeros(len(x))) for x in images.split(16)]
    net = tiny_net()
    assert fid.rfid(Identity(), loader, net=net) == pytest.approx(0.0, abs=1e-9)
    slightly = fid.rfid(Identity(), loader, reconstruct=lambda x: x + 0.1 * torch.randn_like(x), net=net)
    very = fid.rfid(Identity(), loader, reconstruct=lambda x: x + 1.0 * torch.randn_like(x), net=net)
    assert 0 < slightly < very


def test_offline_without_the_weights_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(
        torch.hub,
        "load_state_dict_from_url",
        lambda *a, **k: (_ for _ in ()).throw(OSError("offline")),
    )
    with pytest.raises(common.UserError, match=r"FID needs pt_inception-2015-12-05-6726825d.pth.*MSE / PSNR"):
        fid.inception()


def test_fid_of_a_single_image_is_a_clear_error():
    with pytest.raises(common.UserError, match="FID needs at least 2 images in each set"):
        fid.fid(torch.randn(1, 8), torch.randn(5, 8))


def image_folder(path, seed, n=3):
    path.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path / f"{i}.png")
    return path


@pytest.mark.slow  # pool3 features of the full Inception network at 299 px
def test_command_line_fid_between_two_folders(script, tmp_path, monkeypatch):
    """`python fid.py A B` as pytorch-fid: 0 for a folder against itself, > 0 against another;
    --help works, and a missing folder exits 2 with one line."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # the hub cache: tmp_path / "hub"
    run = lambda *a: script("fid.py", *a, cwd=tmp_path)
    a, b = image_folder(tmp_path / "a", 0), image_folder(tmp_path / "b", 1)
    code, out, _ = run("--help")
    assert code == 0 and "folder_a" in out
    code, _, err = run(a, tmp_path / "nope")
    assert code == 2 and "nope is not a folder" in err and len(err.splitlines()) == 1
    code, _, err = run(a, b, "--batch-size", "0")
    assert code == 2 and "--batch-size must be at least 1, got 0" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(a, tmp_path / "empty")
    assert code == 2 and "empty holds no images" in err
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    net = fid.FIDInception().eval()
    torch.save(net.state_dict(), tmp_path / "hub" / "checkpoints" / fid.WEIGHTS_FILE)
    want = fid.fid(*(fid.features(net, fid.folder_batches(f, 50)) for f in (a, b)))
    (code, same, _), (code_b, other, _) = run(a, a, "--device", "cpu"), run(a, b, "--device", "cpu")
    assert code == code_b == 0 and abs(float(same.split()[1])) < 1e-3 * want
    assert float(other.split()[1]) == pytest.approx(want, rel=1e-4)
