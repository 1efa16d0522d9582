"""One tensor type and one comparison rule, for every part that compares a chip's numbers with ours.

`Tensor` is a value as ESP-DL holds it: `data` shaped as held (NHWC for images), integers with
real = data * 2**exponent, or float32 for esp-ppq's F32 nodes. The host interpreter computes them, the
protocol parser reads them from a board's TENSOR lines, the judge reads them from `.reference.json`,
and the `.espdl` reader turns its stored test values into them (`reader.StoredTensor.tensor()`).

`Tolerance` is the one rule (ESP-DL's `model->test()` by default: int8 bit-exact, int16 within 1 LSB,
same exponent; float32 within FLOAT_ATOL absolute with NaN == NaN), loosened per variant in its `.json`
with a reason. `diff(a, b, tolerance)` is the one comparison: the board's judge, `quant diff`,
`quant verify` and the virtual board's self-test all call it.

Exponent rule: when two integer tensors carry different exponents, they are compared on the finer grid
(the coarser one shifted left, exactly), and a difference counts in LSB of that grid.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

# float32 tensors (esp-ppq quant_type F32 nodes): ESP-DL's model->test() accepts |diff| <= 2e-5 absolute and
# counts NaN == NaN as equal (esp-dl/dl/model/src/dl_model_base.cpp:501, dl/tensor/src/dl_tensor_base.cpp:898-929).
FLOAT_ATOL = 2e-5


@dataclass(frozen=True, eq=False)
class Tensor:
    """A value: `data` as held (NHWC for images); real = data * 2**exponent for integer dtypes."""

    data: np.ndarray
    exponent: int
    dtype: str
    name: str = ""

    @classmethod
    def of(cls, dtype: str, shape, exponent: int, values, name: str = "") -> Tensor:
        """From plain fields (a TENSOR line, a `.reference.json` entry): `values` flat, in `shape`'s order."""
        np_dtype = "float32" if dtype == "float32" else np.int64
        data = np.asarray(values, dtype=np_dtype).reshape(tuple(int(d) for d in shape))
        return cls(data, int(exponent), str(dtype), name)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in np.shape(self.data))

    @property
    def size(self) -> int:
        return int(np.size(self.data))

    def flat(self) -> list:
        """The elements as Python numbers, in order (what a TENSOR line carries)."""
        return np.asarray(self.data).reshape(-1).tolist()

    def real(self) -> np.ndarray:
        return np.asarray(self.data).astype(np.float64) * 2.0**self.exponent

    def replace(self, **changes) -> Tensor:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Tolerance:
    """How closely a chip must match the simulator; the defaults are ESP-DL's own `model->test()` rule."""

    int8_lsb: int = 0
    int16_lsb: int = 1
    same_exponent: bool = True
    same_top1: bool = True
    reason: str | None = None  # required when loosened (quant.variants.specs checks it)

    @classmethod
    def of(cls, mapping: Tolerance | Mapping[str, Any] | None) -> Tolerance:
        """From a `.json` 'tolerance' (missing keys take the defaults; unknown keys are ignored)."""
        if isinstance(mapping, Tolerance):
            return mapping
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(mapping or {}).items() if k in names})

    @property
    def loosened(self) -> bool:
        return (self.int8_lsb, self.int16_lsb, self.same_exponent, self.same_top1) != (0, 1, True, True)

    def allowed_lsb(self, dtype: str) -> int:
        """How many LSB an element of `dtype` may differ (int32 and anything else: exact)."""
        return {"int8": int(self.int8_lsb), "int16": int(self.int16_lsb)}.get(dtype, 0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        i8, i16 = int(self.int8_lsb), int(self.int16_lsb)
        parts = ["int8 bit-exact" if i8 == 0 else f"int8 within {i8} LSB", f"int16 within {i16} LSB"]
        if self.same_exponent:
            parts.append("same exponent")
        if self.same_top1:
            parts.append("same top-1")
        if self.reason:
            parts.append(f"loosened because: {self.reason}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Diff:
    """What `diff(a, b)` found. Integer tensors count in LSB (of the finer grid), float32 in absolute value."""

    problem: str | None  # "dtype", "size" or "exponent" (not tolerated), else None
    dtype: str  # b's dtype: the rule applied is b's
    size: int
    allowed: float  # LSB for integers, FLOAT_ATOL for float32
    worst: float  # max |a - b| where both are numbers (-1 when the sizes differ)
    bad: np.ndarray  # flat indices of the elements beyond `allowed` (NaN against a number included)
    a: np.ndarray  # flat, on the compared grid
    b: np.ndarray
    exponent: int | None  # the compared grid's exponent (integers)
    is_float: bool  # compared as float32 values (either side float32), else as integers

    @property
    def mismatches(self) -> int:
        return int(self.bad.size)

    @property
    def ok(self) -> bool:
        return self.problem is None and self.bad.size == 0

    def worst_index(self) -> int | None:
        """Flat index of the worst element: the first mismatch with the largest |diff| (a NaN mismatch
        counts as the largest), or of the largest |diff| when nothing is beyond tolerance."""
        if self.a.size == 0 or self.a.size != self.b.size:
            return None
        delta = self.delta()
        if self.bad.size:
            return int(self.bad[np.argmax(np.abs(delta[self.bad]))])
        return int(np.argmax(np.abs(delta)))

    def delta(self) -> np.ndarray:
        """a - b per element (NaN against NaN gives 0; NaN against a number gives +inf)."""
        if not self.is_float:
            return self.a - self.b
        an, bn = np.isnan(self.a), np.isnan(self.b)
        with np.errstate(invalid="ignore"):
            d = np.where(an | bn, 0.0, self.a - self.b)
        return np.where(an != bn, np.inf, d)


def diff(a: Tensor, b: Tensor, tolerance: Tolerance | Mapping[str, Any] | None = None) -> Diff:
    """Compare `a` (the board's, or the interpreter's) with `b` (the expectation) under `tolerance`.

    Shapes are compared by element count (callers that require identical shapes check `shape` first);
    a different dtype or (when `same_exponent`) exponent is reported in `problem`, and the elements are
    still compared so that the statistics say how far apart the two are."""
    tol = Tolerance.of(tolerance)
    dtype = str(b.dtype)
    problem = "dtype" if str(a.dtype) != dtype else None
    is_float = "float32" in (dtype, str(a.dtype))
    if is_float:
        va = np.asarray(a.data, np.float64).reshape(-1)
        vb = np.asarray(b.data, np.float64).reshape(-1)
        allowed, exponent = FLOAT_ATOL, None
    else:
        va = np.asarray(a.data).astype(np.int64).reshape(-1)
        vb = np.asarray(b.data).astype(np.int64).reshape(-1)
        ea, eb = int(a.exponent), int(b.exponent)
        if ea != eb and tol.same_exponent:
            problem = problem or "exponent"
        exponent = min(ea, eb)
        va, vb = va << (ea - exponent), vb << (eb - exponent)
        allowed = tol.allowed_lsb(dtype)
    if va.size != vb.size:
        return Diff("size", dtype, int(vb.size), allowed, -1, np.arange(vb.size), va, vb, exponent, is_float)
    if is_float:
        an, bn = np.isnan(va), np.isnan(vb)
        with np.errstate(invalid="ignore"):
            d = np.where(an | bn, 0.0, np.abs(va - vb))
        bad = np.flatnonzero((an != bn) | (d > allowed))
        worst = float(d.max()) if d.size else 0.0
    else:
        d = np.abs(va - vb)
        bad = np.flatnonzero(d > allowed)
        worst = int(d.max()) if d.size else 0
    return Diff(problem, dtype, int(vb.size), allowed, worst, bad, va, vb, exponent, is_float)
