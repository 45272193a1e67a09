"""FID: the network against the weights file's key names and shapes, the Frechet distance against
cases with a known answer, rFID, and the offline message."""

import json
import os
import subprocess
import sys
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


def test_a_state_dict_of_those_keys_and_shapes_loads_strictly_and_gives_pool3_features():
    torch.manual_seed(0)

    def tensor(key, shape):  # a well-scaled stand-in for each tensor of the weights file
        if not shape:
            return torch.tensor(0)  # num_batches_tracked
        if key.endswith("conv.weight") or key == "fc.weight":
            return torch.randn(shape) / torch.tensor(shape[1:]).prod().sqrt()
        return torch.ones(shape) if key.endswith(("bn.weight", "running_var")) else torch.zeros(shape)

    state = {k: tensor(k, s) for k, s in SHAPES.items()}
    net = fid.FIDInception()
    net.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = net.eval()(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert out.shape == (2, 2048) and torch.isfinite(out).all()
    assert (out >= 0).all()  # pool3 averages ReLU outputs


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


def test_cached_weights_load_strictly(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    torch.save(fid.FIDInception().state_dict(), tmp_path / "checkpoints" / fid.WEIGHTS_FILE)
    net = fid.inception()
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_fid_of_a_single_image_is_a_clear_error():
    with pytest.raises(common.UserError, match="FID needs at least 2 images in each set"):
        fid.fid(torch.randn(1, 8), torch.randn(5, 8))


def image_folder(path, seed, n=3):
    path.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path / f"{i}.png")
    return path


def test_command_line_fid_between_two_folders(tmp_path):
    """`python fid.py A B` as pytorch-fid: 0 for a folder against itself, > 0 against another;
    --help works, and a missing folder exits 2 with one line."""
    run = lambda *a, **env: subprocess.run([sys.executable, str(ROOT / "fid.py"), *a], capture_output=True, text=True,
                                           timeout=300, env={**os.environ, "TORCH_HOME": str(tmp_path), **env})  # fmt: skip
    a, b = image_folder(tmp_path / "a", 0), image_folder(tmp_path / "b", 1)
    help_ = run("--help")
    assert help_.returncode == 0 and "folder_a" in help_.stdout
    r = run(str(a), str(tmp_path / "nope"))
    assert r.returncode == 2 and "nope is not a folder" in r.stderr and "Traceback" not in r.stderr
    r = run(str(a), str(b), "--batch-size", "0")
    assert r.returncode == 2 and "--batch-size must be at least 1, got 0" in r.stderr
    (tmp_path / "empty").mkdir()
    r = run(str(a), str(tmp_path / "empty"))
    assert r.returncode == 2 and "empty holds no images" in r.stderr
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    net = fid.FIDInception().eval()
    torch.save(net.state_dict(), tmp_path / "hub" / "checkpoints" / fid.WEIGHTS_FILE)
    want = fid.fid(*(fid.features(net, fid.folder_batches(f, 50)) for f in (a, b)))
    same, other = run(str(a), str(a), "--device", "cpu"), run(str(a), str(b), "--device", "cpu")
    assert same.returncode == 0 and abs(float(same.stdout.split()[1])) < 1e-3 * want
    assert other.returncode == 0 and float(other.stdout.split()[1]) == pytest.approx(want, rel=1e-4)
