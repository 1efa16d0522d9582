"""Read `.espdl` files (ESP-DL's EDL2 container around a FlatBuffers `espdl.Model`) and `quant inspect`.

The FlatBuffers accessors below are written from ESP-DL's schema (`esp-dl/fbs_loader/espdl.fbs`) with the
`flatbuffers` runtime only: esp-ppq's generated classes import `FlatBuffers.Dl.*` as a top-level package
(they need esp_ppq's `sys.path` patch) and importing them through `esp_ppq` costs ~2 s and a banner.
This module imports in milliseconds.

Container: 16-byte header `b"EDL2" | u32 mode (0 plain, 1 AES-128-CTR) | u32 payload length | u32 0`,
then the FlatBuffer. Encrypted payloads use the fixed counter block 0x10..0x1F (esp-ppq `helper.aes_encryptor`).
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flatbuffers import number_types as _nt
from flatbuffers.table import Table

from quant.errors import UserError
from quant.tensor import Tensor

MAGIC = b"EDL2"
HEADER_BYTES = 16
AES_COUNTER = bytes(range(16, 32))

# espdl.TensorDataType -> numpy dtype name
DTYPES = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
    9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
}

# Field slots of the schema's tables (slot i lives at vtable offset 4 + 2 * i).
_MODEL = dict(ir_version=0, producer_name=2, producer_version=3, model_version=5, doc_string=6, graph=7, metadata_props=8)
_GRAPH = dict(node=0, name=1, initializer=2, input=4, output=5, value_info=6, test_inputs_value=8, test_outputs_value=9)
_NODE = dict(input=0, output=1, name=2, op_type=3, attribute=5)
_ATTR = dict(name=0, attr_type=3, f=4, i=5, s=6, t=7, floats=10, ints=11, strings=12)
_VALUE_INFO = dict(name=0, value_info_type=1, doc_string=2, exponents=3)
_TENSOR = dict(dims=0, data_type=1, float_data=2, int32_data=3, int64_data=5, name=6, doc_string=7, raw_data=8,
               double_data=11, uint64_data=12, exponents=13)
_ENTRY = dict(key=0, value=1)
_TYPE_INFO = dict(value_type=0, value=1)  # union: TensorTypeAndShape is member 1
_TENSOR_TYPE = dict(elem_type=0, shape=1)
_SHAPE = dict(dim=0)
_DIMENSION = dict(value=0)
_DIM_VALUE = dict(dim_type=0, dim_value=1)


# ----------------------------------------------------------------------------------------------- model types
@dataclass(frozen=True)
class Header:
    magic: bytes
    encrypted: bool
    payload_bytes: int
    file_bytes: int


@dataclass
class StoredTensor:
    """A stored tensor (initializer, LUT, test value). `data` is flat, in file order, trimmed of padding."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    exponents: tuple[int, ...]
    data: np.ndarray
    layout: str | None = None

    @property
    def exponent(self) -> int:
        return int(self.exponents[0]) if self.exponents else 0

    def array(self) -> np.ndarray:
        """The data reshaped to `dims` (file order; for Conv/Gemm weights see `interpreter.unpack_filter`)."""
        return self.data.reshape(self.dims) if self.dims else self.data.reshape(())

    def tensor(self) -> Tensor:
        """As a value (quant.tensor.Tensor): the data reshaped to `dims`, the first exponent."""
        return Tensor(self.array().astype(self.dtype), self.exponent, self.dtype, self.name)


@dataclass
class ValueInfo:
    name: str
    dtype: str | None
    shape: tuple[int, ...] | None
    exponents: tuple[int, ...]

    @property
    def exponent(self) -> int:
        return int(self.exponents[0]) if self.exponents else 0


@dataclass
class Node:
    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attributes: dict = field(default_factory=dict)


@dataclass
class EspdlModel:
    path: Path | None
    header: Header
    sha256: str
    producer: str
    ir_version: int
    nodes: list[Node]
    initializers: dict[str, StoredTensor]
    values: dict[str, ValueInfo]          # every non-parameter value (value_info), incl. inputs and outputs
    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    test_inputs: dict[str, StoredTensor]
    test_outputs: dict[str, StoredTensor]
    metadata: dict[str, str]

    def node_by_output(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs}


# ----------------------------------------------------------------------------------------------- decoding
def _field(t: Table, slot: int) -> int:
    return _nt.UOffsetTFlags.py_type(t.Offset(4 + 2 * slot))


def _str(t: Table, slot: int) -> str | None:
    o = _field(t, slot)
    return t.String(o + t.Pos).decode("utf-8", errors="replace") if o else None


def _sub(t: Table, slot: int) -> Table | None:
    o = _field(t, slot)
    return Table(t.Bytes, t.Indirect(o + t.Pos)) if o else None


