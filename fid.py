"""FID and reconstruction FID (rFID) in plain torch, as pytorch-fid computes them.

FID (Heusel et al. 2017) compares two image sets through the 2048 pool3 features of an
Inception-v3 network: fit a Gaussian (mean mu, covariance S) to each set's features, then
    FID = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)).
Every paper in these lessons reports FID with the TensorFlow Inception of 2015-12-05, which
pytorch-fid ports as `pt_inception-2015-12-05-6726825d.pth`. Its network differs from
torchvision's Inception-v3 in the pooling of four blocks (average pooling without the padded
zeros; a max pool in the last block); `FIDInception` below is that network, written out so that
the weights file loads strictly, without torchvision. rFID (RQ-VAE Table 4) is the FID between
validation images and their reconstructions.

Inputs are images in [-1, 1] (the lessons' range), resized bilinearly to 299 x 299, which is
what pytorch-fid feeds the network after its own [0, 1] -> [-1, 1] scaling.

Use: `rfid(model, loader)`; `fid(features_a, features_b)` from `features(images)`; from the
command line, as pytorch-fid: `python fid.py real_folder generated_folder`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"

# --- the Frechet distance ---


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) in float64.

    Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2): the second matrix is symmetric positive
    semi-definite, so its square root comes from an eigendecomposition (eigenvalues clamped at 0
    against round-off) instead of a general matrix square root.
    """
    mu1, mu2, s1, s2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    vals, vecs = torch.linalg.eigh(s1)
    sqrt_s1 = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T  # S1^(1/2)
    middle = sqrt_s1 @ s2 @ sqrt_s1
    tr_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return ((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * tr_sqrt).item()


def gaussian(features: torch.Tensor):
    """Mean (F,) and unbiased covariance (F, F) of features (N, F), in float64."""
    f = features.double()
    return f.mean(0), torch.cov(f.T)


def fid(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """FID between two sets of Inception features (N_a, 2048) and (N_b, 2048)."""
    if min(len(features_a), len(features_b)) < 2:
        raise common.UserError(
            f"FID needs at least 2 images in each set (a covariance), got {len(features_a)} and {len(features_b)}"
        )
    return frechet_distance(*gaussian(features_a), *gaussian(features_b))


# --- the network (pytorch-fid's FID Inception-v3) ---


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, **conv):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **conv)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def avg_pool(x):  # the FID blocks average over the real pixels only (no padded zeros)
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):  # Mixed_5b, 5c, 5d: 35 x 35
    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(avg_pool(x)),
        ], 1)  # fmt: skip


class InceptionB(nn.Module):  # Mixed_6a: 35 -> 17
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)  # fmt: skip


class InceptionC(nn.Module):  # Mixed_6b..6e: 17 x 17, factorised 7x7 convolutions
    def __init__(self, c_in: int, c7: int):
        super().__init__()
        row, col = (
            dict(kernel_size=(1, 7), padding=(0, 3)),
            dict(kernel_size=(7, 1), padding=(3, 0)),
        )
        self.branch1x1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x):
        dbl = self.branch7x7dbl_1(x)
        for conv in (
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            dbl = conv(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(avg_pool(x)),
        ], 1)  # fmt: skip


class InceptionD(nn.Module):  # Mixed_7a: 17 -> 8
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):  # Mixed_7b (average pool), Mixed_7c (max pool): 8 x 8
    def __init__(self, c_in: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(c_in, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pool),
        ], 1)  # fmt: skip


