"""LPIPS (Zhang et al. 2018, arXiv:1801.03924) in plain torch: VGG16 features, unit-normalised per
channel, compared through learned linear heads. Lesson 03 uses it as a perceptual loss.

A student may skip this folder: nothing in it is a concept the lessons teach.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .checkpoints import fetch_weights

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"  # torchvision's weights


LPIPS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"


OFF = "turn the perceptual loss off with --perceptual-weight 0"  # the offline alternative


VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


LPIPS_TAPS = (
    4,
    9,
    16,
    23,
    30,
)  # ends of the slices: after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


def vgg16_features() -> nn.Sequential:
    """torchvision's vgg16().features (without the last pool): the same module indices, so its
    state dict keys (features.0.weight, features.2.weight, ...) load unchanged."""
    layers, c = [], 3
    for v in VGG16_LAYERS:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    return nn.Sequential(*layers)


class NetLin(nn.Module):
    """LPIPS v0.1 head: dropout, then a 1x1 conv to one channel (keys `model.1.weight`)."""

    def __init__(self, ch: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(ch, 1, 1, bias=False))

    def forward(self, x):
        return self.model(x)


class LPIPS(nn.Module):
    """d(x, y) = sum_l mean_hw w_l . (phi_l(x)/||phi_l(x)|| - phi_l(y)/||phi_l(y)||)^2. x, y: (B, 3, S, S) -> (B,)

    Frozen and always in eval mode (dropout in the heads stays off even inside model.train()).
    """

    def __init__(self, pretrained: bool = True):
        super().__init__()
        self.features = vgg16_features()
        for i, c in enumerate((64, 128, 256, 512, 512)):
            setattr(self, f"lin{i}", NetLin(c))
        self.register_buffer(
            "shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        if pretrained:
            vgg = fetch_weights(VGG16_URL, "vgg16-397923af.pth", "LPIPS", OFF)
            self.features.load_state_dict(
                {k[len("features.") :]: v for k, v in vgg.items() if k.startswith("features.")}
            )
            heads = fetch_weights(LPIPS_URL, "lpips_vgg_v0.1.pth", "LPIPS", OFF)
            self.load_state_dict(
                {**{f"features.{k}": v for k, v in self.features.state_dict().items()}, **heads}
            )
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True):
        return super().train(False)  # the heads' dropout must never switch on

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, y]).float()
        h = (h - self.shift) / self.scale
        total, start = 0, 0
        for i, end in enumerate(LPIPS_TAPS):
            h = self.features[start:end](h)
            start = end
            f = h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # unit length along channels
            fx, fy = f.chunk(2)
            total = total + getattr(self, f"lin{i}")((fx - fy).pow(2)).mean((1, 2, 3))  # (B,)
        return total
