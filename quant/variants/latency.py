"""A per-operator latency model of ESP-DL 3.3 on the ESP32-S3 (240 MHz, octal PSRAM, one core).

Every node of a deployed graph (.espdl) costs

    overhead  +  MACs x (us per MAC of its kernel kind)  +  unaligned MACs x penalty  +  elementwise bytes x cost

- kernel kinds: pointwise Conv/Gemm (1x1, one group), kxk Conv (k > 1, one group), depthwise Conv (groups > 1);
- unaligned: a Conv whose input or output channel count is not a multiple of the SIMD width (16 int8 lanes,
  8 int16 lanes): the S3 kernels then take slower tail paths;
- elementwise bytes: activation bytes read and written by nodes that do no MACs (Clip lookup tables, Add,
  pooling, requantize, reshapes);
- int16: twice the MAC cost (an S3 128-bit SIMD instruction does 16 int8 or 8 int16 MACs) and twice the bytes
  (their dtype).

The four MAC coefficients are **fitted** (exact non-negative least squares on relative error) to ESP-DL's
published S3 figures: the six kernels of `operator_performance.md` (espressif/esp-dl, "SIMD Optimized" column)
and the two whole-model times of its README (hand gesture MobileNetV2-0.5 128x128, imagenet MobileNetV2
224x224; weighted `MODEL_WEIGHT` times a kernel, since a whole model is what a budget estimates), whose graphs
were counted node by node from the models ESP-DL ships (`MODELS` below, recomputable with `features()` from the
vendor `.espdl` files). The per-op overhead, the elementwise cost and the int16 factor are **assumed**: ESP-DL
publishes no figure that separates them (a fit with them free sets them to 0, which would make a Clip free).
`fit_table()` reports the leave-one-out error of each published point.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

TERMS = ("ops", "pw_macs", "kxk_macs", "dw_macs", "unaligned_macs", "bytes")
FITTED = ("pw_macs", "kxk_macs", "dw_macs", "unaligned_macs")
ASSUMED = {"ops": 5.0,  # us per node: dispatch, tensor setup (assumed)
           "bytes": 1 / 240}  # us per elementwise byte: one cycle at 240 MHz (assumed)
INT16_MAC_FACTOR = 2.0  # assumed (SIMD lanes), see the module doc
MODEL_WEIGHT = 3.0
SIMD_LANES = {1: 16, 2: 8}  # bytes per element -> lanes of a 128-bit register

# (name, measured us, input NCHW, filter (cout, cin/groups, kh, kw), pads (h, w), strides (h, w), groups)
KERNELS = (
    ("conv2d 1x1 (1,16,20,20)->32", 422, (1, 16, 20, 20), (32, 16, 1, 1), (0, 0), (1, 1), 1),
    ("conv2d 3x3 s2 (1,32,19,23)->16", 482, (1, 32, 19, 23), (16, 32, 3, 3), (1, 1), (2, 2), 1),
    ("conv2d+ReLU 5x5 s2 (1,16,22,22)->32", 974, (1, 16, 22, 22), (32, 16, 5, 5), (2, 2), (2, 2), 1),
    ("conv2d 3x3 (1,22,19,23)->33", 3447, (1, 22, 19, 23), (33, 22, 3, 3), (1, 1), (1, 1), 1),
    ("dwconv2d+ReLU 3x3 (1,32,100,50)", 5542, (1, 32, 100, 50), (32, 1, 3, 3), (0, 0), (1, 1), 32),
    ("dwconv2d+ReLU 7x7 s(1,2) (1,25,20,20)", 918, (1, 25, 20, 20), (25, 1, 7, 7), (2, 2), (1, 2), 25),
)
# Whole models (ESP-DL README, model time only, int8, one core), counted with `features()` from the shipped
# models/hand_gesture_recognition/models/s3/mobilenetv2_0_5_128_128_gesture.espdl and
# models/imagenet_cls/models/s3/imagenet_cls_mobilenetv2_s8_v1.espdl (esp-dl 3.3.9).
MODELS = (
    ("hand gesture MobileNetV2-0.5 128x128x3", 115_400,
     {"ops": 66, "pw_macs": 25_884_416, "kxk_macs": 1_769_472, "dw_macs": 3_658_752, "unaligned_macs": 3_880_704,
      "bytes": 145_152}),
    ("imagenet MobileNetV2 224x224x3", 1_309_500,
     {"ops": 71, "pw_macs": 269_219_840, "kxk_macs": 10_838_016, "dw_macs": 20_716_416, "unaligned_macs": 51_857_408,
      "bytes": 875_097}),
)


@dataclass(frozen=True)
class Node:
    """What the model needs to know of one deployed node."""

    name: str
    op_type: str
    kind: str  # "pw" | "kxk" | "dw" | "other"
    macs: int
    aligned: bool
    bytes: int
    elem_bytes: int  # 1 int8, 2 int16, 4 float32

    def terms(self) -> dict[str, float]:
        f = INT16_MAC_FACTOR if self.elem_bytes == 2 else 1.0
        t = dict.fromkeys(TERMS, 0.0)
        t["ops"] = 1.0
        if self.kind == "other":
            t["bytes"] = float(self.bytes)
        else:
            t[f"{self.kind}_macs"] = self.macs * f
            if not self.aligned:
                t["unaligned_macs"] = self.macs * f
        return t


def _kind(group: int, kh: int, kw: int) -> str:
    return "dw" if group > 1 else ("pw" if kh == kw == 1 else "kxk")


def _aligned(cin: int, cout: int, elem_bytes: int) -> bool:
    lanes = SIMD_LANES.get(elem_bytes, 16)
    return cin % lanes == 0 and cout % lanes == 0


def kernel_node(spec) -> Node:
    """The cost record of one published kernel (int8), from its shapes."""
    name, _us, (n, c, h, w), (cout, cpg, kh, kw), (ph, pw), (sh, sw), groups = spec
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    macs = oh * ow * cout * cpg * kh * kw
    act = n * c * h * w + oh * ow * cout
    return Node(name, "Conv", _kind(groups, kh, kw), macs, _aligned(c, cout, 1), act + cout * cpg * kh * kw, 1)


_DTYPE_BYTES = {"int8": 1, "uint8": 1, "int16": 2, "int32": 4, "int64": 8, "float32": 4}


def nodes(model) -> list[Node]:
    """The cost records of every node of a loaded .espdl (`quant.espdl.reader.EspdlModel`)."""
    out = []
    for n in model.nodes:
        vals = [model.values[i] for i in n.inputs if i in model.values]
        outs = [model.values[o] for o in n.outputs if o in model.values]
        size = lambda v: int(np.prod(v.shape)) if v.shape else 0  # noqa: E731
        elem = _DTYPE_BYTES.get((outs[0].dtype if outs else None) or "int8", 1)
        params = sum(model.initializers[i].data.nbytes for i in n.inputs if i in model.initializers)
        act = sum(size(v) * _DTYPE_BYTES.get(v.dtype or "int8", 1) for v in vals + outs)
        if n.op_type in ("Conv", "Gemm") and vals and outs:
            w = model.initializers[n.inputs[1]].dims  # Conv [kh, kw, cin/groups, cout]; Gemm [1, 1, in, out]
            kh, kw, cpg, cout = (int(d) for d in w[-4:]) if len(w) >= 4 else (1, 1, int(w[0]), int(w[1]))
            group = int(n.attributes.get("group", 1))
            if group > 1:  # depthwise filters are stored [kh, kw, C, 1]
                cpg, cout = cpg * cout // group, group
            macs = size(outs[0]) * cpg * kh * kw
            out.append(Node(n.name, n.op_type, _kind(group, kh, kw), macs, _aligned(cpg * group, cout, elem),
                            act + params, elem))
        else:
            out.append(Node(n.name, n.op_type, "other", 0, True, act + params, elem))
    return out


def features(model) -> dict[str, float]:
    total = dict.fromkeys(TERMS, 0.0)
    for node in nodes(model):
        for k, v in node.terms().items():
            total[k] += v
    return total


def _points() -> list[tuple[str, float, dict[str, float]]]:
    pts = [(k[0], float(k[1]), kernel_node(k).terms()) for k in KERNELS]
    return pts + [(name, float(us), {k: float(v) for k, v in feats.items()}) for name, us, feats in MODELS]


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact non-negative least squares for a handful of unknowns: the best of all column subsets."""
    best, best_err = np.zeros(a.shape[1]), float(np.sum(b * b))
    for r in range(1, a.shape[1] + 1):
        for cols in itertools.combinations(range(a.shape[1]), r):
            x, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
            if np.all(x >= 0):
                err = float(np.sum((a[:, cols] @ x - b) ** 2))
                if err < best_err - 1e-15:
                    best, best_err = np.zeros(a.shape[1]), err
                    best[list(cols)] = x
    return best


