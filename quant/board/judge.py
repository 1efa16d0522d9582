"""Hold a board's output tensors to the PPQ simulator's reference, under the variant's tolerance.

Inputs are plain data so the comparison can be tested without a board:
- board outputs: `{vector index: {tensor name: quant.tensor.Tensor}}` and the `INPUT` lines as
  `{vector index: quant.board.protocol.Input}` (a `BoardRun`'s `tensors` and `inputs`);
- the reference: `gesture_model_<v>.reference.json` (simulator integers per vector);
- the model config: `gesture_model_<v>.json` (`tolerance`, `input.exponent`, `outputs`).

The tolerance (quant.tensor.Tolerance; docs/quantization.md, 'Producing the variants'): int8 elements within
`int8_lsb` (default 0: bit-exact), int16 within `int16_lsb` (default 1), same exponent, same dtype and shape,
same top-1 class. Elements are compared by quant.tensor.diff. A mismatch message names the vector (index and
name), the tensor, the element (flat index and NHWC coordinate), the LSB difference, and the first few
differences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from quant.board.protocol import Input
from quant.folder import MODELS, load_expectations
from quant.tensor import Tensor, Tolerance, diff

FIRST_DIFFERENCES = 5  # differences listed per tensor in a failure message


@dataclass
class Verdict:
    """Result of one comparison. `problems` are human-readable, one paragraph each, worst first."""

    variant: str
    vectors: int = 0
    tensors: int = 0
    problems: list[str] = field(default_factory=list)
    bad_vectors: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def message(self, tolerance: Mapping[str, Any] | None = None) -> str:
        if self.ok:
            return f"{self.variant}: {self.tensors} output tensors on {self.vectors} vectors match the simulator"
        head = (
            f"{self.variant}: the board's outputs differ from the PPQ simulator's "
            f"({len(self.bad_vectors)} of {self.vectors} vectors; tolerance: {Tolerance.of(tolerance).describe()})"
        )
        return "\n".join([head, *self.problems])


def reference_tensors(reference: Mapping[str, Any]) -> dict[int, tuple[str, dict[str, Tensor], int | None]]:
    """{vector: (vector name, {tensor name: Tensor}, top1)} from a `.reference.json` document."""
    out = {}
    for entry in reference["outputs"]:
        tensors = {
            name: Tensor.of(t["dtype"], t["shape"], t["exponent"], t["data"], name)
            for name, t in entry["tensors"].items()
        }
        out[int(entry["vector"])] = (str(entry.get("name", "")), tensors, entry.get("top1"))
    return out


def _coordinate(flat: int, shape: tuple[int, ...]) -> str:
    if not shape or int(np.prod(shape)) <= flat:
        return "?"
    return "(" + ", ".join(str(int(c)) for c in np.unravel_index(flat, shape)) + ")"


def _top1_tensor_name(cfg: Mapping[str, Any], names: list[str]) -> str | None:
    outs = cfg.get("outputs") or []
    if outs and outs[0].get("name") in names:
        return outs[0]["name"]
    return names[0] if len(names) == 1 else None


def _argmax(t: Tensor) -> int:
    """Top-1 class: the first index of the largest value (real = int * 2^exp; one exponent per tensor)."""
    return int(np.argmax(np.asarray(t.data).reshape(-1)))


def _compare_tensor(label: str, board: Tensor, ref: Tensor, tol: Tolerance) -> str | None:
    if board.dtype != ref.dtype:
        return f"{label}: dtype {board.dtype} on the board, {ref.dtype} in the simulator"
    if board.shape != ref.shape:
        return f"{label}: shape {'x'.join(map(str, board.shape))} on the board, {'x'.join(map(str, ref.shape))} in the simulator"
    d = diff(board, ref, tol)
    if d.problem == "exponent":
        return (
            f"{label}: exponent {board.exponent} on the board, {ref.exponent} in the simulator "
            f"(the chip scales this output by 2^{board.exponent}, the model says 2^{ref.exponent})"
        )
    if d.ok:
        return None
    delta = d.delta()
    worst = d.worst_index()
    unit = "" if d.is_float else " LSB"
    allowed_text = "bit-exact" if d.allowed == 0 else f"within {d.allowed:g}{unit}"
    lines = [
        f"{label} ({ref.dtype} {'x'.join(map(str, ref.shape))}, exp {ref.exponent}): "
        f"{d.mismatches} of {d.size} elements differ beyond tolerance ({allowed_text}); "
        f"worst: element {worst} at NHWC {_coordinate(worst, ref.shape)}, {_num(delta[worst], True)}{unit}",
        "    first differences (flat index, NHWC coordinate: board vs simulator):",
    ]
    for i in d.bad[:FIRST_DIFFERENCES]:
        i = int(i)
        lines.append(f"      [{i}] {_coordinate(i, ref.shape)}: {_num(d.a[i])} vs {_num(d.b[i])} ({_num(delta[i], True)}{unit})")
    if d.mismatches > FIRST_DIFFERENCES:
        lines.append(f"      ... and {d.mismatches - FIRST_DIFFERENCES} more")
    return "\n".join(lines)


def _num(v, signed: bool = False) -> str:
    if float(v).is_integer():
        return f"{int(v):+d}" if signed else str(int(v))
    return f"{float(v):+.6g}" if signed else f"{float(v):.6g}"


def compare_outputs(
    variant: str,
    board_outputs: Mapping[int, Mapping[str, Tensor]],
    board_inputs: Mapping[int, Input],
    reference: Mapping[str, Any],
    cfg: Mapping[str, Any],
) -> Verdict:
    """Compare every vector of the reference with what the board printed."""
    tol = Tolerance.of(cfg.get("tolerance"))
    ref = reference_tensors(reference)
    verdict = Verdict(variant, vectors=len(ref))
    bad: dict[int, list[str]] = {}

    def problem(vec: int, text: str) -> None:
        bad.setdefault(vec, []).append(text)

    extra = sorted(set(board_outputs) - set(ref))
    if extra:
        verdict.problems.append(
            f"the board printed outputs for vectors {extra} that the reference does not have: "
            "the firmware embeds other vectors than models/test_vectors.bin; rebuild the firmware"
        )
    in_spec = cfg.get("input") or {}
    for vec in sorted(ref):
        name, ref_tensors, ref_top1 = ref[vec]
        where = f"vector {vec} '{name}'"
        seen = board_inputs.get(vec)
        if seen is not None:
            if seen.name and name and seen.name != name:
                problem(vec, f"{where}: the board calls it '{seen.name}': the firmware embeds other vectors; rebuild it")
            if "exponent" in in_spec and seen.exponent != int(in_spec["exponent"]):
                problem(
                    vec,
                    f"{where}: input quantized with exponent {seen.exponent} on the board, the model's input "
                    f"exponent is {in_spec['exponent']} (gesture_model_{variant}.json): the firmware uses a stale model header",
                )
            if in_spec.get("dtype") and seen.dtype != in_spec["dtype"]:
                problem(vec, f"{where}: input dtype {seen.dtype} on the board, {in_spec['dtype']} in the model")
        got = board_outputs.get(vec)
        if got is None:
            problem(vec, f"{where}: the board printed no output for it")
            continue
        for tname, rt in ref_tensors.items():
            label = f"{where}, tensor '{tname}'"
            if tname not in got:
                problem(vec, f"{label}: missing on the board (it printed {sorted(got) or 'nothing'})")
                continue
            verdict.tensors += 1
            text = _compare_tensor(label, got[tname], rt, tol)
            if text:
                problem(vec, text)
        top_name = _top1_tensor_name(cfg, list(ref_tensors))
        if tol.same_top1 and top_name and top_name in got and got[top_name].size:
            board_top1 = _argmax(got[top_name])
            sim_top1 = _argmax(ref_tensors[top_name]) if ref_tensors[top_name].size else ref_top1
            if sim_top1 is not None and board_top1 != int(sim_top1):
                problem(vec, f"{where}: top-1 class {board_top1} on the board, {sim_top1} in the simulator")
    for vec in sorted(bad):
        verdict.bad_vectors.append(vec)
        verdict.problems.extend(bad[vec])
    return verdict


def compare_run(run: Any, variant: str, models: Path = MODELS) -> tuple[Verdict, dict]:
    """Compare a BoardRun with the committed reference of `variant`. Returns (verdict, tolerance)."""
    reference, cfg = load_expectations(variant, models)
    return compare_outputs(variant, run.tensors, run.inputs, reference, cfg), cfg.get("tolerance") or {}