def _tables(t: Table, slot: int) -> list[Table]:
    o = _field(t, slot)
    if not o:
        return []
    start, n = t.Vector(o), t.VectorLen(o)
    return [Table(t.Bytes, t.Indirect(start + 4 * j)) for j in range(n)]


def _strings(t: Table, slot: int) -> list[str]:
    o = _field(t, slot)
    if not o:
        return []
    start, n = t.Vector(o), t.VectorLen(o)
    return [t.String(start + 4 * j).decode("utf-8", errors="replace") for j in range(n)]


def _scalars(t: Table, slot: int, flags, dtype: str) -> np.ndarray:
    o = _field(t, slot)
    if not o:
        return np.zeros(0, dtype)
    return np.asarray(t.GetVectorAsNumpy(flags, o), dtype=dtype)


def _int(t: Table, slot: int, flags=_nt.Int32Flags, default: int = 0) -> int:
    o = _field(t, slot)
    return int(t.Get(flags, o + t.Pos)) if o else default


def _tensor(t: Table) -> StoredTensor:
    dims = tuple(int(d) for d in _scalars(t, _TENSOR["dims"], _nt.Int64Flags, "int64"))
    code = _int(t, _TENSOR["data_type"])
    dtype = DTYPES.get(code)
    name = _str(t, _TENSOR["name"]) or ""
    if dtype is None:
        raise UserError(f"tensor {name!r} has unsupported data type code {code}; re-export it with esp-ppq")
    count = int(np.prod(dims)) if dims else 1
    o = _field(t, _TENSOR["raw_data"])
    if o:
        start, n = t.Vector(o), t.VectorLen(o)  # vector of 16-byte AlignedBytes structs
        raw = bytes(t.Bytes[start : start + 16 * n])
        data = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))[:count].astype(dtype)
    else:
        data = np.zeros(0, dtype)
        for slot, flags, kind in ((_TENSOR["float_data"], _nt.Float32Flags, "float32"),
                                  (_TENSOR["int32_data"], _nt.Int32Flags, "int32"),
                                  (_TENSOR["int64_data"], _nt.Int64Flags, "int64"),
                                  (_TENSOR["double_data"], _nt.Float64Flags, "float64"),
                                  (_TENSOR["uint64_data"], _nt.Uint64Flags, "uint64")):
            values = _scalars(t, slot, flags, kind)
            if len(values):
                data = values[:count].astype(dtype)
                break
    if data.size != count and count:
        raise UserError(f"tensor {name!r} holds {data.size} values for shape {list(dims)}: the file is damaged")
    doc = _str(t, _TENSOR["doc_string"]) or ""
    m = re.match(r"layout ==> (\S+)", doc)
    exps = tuple(int(e) for e in _scalars(t, _TENSOR["exponents"], _nt.Int64Flags, "int64"))
    return StoredTensor(name, dtype, dims, exps, data, m.group(1) if m else None)


def _value_info(t: Table) -> ValueInfo:
    name = _str(t, _VALUE_INFO["name"]) or ""
    exps = tuple(int(e) for e in _scalars(t, _VALUE_INFO["exponents"], _nt.Int64Flags, "int64"))
    dtype, shape = None, None
    ti = _sub(t, _VALUE_INFO["value_info_type"])
    if ti is not None and _int(ti, _TYPE_INFO["value_type"], _nt.Uint8Flags) == 1:
        tt = _sub(ti, _TYPE_INFO["value"])
        if tt is not None:
            dtype = DTYPES.get(_int(tt, _TENSOR_TYPE["elem_type"]))
            sh = _sub(tt, _TENSOR_TYPE["shape"])
            if sh is not None:
                dims = []
                for dim in _tables(sh, _SHAPE["dim"]):
                    dv = _sub(dim, _DIMENSION["value"])
                    dims.append(_int(dv, _DIM_VALUE["dim_value"], _nt.Int64Flags, -1) if dv is not None else -1)
                shape = tuple(dims)
    return ValueInfo(name, dtype, shape, exps)


def _attribute(t: Table):
    """The attribute's value: int, float, str, list of ints/floats/strings, or StoredTensor."""
    if _field(t, _ATTR["s"]):
        return bytes(_scalars(t, _ATTR["s"], _nt.Uint8Flags, "uint8")).decode("utf-8", errors="replace")
    if _field(t, _ATTR["ints"]):
        return [int(v) for v in _scalars(t, _ATTR["ints"], _nt.Int64Flags, "int64")]
    if _field(t, _ATTR["floats"]):
        return [float(v) for v in _scalars(t, _ATTR["floats"], _nt.Float32Flags, "float32")]
    if _field(t, _ATTR["strings"]):
        return _strings(t, _ATTR["strings"])
    if _field(t, _ATTR["t"]):
        return _tensor(_sub(t, _ATTR["t"]))
    o = _field(t, _ATTR["i"])
    if o:
        return int(t.Get(_nt.Int64Flags, o + t.Pos))
    o = _field(t, _ATTR["f"])
    if o:
        return float(t.Get(_nt.Float32Flags, o + t.Pos))
    return None