def fit(points=None) -> dict[str, float]:
    """Coefficients (us per unit of each term): FITTED on relative error after the ASSUMED terms."""
    pts = _points() if points is None else points
    models = {m[0] for m in MODELS}
    w = np.array([MODEL_WEIGHT if p[0] in models else 1.0 for p in pts])
    rest = np.array([p[1] - sum(p[2][t] * c for t, c in ASSUMED.items()) for p in pts])
    a = np.array([[p[2][t] for t in FITTED] for p in pts], dtype=np.float64) * (w / np.array([p[1] for p in pts]))[:, None]
    b = rest * w / np.array([p[1] for p in pts])
    return {**ASSUMED, **dict(zip(FITTED, (float(v) for v in _nnls(a, b))))}


def predict(terms: dict[str, float], coef: dict[str, float]) -> float:
    return float(sum(terms[t] * coef[t] for t in TERMS))


def fit_table() -> list[dict]:
    """Each published point: measured, fitted on all points, and predicted by a fit without it (leave-one-out)."""
    pts = _points()
    coef = fit(pts)
    rows = []
    for i, (name, us, terms) in enumerate(pts):
        loo = fit(pts[:i] + pts[i + 1:])
        rows.append({"point": name, "published_us": us, "fit_us": predict(terms, coef),
                     "loo_us": predict(terms, loo), "loo_error": predict(terms, loo) / us - 1.0})
    return rows


def estimate(model, coef: dict[str, float] | None = None) -> tuple[float, list[tuple[Node, float]]]:
    """Estimated us per inference of a loaded .espdl, and the cost of each node."""
    coef = fit() if coef is None else coef
    per = [(n, predict(n.terms(), coef)) for n in nodes(model)]
    return float(sum(c for _, c in per)), per
