"""The default float model: a small MobileNetV2-style classifier for 1x1x96x96 grayscale in [0, 1].

stem (3x3 conv, stride 2, ReLU6) -> inverted residual blocks (1x1 expand + ReLU6, 3x3 depthwise +
ReLU6, 1x1 linear projection; residual Add when stride 1 and channels match) -> 1x1 conv + ReLU6
-> global average pool -> linear head. BatchNorm is used for training and folded into the
convolutions by the ONNX export (eval mode).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
INPUT_SHAPE = (1, 1, 96, 96)
OPSET = 18  # what esp-ppq's own torch route exports with

# (expansion, output channels, stride) per inverted residual block
BLOCKS = (
    (3, 16, 2),
    (3, 16, 1),
    (3, 24, 2),
    (3, 24, 1),
    (3, 32, 2),
    (3, 32, 1),
    (3, 32, 1),
)
STEM_CHANNELS = 8
HEAD_CHANNELS = 64


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            _conv_bn(cin, hidden, 1),
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn(hidden, cout, 1, act=False),
        )

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.use_res else y


class GestureNet(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.stem = _conv_bn(1, STEM_CHANNELS, 3, 2)
        blocks, cin = [], STEM_CHANNELS
        for expand, cout, stride in BLOCKS:
            blocks.append(InvertedResidual(cin, cout, stride, expand))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(cin, HEAD_CHANNELS, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def build_model(num_classes: int) -> nn.Module:
    """A freshly initialised GestureNet (seed torch yourself for reproducible weights)."""
    return GestureNet(num_classes)


def convert_relu6_to_relu(model: nn.Module) -> nn.Module:
    """Swap every nn.ReLU6 for nn.ReLU, recursively, in place; returns the model.

    Layerwise equalization cannot cross a Clip (ReLU6) node; a plain Relu also fuses into the Conv.
    """
    for name, child in model.named_children():
        if isinstance(child, nn.ReLU6):
            setattr(model, name, nn.ReLU(inplace=child.inplace))
        else:
            convert_relu6_to_relu(child)
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def export_onnx(model: nn.Module, path) -> Path:
    """Export in eval mode (BatchNorm folded) with input `image` [1,1,96,96] and output `logits`."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    torch.onnx.export(
        model,
        (torch.zeros(INPUT_SHAPE),),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=OPSET,
        dynamo=False,
        do_constant_folding=True,
    )
    # drop the exporter's producer stamp so the bytes depend only on the weights
    m = onnx.load(str(path))
    m.producer_name, m.producer_version = "quant", ""
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path
