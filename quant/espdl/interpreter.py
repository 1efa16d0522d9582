"""Execute an `.espdl` graph on the host in integer arithmetic, as ESP-DL 3.3.x does on the ESP32-S3.

Every semantic choice below was read from ESP-DL's sources (espressif/esp-dl, `esp-dl/dl/...`) and then
checked against esp-ppq's embedded test values (tests_host/test_single_ops.py). Summary (details and evidence
in docs/espdl-tools.md, 'ESP32-S3 arithmetic the interpreter reproduces'; values are quant.tensor.Tensor):

- Tensors: per-tensor power-of-two exponents, real = int * 2**exponent; activations NHWC; int8/int16 saturate.
- Rounding: half up everywhere on S3 (`dl_tool.cpp`: `round_half_up` = floor(x + 0.5), `shift_and_round_half_up`
  = (x + 2**(s-1)) >> s; the TIE728 kernels' `tie728_s8/s16_vector_round_result` shift by s-1, add 1, shift 1,
  which is the same value).
- Conv / Gemm: acc = sum(x * w) + bias (bias exponent = input + weight exponent), out = sat(relu?(round(acc >> s)))
  with s = out_exp - in_exp - w_exp (`dl_base.hpp` mac_shift). Bias is wrapped to 20 bits (int8, QACC lanes) or
  40 bits (int16) by `TensorBase::reset_bias_layout`; the lanes saturate, so an accumulator that leaves its
  width is clipped (and reported: the chip clips while summing, in kernel order, which may differ).
- Clip / Relu / Sigmoid / ...: int8 with a LUT initializer -> table[x + 128] (`dl_module_clip.hpp` etc. build a
  `LUT` module for int8 when the node has `lut`); otherwise the module's own arithmetic (clip raw ints, then
  rescale with round half up).
- Add / Concat / Transpose: raw integer copies/adds (exponents are not consulted by ESP-DL 3.3.9's
  `elemwise_add`, `Concat`, `transpose`); esp-ppq aligns those exponents at export. A mismatch is reported.
- RequantizeLinear / Reshape / Flatten: `TensorBase::assign`, i.e. sat(round_half_up(x * 2**(e_in - e_out))).
- GlobalAveragePool / AveragePool: ESP-DL 3.3.9 defines CONFIG_ACCURATE_INFER 1 unconditionally
  (`esp-dl/dl/dl_define_private.hpp:42`), so `load_avg_pool2d_hwc1_s8/_s16` (`dl_base_avg_pool2d.cpp:81-153`, `#if CONFIG_ACCURATE_INFER` at :86 and :124)
  pick only the C path `avgpool2d_hwc` (`dl_base_avg_pool2d.cpp:28-55`): the int32 sum over the window's valid
  cells times the float32 `scale = 2^e_in * (1.f / avg_pool_area) * 2^-e_out`, `tool::round` = round half up on
  S3 (`dl_tool.cpp:72-90`), saturated; `avg_pool_area` is the full kernel area, padding cells included
  (`dl_base_pool2d.hpp:132`). The fixed-point `2^e / n` of the TIE728 kernels (`avg_pool_shell`,
  `dl_base_pool2d.hpp:223-440`, under `#if !CONFIG_ACCURATE_INFER`) is compiled out; it stays available as
  `fixed_point_average=True` (an ESP-DL built without ACCURATE_INFER). `exact_average=True` is the PPQ
  simulator's float64 division (valid cells unless count_include_pad).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import as_strided

from quant.espdl.reader import EspdlModel, Node, StoredTensor
from quant.errors import UserError
from quant.tensor import Tensor

# operators with a float32 path (quant_type F32 nodes, float tensors in and out)
FLOAT_OPS = {"Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "HardSigmoid", "HardSwish", "Swish", "LeakyRelu",
             "Div", "Pow", "Mod", "Neg", "Elu", "PRelu", "Softmax", "LogSoftmax", "Pad", "Gather", "Split",
             "DepthToSpace", "SpaceToDepth", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceMax",
             "ReduceMin", "ReduceProd", "ReduceLogSum", "ReduceLogSumExp", "LayerNormalization",
             "ReverseSequence", "RMSNormalization", "LpNormalization", "RequantizeLinear", "QuantizeLinear",
             "DequantizeLinear", "ScatterND", "InsertZeros"}
RANGES = {"int8": (-128, 127), "int16": (-32768, 32767), "int32": (-(2**31), 2**31 - 1)}


@dataclass
class Note:
    """Something the chip does that the PPQ simulator may not (or an input ESP-DL would mishandle)."""

    node: str
    message: str


@dataclass
class RunResult:
    tensors: dict[str, Tensor]
    notes: list[Note] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- arithmetic
def saturate(x: np.ndarray, dtype: str) -> np.ndarray:
    lo, hi = RANGES[dtype]
    return np.clip(x, lo, hi).astype(dtype)


def shift_round(acc: np.ndarray, shift: int) -> np.ndarray:
    """ESP-DL `shift_and_round_half_up`: acc * 2**-shift rounded half up (a left shift when shift <= 0)."""
    acc = acc.astype(np.int64)
    if shift <= 0:
        return acc << -shift
    return (acc + (1 << (shift - 1))) >> shift


def round_half_up_float(x: np.ndarray) -> np.ndarray:
    """ESP-DL `tool::round(float)` on S3: (int)floorf(value + 0.5), value + 0.5 evaluated in double then
    narrowed to float by floorf's parameter."""
    v = (np.asarray(x, dtype=np.float32).astype(np.float64) + 0.5).astype(np.float32)
    return np.floor(v).astype(np.int64)


def rescale(x: np.ndarray, e_in: int, e_out: int) -> np.ndarray:
    """sat-free round_half_up(x * 2**(e_in - e_out)) as ESP-DL's float paths compute it (exact for ints)."""
    return round_half_up_float(x.astype(np.float32) * np.float32(2.0 ** (e_in - e_out)))


def wrap(x: np.ndarray, bits: int) -> np.ndarray:
    """Two's-complement wrap to `bits` (what loading a value into a narrower accumulator lane does)."""
    x = x.astype(np.int64)
    m = 1 << bits
    return ((x + (m >> 1)) % m) - (m >> 1)


def quantize_input(x: np.ndarray, exponent: int, dtype: str) -> np.ndarray:
    """`TensorBase::assign(float tensor)`: quantize<T>(x, DL_RESCALE(exp)) = clip(round(x * 2**-exp))."""
    prod = np.asarray(x, dtype=np.float32) * np.float32(2.0 ** (-exponent))
    return saturate(round_half_up_float(prod), dtype)


# ----------------------------------------------------------------------------------------------- layouts
def unpack_filter(t: StoredTensor, group: int | None, dtype: str) -> np.ndarray:
    """ESP-DL's packed Conv/Gemm filter -> [N, KH, KW, C/group] (undoes esp-ppq `reset_conv_filter_layout`).

    File dims are [KH, KW, C, N] (or [KH, KW, N, C] for depthwise; 1-D filters drop KH); data order is
    (N/a)HWC(a) for the first floor(N/a)*a output channels (a = 16 for int8, 8 for int16), then the remaining
    channels as NHWC (depthwise remainder as HWN). Older esp-ppq names the layout `N16HWC16`.
    """
    dims = tuple(t.dims)
    if len(dims) == 3:
        dims = (1,) + dims
    if len(dims) != 4:
        raise UserError(f"filter {t.name!r} has {len(t.dims)} dims; only 1-D and 2-D convolutions are supported")
    layout = t.layout or ""
    depthwise = group is not None and group > 1
    if depthwise:
        kh, kw, n, c = dims
    else:
        kh, kw, c, n = dims
    data = t.data.astype(np.int64)
    if layout in ("NHWC", "NWC"):  # the "C" targets' plain layout; not produced for esp32s3 but cheap to accept
        return data.reshape(n, kh, kw, c)
    m = re.fullmatch(r"(?:\(N/\d+\)|N\d+)H?WC(\d+)(_UNALIGNED)?", layout)
    if not m:
        raise UserError(f"filter {t.name!r} has layout {layout!r}; expected ESP32-S3's (N/16)HWC16 or (N/8)HWC8")
    align = int(m.group(1))
    aligned = n // align * align
    head = data[: aligned * kh * kw * c].reshape(n // align, kh, kw, c, align)
    head = head.transpose(0, 4, 1, 2, 3).reshape(aligned, kh, kw, c)
    if aligned == n:
        return head
    rest = data[aligned * kh * kw * c :]
    if depthwise:
        tail = rest.reshape(c, kh, kw, n - aligned).transpose(3, 1, 2, 0)
    else:
        tail = rest.reshape(n - aligned, kh, kw, c)
    return np.concatenate([head, tail], 0)


def _pads(node: Node, spatial: int = 2) -> list[int]:
    pads = node.attributes.get("pads") or [0] * (2 * spatial)
    return [int(p) for p in pads]


def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int) -> np.ndarray:
    """(H, W, C) padded input -> view (Ho, Wo, KH, KW, C)."""
    h, w, c = x.shape
    ho = (h - dh * (kh - 1) - 1) // sh + 1
    wo = (w - dw * (kw - 1) - 1) // sw + 1
    if ho <= 0 or wo <= 0:
        raise UserError(f"window {kh}x{kw} does not fit the {h}x{w} input")
    s0, s1, s2 = x.strides
    return as_strided(x, shape=(ho, wo, kh, kw, c), strides=(s0 * sh, s1 * sw, s0 * dh, s1 * dw, s2), writeable=False)


def _q(t) -> Tensor:
    """An operand as a Tensor (initializers arrive as reader.StoredTensor with flat data)."""
    return t.tensor() if isinstance(t, StoredTensor) else t


def _to_4d(data: np.ndarray) -> np.ndarray:
    if data.ndim == 4:
        return data
    if data.ndim == 3:  # 1-D op on [N, W, C]
        return data[:, None]
    raise UserError(f"expected a 3-D or 4-D activation, got shape {list(data.shape)}")


