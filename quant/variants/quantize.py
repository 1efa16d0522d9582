"""One quantization pipeline for every VariantSpec (esp-ppq, ESP32-S3).

`Quantizer(inputs, workdir).run(spec)`:
1. prepare the ONNX working copy per the spec's ReLU6 policy (Clip(0,6) -> Relu on the ONNX graph);
2. quantize once per activation-calibration candidate and keep the one with the lowest graph-output
   noise/signal against the float model on the calibration set;
3. if the spec has a sensitivity search: rank grouped sensitivity, promote the top group and its
   consumers to ESPDL_S3_INT16 (per-layer minmax), re-quantize, until the target or the cap;
4. every attempt is a full `espdl_quantize_onnx` export (`.espdl` with vector 0 as test value) into
   its own folder, so the chosen attempt's files are the variant's files.

Attempts are memoised per session (int8 and mixed share the all-8-bit calibration sweep).
esp-ppq's banner, tqdm bars and per-pass lines are captured; one progress line per step is printed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quant.variants.sensitivity import consumers, cosine, groups, join_inputs, noise_signal, rank, run_graph
from quant.variants.specs import VariantSpec
from quant.espdl import reader
from quant.variants import latency
from quant.variants.distill import distill

TARGET = "esp32s3"
INPUT_SHAPE = [1, 1, 96, 96]
MIN_CALIB_STEPS = 8  # esp-ppq refuses fewer than 2 calibration steps and recommends 8
MEASURE_IMAGES = 128  # calibration images each attempt's graph-output error is measured on (first N)


def progress(msg: str) -> None:
    print(msg, flush=True)


@contextlib.contextmanager
def quiet():
    """Capture esp-ppq's stdout/stderr chatter; on an exception, show its tail (it is the evidence)."""
    import warnings

    buf = io.StringIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                yield
    except BaseException:
        tail = buf.getvalue().strip().splitlines()[-15:]
        if tail:
            print("esp-ppq output before the failure:\n  " + "\n  ".join(tail), file=sys.stderr)
        raise


