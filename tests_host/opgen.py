"""Generate single-operator `.espdl` models with esp-ppq (target esp32s3), with embedded test values.

Each case is a tiny torch module, a seeded calibration set, a fixed seeded test input and a bit width;
`generate(case, out_dir)` quantizes and exports it (export_test_values=True) and returns the file.
Used by tests_host/test_single_ops.py; also runnable: `python tests_host/opgen.py OUT_DIR [NAME ...]`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn


class _Residual(nn.Module):
    """y = conv_a(x) + conv_b(x): an Add whose two inputs are calibrated to different ranges."""

    def __init__(self, c: int):
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.b = nn.Conv2d(c, c, 1)
        with torch.no_grad():
            self.b.weight.mul_(4.0)

    def forward(self, x):
        return self.a(x) + self.b(x)


class _Head(nn.Module):
    """conv + ReLU6 -> global average pool -> flatten -> linear: the tail of the gesture model."""

    def __init__(self, cin: int, c: int, classes: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, c, 1)
        self.act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.act(self.conv(x))), 1))


class _MeanHead(_Head):
    """_Head with the global average written as a mean over H and W (exports as ReduceMean)."""

    def forward(self, x):
        return self.fc(torch.flatten(self.act(self.conv(x)).mean(dim=(2, 3), keepdim=True), 1))


class _Mixed(nn.Module):
    """conv (int8) -> depthwise conv + relu (int16 via dispatching) -> conv (int8): RequantizeLinear both ways."""

    def __init__(self, c: int):
        super().__init__()
        self.c1 = nn.Conv2d(c, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.relu = nn.ReLU()
        self.c2 = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.c2(self.relu(self.dw(self.c1(x))))


class _Chain(nn.Module):
    """The variants' operator chain in miniature: conv+ReLU6, depthwise+ReLU6, linear 1x1, residual Add,
    1x1 conv+ReLU6, global average pool, linear head."""

    def __init__(self, c: int = 8, hidden: int = 16, classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, 2, 1), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(c, hidden, 1), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden), nn.ReLU6())
        self.project = nn.Conv2d(hidden, c, 1)
        self.head = nn.Sequential(nn.Conv2d(c, 32, 1), nn.ReLU6())
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.head(x), 1), 1))


class _Lambda(nn.Module):
    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _seq(*layers) -> Callable[[], nn.Module]:
    return lambda: nn.Sequential(*layers)


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], nn.Module]
    shape: tuple[int, ...]
    bits: int = 8
    int16_ops: tuple[str, ...] = ()      # ONNX node names dispatched to ESPDL_S3_INT16 in an int8 model
    calib: str = "minmax"
    scale: float = 1.0                   # input amplitude (randn * scale)
    uniform: bool = False                # inputs uniform in [0, 1] (images) instead of randn
    marks: tuple[str, ...] = field(default=())
    all_values: bool = False             # embed test values for every intermediate tensor, not only outputs
    int16_float64: bool = False          # dispatch int16_ops to ESPDL_S3_H_PRE_INT16 (float64 simulation)
    extra_inputs: tuple[tuple[int, ...], ...] = ()  # shapes of further graph inputs (binary operators)


def _cases() -> list[Case]:
    torch.manual_seed(0)
    c = []
    c.append(Case("conv3x3_relu_s8", _seq(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()), (1, 3, 12, 12)))
    c.append(Case("conv3x3_s2_unaligned_s16", _seq(nn.Conv2d(4, 12, 3, stride=2, padding=1)), (1, 4, 11, 11), 16))
    c.append(Case("conv5x3_dil_pad_s8", _seq(nn.Conv2d(5, 20, (5, 3), stride=(1, 2), padding=(2, 3), dilation=(1, 2))),
                  (1, 5, 10, 13)))
    c.append(Case("depthwise_relu6_s8", _seq(nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.ReLU6()), (1, 24, 9, 9)))
    c.append(Case("depthwise_s2_relu6_s16", _seq(nn.Conv2d(20, 20, 3, stride=2, padding=1, groups=20), nn.ReLU6()),
                  (1, 20, 10, 10), 16))
    c.append(Case("grouped_conv_s8", _seq(nn.Conv2d(8, 16, 3, padding=1, groups=2)), (1, 8, 7, 7)))
    c.append(Case("add_residual_s8", lambda: _Residual(16), (1, 16, 8, 8)))
    c.append(Case("add_residual_s16", lambda: _Residual(8), (1, 8, 6, 6), 16))
    c.append(Case("head_gap_gemm_s8", lambda: _Head(8, 32, 7), (1, 8, 6, 6)))
    c.append(Case("head_gap_gemm_s16", lambda: _Head(8, 24, 5), (1, 8, 6, 6), 16))
    c.append(Case("head_reducemean_gemm_s8", lambda: _MeanHead(8, 32, 7), (1, 8, 6, 6)))
    c.append(Case("linear_relu_s8", _seq(nn.Flatten(), nn.Linear(48, 20), nn.ReLU()), (1, 3, 4, 4)))
    c.append(Case("mixed_requant_s8_s16", lambda: _Mixed(3), (1, 3, 8, 8), 8,
                  int16_ops=("/dw/Conv", "/relu/Relu")))
    c.append(Case("conv_maxpool_avgpool_s8", _seq(nn.Conv2d(16, 16, 1), nn.MaxPool2d(2), nn.AvgPool2d(2)), (1, 16, 8, 8)))
    c.append(Case("conv_maxpool_avgpool_s16", _seq(nn.Conv2d(8, 8, 1), nn.MaxPool2d(3, 2, 1), nn.AvgPool2d(2)), (1, 8, 9, 9), 16))
    c.append(Case("sigmoid_mul_s8", lambda: _Lambda(lambda x: x * torch.sigmoid(x)), (1, 16, 4, 4)))
    c.append(Case("tanh_sigmoid_sub_s16", lambda: _Lambda(lambda x: torch.tanh(x) - torch.sigmoid(x)), (1, 16, 4, 4), 16))
    c.append(Case("concat_transpose_s8",
                  lambda: _Lambda(lambda x: torch.cat([x, x * 0.5], 1).permute(0, 2, 3, 1).reshape(1, -1)),
                  (1, 8, 3, 3)))
    # average pools with windows that are not powers of two and padding (ESP-DL: float division by the full area)
    c.append(Case("avgpool3x3_s2_pad_s8", _seq(nn.Conv2d(12, 12, 1), nn.AvgPool2d(3, 2, 1)), (1, 12, 7, 7)))
    c.append(Case("avgpool5x3_pad_s16", _seq(nn.Conv2d(6, 6, 1), nn.AvgPool2d((5, 3), 1, (2, 1))), (1, 6, 5, 7), 16))
    # float32 nodes (esp-ppq exports Log/Sqrt as quant_type F32): NaN for negative inputs
    c.append(Case("log_f32_s8", lambda: _Lambda(torch.log), (1, 16, 4, 4)))
    c.append(Case("sqrt_f32_s16", lambda: _Lambda(torch.sqrt), (1, 10, 3, 5), 16))
    # every intermediate tensor embedded: the interpreter is checked layer by layer against the simulator
    c.append(Case("chain_all_values_mixed", lambda: _Chain(), (1, 1, 12, 12), uniform=True, all_values=True,
                  int16_ops=("/dw/dw.0/Conv", "/dw/dw.1/Clip", "/project/Conv")))
    # the project's gesture network (random weights): every operator the three variants use
    c.append(Case("gesture_s8", lambda: _gesture(relu=False), (1, 1, 96, 96), uniform=True, marks=("model",)))
    c.append(Case("gesture_relu_s8", lambda: _gesture(relu=True), (1, 1, 96, 96), uniform=True, marks=("model",)))
    c.append(Case("gesture_mixed", lambda: _gesture(relu=False), (1, 1, 96, 96), uniform=True, marks=("model",),
                  int16_ops=("/blocks/blocks.0/conv/conv.0/conv.0.0/Conv", "/blocks/blocks.0/conv/conv.0/conv.0.2/Clip",
                             "/blocks/blocks.0/conv/conv.1/conv.1.0/Conv", "/blocks/blocks.1/Add")))
    # not in the suite (25 s, 2 MB): int16 layers of gesture size, every value embedded; shows the simulator's
    # float32 int16 arithmetic drifting +-1..2 LSB from exact integers and flipping int8 consumers by 1 LSB
    c.append(Case("gesture_mixed_all_values", lambda: _gesture(relu=False), (1, 1, 96, 96), uniform=True,
                  marks=("model",), all_values=True, int16_ops=GESTURE_INT16))
    # the same with the int16 layers dispatched to ESPDL_S3_H_PRE_INT16 (float64 simulation): exact everywhere
    c.append(Case("gesture_mixed_all_values_f64", lambda: _gesture(relu=False), (1, 1, 96, 96), uniform=True,
                  marks=("model",), all_values=True, int16_ops=GESTURE_INT16, int16_float64=True))
    return c


GESTURE_INT16 = tuple(f"/{p}/Conv" for p in (
    "stem/stem.0", "blocks/blocks.0/conv/conv.0/conv.0.0", "blocks/blocks.0/conv/conv.1/conv.1.0",
    "blocks/blocks.0/conv/conv.2/conv.2.0", "blocks/blocks.4/conv/conv.0/conv.0.0",
    "blocks/blocks.4/conv/conv.1/conv.1.0", "blocks/blocks.4/conv/conv.2/conv.2.0")) + tuple(
    f"/{p}/Clip" for p in ("stem/stem.2", "blocks/blocks.0/conv/conv.0/conv.0.2", "blocks/blocks.0/conv/conv.1/conv.1.2",
                           "blocks/blocks.4/conv/conv.0/conv.0.2", "blocks/blocks.4/conv/conv.1/conv.1.2"))


def _gesture(relu: bool) -> nn.Module:
    from quant.variants.model import build_model, convert_relu6_to_relu

    model = build_model(7)
    return convert_relu6_to_relu(model) if relu else model


class _Binary(nn.Module):
    """fn(x, y) of the two graph inputs."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, x, y):
        return self.fn(x, y)


