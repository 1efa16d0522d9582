"""The cost model behind a variant's `.info` figures and estimated budgets (the `.info` text itself is
written and read by `quant.folder`):
- MACs per op from the ONNX graph (Conv: output elements x Cin/groups x kh x kw; Gemm/MatMul: M x K x N);
- latency from MACs against ESP-DL's published ESP32-S3 figures (see `PUBLISHED`);
- peak activation memory from a liveness walk over the graph in topological order.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# ------------------------------------------------------------------ published ESP32-S3 figures
# ESP-DL README tables (esp-dl 3.x, ESP32-S3 at 240 MHz, int8, single core), model time only.
# MACs are computed below by `mobilenetv2_macs` (torchvision's MobileNetV2 definition).
PUBLISHED = (
    {"model": "mobilenetv2_0_5_s8_v1_s3 (hand gesture)", "width": 0.5, "resolution": 128, "classes": 11, "ms": 115.4},
    {"model": "mobilenetv2_s8_v1_s3 (imagenet_cls)", "width": 1.0, "resolution": 224, "classes": 1000, "ms": 1309.5},
)
INT16_MAC_COST = 2.0  # an S3 128-bit SIMD op does 16 int8 or 8 int16 MACs: int16 layers cost 2x per MAC
LATENCY_HEADROOM = 0.5  # a MAC-count estimate of a much smaller net: generous until measured
MEMORY_HEADROOM = 0.25
FLASH_HEADROOM = 0.0  # exact: the file's size
INTERNAL_FIXED_BYTES = 8192  # assumed: model object, memory manager, I/O maps
INTERNAL_PER_NODE_BYTES = 256  # assumed: module instance + tensor descriptors per node


def _divisible(v: float, d: int = 8) -> int:
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


def mobilenetv2_macs(width: float, resolution: int, classes: int, in_channels: int = 3) -> int:
    """MACs of torchvision's MobileNetV2 (Conv + Linear), e.g. (1.0, 224, 1000) -> ~300.8 M."""
    table = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    size = (resolution + 1) // 2
    cin = _divisible(32 * width)
    macs = size * size * cin * in_channels * 9
    for t, c, n, s in table:
        cout = _divisible(c * width)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            if t != 1:
                macs += size * size * cin * hidden
            size = (size + stride - 1) // stride if stride > 1 else size
            macs += size * size * hidden * 9 + size * size * hidden * cout
            cin = cout
    last = _divisible(1280 * max(1.0, width))
    macs += size * size * cin * last + last * classes
    return macs


def mac_rate() -> tuple[float, list[dict]]:
    """Effective int8 MAC/s on the S3: the slower (conservative) of the published models."""
    rows = []
    for p in PUBLISHED:
        macs = mobilenetv2_macs(p["width"], p["resolution"], p["classes"])
        rows.append({**p, "macs": macs, "macs_per_s": macs / (p["ms"] / 1000.0)})
    return min(r["macs_per_s"] for r in rows), rows


# ------------------------------------------------------------------ graph cost


def op_macs(onnx_path: Path) -> dict[str, int]:
    """MACs of one inference per ONNX node name (Conv, Gemm, MatMul)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    g = model.graph
    shapes = {t.name: list(t.dims) for t in g.initializer}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    out = {}
    for node in g.node:
        if node.op_type == "Conv":
            w = shapes[node.input[1]]
            out[node.name] = int(np.prod(shapes[node.output[0]])) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a, y = shapes[node.input[0]], shapes[node.output[0]]
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if trans_a else a[-1]
            out[node.name] = int(np.prod(y)) * int(k)
    return out


def peak_activation_bytes(onnx_path: Path, int16_ops: set[str]) -> int:
    """Max over the topological order of the bytes of all live activations (int8: 1 B, int16: 2 B)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    g = model.graph
    consts = {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    size = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        size[vi.name] = int(np.prod([max(d.dim_value, 1) for d in vi.type.tensor_type.shape.dim]))
    nodes = [n for n in g.node if n.op_type != "Constant"]
    width = {i.name: 1 for i in g.input}
    last_use = {}
    for idx, n in enumerate(nodes):
        for o in n.output:
            width[o] = 2 if n.name in int16_ops else 1
        for i in n.input:
            if i and i not in consts:
                last_use[i] = idx
    for o in g.output:
        last_use[o.name] = len(nodes)
    live = {i.name for i in g.input}
    peak = 0
    for idx, n in enumerate(nodes):
        live |= set(n.output)
        peak = max(peak, sum(size.get(t, 0) * width.get(t, 1) for t in live))
        live = {t for t in live if last_use.get(t, -1) > idx}
    return peak


def espdl_parameter_bytes(path: Path) -> int:
    """Bytes of all initializers in a plain EDL2 file (unpadded: prod(dims) x element size)."""
    from quant.espdl import reader

    return sum(t.data.nbytes for t in reader.load(path).initializers.values())


# ------------------------------------------------------------------ budgets


def budget(basis: float, headroom: float, method: str) -> dict:
    return {"value": int(math.ceil(round(basis * (1 + headroom), 6))), "basis": int(round(basis)), "headroom": headroom,
            "provenance": "estimated", "method": method}


def budgets(macs: dict[str, int], int16_ops: set[str], peak: int, params: int, espdl_bytes: int, nodes: int) -> dict:
    rate, rows = mac_rate()
    m8 = sum(v for k, v in macs.items() if k not in int16_ops)
    m16 = sum(v for k, v in macs.items() if k in int16_ops)
    refs = "; ".join(f"{r['model']} {r['resolution']}x{r['resolution']}x3: {r['macs'] / 1e6:.1f} MMAC in {r['ms']} ms "
                     f"= {r['macs_per_s'] / 1e6:.0f} MMAC/s" for r in rows)
    latency_us = (m8 + INT16_MAC_COST * m16) / rate * 1e6
    internal = INTERNAL_FIXED_BYTES + INTERNAL_PER_NODE_BYTES * nodes
    return {
        "latency_us": budget(latency_us, LATENCY_HEADROOM,
                             f"(int8 MACs {m8} + {INT16_MAC_COST:g} x int16 MACs {m16}) / {rate / 1e6:.1f} MMAC/s; the rate "
                             f"is the slower of ESP-DL's published ESP32-S3 int8 figures ({refs}; MACs computed for "
                             f"torchvision's MobileNetV2); small layers use SIMD less well, hence the headroom"),
        "internal_ram_bytes": budget(internal, MEMORY_HEADROOM,
                                     f"{INTERNAL_FIXED_BYTES} B + {INTERNAL_PER_NODE_BYTES} B x {nodes} nodes (assumed "
                                     f"model/module/descriptor overhead); activations and parameters are in PSRAM"),
        "psram_bytes": budget(peak + params, MEMORY_HEADROOM,
                              f"peak live activations {peak} B (greedy memory manager, max_internal_size=0 puts them in "
                              f"PSRAM) + parameters {params} B (param_copy=true copies them from flash)"),
        "flash_bytes": budget(espdl_bytes, FLASH_HEADROOM, "size of the .espdl file embedded in flash (exact)"),
    }