def keep_freed_memory() -> bool:
    """glibc: serve the large tensors from the heap instead of a fresh mmap per tensor. By default every
    allocation above 32 MB (the float64 fine-tune's activations, esp-ppq's im2col buffers) is a new mapping that
    the kernel zero-fills page by page and unmaps on free: 5.5 M page faults and 15 s of system time in one build.
    Freed memory is kept for reuse instead (the peak stays the same; memory is returned at exit). The arithmetic
    is untouched. False where the C library has no mallopt."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(mallopt(opt, value) == 1 for opt, value in
               ((m_mmap_threshold, 1 << 30), (m_trim_threshold, 1 << 30), (m_top_pad, 64 << 20)))


def import_esp_ppq():
    with quiet():
        import esp_ppq  # noqa: F401  (prints a banner on first import)
    return esp_ppq


# ----------------------------------------------------------------------------- ONNX preparation


def relu6_nodes(model) -> list[str]:
    """Names of the Clip(min=0, max=6) nodes (how ReLU6 exports)."""
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)

    def bound(node, index, attr):
        if len(node.input) > index and node.input[index]:
            v = consts.get(node.input[index])
            return None if v is None else float(np.asarray(v).reshape(-1)[0])
        for a in node.attribute:  # opset < 11
            if a.name == attr:
                return float(a.f)
        return None

    return [n.name for n in model.graph.node
            if n.op_type == "Clip" and bound(n, 1, "min") == 0.0 and bound(n, 2, "max") == 6.0]


def relu6_to_relu(model) -> int:
    """Replace every Clip(min=0, max=6) node by Relu, in place; returns the count."""
    names = set(relu6_nodes(model))
    count = 0
    for node in model.graph.node:
        if node.name in names:
            del node.input[1:]
            del node.attribute[:]
            node.op_type = "Relu"
            count += 1
    return count


def prepare_onnx(src: Path, spec: VariantSpec) -> tuple[bytes, dict | None]:
    """The working ONNX for `spec` (bytes) and a record of the ReLU6 policy applied (None for 'keep')."""
    import onnx

    model = onnx.load(str(src))
    inits = {t.name for t in model.graph.initializer}
    for graph_input in model.graph.input:
        if graph_input.name not in inits:
            graph_input.type.tensor_type.shape.dim[0].dim_value = 1  # a dynamic batch becomes 1 (esp-ppq needs it)
    if spec.relu6 == "keep":
        return model.SerializeToString(), None
    record = {"policy": spec.relu6, "relu6_nodes": len(relu6_nodes(model))}
    record["replaced_by_relu"] = relu6_to_relu(model)
    return model.SerializeToString(), record


# ----------------------------------------------------------------------------- data


@dataclass
class Inputs:
    onnx: Path
    calib_x: np.ndarray  # [N,1,96,96] float32
    heldout_x: np.ndarray
    heldout_y: np.ndarray
    classes: tuple[str, ...]
    vectors_x: np.ndarray  # [V,1,96,96]
    vectors_meta: list[dict]
    input_name: str = "image"
    output_names: tuple[str, ...] = ("logits",)
    _float_cache: dict = field(default_factory=dict, repr=False)

    def float_outputs(self, key: str, model: bytes | None = None) -> np.ndarray:
        """First output of a float model (default: the original ONNX; onnxruntime) on 'calib' | 'heldout'."""
        cache_key = (key, None if model is None else hash(model))
        if cache_key not in self._float_cache:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.log_severity_level = 3
            sess = ort.InferenceSession(str(self.onnx) if model is None else model, opts,
                                        providers=["CPUExecutionProvider"])
            x = self.calib_x if key == "calib" else self.heldout_x
            self._float_cache[cache_key] = np.concatenate(
                [sess.run(None, {self.input_name: x[i : i + 1]})[0] for i in range(len(x))]
            )
        return self._float_cache[cache_key]


# ----------------------------------------------------------------------------- attempts


def estimated_latency_us(attempt: "Attempt") -> float:

    return latency.estimate(reader.load(attempt.espdl))[0]


def point(attempt: "Attempt", int16_ops: list[str]) -> dict:
    """One state of the int16 search: what it costs and what it buys."""
    return {"int16_ops": list(int16_ops), "int16_op_count": len(int16_ops), "noise_signal": attempt.noise_signal,
            "latency_us": round(estimated_latency_us(attempt)), "espdl_bytes": attempt.espdl.stat().st_size}


def choose_promotion(points: list[dict], target: float, cap_us: float | None) -> tuple[dict, str]:
    """The first (smallest) search state that meets the error target within the latency cap; when none does,
    the one with the lowest error within the cap. `points[0]` (no promotion) is always within the cap."""
    within = [p for p in points if cap_us is None or p["latency_us"] <= cap_us]
    meets = [p for p in within if p["noise_signal"] <= target]
    if meets:
        return meets[0], f"the smallest promotion that meets the target {target:g}"
    cap = "" if cap_us is None else " within the latency cap"
    return min(within, key=lambda p: p["noise_signal"]), f"no promotion meets the target {target:g}{cap}: the lowest output error{cap}"


def group_costs(points: list[dict]) -> list[dict]:
    """What each kept promotion step cost (int8 -> int16): estimated latency and size, and what it bought."""
    return [{"promoted": [o for o in b["int16_ops"] if o not in a["int16_ops"]],
             "latency_us": b["latency_us"] - a["latency_us"], "espdl_bytes": b["espdl_bytes"] - a["espdl_bytes"],
             "noise_signal": b["noise_signal"] - a["noise_signal"]} for a, b in zip(points, points[1:])]


def int16_platform():
    """ESPDL_S3_H_PRE_INT16: the S3's int16 (same bits, 40-bit bias, rounding) with a float64 simulation.
    ESPDL_S3_INT16 simulates int16 Conv/Gemm in float32, which cannot hold int16 x int16 sums: its reference
    drifted 1-2 LSB from the chip's exact integer arithmetic (docs/espdl-tools.md, 'Known differences between ESP-DL and the PPQ simulator')."""
    from esp_ppq.api import get_target_platform

    return get_target_platform(TARGET, "w16a16", debug=True)


