"""Residual encoder-decoder of Sadanandan et al. 2017 (Sci Rep 7:7860), "automated training".

Built from their four blocks:

- **Conv**: 3x3 convolution, batch norm, ReLU ("same" padding).
- **Conv-Pool**: a Conv block that doubles the feature maps, then 2x2 max pooling. The network
  starts with **8 feature maps** and doubles them at each down-sampling (8, 16, 32, 64 with the
  default ``levels=4``: three poolings, down-sampling factor 8).
- **Residual**: 1x1 conv (16) -> 3x3 conv (16) -> 1x1 conv (64), each but the last followed by
  batch norm and ReLU; the result is added to the block's input, then batch-normalised (and
  passed through a ReLU). Where the input does not have 64 maps (other widths than the paper's)
  the shortcut is projected by a 1x1 convolution, as in He et al. 2016; with the defaults the
  bottom level has exactly 64 maps and the shortcut is the identity.
- **DeConv**: 2x2 transposed convolution with stride 2, batch norm, ReLU.

Residual blocks (``residual_blocks``, default 2) work at the bottom resolution. On the way up
each DeConv brings the maps to the width of the encoder level it meets; the encoder's maps
arrive by a **long skip that is added element-wise** (not concatenated), the sum is
batch-normalised at the receiving end and mixed by a Conv block. A 1x1 convolution gives the
class logits. The placement of the residual blocks and the Conv block after each merge are this
implementation's reading of the paper's figure, which names the blocks but not every repeat.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from cellflow.nn.models._common import Interval, SegmentationModel, checked_int, conv_bn_relu, layer_footprint, union

__all__ = ["ResUNet", "ResidualBlock"]


class ResidualBlock(nn.Module):
    """Bottleneck residual block: ``relu(bn(body(x) + shortcut(x)))``.

    Parameters
    ----------
    in_channels : int
        Input feature maps.
    widths : (int, int, int)
        Maps of the 1x1, 3x3 and 1x1 convolutions of the body (paper: 16, 16, 64). The shortcut
        is a 1x1 convolution when ``in_channels != widths[2]``, the identity otherwise.
    """

    def __init__(self, in_channels: int, widths: tuple[int, int, int] = (16, 16, 64)) -> None:
        super().__init__()
        squeeze, middle, out = widths
        self.body = nn.Sequential(
            conv_bn_relu(in_channels, squeeze, 1),
            conv_bn_relu(squeeze, middle, 3),
            nn.Conv2d(middle, out, 1, bias=False),
        )
        self.shortcut: nn.Module = (
            nn.Identity() if in_channels == out else nn.Conv2d(in_channels, out, 1, bias=False)
        )
        self.norm = nn.Sequential(nn.BatchNorm2d(out), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.body(x) + self.shortcut(x))

    def footprint(self, interval: Interval, axis: int = 0) -> Interval:
        """Input positions that output positions ``interval`` depend on."""
        interval = layer_footprint(self.norm, interval, axis)
        return union(layer_footprint(self.body, interval, axis), layer_footprint(self.shortcut, interval, axis))


def _residual_widths(value: Sequence[int]) -> tuple[int, int, int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise ValueError(f"ResUNet residual_widths must be three ints (1x1, 3x3, 1x1 maps), got {value!r}")
    a, b, c = (checked_int("ResUNet", "residual_widths", w, 1) for w in value)
    return a, b, c


class ResUNet(SegmentationModel):
    """Residual U-Net of Sadanandan et al. 2017: (N, in_channels, H, W) -> logits (N, classes, H, W).

    Parameters
    ----------
    in_channels : int
        Input channels.
    classes : int
        Output classes, >= 2.
    width : int
        Feature maps of the first layer (paper: 8); doubled at each down-sampling.
    levels : int
        Resolution levels, >= 1: ``levels - 1`` poolings, so H and W must be multiples of
        ``2 ** (levels - 1)``.
    residual_blocks : int
        Residual blocks at the bottom resolution, >= 0.
    residual_widths : (int, int, int)
        Maps of a residual block's 1x1, 3x3 and 1x1 convolutions (paper: 16, 16, 64).

    Examples
    --------
    >>> model = ResUNet(in_channels=2, classes=3).eval()
    >>> model(torch.zeros(1, 2, 32, 40)).shape
    torch.Size([1, 3, 32, 40])
    >>> model.downsampling, model.receptive_field
    (8, 72)
    """

    name = "resunet"

    def __init__(
        self,
        *,
        in_channels: int,
        classes: int,
        width: int = 8,
        levels: int = 4,
        residual_blocks: int = 2,
        residual_widths: Sequence[int] = (16, 16, 64),
    ) -> None:
        super().__init__()
        self.in_channels = checked_int("ResUNet", "in_channels", in_channels, 1)
        self.classes = checked_int("ResUNet", "classes", classes, 2)
        checked_int("ResUNet", "width", width, 1)
        self.levels = checked_int("ResUNet", "levels", levels, 1)
        checked_int("ResUNet", "residual_blocks", residual_blocks, 0)
        res_widths = _residual_widths(residual_widths)
        self._options = {
            "width": width, "levels": levels, "residual_blocks": residual_blocks, "residual_widths": res_widths,
        }
        widths = [width * 2**i for i in range(levels)]
        self.stem = conv_bn_relu(in_channels, width)
        self.down = nn.ModuleList(
            nn.Sequential(conv_bn_relu(widths[i], widths[i + 1]), nn.MaxPool2d(2)) for i in range(levels - 1)
        )
        blocks, bottom = [], widths[-1]
        for _ in range(residual_blocks):
            blocks.append(ResidualBlock(bottom, res_widths))
            bottom = res_widths[2]
        self.residual = nn.ModuleList(blocks)
        # up[j], merge[j] and mix[j] bring level levels-1-j up to level levels-2-j.
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        self.mix = nn.ModuleList()
        for i in reversed(range(levels - 1)):
            self.up.append(nn.Sequential(
                nn.ConvTranspose2d(bottom, widths[i], 2, stride=2, bias=False),
                nn.BatchNorm2d(widths[i]),
                nn.ReLU(inplace=True),
            ))
            self.merge.append(nn.BatchNorm2d(widths[i]))
            self.mix.append(conv_bn_relu(widths[i], widths[i]))
            bottom = widths[i]
        self.head = nn.Conv2d(bottom, classes, 1)

    @property
    def downsampling(self) -> int:
        """``2 ** (levels - 1)``."""
        return 2 ** (self.levels - 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (N, classes, H, W) of ``image`` (N, in_channels, H, W), H and W multiples of D."""
        self.check_input(image)
        x = self.stem(image)
        skips = []
        for block in self.down:
            skips.append(x)
            x = block(x)
        for block in self.residual:
            x = block(x)
        for up, merge, mix in zip(self.up, self.merge, self.mix):
            x = mix(merge(up(x) + skips.pop()))
        return self.head(x)

    def footprint(self, interval: Interval, axis: int = 0) -> Interval:
        """Input positions that output positions ``interval`` depend on (walks :meth:`forward` backwards)."""
        return self._decoded(0, layer_footprint(self.head, interval, axis), axis)

    def _encoded(self, level: int, interval: Interval, axis: int) -> Interval:
        """Input read by positions ``interval`` of the encoder at ``level`` (before its pooling)."""
        for block in reversed(self.down[:level]):
            interval = layer_footprint(block, interval, axis)
        return layer_footprint(self.stem, interval, axis)

    def _decoded(self, level: int, interval: Interval, axis: int) -> Interval:
        """Input read by positions ``interval`` at ``level`` of the decoder (bottom: after the residuals)."""
        if level == self.levels - 1:
            for block in reversed(self.residual):
                interval = cast(ResidualBlock, block).footprint(interval, axis)
            return self._encoded(level, interval, axis)
        j = self.levels - 2 - level
        interval = layer_footprint(self.merge[j], layer_footprint(self.mix[j], interval, axis), axis)
        below = self._decoded(level + 1, layer_footprint(self.up[j], interval, axis), axis)
        return union(self._encoded(level, interval, axis), below)
