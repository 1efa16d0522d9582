"""Reference outputs: the PPQ simulator's outputs on every fixed vector, as integers with exponents.

ints = round(simulator_output / 2**exponent), the exponent and bit width taken from the output
tensor's quantization config (the exporter's own formula). Vector 0 is embedded in the `.espdl`
as its test value; `check_embedded` proves the two agree, so ESP-DL's `model->test()` and our
tests judge the chip against the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from quant.errors import UserError
from quant.espdl import reader



def _output_config(graph, name: str):
    var = graph.variables[name]
    if var.source_op is not None:
        op = var.source_op
        return op.output_quant_config[op.outputs.index(var)]
    op = var.dest_ops[0]
    return op.input_quant_config[op.inputs.index(var)]


def tensor_exponent(graph, name: str) -> tuple[int, int]:
    """(exponent, bits) of a graph tensor, as the exporter computes them."""

    cfg = _output_config(graph, name)
    if cfg.scale is None or getattr(cfg.state, "name", "") in ("FP32", "SOI", "PASSIVE_INIT"):
        var = graph.variables[name]
        op = var.source_op
        what = f"{op.type} {op.name!r}" if op is not None else "the graph input"
        raise UserError(f"tensor {name!r} produced by {what} is float32 (ESP-DL runs that operator in float), which "
                        f"the reference and the board judge do not support yet: end the model before it (for a final "
                        f"Softmax, the argmax of the logits is the same) and rebuild")
    return int(np.log2(float(cfg.scale))), int(cfg.num_of_bits)


def _esp_layout(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a  # ESP-DL tensors are NHWC


def compute(graph, vectors_x: np.ndarray, vectors_meta: list[dict], output_names) -> list[dict]:
    import torch
    from esp_ppq.executor import TorchExecutor

    executor = TorchExecutor(graph=graph, device="cpu")
    entries = []
    for i, meta in enumerate(vectors_meta):
        with torch.no_grad():
            outs = executor.forward(inputs=torch.from_numpy(vectors_x[i : i + 1]), output_names=list(output_names))
        tensors = {}
        for name, out in zip(output_names, outs):
            exp, bits = tensor_exponent(graph, name)
            ints = _esp_layout(torch.round(out / 2.0**exp).to(torch.int64).cpu().numpy())
            lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
            if ints.min() < lo or ints.max() > hi:
                raise RuntimeError(f"reference output {name} on vector {i} exceeds int{bits}")
            tensors[name] = {"dtype": f"int{bits}", "shape": list(ints.shape), "exponent": exp,
                             "data": [int(v) for v in ints.reshape(-1)]}
        first = tensors[output_names[0]]["data"]
        entries.append({"vector": i, "name": meta["name"], "tensors": tensors, "top1": int(np.argmax(first))})
    return entries


def document(variant: str, entries: list[dict], vectors_sha256: str, espdl_sha256: str) -> str:
    doc = {"format": 1, "variant": variant, "vectors_sha256": vectors_sha256, "espdl_sha256": espdl_sha256,
           "outputs": entries}
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def check_embedded(espdl: Path, entries: list[dict]) -> None:
    """Vector 0's reference ints must equal the test outputs embedded in the .espdl."""

    embedded = reader.load(espdl).test_outputs
    for name, t in entries[0]["tensors"].items():
        e = embedded.get(name)
        if e is None:
            raise RuntimeError(f"{espdl.name} embeds no test output named {name!r} (has {sorted(embedded)})")
        ints = e.data.astype(np.int64).tolist()
        if e.exponent != t["exponent"] or ints != t["data"]:
            raise RuntimeError(
                f"{espdl.name}: embedded test output {name} (exp {e.exponent}, {ints[:8]}...) differs from "
                f"the simulator's vector 0 (exp {t['exponent']}, {t['data'][:8]}...)"
            )

