"""The three ESP32-S3 variants, as data.

A variant is a `VariantSpec`: the pipeline in `quant.variants.quantize` has one code path that reads these
fields; a new variant is a new entry in `VARIANTS`, not new code. Every field ends up verbatim in
the variant's `.json` (`spec`), and its hash is part of the incremental-build key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from quant.variants.distill import Distillation
from quant.errors import UserError
from quant.tensor import Tolerance

# activation observers esp-ppq offers that we are willing to measure; "kl" is deliberately not
# among the defaults (docs: it clipped a ReLU6 at 0.5 and took accuracy from 100 % to 24 %).
OBSERVERS = ("percentile", "minmax", "mse", "kl")
# what to do with ReLU6 (exported as Clip(0,6)) on the ONNX graph: keep it, or replace it by Relu
RELU6_POLICIES = ("keep", "to_relu")


@dataclass(frozen=True)
class Calibration:
    """Activation calibration: each candidate is quantized and the one with the lowest graph-output
    noise/signal (vs the float model, on the calibration set) is kept."""

    candidates: tuple[str, ...] = ("percentile", "minmax", "mse")
    batch: int = 32
    # then try the other candidates per layer group on this many most sensitive groups (greedy, kept where the
    # output error falls). Off by default: on the default model's int8 (4 groups x 2 observers) it never lowered
    # the error (4.979e-3 unchanged or worse) and took 14 s
    per_layer_groups: int = 0


@dataclass(frozen=True)
class Equalization:
    """esp-ppq's LayerwiseEqualizationPass settings."""

    iterations: int
    value_threshold: float
    opt_level: int  # 2 also crosses Add/Sub


@dataclass(frozen=True)
class SensitivitySearch:
    """Greedy 16-bit promotion by measured, grouped sensitivity (compute op + its Clip/Relu)."""

    method: str = "greedy-grouped"
    target_noise_signal: float = 0.0  # stop when the graph-output noise/signal is at or below this
    max_int16_ops: int = 8  # cap on promoted ops (the top group is promoted even if it exceeds it)
    promote_consumers: bool = True  # also promote the direct downstream consumers' groups
    max_rejected_steps: int = 3  # stop after this many steps in a row that did not lower the output error
    min_improvement: float = 0.10  # the result must cut int8's output error by at least this fraction
    max_latency_factor: float | None = None  # cap: estimated latency <= this x the all-8-bit graph's (quant.variants.latency)
    analysis_images: int = 32  # calibration images used to rank the groups (first N of the calibration set)


@dataclass(frozen=True)
class VariantSpec:
    name: str
    summary: str
    bits: int = 8  # default bit width of every layer
    relu6: str = "keep"  # one of RELU6_POLICIES
    calibration: Calibration = Calibration()
    equalization: Equalization | None = None
    distillation: Distillation | None = None  # fine-tune the edited float graph towards the original (after the ReLU6 swap)
    sensitivity: SensitivitySearch | None = None
    floor_drop_points: float = 1.0  # quality gate: max top-1 drop vs float on the held-out set, points
    tolerance: Tolerance = Tolerance()  # how closely the chip must match the simulator (quant.tensor)

    def __post_init__(self) -> None:
        if self.relu6 not in RELU6_POLICIES:
            raise ValueError(f"relu6 policy must be one of {RELU6_POLICIES}, not {self.relu6!r}")
        if self.bits not in (8, 16):
            raise ValueError(f"bits must be 8 or 16, not {self.bits}")
        unknown = set(self.calibration.candidates) - set(OBSERVERS)
        if unknown or not self.calibration.candidates:
            raise ValueError(f"calibration candidates must be among {OBSERVERS}")
        if self.tolerance.loosened and not self.tolerance.reason:
            raise ValueError("a loosened tolerance must carry a reason")

    @property
    def analysis_images(self) -> int:
        """Calibration images the grouped ranking runs on: the search's field (its default without a search,
        where the ranking only reports the worst layer groups)."""
        return (self.sensitivity or SensitivitySearch()).analysis_images

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


VARIANTS: dict[str, VariantSpec] = {
    "int8": VariantSpec(
        name="int8",
        summary="every layer 8-bit on the ESP32-S3 (per-tensor power-of-two)",
        floor_drop_points=1.0,
    ),
    "mixed": VariantSpec(
        name="mixed",
        summary="8-bit, with the measurably most sensitive layer groups (and their consumers) 16-bit",
        sensitivity=SensitivitySearch(target_noise_signal=0.002, max_int16_ops=24, max_latency_factor=1.5),
        floor_drop_points=0.3,
    ),
    "balanced": VariantSpec(
        name="balanced",
        summary="every ReLU6 -> ReLU, distilled back towards the float model, then layerwise weight equalization, 8-bit",
        relu6="to_relu",
        equalization=Equalization(iterations=4, value_threshold=0.4, opt_level=2),
        distillation=Distillation(),
        floor_drop_points=0.5,
    ),
}


def get(name: str) -> VariantSpec:

    if name not in VARIANTS:
        raise UserError(f"unknown variant {name!r}; known variants: {', '.join(VARIANTS)}")
    return VARIANTS[name]
