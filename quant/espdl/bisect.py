"""`quant diff`: find the first layer (in graph order) where two runs of a model diverge.

Sources of per-layer tensors (named after the .espdl's values, NHWC ints + exponent):
- `interpreter`        the host interpreter with ESP32-S3 arithmetic (quant.espdl.interpreter)
- `interpreter-exact`  the PPQ simulator's arithmetic: exact average pools, accumulators without the S3's lanes
- `interpreter-fixed-average`  the interpreter with the fixed-point 2^e/n average pools of an ESP-DL built
  without CONFIG_ACCURATE_INFER (ESP-DL 3.3.9 compiles that branch out)
- `embedded`           the PPQ simulator's tensors esp-ppq embedded as test values (the outputs, or every layer
  when exported with `test_output_names=` all values); input = the embedded test input
- `FILE` (a transcript) a board's (or the virtual board's) serial output of `run dump`: protocol v1 TENSOR
  lines (quant.board.protocol), vector `--vector`.

Library API (used by the target tests and the virtual board): `first_divergence(model, a, b, tolerance)`,
`layer_stats(model, a, b, tolerance)` and `format_report(model, a, b, tolerance, ...)`, where a and b map value
names to quant.tensor.Tensor (what the interpreter computes and the protocol parser reads); `tolerance` is a
quant.tensor.Tolerance or a variant .json's 'tolerance' mapping, compared by quant.tensor.diff (values with
different exponents on the finer grid).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quant.board import protocol
from quant.errors import UserError
from quant.espdl.interpreter import Interpreter
from quant.espdl.reader import load
from quant.folder import load_vectors
from quant.tensor import diff


@dataclass
class LayerStat:
    position: int            # index in graph order (0 = the model input)
    value: str               # value (tensor) name
    node: str | None         # producing node, None for a graph input
    op_type: str | None
    dtype: str
    shape: tuple[int, ...]
    exponent_a: int
    exponent_b: int
    max_lsb: int             # max |a - b| in integer steps (of the finer grid when the exponents differ)
    mismatches: int          # elements beyond tolerance
    size: int
    allowed_lsb: int
    worst_index: tuple[int, ...] | None
    worst_values: tuple[int, int] | None
    problem: str | None      # "exponent", "shape", "dtype" or None

    @property
    def ok(self) -> bool:
        return self.problem is None and self.mismatches == 0


@dataclass
class Divergence:
    stat: LayerStat
    agreed_before: int       # layers compared (and within tolerance) before this one
    compared: int            # layers present in both sources


def graph_order(model) -> list[tuple[str, object]]:
    """[(value name, producing node or None)] inputs first, then node outputs in the file's (topological) order."""
    order = [(vi.name, None) for vi in model.inputs]
    for node in model.nodes:
        order += [(out, node) for out in node.outputs]
    return order


def compare_tensor(position, value, node, a, b, tol) -> LayerStat:
    d = diff(a, b, tol)
    shape = tuple(b.shape)
    name, op = getattr(node, "name", None), getattr(node, "op_type", None)
    if d.problem == "size":
        return LayerStat(position, value, name, op, d.dtype, shape, int(a.exponent), int(b.exponent), -1, d.size,
                         d.size, int(d.allowed), None, None, "shape")
    flat = d.worst_index()
    idx = tuple(int(i) for i in np.unravel_index(flat, shape)) if flat is not None else None
    return LayerStat(
        position=position, value=value, node=name, op_type=op, dtype=d.dtype, shape=shape,
        exponent_a=int(a.exponent), exponent_b=int(b.exponent), max_lsb=int(d.worst), mismatches=d.mismatches,
        size=d.size, allowed_lsb=int(d.allowed), worst_index=idx,
        worst_values=(int(d.a[flat]), int(d.b[flat])) if flat is not None else None, problem=d.problem,
    )


def layer_stats(model, tensors_a: dict, tensors_b: dict, tolerance=None) -> list[LayerStat]:
    """Statistics for every value both sources hold, in graph order."""
    stats = []
    for pos, (name, node) in enumerate(graph_order(model)):
        if name in tensors_a and name in tensors_b:
            stats.append(compare_tensor(pos, name, node, tensors_a[name], tensors_b[name], tolerance))
    return stats


def first_divergence(model, tensors_a: dict, tensors_b: dict, tolerance=None) -> Divergence | None:
    """The first value in graph order whose tensors differ beyond `tolerance` (the contract's tolerance dict:
    int8_lsb, int16_lsb, same_exponent), or None when every common value agrees."""
    stats = layer_stats(model, tensors_a, tensors_b, tolerance)
    for i, s in enumerate(stats):
        if not s.ok:
            return Divergence(s, i, len(stats))
    if not stats:
        raise UserError("the two sources share no tensor named after this model's values: nothing to compare")
    return None


def _describe(s: LayerStat) -> str:
    where = f"{s.op_type} {s.node}" if s.node else "graph input"
    head = f"{where} -> {s.value}  {s.dtype} {list(s.shape)}"
    if s.problem == "shape":
        return f"{head}: sizes differ"
    exp = (f"exp {s.exponent_a}" if s.exponent_a == s.exponent_b
           else f"exp {s.exponent_a} vs {s.exponent_b} (LSB of 2^{min(s.exponent_a, s.exponent_b)})")
    worst = ""
    if s.worst_index is not None and s.max_lsb > 0:
        worst = f", worst at {list(s.worst_index)}: {s.worst_values[0]} vs {s.worst_values[1]}"
    return (f"{head}  {exp}: max |diff| {s.max_lsb} LSB (allowed {s.allowed_lsb}), "
            f"{s.mismatches}/{s.size} beyond{worst}")