class _Const(nn.Module):
    """fn(x, c) with a seeded constant c of the given shape (exported as an initializer)."""

    def __init__(self, fn: Callable, shape: tuple[int, ...], offset: float = 0.0):
        super().__init__()
        self.fn = fn
        self.register_buffer("c", torch.randn(shape) + offset)

    def forward(self, x):
        return self.fn(x, self.c)


def _conformance() -> list[Case]:
    """One operator per model, int8 and int16, several shapes each (odd windows and paddings, channel counts
    3, 7, 33, broadcasting): the conformance suite of the interpreter (tests_host/test_conformance.py)."""
    F = nn.functional
    # (name, module, input shape, further input shapes[, bit widths]); Resize is int8 only: ESP-DL 3.3.9's
    # resize<int16_t> has an empty body (dl_base_resize.cpp) and its own op_cfg.toml tests Resize in int8 only
    specs: list[tuple] = [
        # element-wise binary (dl_base_elemwise.cpp shape merge: n_n, n_1 and 1_n kernels)
        ("div_same", lambda: _Binary(torch.div), (1, 7, 5, 5), ((1, 7, 5, 5),)),
        ("div_bcast_row", lambda: _Binary(torch.div), (1, 33, 3, 4), ((1, 1, 3, 4),)),
        ("div_bcast_scalar_in", lambda: _Binary(torch.div), (1, 1, 1, 1), ((1, 3, 5, 7),)),
        ("div_const", lambda: _Const(torch.div, (1,), 2.0), (1, 7, 3, 5), ()),
        ("pow_sq", lambda: _Lambda(lambda x: torch.pow(x, 2.0)), (1, 7, 3, 5), ()),
        ("pow_cube", lambda: _Lambda(lambda x: torch.pow(x, 3.0)), (1, 3, 5, 5), ()),
        ("mod_const", lambda: _Lambda(lambda x: torch.fmod(x, 0.7)), (1, 7, 3, 5), ()),
        ("greater", lambda: _Binary(torch.gt), (1, 7, 3, 5), ((1, 7, 3, 5),)),
        ("less_bcast", lambda: _Binary(torch.lt), (1, 33, 2, 3), ((1, 33, 1, 1),)),
        ("greater_equal", lambda: _Binary(torch.ge), (1, 3, 4, 5), ((1, 3, 4, 5),)),
        ("less_equal", lambda: _Binary(torch.le), (1, 3, 4, 5), ((1, 3, 4, 5),)),
        ("equal", lambda: _Binary(torch.eq), (1, 3, 4, 5), ((1, 3, 4, 5),)),
        # unary
        ("neg", lambda: _Lambda(torch.neg), (1, 7, 3, 5), ()),
        ("elu", lambda: nn.ELU(), (1, 7, 3, 5), ()),
        ("elu_alpha", lambda: nn.ELU(0.4), (1, 33, 2, 3), ()),
        ("prelu_c7", lambda: nn.PReLU(7, 0.2), (1, 7, 5, 5), ()),
        ("prelu_c33", lambda: nn.PReLU(33, 0.3), (1, 33, 3, 3), ()),
        ("softmax_c", lambda: nn.Softmax(1), (1, 7, 3, 5), ()),
        ("softmax_last", lambda: nn.Softmax(-1), (1, 3, 4, 33), ()),
        ("softmax_2d", lambda: nn.Softmax(-1), (3, 10), ()),
        ("log_softmax_c", lambda: nn.LogSoftmax(1), (1, 7, 3, 5), ()),
        ("log_softmax_2d", lambda: nn.LogSoftmax(-1), (3, 10), ()),
        # data movement
        ("pad_const", lambda: _Lambda(lambda x: F.pad(x, (1, 2, 3, 0))), (1, 3, 5, 7), ()),
        ("pad_const_value", lambda: _Lambda(lambda x: F.pad(x, (2, 1, 0, 3), value=0.5)), (1, 7, 4, 5), ()),
        ("pad_reflect", lambda: _Lambda(lambda x: F.pad(x, (2, 1, 1, 2), mode="reflect")), (1, 7, 5, 6), ()),
        ("pad_edge", lambda: _Lambda(lambda x: F.pad(x, (3, 0, 1, 1), mode="replicate")), (1, 33, 3, 4), ()),
        ("gather", lambda: _Lambda(lambda x: x[:, :, torch.tensor([2, 0, 3])]), (1, 7, 5, 4), ()),
        ("split", lambda: _Lambda(lambda x: torch.split(x, [2, 5], 1)), (1, 7, 3, 3), ()),
        ("depth_to_space", lambda: nn.PixelShuffle(2), (1, 12, 3, 5), ()),
        # reduce family
        ("reduce_sum_hw", lambda: _Lambda(lambda x: x.sum((2, 3), keepdim=True)), (1, 7, 5, 3), ()),
        ("reduce_sum_c", lambda: _Lambda(lambda x: x.sum(1)), (1, 33, 3, 2), ()),
        ("reduce_max_c", lambda: _Lambda(lambda x: x.amax(1, keepdim=True)), (1, 7, 3, 5), ()),
        ("reduce_min_hw", lambda: _Lambda(lambda x: x.amin((2, 3))), (1, 3, 5, 7), ()),
        ("reduce_prod_w", lambda: _Lambda(lambda x: x.prod(3, keepdim=True)), (1, 3, 5, 7), ()),
        ("reduce_l1_c", lambda: _Lambda(lambda x: torch.norm(x, 1, dim=1)), (1, 7, 3, 5), ()),
        ("reduce_l2_hw", lambda: _Lambda(lambda x: torch.norm(x, 2, dim=(2, 3), keepdim=True)), (1, 7, 3, 5), ()),
        ("reduce_lse_c", lambda: _Lambda(lambda x: torch.logsumexp(x, 1, keepdim=True)), (1, 7, 3, 5), ()),
        # normalization, resize, matmul
        ("layer_norm_last", lambda: nn.LayerNorm(10), (2, 7, 10), ()),
        ("layer_norm_c33", lambda: nn.LayerNorm(33), (3, 33), ()),
        ("resize_nearest_2x", lambda: nn.Upsample(scale_factor=2, mode="nearest"), (1, 7, 5, 5), (), (8,)),
        ("resize_nearest_3x2", lambda: nn.Upsample(scale_factor=(3, 2), mode="nearest"), (1, 3, 3, 5), (), (8,)),
        ("resize_linear_3x", lambda: nn.Upsample(scale_factor=3, mode="bilinear"), (1, 3, 4, 5), (), (8,)),
        ("resize_linear_align", lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), (1, 7, 3, 5), (), (8,)),
        ("matmul", lambda: _Binary(torch.matmul), (1, 3, 7), ((1, 7, 5),)),
        ("matmul_2d", lambda: _Binary(torch.matmul), (5, 33), ((33, 3),)),
        ("matmul_const_batched", lambda: _Const(torch.matmul, (2, 10, 35)), (1, 3, 10), ()),  # packed input1
        ("matmul_const_4d", lambda: _Const(torch.matmul, (3, 1, 7, 17)), (1, 5, 4, 7), ()),
        ("conv_transpose_s2", lambda: nn.ConvTranspose2d(7, 5, 3, stride=2, padding=1, output_padding=1), (1, 7, 4, 5), ()),
        ("conv_transpose_s3", lambda: nn.ConvTranspose2d(3, 8, (3, 2), stride=(3, 2)), (1, 3, 3, 4), ()),
    ]
    cases = []
    for name, make, shape, extra, *widths in specs:
        for bits in (widths[0] if widths else (8, 16)):
            cases.append(Case(f"conf_{name}_s{bits}", make, shape, bits, marks=("conformance",), extra_inputs=extra))
    return cases