# ----------------------------------------------------------------------------------------------- interpreter
class Interpreter:
    """Runs an `EspdlModel`. `run(x)` accepts float input (quantized like ESP-DL's `assign`) or ints."""

    def __init__(self, model: EspdlModel, exact_average: bool = False, wide_accumulators: bool = False,
                 fixed_point_average: bool = False, node_hook=None):
        """`exact_average` divides average pools exactly and `wide_accumulators` lets Conv/Gemm sums exceed the
        S3's 20/40-bit lanes: both together are the PPQ simulator's arithmetic (the default is the chip's).
        `fixed_point_average` averages with the TIE728 kernels' fixed-point 2^e/n, which ESP-DL 3.3.9 compiles
        out (CONFIG_ACCURATE_INFER 1): it models an ESP-DL built without ACCURATE_INFER.
        `node_hook(node, outs) -> outs`, when given, sees every node's outputs before later nodes read them
        (fault injection: the virtual board's layer_fault)."""
        self.model = model
        self.node_hook = node_hook
        self.exact_average = exact_average
        self.fixed_point_average = fixed_point_average
        self.wide_accumulators = wide_accumulators
        self._prepared: dict[str, dict] = {}
        unsupported = sorted({n.op_type for n in model.nodes if not hasattr(self, f"_op_{n.op_type}")})
        if unsupported:
            raise UserError(
                f"operator(s) {', '.join(unsupported)} not supported by the host interpreter "
                f"(supported: {', '.join(supported_ops())})"
            )
        for node in model.nodes:
            if node.op_type in ("Conv", "Gemm"):
                self._prepared[node.name] = self._prepare_filter(node)

    # -- helpers
    def _init(self, name: str) -> StoredTensor | None:
        return self.model.initializers.get(name)

    def _out_meta(self, node: Node, i: int = 0) -> tuple[int, str]:
        vi = self.model.values.get(node.outputs[i])
        qt = node.attributes.get("quant_type", "S8")
        default = "int16" if qt == "S16" else "int8"
        if vi is None:
            raise UserError(f"value {node.outputs[i]!r} of node {node.name!r} has no exponent in the file")
        return vi.exponent, (vi.dtype if vi.dtype in RANGES else default)

    def _prepare_filter(self, node: Node) -> dict:
        wt = self._init(node.inputs[1])
        if wt is None:
            raise UserError(f"{node.op_type} {node.name!r}: weight {node.inputs[1]!r} is not an initializer")
        group = int(node.attributes.get("group", 1)) if node.op_type == "Conv" else 1
        qdtype = "int16" if node.attributes.get("quant_type") in ("S16", "W8A16") else "int8"
        w = unpack_filter(wt, group, qdtype)
        n = w.shape[0]
        # S3 int8: the first floor(N/16)*16 channels (all of a depthwise conv) accumulate in 20-bit QACC lanes,
        # the rest in the 40-bit ACCX (TensorBase::reset_bias_layout); int16 uses 40 bits throughout.
        lane_bits = np.full(n, 40, np.int64)
        if qdtype == "int8":
            lane_bits[: n if group > 1 else n // 16 * 16] = 20
        prep = dict(w=w, w_exp=wt.exponent, bias=None, bias_note=None, lane_bits=lane_bits,
                    wmat=w.reshape(n, -1).T.astype(np.float64))
        if len(node.inputs) > 2 and node.inputs[2] and self._init(node.inputs[2]) is not None:
            bt = self._init(node.inputs[2])
            raw = bt.data.astype(np.int64)
            prep["bias"] = np.where(lane_bits == 20, wrap(raw, 20), wrap(raw, 40))
            if not np.array_equal(prep["bias"], raw):
                prep["bias_note"] = f"bias {bt.name} exceeds its accumulator width and wraps on the chip"
        return prep

    def run(self, x, return_all: bool = False) -> dict[str, Tensor]:
        """Run the graph on one input. Returns {value name: Tensor} for the outputs (or every value)."""
        tensors = self.run_full(x).tensors
        if return_all:
            return tensors
        return {o.name: tensors[o.name] for o in self.model.outputs}

    def quantize(self, x) -> Tensor:
        vi = self.model.inputs[0]
        dtype = vi.dtype if vi.dtype in RANGES else "int8"
        shape = tuple(vi.shape or ())
        if isinstance(x, Tensor):
            q = x
        else:
            arr = np.asarray(x)
            if np.issubdtype(arr.dtype, np.integer):
                q = Tensor(saturate(arr, dtype), vi.exponent, dtype)
            else:
                if arr.ndim == 4 and shape and arr.shape != shape and arr.transpose(0, 2, 3, 1).shape == shape:
                    arr = arr.transpose(0, 2, 3, 1)  # NCHW float (the model's ONNX input) -> NHWC
                q = Tensor(quantize_input(arr, vi.exponent, dtype), vi.exponent, dtype)
        if shape and q.data.shape != shape:
            if q.data.size != int(np.prod(shape)):
                raise UserError(f"input has shape {list(q.data.shape)}; the model expects {list(shape)} (NHWC)")
            q = Tensor(q.data.reshape(shape), q.exponent, q.dtype)
        return q

    def run_full(self, x) -> RunResult:
        if len(self.model.inputs) != 1:
            raise UserError("models with several inputs are not supported by run(); use run_named()")
        return self.run_named({self.model.inputs[0].name: self.quantize(x)})

    def run_named(self, inputs: dict[str, Tensor]) -> RunResult:
        env: dict[str, Tensor] = dict(inputs)
        result = RunResult(env)
        for node in self.model.nodes:
            args = []
            for name in node.inputs:
                if not name:
                    args.append(None)
                elif name in env:
                    args.append(env[name])
                elif name in self.model.initializers:
                    args.append(self.model.initializers[name])
                else:
                    raise UserError(f"node {node.name!r} reads {name!r}, which no earlier node produced")
            if node.op_type not in FLOAT_OPS and (self._is_float(node) or any(
                    isinstance(a, Tensor) and a.dtype == "float32" for a in args)):
                raise UserError(f"{node.op_type} {node.name!r} runs in float32 (quant_type F32), which the host "
                                f"interpreter supports only for {', '.join(sorted(FLOAT_OPS))}")
            try:
                outs = getattr(self, f"_op_{node.op_type}")(node, args, result.notes)
            except UserError:
                raise
            except Exception as exc:
                raise UserError(f"{node.op_type} {node.name!r} failed on the host: {exc}") from exc
            if self.node_hook is not None:
                outs = self.node_hook(node, outs)
            for name, value in zip(node.outputs, outs):
                env[name] = value
        return result

    # -- operators (each returns a list of Tensor, one per output)
    def _conv_acc(self, node: Node, x: np.ndarray, prep: dict) -> np.ndarray:
        w = prep["w"]
        n, kh, kw, cg = w.shape
        strides = list(node.attributes.get("strides", [1, 1]))
        dil = list(node.attributes.get("dilations", [1, 1]))
        group = int(node.attributes.get("group", 1))
        pads = _pads(node, len(strides))
        if len(strides) == 1:  # 1-D: [N, W, C] seen as [N, 1, W, C]
            strides, dil, pads = [1] + strides, [1] + dil, [0, pads[0], 0, pads[1]]
        top, left, bottom, right = pads
        xp = np.pad(x[0], ((top, bottom), (left, right), (0, 0)))
        win = _windows(xp, kh, kw, strides[0], strides[1], dil[0], dil[1])
        ho, wo = win.shape[:2]
        c = x.shape[-1]
        if group == 1:
            cols = win.reshape(ho * wo, kh * kw * c).astype(np.float64)
            acc = np.rint(cols @ prep["wmat"]).astype(np.int64).reshape(ho, wo, n)
        elif group == c and cg == 1 and n == c:  # depthwise
            acc = np.zeros((ho, wo, c), np.int64)
            for i in range(kh):
                for j in range(kw):
                    acc += win[:, :, i, j, :].astype(np.int64) * w[:, i, j, 0]
        else:
            ng = n // group
            parts = []
            for g in range(group):
                cols = win[..., g * cg : (g + 1) * cg].reshape(ho * wo, kh * kw * cg).astype(np.float64)
                wg = w[g * ng : (g + 1) * ng].reshape(ng, -1).T.astype(np.float64)
                parts.append(np.rint(cols @ wg).astype(np.int64).reshape(ho, wo, ng))
            acc = np.concatenate(parts, -1)
        return acc[None]

    def _finish_mac(self, node, acc, x_exp, prep, notes) -> Tensor:
        out_exp, out_dtype = self._out_meta(node)
        if prep["bias"] is not None:
            acc = acc + prep["bias"]
            if prep["bias_note"]:
                notes.append(Note(node.name, prep["bias_note"]))
        flat = acc.reshape(-1, acc.shape[-1])
        half = np.int64(1) << (prep["lane_bits"] - 1)
        over = (flat.max(axis=0) > half - 1) | (flat.min(axis=0) < -half) if acc.size else np.zeros(0, bool)
        if over.any():  # the S3's QACC/ACCX lanes saturate (esp-dl tools/agents/skills/esp32s3-pie-simd)
            peak = np.abs(flat).max(axis=0)
            ch = int(np.argmax(np.where(over, peak, -1)))
            notes.append(Note(node.name, f"accumulator reaches {int(peak[ch])} on channel {ch}, beyond its "
                                         f"{int(prep['lane_bits'][ch])}-bit ESP32-S3 lane, which saturates "
                                         f"(the interpreter clips the final sum; the chip clips while summing)"))
            if not self.wide_accumulators:
                acc = np.clip(acc, -half, half - 1)
        shift = out_exp - x_exp - prep["w_exp"]
        if shift < 0:
            notes.append(Note(node.name, f"negative mac_shift {shift}: esp-ppq warns ESP-DL mis-computes this"))
        y = shift_round(acc, shift)
        if node.attributes.get("activation", "Linear") == "Relu":
            y = np.maximum(y, 0)
        elif node.attributes.get("activation", "Linear") not in ("Linear", None):
            raise UserError(f"{node.op_type} {node.name!r}: fused activation {node.attributes['activation']!r} unsupported")
        return Tensor(saturate(y, out_dtype), out_exp, out_dtype)

    def _op_Conv(self, node, args, notes):
        x = args[0]
        prep = self._prepared[node.name]
        squeeze = x.data.ndim == 3
        acc = self._conv_acc(node, _to_4d(x.data).astype(np.int64), prep)
        out = self._finish_mac(node, acc, x.exponent, prep, notes)
        if squeeze:
            out = out.replace(data=out.data[:, 0])
        return [out]

    def _op_Gemm(self, node, args, notes):
        x = args[0]
        prep = self._prepared[node.name]
        if node.attributes.get("transA", 0):
            raise UserError(f"Gemm {node.name!r}: transA=1 is not supported by ESP-DL")
        flat = x.data.reshape(-1, x.data.shape[-1]).astype(np.float64)
        acc = np.rint(flat @ prep["wmat"]).astype(np.int64)
        out = self._finish_mac(node, acc, x.exponent, prep, notes)
        out = out.replace(data=out.data.reshape(*x.data.shape[:-1], -1))
        return [out]

    def _lut(self, node, x: Tensor) -> Tensor | None:
        name = node.attributes.get("lut")
        if not name or node.attributes.get("quant_type") != "S8":
            return None
        table = self._init(name)
        if table is None:
            raise UserError(f"{node.op_type} {node.name!r}: LUT {name!r} missing from the initializers")
        out_exp, out_dtype = self._out_meta(node)
        idx = x.data.astype(np.int64) + 128
        return Tensor(table.data.astype(np.int64)[idx].astype(out_dtype), table.exponent, out_dtype)

    def _op_LUT(self, node, args, notes):
        x = args[0]
        out_exp, out_dtype = self._out_meta(node)
        table = self._init(node.attributes.get("lut", ""))
        if table is None:
            raise UserError(f"LUT {node.name!r} has no table")
        t = table.data.astype(np.int64)
        if out_dtype == "int8":
            idx = x.data.astype(np.int64) + 128
        else:
            step = 65536 // (t.size - 1)
            shift = step.bit_length() - 1
            v = x.data.astype(np.int64) + 32768
            idx = v if shift == 0 else (v >> shift) + ((v & ((1 << shift) - 1)) >= (1 << (shift - 1)))
        return [Tensor(t[idx].astype(out_dtype), table.exponent, out_dtype)]

    def _op_Clip(self, node, args, notes):
        x = args[0]
        via_lut = self._lut(node, x)
        if via_lut is not None:
            return [via_lut]
        out_exp, out_dtype = self._out_meta(node)
        lo, hi = RANGES[x.dtype]
        if len(args) > 1 and args[1] is not None:
            lo = int(args[1].data.reshape(-1)[0])
        if len(args) > 2 and args[2] is not None:
            hi = int(args[2].data.reshape(-1)[0])
        y = np.clip(x.data.astype(np.int64), lo, hi)
        return [Tensor(saturate(rescale(y, x.exponent, out_exp), out_dtype), out_exp, out_dtype)]

    def _op_Relu(self, node, args, notes):
        x = args[0]
        via_lut = self._lut(node, x)
        if via_lut is not None:
            return [via_lut]
        out_exp, out_dtype = self._out_meta(node)
        y = np.maximum(x.data.astype(np.int64), 0)
        if out_exp != x.exponent:
            y = rescale(y, x.exponent, out_exp)
        return [Tensor(saturate(y, out_dtype), out_exp, out_dtype)]

    def _is_float(self, node: Node, i: int = 0) -> bool:
        """A float32 node (esp-ppq quant_type F32, e.g. Log/Sqrt): ESP-DL runs it in float32 on float tensors."""
        vi = self.model.values.get(node.outputs[i])
        return node.attributes.get("quant_type") == "F32" or (vi is not None and vi.dtype == "float32")

    def _float_activation(self, node, args, fn):
        x = args[0]
        if self._is_float(node):  # dl_module_log.hpp / dl_module_sqrt.hpp ...: the float branch, fn in float32
            real = x.data.astype(np.float32) if x.dtype == "float32" else (
                x.data.astype(np.float32) * np.float32(2.0**x.exponent))
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                y = fn(real).astype(np.float32)
            return [Tensor(y, self._out_meta(node)[0], "float32")]
        via_lut = self._lut(node, x)
        if via_lut is not None:
            return [via_lut]
        out_exp, out_dtype = self._out_meta(node)
        real = x.data.astype(np.float32) * np.float32(2.0**x.exponent)
        y = fn(real.astype(np.float32)).astype(np.float32) * np.float32(2.0 ** (-out_exp))
        return [Tensor(saturate(round_half_up_float(y), out_dtype), out_exp, out_dtype)]

    def _op_Sigmoid(self, node, args, notes):
        return self._float_activation(node, args, _sigmoid)

    def _op_Tanh(self, node, args, notes):  # dl_math.hpp: tanh(x) = 2 * sigmoid(2x) - 1
        return self._float_activation(node, args, lambda v: 2 * _sigmoid(2 * v) - 1)

    def _op_Exp(self, node, args, notes):
        return self._float_activation(node, args, np.exp)

    def _op_Log(self, node, args, notes):
        return self._float_activation(node, args, np.log)

    def _op_Sqrt(self, node, args, notes):
        return self._float_activation(node, args, np.sqrt)

    _op_Gelu = _op_LUT  # ESP-DL registers Gelu as a LUT module (int8 and int16)

    def _op_HardSigmoid(self, node, args, notes):
        a, b = node.attributes.get("alpha", 0.2), node.attributes.get("beta", 0.5)
        return self._float_activation(node, args, lambda v: np.clip(a * v + b, 0, 1))

    def _op_HardSwish(self, node, args, notes):
        return self._float_activation(node, args, lambda v: v * np.clip(v / 6 + 0.5, 0, 1))

    def _op_Swish(self, node, args, notes):
        return self._float_activation(node, args, lambda v: v / (1.0 + np.exp(-v)))

    def _op_LeakyRelu(self, node, args, notes):
        a = node.attributes.get("alpha", 0.01)
        return self._float_activation(node, args, lambda v: np.where(v >= 0, v, a * v))

    def _same_exponents(self, node, tensors, out_exp, notes, what):
        exps = {t.exponent for t in tensors}
        if exps != {out_exp}:
            notes.append(Note(node.name, f"{what} with exponents {sorted(exps)} -> {out_exp}: ESP-DL uses raw ints"))

    def _op_Add(self, node, args, notes):
        a, b = _q(args[0]), _q(args[1])
        out_exp, out_dtype = self._out_meta(node)
        self._same_exponents(node, [a, b], out_exp, notes, "Add")
        y = a.data.astype(np.int64) + b.data.astype(np.int64)
        return [Tensor(saturate(y, out_dtype), out_exp, out_dtype)]

    def _op_Sub(self, node, args, notes):
        a, b = _q(args[0]), _q(args[1])
        out_exp, out_dtype = self._out_meta(node)
        self._same_exponents(node, [a, b], out_exp, notes, "Sub")
        y = a.data.astype(np.int64) - b.data.astype(np.int64)
        return [Tensor(saturate(y, out_dtype), out_exp, out_dtype)]

    def _op_Mul(self, node, args, notes):
        a, b = _q(args[0]), _q(args[1])
        out_exp, out_dtype = self._out_meta(node)
        y = shift_round(a.data.astype(np.int64) * b.data.astype(np.int64), out_exp - a.exponent - b.exponent)
        return [Tensor(saturate(y, out_dtype), out_exp, out_dtype)]

    def _op_Concat(self, node, args, notes):
        out_exp, out_dtype = self._out_meta(node)
        args = [_q(t) for t in args]
        self._same_exponents(node, args, out_exp, notes, "Concat")
        axis = int(node.attributes.get("axis", -1))
        y = np.concatenate([t.data for t in args], axis=axis)
        return [Tensor(y.astype(out_dtype), out_exp, out_dtype)]

    def _assign(self, node, x: Tensor, data: np.ndarray) -> Tensor:
        """`TensorBase::assign`: copy, or re-quantize when exponent or dtype differ."""
        out_exp, out_dtype = self._out_meta(node)
        if out_exp == x.exponent:
            return Tensor(saturate(data, out_dtype), out_exp, out_dtype)
        return Tensor(saturate(rescale(data.astype(np.int64), x.exponent, out_exp), out_dtype), out_exp, out_dtype)

    def _op_RequantizeLinear(self, node, args, notes):
        """Registered for Requantize/Quantize/DequantizeLinear (dl_module_creator.hpp:154-155): `output->assign`
        (dl_tensor_base.cpp:223-320): to float32 x * DL_SCALE(e_in); from float32 quantize<T>(x, DL_RESCALE(e_out))."""
        x = args[0]
        vi = self.model.values.get(node.outputs[0])
        if vi is not None and vi.dtype == "float32":
            if x.dtype == "float32":
                return [Tensor(x.data.astype(np.float32), vi.exponent, "float32")]
            return [Tensor(x.data.astype(np.float32) * np.float32(_scale(x.exponent)), vi.exponent, "float32")]
        if x.dtype == "float32":
            out_exp, out_dtype = self._out_meta(node)
            return [Tensor(quantize_input(x.data, out_exp, out_dtype), out_exp, out_dtype)]
        return [self._assign(node, x, x.data)]

    _op_QuantizeLinear = _op_RequantizeLinear
    _op_DequantizeLinear = _op_RequantizeLinear

    def _op_Identity(self, node, args, notes):
        return [self._assign(node, args[0], args[0].data)]

    def _op_Reshape(self, node, args, notes):
        x = args[0]
        vi = self.model.values.get(node.outputs[0])
        shape = list(args[1].data.astype(np.int64)) if len(args) > 1 and isinstance(args[1], StoredTensor) else None
        if vi is not None and vi.shape and all(d > 0 for d in vi.shape):
            shape = list(vi.shape)
        if shape is None:
            raise UserError(f"Reshape {node.name!r}: target shape unknown")
        shape = [x.data.shape[i] if d == 0 else int(d) for i, d in enumerate(shape)]
        return [self._assign(node, x, x.data.reshape(shape))]

    def _op_Flatten(self, node, args, notes):
        x = args[0]
        axis = int(node.attributes.get("axis", 1))
        axis = axis if axis >= 0 else x.data.ndim + axis
        lead = int(np.prod(x.data.shape[:axis])) if axis else 1
        return [self._assign(node, x, x.data.reshape(lead, -1))]

    def _op_Slice(self, node, args, notes):
        x = args[0]
        def ints(i, default=None):
            if len(args) > i and args[i] is not None:
                return [int(v) for v in np.asarray(args[i].data).reshape(-1)]
            return node.attributes.get(("starts", "ends", "axes", "steps")[i - 1], default)
        starts, ends = ints(1), ints(2)
        axes = ints(3, list(range(len(starts))))
        steps = ints(4, [1] * len(starts))
        index = [slice(None)] * x.data.ndim
        for a, b, e, st in zip(axes, starts, ends, steps):
            index[a] = slice(b, e, st)
        return [self._assign(node, x, x.data[tuple(index)])]

    def _op_Squeeze(self, node, args, notes):
        return self._op_Reshape(node, args[:1], notes)

    _op_Unsqueeze = _op_Squeeze

    def _op_Transpose(self, node, args, notes):
        x = args[0]
        out_exp, out_dtype = self._out_meta(node)
        self._same_exponents(node, [x], out_exp, notes, "Transpose")
        perm = node.attributes.get("perm") or list(range(x.data.ndim))[::-1]
        return [Tensor(np.transpose(x.data, perm).astype(out_dtype), out_exp, out_dtype)]

    def _pool_geometry(self, node, x, kernel=None):
        data = _to_4d(x.data)
        kshape = kernel or node.attributes.get("kernel_shape")
        if len(kshape) == 1:
            kshape = [1, kshape[0]]
        strides = node.attributes.get("strides") or [1] * len(kshape)
        if len(strides) == 1:
            strides = [1, strides[0]]
        pads = [0, 0, 0, 0] if kernel else _pads(node, len(node.attributes.get("kernel_shape")))
        if len(pads) == 2:
            pads = [0, pads[0], 0, pads[1]]
        if node.attributes.get("ceil_mode", 0):
            raise UserError(f"{node.op_type} {node.name!r}: ceil_mode=1 is not supported")
        return data, kshape, strides, pads

    def _op_MaxPool(self, node, args, notes):
        x = args[0]
        out_exp, out_dtype = self._out_meta(node)
        data, (kh, kw), (sh, sw), (t, l, b, r) = self._pool_geometry(node, x)
        lo = RANGES[x.dtype][0]
        xp = np.pad(data[0].astype(np.int64), ((t, b), (l, r), (0, 0)), constant_values=lo - 1)
        y = _windows(xp, kh, kw, sh, sw, 1, 1).max(axis=(2, 3))
        self._same_exponents(node, [x], out_exp, notes, "MaxPool")
        out = y[None].astype(out_dtype)
        return [Tensor(out if x.data.ndim == 4 else out[:, 0], out_exp, out_dtype)]

    def _average(self, node, x, kernel, notes) -> Tensor:
        out_exp, out_dtype = self._out_meta(node)
        data, (kh, kw), (sh, sw), (t, l, b, r) = self._pool_geometry(node, x, kernel)
        xp = np.pad(data[0].astype(np.int64), ((t, b), (l, r), (0, 0)))
        ones = np.pad(np.ones(data.shape[1:3] + (1,), np.int64), ((t, b), (l, r), (0, 0)))
        sums = _windows(xp, kh, kw, sh, sw, 1, 1).sum(axis=(2, 3))
        count = _windows(ones, kh, kw, sh, sw, 1, 1).sum(axis=(2, 3))  # valid cells (simulator; fixed-point branch)
        if self.exact_average:  # the simulator: torch avg_pool (zero padding counted if count_include_pad)
            if kernel is None and node.attributes.get("count_include_pad", 0):
                count = np.full_like(count, kh * kw)
            real = sums / count * 2.0 ** (x.exponent - out_exp)
            y = np.floor(real + 0.5).astype(np.int64)
        elif self.fixed_point_average:  # dl_base_pool2d.hpp avg_pool_shell, #if !CONFIG_ACCURATE_INFER
            y = np.empty_like(sums)
            maxv = 64 if x.dtype == "int8" else 16384
            for n in np.unique(count):
                e = 0
                while ((1 << (e + 1)) // n) < maxv:
                    e += 1
                inv = (1 << e) // n
                sel = np.broadcast_to(count == n, sums.shape)
                y[sel] = shift_round(sums[sel] * inv, out_exp + e - x.exponent)
                if inv * n != 1 << e:
                    notes.append(Note(node.name, f"ESP32-S3 averages {n} cells as sum * {inv} / 2^{e} "
                                                 f"(not exactly 1/{n}; ESP-DL without ACCURATE_INFER)"))
        else:  # ESP-DL 3.3.9 (ACCURATE_INFER): dl_base_avg_pool2d.cpp avgpool2d_hwc
            scale = np.float32(2.0**x.exponent) * (np.float32(1.0) / np.float32(kh * kw)) * np.float32(2.0**-out_exp)
            v = sums.astype(np.float32) * scale  # int32 buffer * float scale, in float32
            y = np.floor((v.astype(np.float64) + 0.5).astype(np.float32)).astype(np.int64)  # floorf(value + 0.5)
        out = saturate(y[None], out_dtype)
        return Tensor(out if x.data.ndim == 4 else out[:, 0], out_exp, out_dtype)

    def _op_ReduceMean(self, node, args, notes):
        """`dl_module_reduce_mean.hpp`: round(sum * 2^in / count * 2^-out), evaluated in float32."""
        x = args[0]
        out_exp, out_dtype = self._out_meta(node)
        axes = node.attributes.get("axes")
        if axes is None and len(args) > 1 and args[1] is not None:
            axes = [int(a) for a in np.asarray(args[1].data).reshape(-1)]
        axes = tuple(range(x.data.ndim)) if axes is None else tuple(a % x.data.ndim for a in axes)
        keep = bool(node.attributes.get("keepdims", 1))
        total = x.data.astype(np.int64).sum(axis=axes, keepdims=keep)
        count = int(np.prod([x.data.shape[a] for a in axes]))
        f = total.astype(np.float32) * np.float32(2.0**x.exponent)
        f = (f / np.float32(count)).astype(np.float32) * np.float32(2.0 ** (-out_exp))
        return [Tensor(saturate(round_half_up_float(f), out_dtype), out_exp, out_dtype)]

    def _op_AveragePool(self, node, args, notes):
        return [self._average(node, args[0], None, notes)]

    def _op_GlobalAveragePool(self, node, args, notes):
        data = _to_4d(args[0].data)
        return [self._average(node, args[0], list(data.shape[1:3]), notes)]


    # ------------------------------------------------------------------------------------- ESP-DL 3.3.9 operators
    # Element-wise binary operators share `get_elemwise_operation_args` (esp-dl/dl/base/dl_base_elemwise.cpp:38-185):
    # input0_scale = DL_SCALE(e0), input1_scale = DL_SCALE(e1), output_rescale = DL_RESCALE(e_out) (float32), and a
    # merge of the broadcast shapes whose innermost lengths (input0_d0 / input1_d0) pick the kernel variant
    # (n_n, n_1 = input1 scalar per row, 1_n = input0 scalar per row); the variants round differently.
    def _binary(self, node, args):
        a, b = _q(args[0]), _q(args[1])
        out_shape = np.broadcast_shapes(a.data.shape, b.data.shape)
        d0a, d0b = _elemwise_d0(a.data.shape, b.data.shape, out_shape)
        return a, b, out_shape, d0a, d0b

    def _float_binary(self, node, a, b, fn):
        fa = a.data.astype(np.float32) if a.dtype == "float32" else a.real().astype(np.float32)
        fb = b.data.astype(np.float32) if b.dtype == "float32" else b.real().astype(np.float32)
        with np.errstate(all="ignore"):
            y = fn(fa, fb).astype(np.float32)
        return [Tensor(y, self._out_meta(node)[0] if node.outputs[0] in self.model.values else 0, "float32")]

    def _op_Div(self, node, args, notes):
        """esp-dl/dl/base/dl_base_div.cpp: rescale = output_rescale * input0_scale / input1_scale (float32);
        n_n / 1_n: round(in0 * rescale / in1); n_1: round(in0 * (rescale / in1)); in0 == 0 -> 0, in1 == 0 -> the
        type's max/min by the sign of in0. int8 with a one-element operand uses a 256-entry LUT (create_div_lut):
        for a scalar dividend, 0 in the divisor gives 127 if the dividend is > 0 else -128 (even for 0 / 0).
        Float32: a / b (n_1: a * (1 / b))."""
        a, b, shape, d0a, d0b = self._binary(node, args)
        if self._is_float(node) or a.dtype == "float32":
            if d0b == 1:
                return self._float_binary(node, a, b, lambda x, y: x * (np.float32(1.0) / y).astype(np.float32))
            return self._float_binary(node, a, b, lambda x, y: x / y)
        out_exp, out_dtype = self._out_meta(node)
        lo, hi = RANGES[out_dtype]
        rescale = np.float32(_rescale(out_exp)) * np.float32(_scale(a.exponent)) / np.float32(_scale(b.exponent))
        x = np.broadcast_to(a.data.astype(np.int64), shape)
        y = np.broadcast_to(b.data.astype(np.int64), shape)
        xf, yf = x.astype(np.float32), y.astype(np.float32)
        int8 = a.dtype == "int8"
        lut = int8 and (a.data.size == 1 or b.data.size == 1)
        with np.errstate(all="ignore"):
            if (int8 and d0a == 1) or (not int8 and d0b != 1 and d0a == 1):  # 1_n (int8 checks input0_d0 first)
                v = (xf * rescale).astype(np.float32) / yf
                variant = "1_n"
            elif d0b == 1:  # n_1
                v = xf * (rescale / yf).astype(np.float32)
                variant = "n_1"
            else:
                v = (xf * rescale).astype(np.float32) / yf
                variant = "n_n"
            q = _round_sat(v, lo, hi)
        zero_div = np.where(x > 0, hi, lo)
        if lut and variant == "1_n" and a.data.size == 1:  # create_div_lut, input0_d0 == 1 branch
            out = np.where(y == 0, np.where(np.float32(a.data.reshape(-1)[0]) * rescale > 0, hi, lo), q)
        elif lut and variant == "n_1" and b.data.size == 1:  # create_div_lut, input1_d0 == 1 branch
            out = np.where(x == 0, 0, q)
        else:
            out = np.where(x == 0, 0, np.where(y == 0, zero_div, q))
        return [Tensor(out.astype(out_dtype), out_exp, out_dtype)]

    def _op_Pow(self, node, args, notes):
        """esp-dl/dl/base/dl_base_pow.cpp: round(powf(in0 * s0, in1 * s1) * output_rescale) in every variant."""
        a, b, shape, _, _ = self._binary(node, args)
        if self._is_float(node) or a.dtype == "float32":
            return self._float_binary(node, a, b, np.power)
        out_exp, out_dtype = self._out_meta(node)
        base = a.data.astype(np.float32) * np.float32(_scale(a.exponent))
        ex = b.data.astype(np.float32) * np.float32(_scale(b.exponent))
        with np.errstate(all="ignore"):
            v = np.power(base, ex).astype(np.float32) * np.float32(_rescale(out_exp))
        return [Tensor(_round_sat(v, *RANGES[out_dtype]).astype(out_dtype), out_exp, out_dtype)]

    def _op_Mod(self, node, args, notes):
        """esp-dl/dl/base/dl_base_mod.cpp: round(fmodf(in0 * s0, in1 * s1) * output_rescale), 0 where the divisor
        is 0 (C fmod: the sign follows the dividend)."""
        a, b, shape, _, _ = self._binary(node, args)
        fmod = lambda x, y: np.where(y != 0, np.fmod(x, np.where(y != 0, y, 1)), 0).astype(np.float32)
        if self._is_float(node) or a.dtype == "float32":
            return self._float_binary(node, a, b, fmod)
        out_exp, out_dtype = self._out_meta(node)
        x = a.data.astype(np.float32) * np.float32(_scale(a.exponent))
        y = b.data.astype(np.float32) * np.float32(_scale(b.exponent))
        v = fmod(x, y) * np.float32(_rescale(out_exp))
        return [Tensor(_round_sat(v, *RANGES[out_dtype]).astype(out_dtype), out_exp, out_dtype)]

    def _compare(self, node, args, notes, fn):
        """esp-dl/dl/base/dl_base_{greater,greaterorequal,less,lessorequal,equal}.cpp: the raw integers are
        compared (the exponents are not consulted; esp-ppq aligns them), output bool."""
        a, b = _q(args[0]), _q(args[1])
        if a.exponent != b.exponent and a.dtype != "float32":
            notes.append(Note(node.name, f"{node.op_type} compares raw ints of exponents "
                                                   f"{a.exponent} and {b.exponent}"))
        y = fn(a.data.astype(np.int64) if a.dtype != "float32" else a.data,
               b.data.astype(np.int64) if b.dtype != "float32" else b.data)
        return [Tensor(y.astype(bool), 0, "bool")]

    def _op_Greater(self, node, args, notes):
        return self._compare(node, args, notes, np.greater)

    def _op_GreaterOrEqual(self, node, args, notes):
        return self._compare(node, args, notes, np.greater_equal)

    def _op_Less(self, node, args, notes):
        return self._compare(node, args, notes, np.less)

    def _op_LessOrEqual(self, node, args, notes):
        return self._compare(node, args, notes, np.less_equal)

    def _op_Equal(self, node, args, notes):
        return self._compare(node, args, notes, np.equal)

    def _op_Neg(self, node, args, notes):
        """esp-dl/dl/module/include/dl_module_neg.hpp: -x on the raw ints, INT_MIN -> INT_MAX; float: -x."""
        x = args[0]
        if x.dtype == "float32":
            return [Tensor(-x.data.astype(np.float32), x.exponent, "float32")]
        out_exp, out_dtype = self._out_meta(node)
        lo, hi = RANGES[x.dtype]
        d = x.data.astype(np.int64)
        return [Tensor(np.where(d == lo, hi, -d).astype(out_dtype), out_exp, out_dtype)]

    def _op_Elu(self, node, args, notes):
        """esp-dl/dl/module/include/dl_module_elu.hpp: t = x * s_in (float32); t >= 0: round(t * rescale_out),
        else round(alpha * (expf(t) - 1) * rescale_out)."""
        x = args[0]
        alpha = np.float32(node.attributes.get("alpha", 1.0))
        if x.dtype == "float32" or self._is_float(node):
            v = x.data.astype(np.float32) if x.dtype == "float32" else x.real().astype(np.float32)
            y = np.where(v < 0, alpha * (np.exp(v) - np.float32(1)), v).astype(np.float32)
            return [Tensor(y, 0, "float32")]
        out_exp, out_dtype = self._out_meta(node)
        t = x.data.astype(np.float32) * np.float32(_scale(x.exponent))
        r = np.float32(_rescale(out_exp))
        with np.errstate(over="ignore"):
            neg = (alpha * (np.exp(t).astype(np.float32) - np.float32(1))).astype(np.float32) * r
        v = np.where(t >= 0, t * r, neg)
        return [Tensor(_round_sat(v, *RANGES[out_dtype]).astype(out_dtype), out_exp, out_dtype)]

    def _op_PRelu(self, node, args, notes):
        """esp-dl/dl/base/isa/tie728/dl_tie728_s8_prelu.S (S3, int8 and int16 alike; args from
        dl_base.hpp get_activation_args): x < 0: sat(round_half_up(x * alpha >> (e_out - e_in - e_alpha)));
        x > 0: sat(round_half_up(x * output_scale >> output_shift)) with the e_out - e_in shift; x == 0: 0."""
        x, alpha = args[0], _q(args[1])
        out_exp, out_dtype = self._out_meta(node)
        # alpha broadcasts as stored: [C] (NHWC, channels last) or [C, 1, 1] (a graph esp-ppq left in NCHW)
        if x.dtype == "float32":
            a = alpha.data.astype(np.float32)
            a = a.reshape(-1)[0] if a.size == 1 else a
            return [Tensor(np.where(x.data >= 0, x.data, x.data * a).astype(np.float32), x.exponent, "float32")]
        d = x.data.astype(np.int64)
        a = alpha.data.astype(np.int64)
        a = a.reshape(-1)[0] if a.size == 1 else a
        neg = saturate(shift_round(d * a, out_exp - x.exponent - alpha.exponent), out_dtype)
        shift = out_exp - x.exponent
        pos = saturate(shift_round(d, shift), out_dtype)
        return [Tensor(np.where(d < 0, neg, np.where(d > 0, pos, 0)).astype(out_dtype), out_exp, out_dtype)]

    def _softmax_float(self, v: np.ndarray, axis: int, log: bool) -> np.ndarray:
        """dl_module_softmax.hpp / dl_module_log_softmax.hpp forward_float: per slice, max, sequential float32
        sum of expf(x - max), then e / sum (log: x - max - logf(sum))."""
        v = np.moveaxis(v.astype(np.float32), axis, -1)
        m = v.max(axis=-1, keepdims=True)
        e = np.exp(v - m).astype(np.float32)
        s = _seq_sum(e)
        if log:
            y = (v - m).astype(np.float32) - np.log(s).astype(np.float32)[..., None]
        else:
            y = e / s[..., None]
        return np.moveaxis(y.astype(np.float32), -1, axis)

    def _softmax(self, node, args, log: bool):
        x = args[0]
        axis = int(node.attributes.get("axis", -1)) % max(x.data.ndim, 1)
        if x.dtype == "int8":  # forward_lut: table = expf(s * (i - 128)) (dl_tool.cpp gen_lut_8bit), no max subtracted
            scale = np.float32(_scale(x.exponent))
            table = np.exp(scale * (np.arange(256, dtype=np.float32) - 128)).astype(np.float32)
            e = np.moveaxis(table[x.data.astype(np.int64) + 128], axis, -1)
            s = _seq_sum(e)
            if log:
                v = np.moveaxis(x.data, axis, -1).astype(np.float32) * scale
                y = v - np.log(s).astype(np.float32)[..., None]
            else:
                y = e / s[..., None]
            y = np.moveaxis(y.astype(np.float32), -1, axis)
        else:  # int16: x * s in float32, then forward_float; float32: forward_float
            v = x.data.astype(np.float32) if x.dtype == "float32" else (
                x.data.astype(np.float32) * np.float32(_scale(x.exponent)))
            y = self._softmax_float(v, axis, log)
        return [Tensor(y, 0, "float32")]

    def _op_Softmax(self, node, args, notes):
        """esp-dl/dl/module/include/dl_module_softmax.hpp: the output is float32 for int8, int16 and float."""
        return self._softmax(node, args, log=False)

    def _op_LogSoftmax(self, node, args, notes):
        """esp-dl/dl/module/include/dl_module_log_softmax.hpp: int8 x * s - logf(sum of the exp table), float32
        output; int16/float forward_float."""
        return self._softmax(node, args, log=True)

    def _op_Pad(self, node, args, notes):
        """esp-dl/dl/module/include/dl_module_pad.hpp + TensorBase::pad (dl_tensor_base.cpp:1225): raw copy of the
        input, modes constant (the constant initializer's raw value, 0 without), edge, reflect."""
        x = args[0]
        mode = node.attributes.get("mode", "constant")
        if isinstance(mode, bytes):
            mode = mode.decode()
        pads = [int(p) for p in np.asarray(_q(args[1]).data).reshape(-1)] if len(args) > 1 and args[1] is not None \
            else [int(p) for p in node.attributes.get("pads")]
        n = x.data.ndim
        width = [(pads[i], pads[i + n]) for i in range(n)]
        if mode == "constant":
            c = 0
            if len(args) > 2 and args[2] is not None:
                c = _q(args[2]).data.reshape(-1)[0]
            y = np.pad(x.data, width, mode="constant", constant_values=c)
        elif mode in ("edge", "reflect"):
            y = np.pad(x.data, width, mode=mode)
        else:
            raise UserError(f"Pad {node.name!r}: mode {mode!r} is not supported by ESP-DL (constant, edge, reflect)")
        if x.dtype == "float32":
            return [Tensor(y.astype(np.float32), x.exponent, "float32")]
        out_exp, out_dtype = self._out_meta(node)
        self._same_exponents(node, [x], out_exp, notes, "Pad")
        return [Tensor(y.astype(out_dtype), out_exp, out_dtype)]

    def _op_Gather(self, node, args, notes):
        """esp-dl/dl/module/include/dl_module_gather.hpp: copies input slices along `axis` for each index
        (negative indices count from the end)."""
        x, idx = args[0], _q(args[1])
        axis = int(node.attributes.get("axis", 0)) % x.data.ndim
        ind = np.asarray(idx.data).astype(np.int64)
        ind = np.where(ind < 0, ind + x.data.shape[axis], ind)
        y = np.take(x.data, ind, axis=axis)
        if x.dtype == "float32":
            return [Tensor(y, x.exponent, "float32")]
        out_exp, out_dtype = self._out_meta(node)
        return [Tensor(y.astype(out_dtype), out_exp, out_dtype)]

    def _op_Split(self, node, args, notes):
        """esp-dl/dl/module/include/dl_module_split.hpp: consecutive slices along `axis`, sized as the outputs."""
        x = args[0]
        axis = int(node.attributes.get("axis", 0)) % x.data.ndim
        outs, start = [], 0
        for i, name in enumerate(node.outputs):
            vi = self.model.values.get(name)
            if vi is not None and vi.shape:
                size = int(vi.shape[axis])
            else:
                split = node.attributes.get("split")
                if split is None and len(args) > 1 and args[1] is not None:
                    split = [int(v) for v in np.asarray(_q(args[1]).data).reshape(-1)]
                size = int(split[i]) if split else x.data.shape[axis] // len(node.outputs)
            part = np.take(x.data, np.arange(start, start + size), axis=axis)
            start += size
            if x.dtype == "float32":
                outs.append(Tensor(part, x.exponent, "float32"))
            else:
                out_exp, out_dtype = self._out_meta(node, i)
                outs.append(Tensor(part.astype(out_dtype), out_exp, out_dtype))
        return outs

    def _op_DepthToSpace(self, node, args, notes):
        """esp-dl/dl/module/include/dl_module_depth_to_space.hpp:24-71 (NHWC), ported index for index, including
        its DCR formula (out_c = c % blocksize, h += c / blocksize^2)."""
        x = args[0]
        bs = int(node.attributes.get("blocksize"))
        mode = node.attributes.get("mode", "DCR")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        n, h, w, c = x.data.shape
        oc = c // (bs * bs)
        out = np.zeros((n, h * bs, w * bs, oc), x.data.dtype).reshape(n, -1)
        cc = np.arange(c)
        hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        if mode == "CRD":
            o_c, o_h, o_w = cc // (bs * bs), (cc % (bs * bs)) // bs, cc % bs
        else:
            o_c, o_h, o_w = cc % bs, cc // (bs * bs), (cc % (bs * bs)) // bs
        idx = ((hh[..., None] * bs + o_h) * (w * bs * oc) + (ww[..., None] * bs + o_w) * oc + o_c).reshape(-1)
        for b in range(n):
            out[b, idx] = x.data[b].reshape(-1)
        out = out.reshape(n, h * bs, w * bs, oc)
        return [self._copy_out(node, x, out)]

    def _op_SpaceToDepth(self, node, args, notes):
        """esp-dl/dl/module/include/dl_module_space_to_depth.hpp:23-48 (NHWC): out channel = c * bs^2 + dh * bs + dw
        (channel-major, not ONNX's (dh * bs + dw) * C + c)."""
        x = args[0]
        bs = int(node.attributes.get("blocksize"))
        n, h, w, c = x.data.shape
        y = x.data.reshape(n, h // bs, bs, w // bs, bs, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, h // bs, w // bs, -1)
        return [self._copy_out(node, x, y)]

    def _copy_out(self, node, x, y):
        if x.dtype == "float32":
            return Tensor(y.astype(np.float32), x.exponent, "float32")
        out_exp, out_dtype = self._out_meta(node)
        return Tensor(y.astype(out_dtype), out_exp, out_dtype)

    # Reduce family (esp-dl/dl/module/include/dl_module_reduce_base.hpp + dl_module_reduce_<op>.hpp): the reduced
    # elements of each output are visited in row-major order; integer sums in int32 (int8) / int64 (int16).
    def _reduce_setup(self, node, args):
        x = args[0]
        axes = node.attributes.get("axes")
        if axes is None and len(args) > 1 and args[1] is not None:
            axes = [int(a) for a in np.asarray(_q(args[1]).data).reshape(-1)]
        nd = x.data.ndim
        if not axes:
            axes = list(range(nd)) if not node.attributes.get("noop_with_empty_axes", 0) else []
        axes = sorted({int(a) % nd for a in axes})
        keep = [i for i in range(nd) if i not in axes]
        moved = np.transpose(x.data, keep + axes)
        k = int(np.prod([x.data.shape[a] for a in axes])) if axes else 1
        flat = moved.reshape(-1, k)
        if node.attributes.get("keepdims", 1):
            oshape = tuple(1 if i in axes else x.data.shape[i] for i in range(nd))
        else:
            oshape = tuple(x.data.shape[i] for i in keep) or (1,)
        return x, flat, oshape

    def _reduce_int(self, node, args, kind):
        x, flat, oshape = self._reduce_setup(node, args)
        is_float = x.dtype == "float32"
        if is_float:
            f = flat.astype(np.float32)
            y = {"sum": lambda: _seq_sum(f), "l1": lambda: _seq_sum(np.abs(f)),
                 "sumsq": lambda: _seq_sum(f * f), "max": lambda: f.max(1), "min": lambda: f.min(1),
                 "l2": lambda: _sqrt_newton(_seq_sum(f * f)), "logsum": lambda: np.log(_seq_sum(f)),
                 "prod": lambda: _seq_prod(f), "logsumexp": lambda: np.log(_seq_sum(np.exp(f).astype(np.float32))),
                 }[kind]()
            return [Tensor(np.asarray(y, np.float32).reshape(oshape), x.exponent, "float32")]
        out_exp, out_dtype = self._out_meta(node)
        lo, hi = RANGES[out_dtype]
        d = flat.astype(np.int64)
        e_in = x.exponent
        if kind in ("max", "min"):  # raw ints, no rescale
            y = d.max(1) if kind == "max" else d.min(1)
        elif kind in ("sum", "l1"):  # shift_and_round(sum, e_out - e_in), truncate
            s = np.abs(d).sum(1) if kind == "l1" else d.sum(1)
            y = np.clip(shift_round(s, out_exp - e_in), lo, hi)
        elif kind == "sumsq":  # shift_and_round(sum x^2, e_out - 2 e_in)
            y = np.clip(shift_round((d * d).sum(1), out_exp - 2 * e_in), lo, hi)
        elif kind == "l2":  # round(sqrt_newton(sum x^2 * DL_SCALE(2 e_in)) * DL_RESCALE(e_out))
            s = (d * d).sum(1).astype(np.float32) * np.float32(_scale(2 * e_in))
            y = _round_sat(_sqrt_newton(s) * np.float32(_rescale(out_exp)), lo, hi)
        elif kind == "logsum":  # round(logf(sum * s_in) * rescale)
            s = d.sum(1).astype(np.float32) * np.float32(_scale(e_in))
            with np.errstate(all="ignore"):
                y = _round_sat(np.log(s).astype(np.float32) * np.float32(_rescale(out_exp)), lo, hi)
        elif kind == "prod":  # float (int8) / double (int16) product of x * s_in, round(p * rescale)
            v = d.astype(np.float32) * np.float32(_scale(e_in))
            p = _seq_prod(v, np.float32 if x.dtype == "int8" else np.float64)
            y = _round_sat(p * np.float32(_rescale(out_exp)), lo, hi)
        elif kind == "logsumexp":  # float32 sum of expf(x * s_in) (int8: gen_lut_8bit table), logf, round
            v = d.astype(np.float32) * np.float32(_scale(e_in))
            s = _seq_sum(np.exp(v).astype(np.float32))
            with np.errstate(all="ignore"):
                y = _round_sat(np.log(s).astype(np.float32) * np.float32(_rescale(out_exp)), lo, hi)
        else:
            raise AssertionError(kind)
        return [Tensor(np.asarray(y).reshape(oshape).astype(out_dtype), out_exp, out_dtype)]

    def _op_ReduceSum(self, node, args, notes):
        return self._reduce_int(node, args, "sum")

    def _op_ReduceL1(self, node, args, notes):
        return self._reduce_int(node, args, "l1")

    def _op_ReduceL2(self, node, args, notes):
        return self._reduce_int(node, args, "l2")

    def _op_ReduceSumSquare(self, node, args, notes):
        return self._reduce_int(node, args, "sumsq")

    def _op_ReduceMax(self, node, args, notes):
        return self._reduce_int(node, args, "max")

    def _op_ReduceMin(self, node, args, notes):
        return self._reduce_int(node, args, "min")

    def _op_ReduceProd(self, node, args, notes):
        return self._reduce_int(node, args, "prod")

    def _op_ReduceLogSum(self, node, args, notes):
        return self._reduce_int(node, args, "logsum")

    def _op_ReduceLogSumExp(self, node, args, notes):
        return self._reduce_int(node, args, "logsumexp")


    def _op_MatMul(self, node, args, notes):
        """esp-dl/dl/module/include/dl_module_matmul.hpp: runs as a 1x1 convolution with input1 as the filter
        (dl_base_conv2d: int accumulation, out = sat(round_half_up(acc >> (e_out - e0 - e1)))), numpy batching.
        A constant input1 (attribute input1_layout='packed', files without the attribute are packed too) is stored
        per [K, N] matrix as a 1x1 conv filter, (N/16)HWC16 / (N/8)HWC8 (esp-ppq export_patterns.py
        ResetParamLayoutPattern, MatMul branch)."""
        a = _q(args[0])
        if isinstance(args[1], StoredTensor) and node.attributes.get("input1_layout", "packed") == "packed":
            b = Tensor(_unpack_matmul_weight(args[1]), args[1].exponent, args[1].dtype)
        else:  # a graph value (native row-major KN) or an initializer marked native_kn
            b = _q(args[1])
        if a.dtype == "float32":
            raise UserError(f"MatMul {node.name!r}: ESP-DL 3.3.9 has no float32 MatMul (dl_module_matmul.hpp)")
        out_exp, out_dtype = self._out_meta(node)
        acc = np.matmul(a.data.astype(np.int64), b.data.astype(np.int64))
        y = shift_round(acc, out_exp - a.exponent - b.exponent)
        if node.attributes.get("activation", "Linear") == "Relu":
            y = np.maximum(y, 0)
        return [Tensor(saturate(y, out_dtype), out_exp, out_dtype)]

    def _op_Resize(self, node, args, notes):
        """esp-dl/dl/base/dl_base_resize.cpp + dl_base_resize.hpp (NWC/NHWC data, NCHW scales): nearest is
        'asymmetric' (in = min((int)(out * (1 / scale)), n - 1)), the value rescaled by round(x * output_scale /
        2^output_shift); linear is 'half_pixel' ('align_corners' when asked), computed in float32 on dequantized
        values and quantized with round half up. ESP-DL 3.3.9's resize<int16_t> is empty (:297-308), so int16 is
        refused."""
        x = args[0]
        if x.dtype != "int8":
            raise UserError(f"Resize {node.name!r}: ESP-DL 3.3.9 computes Resize only in int8 (resize<int16_t> in "
                            f"dl_base_resize.cpp has an empty body): quantize this node to int8")
        out_exp, out_dtype = self._out_meta(node)
        mode = node.attributes.get("mode", "nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        ctm = node.attributes.get("coordinate_transformation_mode", "half_pixel")
        ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
        align = ctm == "align_corners"
        vi = self.model.values.get(node.outputs[0])
        d = x.data
        squeeze = d.ndim == 3
        d4 = d[:, None] if squeeze else d
        n, ih, iw, c = d4.shape
        scales = None
        if len(args) > 2 and args[2] is not None and _q(args[2]).data.size:
            scales = [float(v) for v in np.asarray(_q(args[2]).data, np.float32).reshape(-1)]
        if vi is not None and vi.shape:
            oshape = list(vi.shape)
            oh, ow = (1, oshape[1]) if squeeze else (oshape[1], oshape[2])
        else:
            oh, ow = (1, int(iw * scales[2])) if squeeze else (int(ih * scales[2]), int(iw * scales[3]))
        if scales is None:  # sizes given: Resize::get_output_shape scales = out / in
            scales = [1.0, 1.0] + ([np.float32(ow) / np.float32(iw)] if squeeze else
                                   [np.float32(oh) / np.float32(ih), np.float32(ow) / np.float32(iw)])
        sh = np.float32(1.0) if squeeze else np.float32(scales[2])
        sw = np.float32(scales[2] if squeeze else scales[3])
        if mode != "nearest" and align:
            sw = np.float32(ow - 1) / np.float32(iw - 1)
            if not squeeze:
                sh = np.float32(oh - 1) / np.float32(ih - 1)
        sh_inv, sw_inv = np.float32(1) / sh, np.float32(1) / sw
        if mode == "nearest":
            shift = out_exp - x.exponent
            oscale = 1 << -shift if shift < 0 else 1
            shift = max(shift, 0)
            yi = np.minimum((np.arange(oh, dtype=np.float32) * sh_inv).astype(np.int64), ih - 1)
            xi = np.minimum((np.arange(ow, dtype=np.float32) * sw_inv).astype(np.int64), iw - 1)
            g = d4[:, yi][:, :, xi].astype(np.float32)
            y = _round_sat(g * np.float32(oscale) / np.float32(1 << shift), *RANGES[out_dtype])
        elif mode == "linear":
            def coeffs(n_out, n_in, inv):
                o = np.arange(n_out, dtype=np.float32)
                f = (o * inv) if align else ((o + np.float32(0.5)) * inv - np.float32(0.5))
                f = f.astype(np.float32)
                i0 = np.floor(f).astype(np.int64)
                f = (f - i0.astype(np.float32)).astype(np.float32)
                f = np.where(i0 < 0, np.float32(0), f)
                i0 = np.where(i0 < 0, 0, i0)
                over = i0 >= n_in - 1
                i0 = np.where(over, n_in - 2, i0)
                f = np.where(over, np.float32(1), f).astype(np.float32)
                return i0, (np.float32(1) - f).astype(np.float32), f
            s_in, r_out = np.float32(_scale(x.exponent)), np.float32(_rescale(out_exp))
            v = d4.astype(np.float32) * s_in
            x0, xr0, xr1 = coeffs(ow, iw, sw_inv)
            rows = (v[:, :, x0] * xr0[None, None, :, None]).astype(np.float32) + \
                (v[:, :, x0 + 1] * xr1[None, None, :, None]).astype(np.float32)
            rows = rows.astype(np.float32)
            if squeeze:
                out = rows
            else:
                y0, yr0, yr1 = coeffs(oh, ih, sh_inv)
                out = (rows[:, y0] * yr0[None, :, None, None]).astype(np.float32) + \
                    (rows[:, y0 + 1] * yr1[None, :, None, None]).astype(np.float32)
            y = _round_sat(out.astype(np.float32) * r_out, *RANGES[out_dtype])
        else:
            raise UserError(f"Resize {node.name!r}: mode {mode!r} is not supported by ESP-DL (nearest, linear)")
        y = y.astype(out_dtype)
        return [Tensor(y[:, 0] if squeeze else y, out_exp, out_dtype)]


    def _op_LayerNormalization(self, node, args, notes):
        """esp-dl/dl/module/include/dl_module_layer_normalization.hpp: per slice over the axes from `axis` on.
        Integers: mean = (double)(int sum) / n, variance = sequential float32 sum of (x - mean)^2 over the raw
        ints, times s_in^2 / n; inv_std = 1 / sqrt_newton(var + eps); y = round(((x*s_in - mean*s_in) * inv_std *
        (scale*s_scale) + bias*s_bias) * 2^-out). Float32: the same on floats (mean also a sequential sum)."""
        x = args[0]
        scale = _q(args[1]) if len(args) > 1 and args[1] is not None else None
        bias = _q(args[2]) if len(args) > 2 and args[2] is not None else None
        eps = np.float32(node.attributes.get("epsilon", 1e-5))
        axis = int(node.attributes.get("axis", -1)) % x.data.ndim
        outer = int(np.prod(x.data.shape[:axis]))
        flat = x.data.reshape(outer, -1)
        inner = flat.shape[1]
        is_float = x.dtype == "float32"
        sc = np.ones(inner, np.float32) if scale is None else (
            scale.data.astype(np.float32).reshape(-1) if scale.dtype == "float32" else
            scale.data.astype(np.float32).reshape(-1) * np.float32(_scale(scale.exponent)))
        bi = np.zeros(inner, np.float32) if bias is None else (
            bias.data.astype(np.float32).reshape(-1) if bias.dtype == "float32" else
            bias.data.astype(np.float32).reshape(-1) * np.float32(_scale(bias.exponent)))
        sc, bi = np.broadcast_to(sc, (inner,)), np.broadcast_to(bi, (inner,))
        if is_float:
            f = flat.astype(np.float32)
            mean = (_seq_sum(f) / np.float32(inner)).astype(np.float32)
            diff = (f - mean[:, None]).astype(np.float32)
            var = (_seq_sum((diff * diff).astype(np.float32)) / np.float32(inner)).astype(np.float32)
            inv = (np.float32(1) / _sqrt_newton((var + eps).astype(np.float32))).astype(np.float32)
            y = ((diff * inv[:, None]).astype(np.float32) * sc).astype(np.float32) + bi
            return [Tensor(y.astype(np.float32).reshape(x.data.shape), x.exponent, "float32")]
        out_exp, out_dtype = self._out_meta(node)
        s_in = np.float32(_scale(x.exponent))
        total = flat.astype(np.int64).sum(1)
        mean = (total.astype(np.float64) * 1.0 / inner).astype(np.float32)
        diff = (flat.astype(np.float32) - mean[:, None]).astype(np.float32)
        var = _seq_sum((diff * diff).astype(np.float32))
        mean_r = (mean * s_in).astype(np.float32)
        var = (var * (s_in * s_in)).astype(np.float32)
        var = (var / np.float32(inner)).astype(np.float32)
        inv = (np.float32(1) / _sqrt_newton((var + eps).astype(np.float32))).astype(np.float32)
        xv = (flat.astype(np.float32) * s_in).astype(np.float32)
        norm = ((xv - mean_r[:, None]).astype(np.float32) * inv[:, None]).astype(np.float32)
        res = ((norm * sc).astype(np.float32) + bi).astype(np.float32)
        y = _round_sat(res * np.float32(_rescale(out_exp)), *RANGES[out_dtype])
        outs = [Tensor(y.reshape(x.data.shape).astype(out_dtype), out_exp, out_dtype)]
        for i, (val, name) in enumerate(((mean, "mean"), (inv, "inv_std")), start=1):
            if len(node.outputs) > i and node.outputs[i]:
                e, dt = self._out_meta(node, i)
                v = (val * s_in * np.float32(_rescale(e))) if name == "mean" else (val * np.float32(_rescale(e)))
                vi = self.model.values.get(node.outputs[i])
                shp = tuple(vi.shape) if vi is not None and vi.shape else val.shape
                outs.append(Tensor(_round_sat(v, *RANGES[dt]).reshape(shp).astype(dt), e, dt))
        return outs

    def _op_ReverseSequence(self, node, args, notes):
        """esp-dl/dl/module/include/dl_module_reverse_sequence.hpp: copy, then swap time steps t and len-1-t of
        each batch through an `int temp` (so a float32 value moved to the back is truncated toward zero)."""
        x, lens = args[0], _q(args[1])
        b_ax = int(node.attributes.get("batch_axis", 1))
        t_ax = int(node.attributes.get("time_axis", 0))
        y = x.data.copy()
        for b, n in enumerate(np.asarray(lens.data).astype(np.int64).reshape(-1)):
            for t in range(int(n) // 2):
                i1 = [slice(None)] * y.ndim
                i2 = [slice(None)] * y.ndim
                i1[b_ax] = i2[b_ax] = b
                i1[t_ax], i2[t_ax] = t, int(n) - 1 - t
                first = y[tuple(i1)].copy()
                y[tuple(i1)] = y[tuple(i2)]
                y[tuple(i2)] = np.trunc(first) if x.dtype == "float32" else first
        return [self._copy_out(node, x, y)]


    def _op_RMSNormalization(self, node, args, notes):
        """esp-dl/dl/module/include/dl_module_rms_normalization.hpp (DL_FAST_MATH 0: fast_inv_sqrt = 1 / sqrtf)
        + isa/tie728/dl_tie728_rms_normalization.S: per slice from `axis` on, rms = 1 / sqrtf((float)(int sum of
        x^2) * s_in^2 / n + eps) * (s_in * 2^-out); y = sat(floor(x * rms * scale + 0.5f)) (scale read as float)."""
        x, scale = args[0], _q(args[1])
        eps = np.float32(node.attributes.get("epsilon", 1e-5))
        axis = int(node.attributes.get("axis", -1)) % x.data.ndim
        outer = int(np.prod(x.data.shape[:axis]))
        flat = x.data.reshape(outer, -1)
        inner = flat.shape[1]
        sc = scale.data.astype(np.float32).reshape(-1)
        if scale.dtype != "float32":
            notes.append(Note(node.name, f"RMSNormalization scale {scale.dtype}: ESP-DL reads it as float32"))
            sc = sc * np.float32(_scale(scale.exponent))
        sc = np.broadcast_to(sc, (inner,))
        if x.dtype == "float32":
            f = flat.astype(np.float32)
            ms = (_seq_sum((f * f).astype(np.float32)) / np.float32(inner)).astype(np.float32)
            rms = (np.float32(1) / np.sqrt((ms + eps).astype(np.float32))).astype(np.float32)
            y = ((f * rms[:, None]).astype(np.float32) * sc).astype(np.float32)
            return [Tensor(y.reshape(x.data.shape), x.exponent, "float32")]
        out_exp, out_dtype = self._out_meta(node)
        s_in = np.float32(_scale(x.exponent))
        sq = (flat.astype(np.int64) ** 2).sum(1)
        ms = ((sq.astype(np.float32) * (s_in * s_in)).astype(np.float32) / np.float32(inner)).astype(np.float32)
        rms = (np.float32(1) / np.sqrt((ms + eps).astype(np.float32))).astype(np.float32)
        rms = (rms * (s_in * np.float32(_rescale(out_exp)))).astype(np.float32)
        v = ((flat.astype(np.float32) * rms[:, None]).astype(np.float32) * sc).astype(np.float32)
        y = np.clip(np.floor((v + np.float32(0.5)).astype(np.float32)), *RANGES[out_dtype])
        return [Tensor(y.reshape(x.data.shape).astype(out_dtype), out_exp, out_dtype)]

    def _op_LpNormalization(self, node, args, notes):
        """esp-dl/dl/module/include/dl_module_lp_normalization.hpp: inv = 1 / sum |x| (p=1) or 1 / sqrtf((float)
        int sum x^2) (p=2, DL_FAST_MATH 0) over the raw ints (s_in cancels); along the last axis
        y = round(x * (inv * 2^-out)), along another axis round((x * inv) * 2^-out); inv 0 -> 0."""
        x = args[0]
        p = int(node.attributes.get("p", 2))
        axis = int(node.attributes.get("axis", -1)) % x.data.ndim
        v = np.moveaxis(x.data, axis, -1)
        if x.dtype == "float32":
            f = v.astype(np.float32)
            s = _seq_sum(np.abs(f)) if p == 1 else _seq_sum((f * f).astype(np.float32))
            with np.errstate(divide="ignore"):
                inv = np.where(s > 0, np.float32(1) / (s if p == 1 else np.sqrt(s)), 0).astype(np.float32)
            y = np.where(inv[..., None] > 0, (f * inv[..., None]).astype(np.float32), 0)
            return [Tensor(np.moveaxis(y.astype(np.float32), -1, axis), x.exponent, "float32")]
        out_exp, out_dtype = self._out_meta(node)
        d = v.astype(np.int64)
        s = (_seq_sum(np.abs(d).astype(np.float32)) if p == 1 else (d * d).sum(-1).astype(np.float32))
        with np.errstate(divide="ignore"):
            inv = np.where(s > 0, np.float32(1) / (s if p == 1 else np.sqrt(s)).astype(np.float32), 0)
        inv = inv.astype(np.float32)[..., None]
        r = np.float32(_rescale(out_exp))
        if axis == x.data.ndim - 1:
            res = d.astype(np.float32) * (inv * r).astype(np.float32)
        else:
            res = (d.astype(np.float32) * inv).astype(np.float32) * r
        y = np.where(inv > 0, _round_sat(res, *RANGES[out_dtype]), 0)
        return [Tensor(np.moveaxis(y, -1, axis).astype(out_dtype), out_exp, out_dtype)]


    def _op_ScatterND(self, node, args, notes):
        """esp-dl/dl/module/include/dl_module_scatter_nd.hpp: copy `data`, then for each index tuple in order
        write the update slice (reduction none) or combine it element by element: add / mul on the raw ints
        saturated to the type (no rescale), max, min; float32 the same in float."""
        data, ind, upd = args[0], _q(args[1]), _q(args[2])
        red = node.attributes.get("reduction", "none")
        red = red.decode() if isinstance(red, bytes) else red
        is_float = data.dtype == "float32"
        out = data.data.astype(np.float32 if is_float else np.int64).copy()
        idx = np.asarray(ind.data).astype(np.int64)
        k = idx.shape[-1]
        idx = idx.reshape(-1, k)
        u = np.asarray(upd.data).astype(out.dtype).reshape(idx.shape[0], *out.shape[k:])
        lo, hi = (None, None) if is_float else RANGES[data.dtype]
        for i, t in enumerate(idx):
            t = tuple(int(v) for v in t)
            cur = out[t]
            if red == "add":
                new = cur + u[i]
            elif red == "mul":
                new = cur * u[i]
            elif red == "max":
                new = np.maximum(cur, u[i])
            elif red == "min":
                new = np.minimum(cur, u[i])
            else:
                new = u[i]
            out[t] = new if is_float else np.clip(new, lo, hi)
        return [self._copy_out(node, data, out)]


    def _op_InsertZeros(self, node, args, notes):
        """esp-dl/dl/module/include/dl_module_insert_zeros.hpp (esp-ppq's ConvTranspose = InsertZeros + Conv,
        esp_ppq/IR/morph.py decompose_convtranspose): NWC/NHWC, input pixel (h, w) copied to (h * sh, w * sw) of
        a zeroed output of size in + (s - 1)(in - 1) + output_padding; raw copy."""
        x = args[0]
        nsp = x.data.ndim - 2
        stride = list(node.attributes.get("stride") or [1])
        opad = list(node.attributes.get("output_padding") or [0])
        stride = stride * nsp if len(stride) == 1 else stride
        opad = opad * nsp if len(opad) == 1 else opad
        shape = list(x.data.shape)
        for i in range(nsp):
            shape[1 + i] = shape[1 + i] + (stride[i] - 1) * (shape[1 + i] - 1) + opad[i]
        y = np.zeros(shape, x.data.dtype)
        index = (slice(None),) + tuple(slice(0, x.data.shape[1 + i] * stride[i], stride[i]) for i in range(nsp))
        y[index] = x.data
        return [self._copy_out(node, x, y)]


def _unpack_matmul_weight(t: StoredTensor) -> np.ndarray:
    """A packed constant MatMul operand -> its logical [..., K, N] (each [K, N] packed as an N x 1 x 1 x K conv
    filter: the first floor(N/a)*a columns in blocks (n/a, K, a), a = 16 (int8) / 8 (int16), the rest as [n, K])."""
    dims = tuple(t.dims)
    k, n = dims[-2:]
    layout = t.layout or ""
    m = re.search(r"C(\d+)", layout)
    if not m:  # not packed after all: row-major
        return t.data.astype(np.int64).reshape(dims)
    align = int(m.group(1))
    aligned = n // align * align
    mats = []
    for flat in t.data.astype(np.int64).reshape(-1, k * n):
        head = flat[: aligned * k].reshape(n // align, k, align).transpose(0, 2, 1).reshape(aligned, k)
        tail = flat[aligned * k :].reshape(n - aligned, k)
        mats.append(np.concatenate([head, tail], 0).T)
    return np.stack(mats).reshape(dims)


def _scale(e: int) -> float:
    """DL_SCALE(e) (esp-dl/dl/dl_define.hpp:76): 2**e as float32 (exact)."""
    return float(np.float32(2.0**e))


def _rescale(e: int) -> float:
    """DL_RESCALE(e) (esp-dl/dl/dl_define.hpp:80): 2**-e."""
    return float(np.float32(2.0**-e))


def _round_sat(v: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """tool::truncate(out, tool::round(v)): round half up in float32 (dl_tool.cpp), saturated; NaN -> 0."""
    v = np.asarray(v, np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        v = np.where(np.isnan(v), 0, np.clip(v, lo - 1, hi + 1)).astype(np.float32)
    return np.clip(round_half_up_float(v), lo, hi)


def _seq_sum(x: np.ndarray) -> np.ndarray:
    """Sum over the last axis in float32, element after element (ESP-DL's `sum += ...` loops)."""
    x = np.asarray(x, np.float32)
    acc = np.zeros(x.shape[:-1], np.float32)
    for i in range(x.shape[-1]):
        acc = (acc + x[..., i]).astype(np.float32)
    return acc


def _seq_prod(x: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Product over the last axis, in order, accumulated in `dtype` (reduce_op_mul)."""
    acc = np.ones(x.shape[:-1], dtype)
    for i in range(x.shape[-1]):
        acc = (acc * x[..., i].astype(dtype)).astype(dtype)
    return acc


def _sqrt_newton(x: np.ndarray) -> np.ndarray:
    """dl_math.hpp sqrt_newton: result = (last + x / last) * 0.5 in float32 until |result - last| <= 1e-5."""
    x = np.asarray(x, np.float32)
    res = x.copy()
    todo = x != 0
    res[~todo] = 0
    last = res.copy()
    with np.errstate(all="ignore"):
        for _ in range(200):
            if not todo.any():
                break
            last = np.where(todo, res, last).astype(np.float32)
            new = ((last + (x / last).astype(np.float32)).astype(np.float32) * np.float32(0.5)).astype(np.float32)
            res = np.where(todo, new, res).astype(np.float32)
            todo = todo & (np.abs(res - last) > np.float32(0.00001))
    return res


def _elemwise_d0(s0, s1, so) -> tuple[int, int]:
    """Innermost lengths (input0_d0, input1_d0) after ESP-DL's shape merge (dl_base_elemwise.cpp:43-106)."""
    so = list(so)
    dims = len(so)
    a = [1] * (dims - len(s0)) + list(s0)
    b = [1] * (dims - len(s1)) + list(s1)
    if dims == 0:
        return 1, 1
    merged = dims
    for i in range(dims):
        j = i + 1
        while j < dims:
            if a[i] == b[i] and a[j] == b[j]:
                a[i] *= a[j]; b[i] *= b[j]; so[i] *= so[j]; a[j] = b[j] = so[j] = 1
            elif a[i] == 1 and a[j] == 1:
                b[i] *= b[j]; so[i] *= so[j]; b[j] = so[j] = 1
            elif b[i] == 1 and b[j] == 1:
                a[i] *= a[j]; so[i] *= so[j]; a[j] = so[j] = 1
            else:
                break
            j += 1
        if j == dims:
            merged = i + 1
            break
    return a[merged - 1], b[merged - 1]


def _sigmoid(v: np.ndarray) -> np.ndarray:
    """dl_math.hpp: 1.0 / (1.0 + expf(-x)) (expf in float, the division in double)."""
    return (1.0 / (1.0 + np.exp(-v.astype(np.float32)).astype(np.float64))).astype(np.float32)


def supported_ops() -> list[str]:
    return sorted(name[4:] for name in dir(Interpreter) if name.startswith("_op_"))
