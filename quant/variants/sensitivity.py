"""Grouped layer sensitivity on a quantized esp-ppq graph.

esp-ppq's `layerwise_error_analyse` quantizes one *computing* op at a time. A Conv's output config
is OVERLAPPED by the ReLU6 `Clip` that follows it, so that analysis never sees where clipping
happens (measured: on a KL-calibrated int8 model it ranked the stem first at 0.015 % while the
output error was 92 %, all of it from one clipped ReLU6). Here a group is a computing op together with its single
Clip/Relu successor; every other quantized op is its own group. For each group: dequantize the whole
graph, restore only that group, run the simulator, and measure the graph-output noise/signal power
ratio against the fully dequantized graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACTIVATIONS = ("Clip", "Relu")


@dataclass(frozen=True)
class Group:
    name: str  # the group's first op
    ops: tuple[str, ...]


def noise_signal(q: np.ndarray, f: np.ndarray) -> float:
    """Mean over samples of ||q - f||^2 / ||f||^2 (a power ratio; lower is better; esp-ppq's 'snr')."""
    q = q.reshape(len(q), -1).astype(np.float64)
    f = f.reshape(len(f), -1).astype(np.float64)
    return float(np.mean(((q - f) ** 2).sum(1) / np.maximum((f**2).sum(1), 1e-12)))


def cosine(q: np.ndarray, f: np.ndarray) -> float:
    q = q.reshape(len(q), -1).astype(np.float64)
    f = f.reshape(len(f), -1).astype(np.float64)
    den = np.maximum(np.linalg.norm(q, axis=1) * np.linalg.norm(f, axis=1), 1e-12)
    return float(np.mean((q * f).sum(1) / den))


def groups(graph) -> list[Group]:
    """Quantized ops in topological order, each computing op merged with its Clip/Relu successor."""
    from esp_ppq.IR import QuantableOperation

    taken: set[str] = set()
    out: list[Group] = []
    for op in graph.topological_sort():
        if not isinstance(op, QuantableOperation) or op.name in taken:
            continue
        members = [op.name]
        if op.is_computing_op:
            succ = graph.get_downstream_operations(op)
            if len(succ) == 1 and succ[0].type in ACTIVATIONS and isinstance(succ[0], QuantableOperation):
                members.append(succ[0].name)
        taken.update(members)
        out.append(Group(op.name, tuple(members)))
    return out


def consumers(graph, group: Group, all_groups: list[Group]) -> list[Group]:
    """The groups that directly read the group's output (its downstream consumers)."""
    last = graph.operations[group.ops[-1]]
    names = {op.name for op in graph.get_downstream_operations(last)}
    return [g for g in all_groups if names.intersection(g.ops) and g != group]


def join_inputs(graph, ops: list[str], all_groups: list[Group]) -> list[Group]:
    """Groups producing the inputs of every op in `ops` that joins several activations (Add, Concat...).

    Measured: an INT16 Add with one INT8 and one INT16 input made the graph output garbage
    (noise/signal 0.995 vs 0.004 one step earlier); promoting the other input's producer fixed it.
    """
    out: list[Group] = []
    for name in ops:
        op = graph.operations[name]
        if sum(1 for v in op.inputs if not v.is_parameter) < 2:
            continue
        for up in graph.get_upstream_operations(op):
            out += [g for g in all_groups if up.name in g.ops and g not in out]
    return out


def _float64_hooks(graph) -> dict:
    """A hook per op that promotes its float32 inputs to float64 (after the executor's fake quantization).

    The measured figures in .info/.json must not depend on the CPU: float32 kernels sum in an order that
    depends on the instruction set (AVX2 vs AVX-512 in oneDNN/MKL), and a fake-quant rounding that lands
    near .5 then flips by one step (seen: a layer group's noise/signal 6.681e-4 on one x86-64 machine,
    6.690e-4 on another). Quantized values are exact in both widths, so promoting changes only the sums:
    esp-ppq rounds each quantized op's float64 output, then stores it as float32 (exactly)."""
    import torch
    from esp_ppq.executor.base import RuntimeHook

    class Float64(RuntimeHook):
        def pre_forward_hook(self, inputs: list, **kwargs) -> list:
            return [t.double() if isinstance(t, torch.Tensor) and t.dtype == torch.float32 else t for t in inputs]

    return {name: Float64(op) for name, op in graph.operations.items()}


def run_graph(executor, x: np.ndarray, batch: int = 100) -> np.ndarray:
    """Simulator outputs (first graph output) for x [N,1,96,96] -> float64 [N, ...], computed in float64."""
    import torch

    hooks = _float64_hooks(executor._graph)
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(executor.forward(inputs=torch.from_numpy(x[i : i + batch]).double(), hooks=hooks)[0].double().cpu().numpy())
    return np.concatenate(outs)


def rank(graph, x: np.ndarray) -> list[dict]:
    """[{group, ops, noise_signal}] worst first: the output error with only that group quantized."""
    from esp_ppq.executor import TorchExecutor
    from esp_ppq.IR import QuantableOperation

    quantized = [op for op in graph.operations.values() if isinstance(op, QuantableOperation)]
    executor = TorchExecutor(graph=graph, device="cpu")
    for op in quantized:
        op.dequantize()
    try:
        reference = run_graph(executor, x)
        rows = []
        for g in groups(graph):
            for name in g.ops:
                graph.operations[name].restore_quantize_state()
            rows.append({"group": g.name, "ops": list(g.ops), "noise_signal": noise_signal(run_graph(executor, x), reference)})
            for name in g.ops:
                graph.operations[name].dequantize()
    finally:
        for op in quantized:
            op.restore_quantize_state()
    # stable: worst first, ties in graph order
    return sorted(rows, key=lambda r: -r["noise_signal"])
