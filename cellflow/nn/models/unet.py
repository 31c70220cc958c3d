"""U-Net as used for nucleus segmentation by Caicedo et al. 2019 (Cytometry A 95:952).

Their network (after Ronneberger et al. 2015, with batch norm and "same" padding) has four
resolution levels, i.e. three 2x2 max poolings, two 3x3 convolutions per level, nearest
up-sampling by 2 followed by concatenation with the encoder's feature maps of that level, and
a 1x1 convolution to the classes. Here each convolution is followed by batch norm and ReLU
(Caicedo et al. put the ReLU before the batch norm), and the number of levels and the width are
options: ``levels=4`` (the default) means 3 poolings and a down-sampling factor of 8, which
divides a 520 x 696 BBBC039 field exactly; ``levels=5`` is Ronneberger's 4 poolings. Widths
double at each level from ``width`` (Caicedo et al.: 64; default here 32, half the compute
per level on a CPU).
"""

from __future__ import annotations

import torch
from torch import nn

from cellflow.nn.models._common import Interval, SegmentationModel, checked_int, conv_bn_relu, layer_footprint, union

__all__ = ["UNet"]


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(in_channels, out_channels), conv_bn_relu(out_channels, out_channels))


class UNet(SegmentationModel):
    """U-Net (Caicedo et al. 2019): (N, in_channels, H, W) -> logits (N, classes, H, W).

    Parameters
    ----------
    in_channels : int
        Input channels (1 nuclear stain, 3 bright-field planes, 4 Cell Painting channels, ...).
    classes : int
        Output classes, >= 2 (e.g. background / interior / boundary).
    width : int
        Feature maps at the first level; level ``i`` has ``width * 2**i``.
    levels : int
        Resolution levels, >= 1; there are ``levels - 1`` max poolings, so H and W must be
        multiples of ``2 ** (levels - 1)``.

    Examples
    --------
    >>> model = UNet(in_channels=1, classes=3, width=2).eval()
    >>> model(torch.zeros(1, 1, 64, 48)).shape
    torch.Size([1, 3, 64, 48])
    >>> model.downsampling, model.receptive_field
    (8, 100)
    """

    name = "unet"

    def __init__(self, *, in_channels: int, classes: int, width: int = 32, levels: int = 4) -> None:
        super().__init__()
        self.in_channels = checked_int("UNet", "in_channels", in_channels, 1)
        self.classes = checked_int("UNet", "classes", classes, 2)
        checked_int("UNet", "width", width, 1)
        self.levels = checked_int("UNet", "levels", levels, 1)
        self._options = {"width": width, "levels": levels}
        widths = [width * 2**i for i in range(levels)]
        self.encoder = nn.ModuleList(
            _double_conv(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-1]], widths)
        )
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        # decoder[j] brings level levels-1-j up to level levels-2-j.
        self.decoder = nn.ModuleList(
            _double_conv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(levels - 1))
        )
        self.head = nn.Conv2d(widths[0], classes, 1)

    @property
    def downsampling(self) -> int:
        """``2 ** (levels - 1)``."""
        return 2 ** (self.levels - 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (N, classes, H, W) of ``image`` (N, in_channels, H, W), H and W multiples of D."""
        self.check_input(image)
        x = image
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(self.pool(x) if level else x)
            skips.append(x)
        skips.pop()  # the bottom level is not a skip, it is x
        for block in self.decoder:
            x = block(torch.cat([self.up(x), skips.pop()], dim=1))
        return self.head(x)

    def footprint(self, interval: Interval, axis: int = 0) -> Interval:
        """Input positions that output positions ``interval`` depend on (walks :meth:`forward` backwards)."""
        return self._decoded(0, layer_footprint(self.head, interval, axis), axis)

    def _encoded(self, level: int, interval: Interval, axis: int) -> Interval:
        """Input read by positions ``interval`` of the encoder's output at ``level``."""
        interval = layer_footprint(self.encoder[level], interval, axis)
        if level == 0:
            return interval
        return self._encoded(level - 1, layer_footprint(self.pool, interval, axis), axis)

    def _decoded(self, level: int, interval: Interval, axis: int) -> Interval:
        """Input read by positions ``interval`` of the decoder's output at ``level`` (bottom: encoder)."""
        if level == self.levels - 1:
            return self._encoded(level, interval, axis)
        interval = layer_footprint(self.decoder[self.levels - 2 - level], interval, axis)
        below = self._decoded(level + 1, layer_footprint(self.up, interval, axis), axis)
        return union(self._encoded(level, interval, axis), below)
