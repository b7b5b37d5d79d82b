"""The reference devices' networks: MONAI architectures of the kind vendors ship, slimmed
so that all four train on two CPU cores in minutes.

Every wrapper takes the pre-processed tensor ``[N, C, *spatial]`` and returns exactly the
ONNX outputs its manifest declares, with the final activation (sigmoid) inside the graph,
so the exported model answers probabilities the pipeline can compare with thresholds.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from monai.networks.nets.densenet import DenseNet
from monai.networks.nets.resnet import ResNet
from monai.networks.nets.segresnet import SegResNet
from monai.networks.nets.unet import UNet
from torch import nn

__all__ = ["CamDenseNet", "CenterNetResNet", "SegmentationNet", "parameter_count"]


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class CamDenseNet(nn.Module):
    """DenseNet classifier whose linear head is also applied at every location: a class
    activation map (CAM, Zhou et al. 2016) that localises what the classifier sees.

    The image-level logit is a log-sum-exp pooling of the CAM (a smooth maximum; plain
    global average pooling when ``sharpness`` → 0), so a small lesion is not averaged
    away. Outputs: ``probability`` ``[N, L]`` and ``heatmap`` ``[N, L, H, W]``, the
    sigmoid of the CAM upsampled to the input canvas.
    """

    def __init__(
        self,
        labels: int = 1,
        init_features: int = 16,
        growth_rate: int = 8,
        block_config: tuple[int, ...] = (4, 6),
        sharpness: float = 6.0,
    ) -> None:
        super().__init__()
        self.densenet = DenseNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=labels,
            init_features=init_features,
            growth_rate=growth_rate,
            block_config=block_config,
            bn_size=4,
        )
        self.sharpness = sharpness

    def cam(self, image: torch.Tensor) -> torch.Tensor:
        """Class activation logits ``[N, L, h, w]`` at the last dense block's resolution."""
        features = F.relu(self.densenet.features(image))
        linear = cast(nn.Linear, self.densenet.class_layers.out)
        weight = linear.weight[:, :, None, None]
        return F.conv2d(features, weight, linear.bias)

    def pooled(self, cam: torch.Tensor) -> torch.Tensor:
        """Image-level logits ``[N, L]``: log of the mean of exp(r·cam), divided by r."""
        cells = int(cam.shape[-2]) * int(cam.shape[-1])  # fixed by the input size
        flat = cam.flatten(2) * self.sharpness
        return (torch.logsumexp(flat, dim=-1) - math.log(cells)) / self.sharpness

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cam = self.cam(image)
        probability = torch.sigmoid(self.pooled(cam))
        heatmap = torch.sigmoid(
            F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)
        )
        return probability, heatmap


class SegmentationNet(nn.Module):
    """A MONAI segmentation network (UNet, SegResNet) with the sigmoid inside the graph:
    ``[N, 1, *spatial]`` → per-voxel probabilities ``[N, L, *spatial]``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def logits(self, volume: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.net(volume)
        return result

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(volume))


def ct_chest_unet(
    channels: tuple[int, ...] = (8, 16, 32, 64), features: int = 8
) -> SegmentationNet:
    """3D residual UNet (MONAI ``UNet``) with batch norm, so training crops and whole
    volumes at inference see the same normalisation. The UNet ends in ``features``
    channels and a 1 × 1 × 1 convolution makes the logit: MONAI's top up-sampling layer
    normalises its output channels, which on a single logit channel ties every voxel's
    score to the batch's statistics."""
    return SegmentationNet(
        nn.Sequential(
            UNet(
                spatial_dims=3,
                in_channels=1,
                out_channels=features,
                channels=channels,
                strides=(2,) * (len(channels) - 1),
                num_res_units=1,
                norm="batch",
            ),
            nn.Conv3d(features, 1, kernel_size=1),
        )
    )


def ct_brain_segresnet(init_filters: int = 8) -> SegmentationNet:
    """3D SegResNet (Myronenko 2018, MONAI ``SegResNet``) without the VAE branch, slimmed:
    no residual blocks at full resolution (only the initial and final convolutions work
    there), batch norm."""
    return SegmentationNet(
        SegResNet(
            spatial_dims=3,
            init_filters=init_filters,
            in_channels=1,
            out_channels=1,
            blocks_down=(0, 1, 1, 1),
            blocks_up=(1, 1, 0),
            norm="batch",
        )
    )


class CenterNetResNet(nn.Module):
    """CenterNet-style detector ("Objects as Points", Zhou et al. 2019) on a small MONAI
    ResNet backbone with a feature-pyramid decoder to stride 4.

    Outputs: ``heatmap`` ``[N, L, H/4, W/4]`` object-centre probabilities and ``size``
    ``[N, 2, H/4, W/4]`` box (height, width) in model-input pixels. Heatmap cell ``(i, j)``
    stands for the model-input point ``((i + 0.5)·4 − 0.5, (j + 0.5)·4 − 0.5)``.
    """

    stride = 4
    size_scale = 16.0  # the size branch predicts log(size / size_scale)

    def __init__(
        self,
        labels: int = 1,
        widths: tuple[int, int, int, int] = (16, 32, 48, 64),
        head: int = 32,
    ) -> None:
        super().__init__()
        self.backbone = ResNet(
            block="basic",
            layers=[1, 1, 1, 1],
            block_inplanes=list(widths),
            spatial_dims=2,
            n_input_channels=1,
            conv1_t_size=7,
            conv1_t_stride=2,
            num_classes=labels,
            feed_forward=False,
        )
        self.lateral = nn.ModuleList(nn.Conv2d(w, head, kernel_size=1) for w in widths)
        self.smooth = nn.Sequential(
            nn.Conv2d(head, head, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(head),
            nn.ReLU(inplace=True),
        )
        self.heatmap_head = self._head(head, labels)
        self.size_head = self._head(head, 2)
        last = self.heatmap_head[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.constant_(last.bias, -2.19)  # CenterNet's prior: sigmoid ≈ 0.1

    @staticmethod
    def _head(width: int, out: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(width, width, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out, kernel_size=1),
        )

    def raw(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmap logits and log-size maps at stride 4."""
        b = self.backbone
        x = b.maxpool(b.act(b.bn1(b.conv1(image))))
        levels = []
        for layer in (b.layer1, b.layer2, b.layer3, b.layer4):
            x = layer(x)
            levels.append(x)
        top = self.lateral[3](levels[3])
        for i in (2, 1, 0):
            top = self.lateral[i](levels[i]) + F.interpolate(
                top, size=levels[i].shape[-2:], mode="nearest"
            )
        features = self.smooth(top)
        return self.heatmap_head(features), self.size_head(features)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heatmap, log_size = self.raw(image)
        return torch.sigmoid(heatmap), torch.exp(log_size) * self.size_scale
