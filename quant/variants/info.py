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


# ------------------------------------------------------------------ internal RAM at load (ESP-DL 3.3.9, ESP-IDF 5.5)
# Where the bytes go, read from the sources (docs/firmware.md, "Memory"): ESP-DL allocates parameters, LUTs,
# module and tensor objects and the activation arena with MALLOC_CAP_DEFAULT, which the PSRAM heap (first in
# ESP-IDF's list) serves; internal RAM holds the loader's C++ containers, plain new/malloc below
# CONFIG_SPIRAM_MALLOC_ALWAYSINTERNAL. The peak is in Model::build(): the FbsModel's name maps, one TensorInfo
# per value and get_tensor_info_from_fbs' locals are alive together on top of what the load keeps.
ESPDL_OP_TYPES = """Conv Add Sub Mul Div Pow Mod Resize GlobalAveragePool AveragePool Concat Sigmoid Tanh Relu LeakyRelu
HardSigmoid HardSwish Gelu LUT Gemm QuantizeLinear DequantizeLinear RequantizeLinear PRelu Clip Flatten Reshape
Transpose Exp Log Sqrt Squeeze Unsqueeze Softmax LogSoftmax MaxPool Slice Pad MatMul Neg SpaceToDepth Split Gather
Elu Greater GreaterOrEqual Equal Less LessOrEqual ReverseSequence ScatterND Identity Swish ReduceL1 ReduceL2
ReduceMin ReduceMax ReduceSum ReduceProd ReduceMean ReduceSumSquare ReduceLogSum ReduceLogSumExp GRU LSTM
DepthToSpace StreamingCache InsertZeros LayerNormalization LpNormalization RMSNormalization""".split()  # ModuleCreator
MAP_NODE, STRING, FUNCTION = 16, 24, 16  # std::_Rb_tree_node_base, std::string, std::function (32-bit libstdc++)


def _block(n: int) -> int:
    """Internal heap bytes one malloc(n) takes (TLSF: 4-byte rounding, 12-byte minimum, 4-byte header)."""
    return max((n + 3) & ~3, 12) + 4 if n > 0 else 0


def _text(s: str) -> int:
    """The heap buffer of a std::string (none up to 15 characters: small-string optimization)."""
    return _block(len(s.encode()) + 1) if len(s.encode()) > 15 else 0


def _grown(n: int, elem: int) -> int:
    """The buffer of a std::vector after n push_backs (capacity doubles from 1)."""
    return _block((1 << (n - 1).bit_length()) * elem) if n else 0


def internal_ram_estimate(model) -> dict[str, int]:
    """Internal RAM ESP-DL's `new dl::Model(...)` (flash rodata, greedy memory manager, param_copy) takes at its
    peak, by part (bytes)."""
    nodes, inits = model.nodes, model.initializers
    entry = lambda name: _block(MAP_NODE + STRING + 4) + _text(name)  # noqa: E731  (a std::map<string, T*> entry)
    names: dict[str, bool] = {}  # the ModelContext's tensor names: parameter or not
    modules = 0
    for n in nodes:
        if n.op_type == "Conv":
            modules += 3 * _block(8)  # dilations, strides, pads
        elif n.op_type == "Transpose":
            modules += _block(4 * len(n.attributes.get("perm", (0, 0, 0, 0))))
        elif n.op_type == "Clip" and n.attributes.get("lut") in inits:  # its LUT tensor's shape and axis offsets
            modules += 2 * _block(4 * max(len(inits[n.attributes["lut"]].dims), 1))
        modules += _grown(len(n.inputs), 4) + _grown(len(n.outputs), 4)  # the module's tensor indices
        for name in [*n.inputs, *n.outputs]:
            names.setdefault(name, name in inits or name == "")
    parameters = sum(2 * _block(4 * len(inits[k].dims)) for k, is_param in names.items() if is_param and k in inits
                     and inits[k].dims)  # each parameter tensor's shape and axis offsets
    variables = sum(1 for is_param in names.values() if not is_param)
    kept = {
        "model, context, loader objects": _block(144) + _block(64) + _block(16) + _block(152),
        "operator registry": sum(_block(MAP_NODE + STRING + FUNCTION) + _text(op) for op in ESPDL_OP_TYPES),
        "tensor name index": sum(entry(k) for k in names),
        "module vectors": modules,
        "parameter tensor shapes": parameters,
        "context vectors": _grown(variables, 4) + _grown(len(names) - variables, 4) + _grown(len(nodes), 4),
    }
    transient = {
        "loader name maps": sum(entry(k) for k in [*(n.name for n in nodes), *inits, *model.values])
                            + sum(_block(16) + _text(k) + _block(8) for k in [*model.test_inputs, *model.test_outputs]),
        "tensor infos": sum(_block(88) + _text(k) + _grown(len(v.shape or ()), 4) for k, v in model.values.items()),
        "memory planner": _block(60) + _block(4 * variables) + _block(4 * len(nodes)) + 2 * _block(STRING)
                          + _block(STRING * len(nodes)) + sum(_text(n.name) for n in nodes),
    }
    return {**kept, **transient}


# ------------------------------------------------------------------ budgets


def budget(basis: float, headroom: float, method: str) -> dict:
    return {"value": int(math.ceil(round(basis * (1 + headroom), 6))), "basis": int(round(basis)), "headroom": headroom,
            "provenance": "estimated", "method": method}


def budgets(espdl: Path, peak: int, params: int, espdl_bytes: int, nodes: int) -> dict:

    latency_us, per_node = latency.estimate(reader.load(espdl))
    gesture = next(r for r in latency.fit_table() if r["point"].startswith("hand gesture"))
    parts = internal_ram_estimate(reader.load(espdl))
    internal = sum(parts.values())
    return {
        "latency_us": budget(latency_us, LATENCY_HEADROOM,
                             f"per-operator model of the {len(per_node)} nodes of the .espdl (quant.variants.latency: "
                             f"pointwise/kxk/depthwise MAC rates and an unaligned-channel penalty fitted to ESP-DL's "
                             f"published ESP32-S3 kernels and models, int16 x2, per-node overhead and elementwise "
                             f"bytes assumed; leave-one-out error on the published gesture model "
                             f"{gesture['loo_error']:+.0%}, see bench/latency_model.py)"),
        "internal_ram_bytes": budget(internal, MEMORY_HEADROOM,
                                     f"peak of ESP-DL 3.3.9's loader in internal RAM, its C++ containers per node, "
                                     f"tensor and name ({', '.join(f'{k} {v}' for k, v in parts.items())} B; "
                                     f"quant.variants.info.internal_ram_estimate); activations and parameters are in PSRAM"),
        "psram_bytes": budget(peak + params, MEMORY_HEADROOM,
                              f"peak live activations {peak} B (greedy memory manager, max_internal_size=0 puts them in "
                              f"PSRAM) + parameters {params} B (param_copy=true copies them from flash)"),
        "flash_bytes": budget(espdl_bytes, FLASH_HEADROOM, "size of the .espdl file embedded in flash (exact)"),
    }
