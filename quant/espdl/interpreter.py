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
FLOAT_OPS = {"Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "HardSigmoid", "HardSwish", "Swish", "LeakyRelu"}
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
        return [self._assign(node, args[0], args[0].data)]

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


def _sigmoid(v: np.ndarray) -> np.ndarray:
    """dl_math.hpp: 1.0 / (1.0 + expf(-x)) (expf in float, the division in double)."""
    return (1.0 / (1.0 + np.exp(-v.astype(np.float32)).astype(np.float64))).astype(np.float32)


def supported_ops() -> list[str]:
    return sorted(name[4:] for name in dir(Interpreter) if name.startswith("_op_"))