class FIDInception(nn.Module):
    """images (B, 3, H, W) in [-1, 1] -> pool3 features (B, 2048). Module names follow the
    weights file (and torchvision), so `load_state_dict(..., strict=True)` checks every tensor."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = (
            InceptionA(192, 32),
            InceptionA(256, 64),
            InceptionA(288, 64),
        )
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = (
            InceptionE(1280, max_pool=False),
            InceptionE(2048, max_pool=True),
        )
        self.fc = nn.Linear(2048, 1008)  # in the weights file (1008 TF classes); FID does not use it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):  # fmt: skip
            x = block(x)
        return x.mean((2, 3))  # pool3: global average -> (B, 2048)


def inception(device="cpu") -> FIDInception:
    """The FID network with pytorch-fid's weights (downloaded once to torch.hub's cache)."""
    otherwise = "report reconstruction MSE / PSNR instead (the notebooks do so)"
    state = common.fetch_weights(WEIGHTS_URL, WEIGHTS_FILE, "FID", otherwise)
    net = FIDInception()
    net.load_state_dict(state, strict=True)
    return net.to(device).eval().requires_grad_(False)


# --- entry points ---


@torch.no_grad()
def features(net: nn.Module, images, batch_size: int = 50) -> torch.Tensor:
    """Pool3 features (N, 2048) of images (N, 3, H, W) in [-1, 1], or of an iterable of batches."""
    batches = images.split(batch_size) if torch.is_tensor(images) else images
    device = next(net.parameters()).device
    return torch.cat([net(_images_of(b).to(device)).double().cpu() for b in batches])


def _images_of(batch):
    """A loader's batch -> images: a tensor, the first item of a tuple/list, or batch["image"]."""
    if isinstance(batch, dict):
        return batch["image"]
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def rfid(model: nn.Module, loader, reconstruct=None, net: nn.Module | None = None) -> float:
    """Reconstruction FID: FID between the loader's images and model's reconstructions of them.

    model: a tokenizer of lessons 01-03 (model(x)[0] is the reconstruction), or pass
    `reconstruct(x) -> x_hat` (e.g. a partial-depth decode). loader: an iterable of image batches
    (tensors in [-1, 1], (images, labels) pairs or {"image": ...} dicts). At least 2 images, and
    in practice thousands: FID is biased upwards for small sets (papers use 50k).
    """
    net = net if net is not None else inception(next(model.parameters()).device)
    device = next(net.parameters()).device
    reconstruct = reconstruct if reconstruct is not None else (lambda x: model(x)[0])
    real, fake = [], []
    was_training = model.training
    model.eval()
    for batch in loader:
        x = _images_of(batch).to(device)
        real.append(net(x).double().cpu())
        fake.append(net(reconstruct(x).float().clamp(-1, 1)).double().cpu())
    model.train(was_training)
    return fid(torch.cat(real), torch.cat(fake))


# --- command line: FID between two image folders ---


def image_files(folder) -> list:
    """The image files of a folder, sorted, sub-folders included; none is a UserError."""
    from pathlib import Path

    files = sorted(f for f in Path(folder).rglob("*") if f.suffix.lower() in common.IMAGE_SUFFIXES)
    if not files:
        raise common.UserError(f"{folder} holds no images ({', '.join(common.IMAGE_SUFFIXES)})")
    return files


def folder_batches(folder, batch_size: int):
    """Batches (B, 3, H, W) in [-1, 1] of a folder's images (sorted, sub-folders included), each
    at its own size (the network resizes to 299), images of one size batched together."""
    from PIL import Image

    files = image_files(folder)
    for i in range(0, len(files), batch_size):
        group = {}
        for f in files[i : i + batch_size]:
            try:  # 16-bit and float images scaled, not clipped (common.to_rgb)
                img = common.to_rgb(Image.open(f))
            except (OSError, ValueError) as e:  # empty, truncated or not an image at all
                raise common.UserError(f"{f}: not a readable image ({str(e).splitlines()[0]})") from None
            x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 127.5 - 1
            group.setdefault(img.size, []).append(x)
        yield from (torch.stack(xs) for xs in group.values())


def main(argv=None) -> None:
    import argparse
    import sys
    from pathlib import Path

    p = argparse.ArgumentParser(
        description="FID between the images of two folders (pytorch-fid's network and weights)."
    )
    p.add_argument("folder_a", help="a folder of images (png, jpg, ...), searched recursively")
    p.add_argument("folder_b", help="the other folder")
    p.add_argument("--batch-size", type=int, default=50, help="images per forward pass (default: 50)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default: auto)")
    args = p.parse_args(argv)
    try:
        folders = (args.folder_a, args.folder_b)
        for folder in folders:
            if not Path(folder).is_dir():
                raise common.UserError(f"{folder} is not a folder")
            image_files(folder)  # before the network: a folder without images fails fast
        if args.batch_size < 1:
            raise common.UserError(f"--batch-size must be at least 1, got {args.batch_size}")
        net = inception(common.get_device(args.device))
        a, b = (features(net, folder_batches(f, args.batch_size)) for f in folders)
        print(f"FID {fid(a, b):.6g} ({len(a)} and {len(b)} images)")
    except common.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