CASES: dict[str, Case] = {case.name: case for case in _cases() + _conformance()}


def _quiet():
    """esp-ppq prints a banner, tqdm bars and [INFO] lines: keep them out of test output."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def generate(case: Case, out_dir: Path, seed: int = 0) -> Path:
    """Quantize and export `case` into `out_dir/<name>.espdl` (deterministic for a given seed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{case.name}.espdl"
    os.environ.setdefault("PYTHONHASHSEED", "0")
    torch.manual_seed(seed)
    model = case.make().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    draw = torch.rand if case.uniform else torch.randn
    shapes = (case.shape,) + case.extra_inputs
    batch = lambda: [draw(sh, generator=gen) * case.scale for sh in shapes]
    calib = [batch() for _ in range(8)]
    test_inputs = batch()
    if not case.extra_inputs:
        calib, test_inputs = [b[0] for b in calib], test_inputs
    collate = (lambda b: b.to("cpu")) if not case.extra_inputs else (lambda b: [t.to("cpu") for t in b])
    with _quiet():
        from esp_ppq import QuantizationSettingFactory
        from esp_ppq.api import espdl_quantize_torch, get_target_platform

        setting = QuantizationSettingFactory.espdl_setting()
        setting.quantize_activation_setting.calib_algorithm = case.calib
        int16 = get_target_platform("esp32s3", "w16a16", debug=True) if case.int16_float64 else get_target_platform("esp32s3", 16)
        for op in case.int16_ops:
            setting.dispatching_table.append(op, int16)
            setting.quantize_activation_setting.calib_algorithm_per_layer[op] = "minmax"
            setting.quantize_parameter_setting.calib_algorithm_per_layer[op] = "minmax"
        names = _value_names(model, test_inputs[0], out_dir) if case.all_values else None
        espdl_quantize_torch(
            model=model, test_output_names=names, espdl_export_file=str(target), calib_dataloader=calib, calib_steps=len(calib),
            input_shape=[list(sh) for sh in shapes] if case.extra_inputs else list(case.shape),
            inputs=test_inputs if case.extra_inputs else [test_inputs[0]], target="esp32s3", num_of_bits=case.bits,
            collate_fn=collate, setting=setting, device="cpu", error_report=False,
            skip_export=False, export_config=False, export_test_values=True, verbose=0,
        )
    return target


def _value_names(model: nn.Module, x: torch.Tensor, out_dir: Path) -> list[str]:
    """Output names of every node of the model's ONNX export (as esp-ppq's torch route will name them)."""
    import onnx

    path = out_dir / "_names.onnx"
    torch.onnx.export(model, (x,), str(path), opset_version=18, dynamo=False)
    graph = onnx.load(str(path)).graph
    path.unlink()
    outputs = {o.name for o in graph.output}
    return [o for n in graph.node if n.op_type != "Constant" for o in n.output if o.startswith("/") or o in outputs]


@functools.cache  # (it reads this file and two package versions: once per process)
def cache_key() -> str:
    """Changes when this file or the quantizer changes (so cached models are regenerated)."""
    import hashlib
    from importlib.metadata import version

    src = Path(__file__).read_bytes() + version("esp-ppq").encode() + torch.__version__.encode()
    return hashlib.sha256(src).hexdigest()[:16]


def pytest_cache_root(config) -> Path | None:
    """The models' folder in pytest's cache (they survive between runs), or None with -p no:cacheprovider."""
    cache = getattr(config, "cache", None)
    return cache.mkdir("espdl_opgen") if cache is not None else None


def cache_root(request, tmp_path_factory) -> Path:
    """pytest's cache folder, or a temporary one with -p no:cacheprovider."""
    return pytest_cache_root(request.config) or tmp_path_factory.mktemp("espdl_opgen")


def cached_path(name: str, root: Path) -> Path:
    """Where `cached` keeps the model `name` under `root` (a folder per cache_key())."""
    return Path(root) / cache_key() / f"{name}.espdl"


def cached(names, root: Path) -> dict[str, Path]:
    """{name: .espdl path}, generating into root/<cache_key()>/ only what is not there yet. A name another
    process is generating (the run's background prefetch, tests_host/conftest.py) is waited for, not redone."""
    import fcntl

    out = {}
    for name in names:
        path = cached_path(name, root)
        folder = path.parent
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / f".{name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # held by whoever generates `name`
                if not path.is_file():  # export into a scratch folder, then publish atomically
                    scratch = folder / f".tmp-{name}-{os.getpid()}"
                    os.replace(generate(CASES[name], scratch), path)
                    for leftover in scratch.iterdir():
                        leftover.unlink()
                    scratch.rmdir()
        out[name] = path
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--cache"]:  # python opgen.py --cache ROOT NAME...: fill the test cache (prefetch)
        cached(sys.argv[3:], Path(sys.argv[2]))
        sys.exit(0)
    out = Path(sys.argv[1])
    names = sys.argv[2:] or list(CASES)
    for n in names:
        print(generate(CASES[n], out))
