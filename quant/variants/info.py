"""The cost model behind a variant's `.info` figures and estimated budgets (the `.info` text itself is
written and read by `quant.folder`):
- MACs per op from the ONNX graph (Conv: output elements x Cin/groups x kh x kw; Gemm/MatMul: M x K x N);
- latency from the per-operator model of the exported graph (`quant.variants.latency`);
- peak activation memory from a liveness walk over the graph in topological order.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from quant.espdl import reader
from quant.variants import latency

LATENCY_HEADROOM = 0.5  # the model's leave-one-out error on the published whole models is up to 26 %: generous until measured
MEMORY_HEADROOM = 0.25
FLASH_HEADROOM = 0.0  # exact: the file's size
INTERNAL_FIXED_BYTES = 8192  # assumed: model object, memory manager, I/O maps
INTERNAL_PER_NODE_BYTES = 256  # assumed: module instance + tensor descriptors per node


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

    return sum(t.data.nbytes for t in reader.load(path).initializers.values())


# ------------------------------------------------------------------ budgets


def budget(basis: float, headroom: float, method: str) -> dict:
    return {"value": int(math.ceil(round(basis * (1 + headroom), 6))), "basis": int(round(basis)), "headroom": headroom,
            "provenance": "estimated", "method": method}


def budgets(espdl: Path, peak: int, params: int, espdl_bytes: int, nodes: int) -> dict:

    latency_us, per_node = latency.estimate(reader.load(espdl))
    gesture = next(r for r in latency.fit_table() if r["point"].startswith("hand gesture"))
    internal = INTERNAL_FIXED_BYTES + INTERNAL_PER_NODE_BYTES * nodes
    return {
        "latency_us": budget(latency_us, LATENCY_HEADROOM,
                             f"per-operator model of the {len(per_node)} nodes of the .espdl (quant.variants.latency: "
                             f"pointwise/kxk/depthwise MAC rates and an unaligned-channel penalty fitted to ESP-DL's "
                             f"published ESP32-S3 kernels and models, int16 x2, per-node overhead and elementwise "
                             f"bytes assumed; leave-one-out error on the published gesture model "
                             f"{gesture['loo_error']:+.0%}, see bench/latency_model.py)"),
        "internal_ram_bytes": budget(internal, MEMORY_HEADROOM,
                                     f"{INTERNAL_FIXED_BYTES} B + {INTERNAL_PER_NODE_BYTES} B x {nodes} nodes (assumed "
                                     f"model/module/descriptor overhead); activations and parameters are in PSRAM"),
        "psram_bytes": budget(peak + params, MEMORY_HEADROOM,
                              f"peak live activations {peak} B (greedy memory manager, max_internal_size=0 puts them in "
                              f"PSRAM) + parameters {params} B (param_copy=true copies them from flash)"),
        "flash_bytes": budget(espdl_bytes, FLASH_HEADROOM, "size of the .espdl file embedded in flash (exact)"),
    }
