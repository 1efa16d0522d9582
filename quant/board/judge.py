"""Hold a board's output tensors to the PPQ simulator's reference, under the variant's tolerance.

Inputs are plain data so the comparison can be tested without a board:
- board outputs: `{vector index: {tensor name: Tensor}}` and the `INPUT` lines as
  `{vector index: InputSeen}` (see `from_board_run`);
- the reference: `gesture_model_<v>.reference.json` (simulator integers per vector);
- the model config: `gesture_model_<v>.json` (`tolerance`, `input.exponent`, `outputs`).

The tolerance (README.md, 'Producing the variants'): int8 elements within `int8_lsb` (default 0: bit-exact), int16
within `int16_lsb` (default 1), same exponent, same dtype and shape, same top-1 class.
A mismatch message names the vector (index and name), the tensor, the element (flat index and NHWC
coordinate), the LSB difference, and the first few differences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np

from quant.folder import MODELS, load_expectations  # noqa: F401  (the variant folder is read by quant.folder)

FIRST_DIFFERENCES = 5  # differences listed per tensor in a failure message


class Tensor(NamedTuple):
    dtype: str
    shape: tuple[int, ...]
    exponent: int
    data: tuple[int, ...]


class InputSeen(NamedTuple):
    name: str
    exponent: int
    dtype: str


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
            f"({len(self.bad_vectors)} of {self.vectors} vectors; tolerance: {describe_tolerance(tolerance or {})})"
        )
        return "\n".join([head, *self.problems])


def describe_tolerance(tol: Mapping[str, Any]) -> str:
    i8, i16 = int(tol.get("int8_lsb", 0)), int(tol.get("int16_lsb", 1))
    parts = ["int8 bit-exact" if i8 == 0 else f"int8 within {i8} LSB", f"int16 within {i16} LSB"]
    if tol.get("same_exponent", True):
        parts.append("same exponent")
    if tol.get("same_top1", True):
        parts.append("same top-1")
    if tol.get("reason"):
        parts.append(f"loosened because: {tol['reason']}")
    return ", ".join(parts)


def reference_tensors(reference: Mapping[str, Any]) -> dict[int, tuple[str, dict[str, Tensor], int | None]]:
    """{vector: (vector name, {tensor name: Tensor}, top1)} from a `.reference.json` document."""
    out = {}
    for entry in reference["outputs"]:
        tensors = {
            name: Tensor(t["dtype"], tuple(int(d) for d in t["shape"]), int(t["exponent"]), tuple(int(v) for v in t["data"]))
            for name, t in entry["tensors"].items()
        }
        out[int(entry["vector"])] = (str(entry.get("name", "")), tensors, entry.get("top1"))
    return out


# float32 tensors (esp-ppq quant_type F32 nodes): ESP-DL's model->test() accepts |diff| <= 2e-5 absolute and
# counts NaN == NaN as equal (esp-dl/dl/model/src/dl_model_base.cpp:501, dl/tensor/src/dl_tensor_base.cpp:898-929).
FLOAT_ATOL = 2e-5


def float_mismatches(got: np.ndarray, expected: np.ndarray, atol: float = FLOAT_ATOL) -> tuple[float, np.ndarray]:
    """(worst |diff| where both are numbers, bool mask of elements beyond `atol`); NaN == NaN, NaN != number."""
    g, e = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    gn, en = np.isnan(g), np.isnan(e)
    with np.errstate(invalid="ignore"):
        diff = np.where(gn | en, 0.0, np.abs(g - e))
    bad = (gn != en) | (diff > atol)
    return float(diff.max()) if diff.size else 0.0, bad


def allowed_lsb(dtype: str, tol: Mapping[str, Any] | None = None) -> int:
    """How many LSB an element of `dtype` may differ under a variant's tolerance; without one, ESP-DL's
    own model->test() rule (int16 within 1 LSB, everything else exact)."""
    tol = tol or {}
    if dtype == "int8":
        return int(tol.get("int8_lsb", 0))
    if dtype == "int16":
        return int(tol.get("int16_lsb", 1))
    return 0  # int32 / anything else: exact


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
    return int(np.argmax(np.asarray(t.data, dtype=np.int64)))


def _compare_tensor(label: str, board: Tensor, ref: Tensor, tol: Mapping[str, Any]) -> str | None:
    if board.dtype != ref.dtype:
        return f"{label}: dtype {board.dtype} on the board, {ref.dtype} in the simulator"
    if tuple(board.shape) != tuple(ref.shape):
        return f"{label}: shape {'x'.join(map(str, board.shape))} on the board, {'x'.join(map(str, ref.shape))} in the simulator"
    if tol.get("same_exponent", True) and board.exponent != ref.exponent:
        return (
            f"{label}: exponent {board.exponent} on the board, {ref.exponent} in the simulator "
            f"(the chip scales this output by 2^{board.exponent}, the model says 2^{ref.exponent})"
        )
    b = np.asarray(board.data, dtype=np.int64)
    r = np.asarray(ref.data, dtype=np.int64)
    if b.size != r.size:
        return f"{label}: {b.size} elements on the board, {r.size} in the simulator"
    if board.exponent != ref.exponent:  # tolerated: compare on the finer grid
        e = min(board.exponent, ref.exponent)
        b, r = b << (board.exponent - e), r << (ref.exponent - e)
    diff = b - r
    allowed = allowed_lsb(ref.dtype, tol)
    bad = np.flatnonzero(np.abs(diff) > allowed)
    if bad.size == 0:
        return None
    worst = int(bad[np.argmax(np.abs(diff[bad]))])
    allowed_text = "bit-exact" if allowed == 0 else f"within {allowed} LSB"
    lines = [
        f"{label} ({ref.dtype} {'x'.join(map(str, ref.shape))}, exp {ref.exponent}): "
        f"{bad.size} of {r.size} elements differ beyond tolerance ({allowed_text}); "
        f"worst: element {worst} at NHWC {_coordinate(worst, ref.shape)}, {int(diff[worst]):+d} LSB",
        "    first differences (flat index, NHWC coordinate: board vs simulator):",
    ]
    for i in bad[:FIRST_DIFFERENCES]:
        i = int(i)
        lines.append(f"      [{i}] {_coordinate(i, ref.shape)}: {int(b[i])} vs {int(r[i])} ({int(diff[i]):+d} LSB)")
    if bad.size > FIRST_DIFFERENCES:
        lines.append(f"      ... and {bad.size - FIRST_DIFFERENCES} more")
    return "\n".join(lines)


def compare_outputs(
    variant: str,
    board_outputs: Mapping[int, Mapping[str, Tensor]],
    board_inputs: Mapping[int, InputSeen],
    reference: Mapping[str, Any],
    cfg: Mapping[str, Any],
) -> Verdict:
    """Compare every vector of the reference with what the board printed."""
    tol = cfg.get("tolerance") or {}
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
        if tol.get("same_top1", True) and top_name and top_name in got and got[top_name].data:
            board_top1 = _argmax(got[top_name])
            sim_top1 = _argmax(ref_tensors[top_name]) if ref_tensors[top_name].data else ref_top1
            if sim_top1 is not None and board_top1 != int(sim_top1):
                problem(vec, f"{where}: top-1 class {board_top1} on the board, {sim_top1} in the simulator")
    for vec in sorted(bad):
        verdict.bad_vectors.append(vec)
        verdict.problems.extend(bad[vec])
    return verdict


def from_board_run(run: Any) -> tuple[dict[int, dict[str, Tensor]], dict[int, InputSeen]]:
    """Adapt a `quant.board.protocol.BoardRun` to the plain mappings `compare_outputs` takes."""
    outputs = {
        int(vec): {
            name: Tensor(t.dtype, tuple(int(d) for d in t.shape), int(t.exponent),
                         tuple(int(v) for v in np.asarray(t.data).reshape(-1).tolist()))
            for name, t in tensors.items()
        }
        for vec, tensors in run.tensors.items()
    }
    inputs = {int(vec): InputSeen(i.name, int(i.exponent), i.dtype) for vec, i in run.inputs.items()}
    return outputs, inputs


def compare_run(run: Any, variant: str, models: Path = MODELS) -> tuple[Verdict, dict]:
    """Compare a BoardRun with the committed reference of `variant`. Returns (verdict, tolerance)."""
    reference, cfg = load_expectations(variant, models)
    outputs, inputs = from_board_run(run)
    return compare_outputs(variant, outputs, inputs, reference, cfg), cfg.get("tolerance") or {}