def calibration_batch(spec: VariantSpec, n: int) -> int:
    """The spec's batch size, made smaller when needed so that there are MIN_CALIB_STEPS batches."""
    return max(1, min(spec.calibration.batch, n // MIN_CALIB_STEPS))


@dataclass
class Attempt:
    observer: str
    int16_ops: tuple[str, ...]
    per_layer: tuple[tuple[str, str], ...]  # (op, observer) overrides of the global observer
    folder: Path  # holds model.espdl, model.info (graph dump), model.json (esp-ppq's), work.onnx
    graph: object
    noise_signal: float  # graph output vs float, calibration set
    cosine: float
    seconds: float
    equalization_pairs: list = field(default_factory=list)
    ranking: list | None = None  # grouped sensitivity, (images, ranking), filled on demand by Quantizer.ranking

    @property
    def espdl(self) -> Path:
        return self.folder / "model.espdl"

    @property
    def graph_dump(self) -> Path:
        return self.folder / "model.info"

    @property
    def onnx(self) -> Path:
        return self.folder / "work.onnx"


@contextlib.contextmanager
def _record_equalization_pairs(sink: list):
    """Record the pairs esp-ppq's LayerwiseEqualizationPass finds (measured, not guessed)."""
    from esp_ppq.quantization.optim.equalization import LayerwiseEqualizationPass

    original = LayerwiseEqualizationPass.find_equalization_pair

    def wrapper(self, graph, interested_operations):
        pairs = original(self, graph, interested_operations)
        sink[:] = [
            {"upstream": [op.name for op in p.upstream_layers], "downstream": [op.name for op in p.downstream_layers]}
            for p in pairs
        ]
        return pairs

    LayerwiseEqualizationPass.find_equalization_pair = wrapper
    try:
        yield
    finally:
        LayerwiseEqualizationPass.find_equalization_pair = original


class Quantizer:
    """Quantizes specs against one set of inputs; scratch files live under `workdir`."""

    def __init__(self, inputs: Inputs, workdir: Path):
        self.inputs = inputs
        self.workdir = Path(workdir)
        self._attempts: dict[tuple, Attempt] = {}
        self._prepared: dict[tuple, tuple[bytes, dict | None]] = {}
        import torch

        # one thread: the same float summation order on every machine (byte-identical files), and no
        # OpenMP spin-waiting when the cores are shared (measured 5x faster under load on 2 cores)
        torch.set_num_threads(1)
        keep_freed_memory()
        import_esp_ppq()

    def prepared(self, spec: VariantSpec) -> tuple[bytes, dict | None]:
        """The working float graph: the ReLU6 policy applied, then (if the spec says so) distilled towards
        the unedited graph on the calibration images."""
        key = (spec.relu6, spec.distillation)
        if key not in self._prepared:
            model, record = prepare_onnx(self.inputs.onnx, spec)
            if spec.distillation is not None and record is not None:

                teacher, _ = prepare_onnx(self.inputs.onnx, dataclasses.replace(spec, relu6="keep"))
                start = time.perf_counter()
                tuned, losses = distill(model, teacher, self.inputs.calib_x, spec.distillation)
                seconds = time.perf_counter() - start
                f = self.inputs.float_outputs("heldout")
                record["distillation"] = {
                    **dataclasses.asdict(spec.distillation), **losses,
                    "images_used": int(min(spec.distillation.images, len(self.inputs.calib_x))),
                    "float_noise_signal_before": noise_signal(self.inputs.float_outputs("heldout", model), f),
                    "float_noise_signal_after": noise_signal(self.inputs.float_outputs("heldout", tuned), f),
                    "float_top1_before": self.float_top1(model),
                    "measured_on": "held-out images, float graph vs the original float model",
                }
                progress(f"  [{spec.name}] distilled towards the float model: held-out float noise/signal "
                         f"{record['distillation']['float_noise_signal_before']:.3e} -> "
                         f"{record['distillation']['float_noise_signal_after']:.3e}  ({seconds:.1f} s)")
                model = tuned
            self._prepared[key] = (model, record)
        return self._prepared[key]

    # -- one esp-ppq call
    def quantize(self, spec: VariantSpec, observer: str, int16_ops: tuple[str, ...] = (),
                 per_layer: tuple[tuple[str, str], ...] = ()) -> Attempt:
        per_layer = tuple(sorted(per_layer))
        key = (spec.relu6, spec.distillation, spec.equalization, spec.bits, spec.calibration.candidates,
               spec.calibration.batch, observer, tuple(sorted(int16_ops)), per_layer)
        if key in self._attempts:
            return self._attempts[key]
        import torch
        from esp_ppq import QuantizationSettingFactory
        from esp_ppq.api import espdl_quantize_onnx

        folder = self.workdir / f"attempt{len(self._attempts):02d}"
        folder.mkdir(parents=True)
        onnx_path = folder / "work.onnx"  # espdl_quantize_onnx overwrites its input: always a copy
        onnx_path.write_bytes(self.prepared(spec)[0])

        setting = QuantizationSettingFactory.espdl_setting()
        setting.quantize_activation_setting.calib_algorithm = observer
        if spec.equalization:
            setting.equalization = True
            eq = setting.equalization_setting
            eq.iterations = spec.equalization.iterations
            eq.value_threshold = spec.equalization.value_threshold
            eq.opt_level = spec.equalization.opt_level
            eq.interested_layers = None
        for name, layer_observer in per_layer:
            setting.quantize_activation_setting.calib_algorithm_per_layer[name] = layer_observer
        int16 = int16_platform()
        for name in sorted(int16_ops):
            setting.dispatching_table.append(name, int16)
            setting.quantize_activation_setting.calib_algorithm_per_layer[name] = "minmax"
            setting.quantize_parameter_setting.calib_algorithm_per_layer[name] = "minmax"

        x = self.inputs.calib_x
        batch = calibration_batch(spec, len(x))
        batches = [torch.from_numpy(x[i : i + batch]) for i in range(0, len(x), batch)]
        pairs: list = []
        start = time.perf_counter()
        with quiet(), _record_equalization_pairs(pairs):
            graph = espdl_quantize_onnx(
                onnx_import_file=str(onnx_path),
                espdl_export_file=str(folder / "model.espdl"),
                calib_dataloader=batches,
                calib_steps=len(batches),
                input_shape=INPUT_SHAPE,
                inputs=[torch.from_numpy(self.inputs.vectors_x[:1])],
                target=TARGET,
                num_of_bits=spec.bits,
                collate_fn=lambda b: b.to("cpu"),
                setting=setting,
                device="cpu",
                error_report=False,
                export_config=True,
                export_test_values=True,
                test_output_names=list(self.inputs.output_names),
                verbose=0,  # no metadata_props: attempts are shared between specs (int8 and mixed)
            )
        seconds = time.perf_counter() - start
        from esp_ppq.executor import TorchExecutor

        q = run_graph(TorchExecutor(graph=graph, device="cpu"), x[:MEASURE_IMAGES])
        # against the float graph this attempt quantizes (after the ReLU6 swap): the quantization error proper
        f = self.inputs.float_outputs("calib", self.prepared(spec)[0])[:MEASURE_IMAGES]
        attempt = Attempt(observer, tuple(sorted(int16_ops)), per_layer, folder, graph, noise_signal(q, f), cosine(q, f),
                          seconds, pairs)
        self._attempts[key] = attempt
        return attempt

    # -- stage 2: activation calibration by measurement
    def choose_calibration(self, spec: VariantSpec) -> tuple[Attempt, dict]:
        tried = []
        for observer in spec.calibration.candidates:
            a = self.quantize(spec, observer)
            tried.append({"algorithm": observer, "noise_signal": a.noise_signal, "cosine": a.cosine})
            progress(f"  [{spec.name}] calibration {observer:<10} output noise/signal {a.noise_signal:.3e}  ({a.seconds:.1f} s)")
        best = min(tried, key=lambda t: (t["noise_signal"], spec.calibration.candidates.index(t["algorithm"])))
        record = {
            "chosen": best["algorithm"],
            "criterion": "lowest graph-output noise/signal power vs float on the calibration set",
            "images": int(len(self.inputs.calib_x)),
            "measured_on": f"first {min(MEASURE_IMAGES, len(self.inputs.calib_x))} calibration images",
            "batch": calibration_batch(spec, len(self.inputs.calib_x)),
            "candidates": tried,
            "int16_layers": "minmax (per layer)",
        }
        chosen = self.quantize(spec, best["algorithm"])
        if spec.calibration.per_layer_groups:
            chosen, record["per_layer"] = self.per_layer_calibration(spec, chosen)
        return chosen, record

    def per_layer_calibration(self, spec: VariantSpec, base: Attempt) -> tuple[Attempt, dict]:
        """Greedy, bounded: for each of the most sensitive layer groups, try every other candidate observer on
        that group's ops; keep it where the graph-output error falls."""
        current, tried = base, []
        for top in self.ranking(base, spec.analysis_images)[: spec.calibration.per_layer_groups]:
            for observer in spec.calibration.candidates:
                if observer == base.observer:
                    continue
                overrides = dict(current.per_layer) | {op: observer for op in top["ops"]}
                trial = self.quantize(spec, base.observer, base.int16_ops, tuple(overrides.items()))
                kept = trial.noise_signal < current.noise_signal
                tried.append({"group": top["group"], "observer": observer, "noise_signal": trial.noise_signal,
                              "kept": kept})
                progress(f"  [{spec.name}] per-layer {observer:<10} on {top['group']}: output noise/signal "
                         f"{trial.noise_signal:.3e}{'  kept' if kept else ''}  ({trial.seconds:.1f} s)")
                if kept:
                    current = trial
        return current, {"groups": spec.calibration.per_layer_groups, "tried": tried,
                         "overrides": [{"op": op, "observer": obs} for op, obs in current.per_layer],
                         "noise_signal_before": base.noise_signal, "noise_signal_after": current.noise_signal}

    # -- grouped sensitivity of an attempt (memoised: int8's ranking is mixed's starting point)
    def ranking(self, attempt: Attempt, images: int) -> list[dict]:
        """Grouped ranking on the first `images` calibration images (the spec's `analysis_images`)."""
        if attempt.ranking is None or attempt.ranking[0] != images:
            attempt.ranking = (images, rank(attempt.graph, self.inputs.calib_x[:images]))
        return attempt.ranking[1]

    # -- stage 3: greedy grouped 16-bit promotion, then the smallest promotion that meets the target
    def search_int16(self, spec: VariantSpec, base: Attempt) -> tuple[Attempt, dict]:
        """Walk the base ranking (one group quantized at a time, so it does not depend on which other groups
        are 16-bit): promote each group, its consumers and, for an op joining several inputs (Add), every
        input's producer; re-quantize; keep the step only if the output error fell (the first step is always
        kept); stop at the target, the cap, or after `max_rejected_steps` rejected steps in a row.
        Every kept state is a point (output error, estimated latency, .espdl size); the result is the first
        (smallest) one that meets the error target within the latency cap, or, when none does, the one with the
        lowest error within the cap (the record says which)."""
        s = spec.sensitivity
        ranking = self.ranking(base, spec.analysis_images)
        all_groups = groups(base.graph)
        by_name = {g.name: g for g in all_groups}
        cap_us = None if s.max_latency_factor is None else s.max_latency_factor * estimated_latency_us(base)
        current, promoted, steps, rejected = base, [], [], 0
        points = [point(base, [])]
        stop = "every group promoted"
        for top in ranking:
            if set(top["ops"]) <= set(promoted):
                continue
            group = by_name[top["group"]]
            new = list(group.ops)
            if s.promote_consumers:
                for g in consumers(base.graph, group, all_groups):
                    new += list(g.ops)
            for g in join_inputs(base.graph, new, all_groups):
                new += list(g.ops)
            new = [n for n in dict.fromkeys(new) if n not in promoted]
            if promoted and len(promoted) + len(new) > s.max_int16_ops:
                stop = f"cap of {s.max_int16_ops} int16 ops"
                break
            trial = self.quantize(spec, base.observer, tuple(promoted + new), base.per_layer)
            accepted = not promoted or trial.noise_signal < current.noise_signal
            p = point(trial, promoted + new)
            steps.append({"group": top["group"], "group_noise_signal": top["noise_signal"], "promoted": new,
                          "noise_signal_after": trial.noise_signal, "latency_us": p["latency_us"],
                          "espdl_bytes": p["espdl_bytes"], "accepted": accepted})
            progress(f"  [{spec.name}] int16 <- {top['group']} (+{len(new)} ops)  output noise/signal "
                     f"{trial.noise_signal:.3e}, ~{p['latency_us'] / 1000:.1f} ms"
                     f"{'' if accepted else '  rejected (no better)'}  ({trial.seconds:.1f} s)")
            if not accepted:
                rejected += 1
                if rejected >= s.max_rejected_steps:
                    stop = f"{rejected} steps in a row did not lower the output error"
                    break
                continue
            rejected = 0
            promoted += new
            current = trial
            points.append(p)
            if current.noise_signal <= s.target_noise_signal:
                stop = f"target {s.target_noise_signal:g} reached"
                break
        chosen, choice = choose_promotion(points, s.target_noise_signal, cap_us)
        current = (self.quantize(spec, base.observer, tuple(chosen["int16_ops"]), base.per_layer)
                   if chosen["int16_ops"] else base)
        costs = group_costs(points)
        x = self.inputs.calib_x[:spec.analysis_images]
        initial_ranking = ranking
        record = {
            "method": s.method,
            "analysis": f"grouped (compute op + its Clip/Relu); one group quantized at a time vs the dequantized "
                        f"graph; first {len(x)} calibration images",
            "ranking": [{"group": r["group"], "ops": r["ops"], "noise_signal": r["noise_signal"]} for r in initial_ranking],
            "steps": steps,
            "stop": stop,
            "latency_cap_us": None if cap_us is None else round(cap_us),
            "latency_method": "quant.variants.latency per-operator model of the exported .espdl",
            "pareto": [{k: p[k] for k in ("int16_op_count", "noise_signal", "latency_us", "espdl_bytes")} for p in points],
            "choice": choice,
            "chosen_int16_op_count": len(chosen["int16_ops"]),
            "promotion_costs": costs,
            "noise_signal_before": base.noise_signal,
            "noise_signal_after": current.noise_signal,
            "cosine_before": base.cosine,
            "cosine_after": current.cosine,
        }
        return current, record

    # -- the pipeline
    def run(self, spec: VariantSpec) -> "Result":
        chosen, calibration = self.choose_calibration(spec)
        sensitivity = None
        if spec.sensitivity:
            chosen, sensitivity = self.search_int16(spec, chosen)
        equalization = None
        relu6 = self.prepared(spec)[1]
        if relu6 is not None:
            relu6["float_top1_after_swap"] = self.float_top1(self.prepared(spec)[0])
        if spec.equalization or relu6 is not None:
            equalization = {
                "relu6": relu6,
                "settings": None if spec.equalization is None else {
                    "iterations": spec.equalization.iterations,
                    "value_threshold": spec.equalization.value_threshold,
                    "opt_level": spec.equalization.opt_level,
                },
                "pairs": len(chosen.equalization_pairs),
                "noise_signal_without_equalization": None if spec.equalization is None else self.quantize(
                    dataclasses.replace(spec, equalization=None), chosen.observer, chosen.int16_ops,
                    chosen.per_layer).noise_signal,
                "noise_signal_with_equalization": chosen.noise_signal,
                "pair_list": chosen.equalization_pairs,
            }
        return Result(spec, chosen, calibration, sensitivity, equalization)

    def float_top1(self, model: bytes) -> float:
        """Held-out top-1 of a float ONNX model (e.g. after the ReLU6 swap), onnxruntime."""
        f = self.inputs.float_outputs("heldout", model)
        return float(np.mean(f.reshape(len(f), -1).argmax(1) == self.inputs.heldout_y))

    # -- metrics on the final graph
    def heldout_metrics(self, spec: VariantSpec, attempt: Attempt) -> dict:
        """Held-out quality against the committed float model (end to end) and against the float graph
        the variant quantizes (after a ReLU6 swap: the quantization error alone)."""
        from esp_ppq.executor import TorchExecutor

        q = run_graph(TorchExecutor(graph=attempt.graph, device="cpu"), self.inputs.heldout_x)
        f = self.inputs.float_outputs("heldout")
        own = self.inputs.float_outputs("heldout", self.prepared(spec)[0])
        y = self.inputs.heldout_y
        return {
            "heldout_images": int(len(y)),
            "float_top1": float(np.mean(f.reshape(len(f), -1).argmax(1) == y)),
            "top1": float(np.mean(q.reshape(len(q), -1).argmax(1) == y)),
            "output_noise_signal": noise_signal(q, f),
            "output_cosine": cosine(q, f),
            "quantization_noise_signal": noise_signal(q, own),
        }


@dataclass
class Result:
    spec: VariantSpec
    attempt: Attempt
    calibration: dict
    sensitivity: dict | None
    equalization: dict | None


def copy_outputs(result: Result, folder: Path, stem: str) -> None:
    """The chosen attempt's deployable files into the variant folder (esp-ppq's .json is not shipped:
    it holds object ids; quant.variants.build writes a clean one)."""
    shutil.copyfile(result.attempt.espdl, folder / f"{stem}.espdl")
    shutil.copyfile(result.attempt.graph_dump, folder / f"{stem}.graph.txt")