def _node(t: Table) -> Node:
    attrs = {}
    for a in _tables(t, _NODE["attribute"]):
        attrs[_str(a, _ATTR["name"]) or ""] = _attribute(a)
    return Node(
        name=_str(t, _NODE["name"]) or "",
        op_type=_str(t, _NODE["op_type"]) or "",
        inputs=_strings(t, _NODE["input"]),
        outputs=_strings(t, _NODE["output"]),
        attributes=attrs,
    )


# ----------------------------------------------------------------------------------------------- loading
def parse_key(text: str) -> bytes:
    """An AES-128 key as esp-ppq prints it (`0x1a, 0x2b, ...`) or as 32 hex digits."""
    parts = re.findall(r"0x([0-9a-fA-F]{1,2})", text)
    if len(parts) == 16:
        return bytes(int(p, 16) for p in parts)
    digits = re.sub(r"[\s:,_-]", "", text)
    if re.fullmatch(r"[0-9a-fA-F]{32}", digits):
        return bytes.fromhex(digits)
    raise UserError("--key must be 16 bytes: 32 hex digits or esp-ppq's '0x1a, 0x2b, ...' list")


def read_header(data: bytes, name: str = "file") -> Header:
    if len(data) < HEADER_BYTES:
        raise UserError(f"{name} is {len(data)} bytes, shorter than the 16-byte EDL2 header: truncated or not an .espdl")
    magic = data[:4]
    if magic != MAGIC:
        hint = " (a PDL multi-model pack: extract one model first)" if magic[:3] == b"PDL" else ""
        raise UserError(f"{name} starts with {magic!r}, not b'EDL2': not an ESP-DL model file{hint}")
    mode, length = struct.unpack("<II", data[4:12])
    if mode not in (0, 1):
        raise UserError(f"{name} has unknown EDL2 mode {mode} (0 plain, 1 AES): damaged or from a newer ESP-DL")
    if HEADER_BYTES + length > len(data):
        raise UserError(
            f"{name} is truncated: the header announces {length} payload bytes, the file has {len(data) - HEADER_BYTES}"
        )
    return Header(magic, mode == 1, length, len(data))