def format_report(model, tensors_a: dict, tensors_b: dict, tolerance=None, label_a: str = "A",
                  label_b: str = "B", context: int = 2) -> str:
    """A readable report: the first diverging layer with its statistics, the layers around it, a summary."""
    stats = layer_stats(model, tensors_a, tensors_b, tolerance)
    if not stats:
        raise UserError("the two sources share no tensor named after this model's values: nothing to compare")
    bad = [i for i, s in enumerate(stats) if not s.ok]
    lines = [f"compared {len(stats)} tensors in graph order: {label_a} vs {label_b}"]
    missing_a = [n for n, _ in graph_order(model) if n not in tensors_a]
    missing_b = [n for n, _ in graph_order(model) if n not in tensors_b]
    if missing_a or missing_b:
        lines.append(f"(not in {label_a}: {len(missing_a)}, not in {label_b}: {len(missing_b)} values; skipped)")
    if not bad:
        lines.append("no divergence: every common tensor is within tolerance")
        return "\n".join(lines)
    i = bad[0]
    s = stats[i]
    reason = {"exponent": "exponents differ", "dtype": "dtypes differ", "shape": "shapes differ"}.get(
        s.problem, "values beyond tolerance")
    lines.append(f"FIRST DIVERGENCE at #{s.position} ({reason}): {s.op_type or 'input'} {s.node or s.value}")
    lines.append(f"  output {s.value}")
    lines.append(f"  {i} earlier tensors agree; {len(bad)} of {len(stats)} tensors diverge in total")
    lines.append("layers around it:")
    for j in range(max(0, i - context), min(len(stats), i + context + 1)):
        mark = ">>" if j == i else ("!!" if j in bad else "  ")
        lines.append(f"{mark} #{stats[j].position:3d} {_describe(stats[j])}")
    last = stats[-1]
    lines.append(f"final: {_describe(last)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- CLI
def _source(spec: str, model, vector: int, vectors):

    if spec in ("interpreter", "interpreter-exact", "interpreter-fixed-average"):
        exact = spec.endswith("exact")
        interp = Interpreter(model, exact_average=exact, wide_accumulators=exact,
                             fixed_point_average=spec.endswith("fixed-average"))
        if vector < 0:
            t = model.test_inputs.get(model.inputs[0].name)
            if t is None:
                raise UserError("the model has no embedded test input; pass --vector N")
            x = t.tensor()
        else:
            if vector >= len(vectors):
                raise UserError(f"--vector {vector}: there are {len(vectors)} fixed vectors")
            x = vectors[vector][None]
        return interp.run_full(x).tensors
    if spec == "embedded":
        if vector >= 0:
            raise UserError("the embedded (simulator) tensors belong to the embedded test input: drop --vector")
        tensors = {name: t.tensor() for name, t in {**model.test_inputs, **model.test_outputs}.items()}
        if len(tensors) <= len(model.test_inputs):
            raise UserError("the model embeds no test outputs: export it with esp-ppq export_test_values=True")
        return tensors
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"source {spec!r} is not interpreter, interpreter-exact, interpreter-fixed-average, embedded or a transcript file")
    session = protocol.TranscriptParser()
    session.feed(path.read_bytes())
    run = session.finish()
    for problem in run.problems()[:5]:
        print(f"note: {path.name}: {problem}")
    vec = max(vector, 0)
    if vec not in run.tensors or not run.tensors[vec]:
        raise UserError(f"{path} holds no TENSOR lines for vector {vec}: capture a `run dump` transcript")
    return run.tensors[vec]


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="FILE.espdl", help="the model both runs executed")
    parser.add_argument("a", help="first source: interpreter | interpreter-exact | interpreter-fixed-average | embedded | transcript file")
    parser.add_argument("b", help="second source (same choices)")
    parser.add_argument("--vector", type=int, default=-1,
                        help="fixed vector index (models/test_vectors.bin); default: the embedded test input "
                             "for interpreter sources, vector 0 for transcripts")
    parser.add_argument("--tolerance", default=None,
                        help="a variant's .json (its 'tolerance'); default int8 0 LSB, int16 1 LSB, same exponent")
    parser.add_argument("--key", help="AES-128 key of an encrypted model")


def run(args) -> int:
    model = load(args.model, key=args.key)
    tol = None
    if args.tolerance:
        try:
            tol = json.loads(open(args.tolerance).read())["tolerance"]
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"--tolerance {args.tolerance}: not a variant .json with a 'tolerance' ({exc})") from None
    vectors = []
    if args.vector >= 0 and "interpreter" in (args.a.split("-")[0], args.b.split("-")[0]):
        vectors = load_vectors()[0]
    a = _source(args.a, model, args.vector, vectors)
    b = _source(args.b, model, args.vector, vectors)
    print(format_report(model, a, b, tol, label_a=args.a, label_b=args.b))
    return 0 if first_divergence(model, a, b, tol) is None else 1