def _decrypt(payload: bytes, key: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    dec = Cipher(algorithms.AES(key), modes.CTR(AES_COUNTER)).decryptor()
    return dec.update(payload) + dec.finalize()


def loads(data: bytes, key: bytes | str | None = None, name: str = "file", path: Path | None = None) -> EspdlModel:
    header = read_header(data, name)
    payload = data[HEADER_BYTES : HEADER_BYTES + header.payload_bytes]
    if header.encrypted:
        if key is None:
            raise UserError(f"{name} is AES-encrypted: pass its 128-bit key with --key (esp-ppq printed it at export)")
        payload = _decrypt(payload, parse_key(key) if isinstance(key, str) else bytes(key))
    try:
        model = _parse(payload, header)
    except UserError:
        raise
    except Exception as exc:  # any structural failure of the FlatBuffer
        if header.encrypted:
            raise UserError(f"{name} does not decrypt to a valid model: wrong --key") from exc
        raise UserError(f"{name} has a damaged FlatBuffer payload ({type(exc).__name__}): re-export it") from exc
    model.path = path
    model.sha256 = hashlib.sha256(data).hexdigest()
    return model


def load(path, key: bytes | str | None = None) -> EspdlModel:
    """Read an `.espdl` file. Bad input raises `UserError` with a one-line message."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p} is not a file: give the path of an .espdl model")
    return loads(p.read_bytes(), key=key, name=str(p), path=p)


def _parse(buf: bytes, header: Header) -> EspdlModel:
    if len(buf) < 8:
        raise ValueError("payload too short")
    root = struct.unpack_from("<I", buf, 0)[0]
    if root >= len(buf):
        raise ValueError("root offset out of range")
    model = Table(bytearray(buf), root)
    graph = _sub(model, _MODEL["graph"])
    if graph is None:
        raise ValueError("model has no graph")
    nodes = [_node(t) for t in _tables(graph, _GRAPH["node"])]
    initializers = {}
    for t in _tables(graph, _GRAPH["initializer"]):
        tensor = _tensor(t)
        initializers[tensor.name] = tensor
    values = {}
    for slot in ("value_info", "input", "output"):
        for t in _tables(graph, _GRAPH[slot]):
            vi = _value_info(t)
            values.setdefault(vi.name, vi)
    inputs = [values[_value_info(t).name] for t in _tables(graph, _GRAPH["input"])]
    outputs = [values[_value_info(t).name] for t in _tables(graph, _GRAPH["output"])]
    tests_in = {x.name: x for x in (_tensor(t) for t in _tables(graph, _GRAPH["test_inputs_value"]))}
    tests_out = {x.name: x for x in (_tensor(t) for t in _tables(graph, _GRAPH["test_outputs_value"]))}
    metadata = {}
    for e in _tables(model, _MODEL["metadata_props"]):
        metadata[_str(e, _ENTRY["key"]) or ""] = _str(e, _ENTRY["value"]) or ""
    producer = " ".join(x for x in (_str(model, _MODEL["producer_name"]), _str(model, _MODEL["producer_version"])) if x)
    if not nodes or not inputs or not outputs:
        raise ValueError("graph without nodes, inputs or outputs")
    return EspdlModel(
        path=None, header=header, sha256="", producer=producer, ir_version=_int(model, _MODEL["ir_version"]),
        nodes=nodes, initializers=initializers, values=values, inputs=inputs, outputs=outputs,
        test_inputs=tests_in, test_outputs=tests_out, metadata=metadata,
    )


# ----------------------------------------------------------------------------------------------- inspect
def _fmt_attr(value) -> str:
    if isinstance(value, StoredTensor):
        return f"<tensor {value.dtype}{list(value.dims)}>"
    if isinstance(value, list) and len(value) > 12:
        return f"[{', '.join(map(str, value[:12]))}, ... ({len(value)})]"
    return repr(value) if isinstance(value, str) else str(value)


def _fmt_values(data: np.ndarray, limit: int = 16) -> str:
    flat = data.reshape(-1)
    head = ", ".join(str(v) for v in flat[:limit].tolist())
    return f"[{head}{', ...' if flat.size > limit else ''}]"


def describe(model: EspdlModel, values: bool = False) -> str:
    """Human-readable listing of everything in the file (what `quant inspect` prints)."""
    h = model.header
    lines = [
        f"file:        {model.path}" if model.path else "file:        <bytes>",
        f"container:   {h.magic.decode()}  {'AES-128-CTR encrypted' if h.encrypted else 'plain'}  "
        f"payload {h.payload_bytes} B  file {h.file_bytes} B",
        f"sha256:      {model.sha256}",
        f"producer:    {model.producer or '-'}  (ir_version {model.ir_version})",
        "",
        "inputs:",
    ]
    for v in model.inputs:
        lines.append(f"  {v.name}  {v.dtype} {list(v.shape or ())}  exp {list(v.exponents)}")
    lines.append("outputs:")
    for v in model.outputs:
        lines.append(f"  {v.name}  {v.dtype} {list(v.shape or ())}  exp {list(v.exponents)}")
    lines += ["", f"graph: {len(model.nodes)} nodes"]
    for i, n in enumerate(model.nodes):
        attrs = "  ".join(f"{k}={_fmt_attr(v)}" for k, v in sorted(n.attributes.items()))
        lines.append(f"  [{i:3d}] {n.op_type:<18} {n.name}")
        lines.append(f"        in  {n.inputs}")
        outs = []
        for o in n.outputs:
            v = model.values.get(o)
            outs.append(f"{o} ({v.dtype} {list(v.shape or ())} exp {v.exponent})" if v else o)
        lines.append(f"        out {', '.join(outs)}")
        if attrs:
            lines.append(f"        {attrs}")
    lines += ["", f"initializers: {len(model.initializers)}"]
    for t in model.initializers.values():
        extra = f"  layout {t.layout}" if t.layout and t.layout != "UNKNOWN" else ""
        lines.append(f"  {t.name}  {t.dtype} {list(t.dims)}  exp {list(t.exponents)}{extra}")
        if values:
            lines.append(f"      {_fmt_values(t.data)}")
    lines += ["", f"value exponents: {len(model.values)}"]
    for v in model.values.values():
        lines.append(f"  {v.name}  {v.dtype} {list(v.shape or ())}  exp {list(v.exponents)}")
    for title, tests in (("test inputs", model.test_inputs), ("test outputs", model.test_outputs)):
        lines += ["", f"{title}: {len(tests)}"]
        for t in tests.values():
            lines.append(f"  {t.name}  {t.dtype} {list(t.dims)}  exp {list(t.exponents)}  {_fmt_values(t.data)}")
    lines += ["", f"metadata: {len(model.metadata)}"]
    for k, v in sorted(model.metadata.items()):
        lines.append(f"  {k} = {v}")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("file", help="the .espdl file")
    parser.add_argument("--key", help="AES-128 key of an encrypted file (32 hex digits or esp-ppq's 0x.. list)")
    parser.add_argument("--values", action="store_true", help="also print the first values of every initializer")


def run(args) -> int:
    print(describe(load(args.file, key=args.key), values=args.values))
    return 0
