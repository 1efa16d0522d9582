"""Small variant folders for the virtual-board tests (README.md, 'Producing the variants' layout, computed values):
they let the board be tested before, and independently of, `quant build`."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import flatbuffers
import numpy as np

VARIANT = "int8"
CLASSES = 7
VECTORS = 6
BUDGETS = {"latency_us": (14000, 12174), "internal_ram_bytes": (60000, 52000), "psram_bytes": (300000, 260000),
           "flash_bytes": (80000, 73000)}


def make_espdl(test_outputs: dict) -> bytes:
    """A minimal plain EDL2 file (one Gemm node) embedding `test_outputs`:
    {name: (dtype, dims, exponent, ints)}; the layout follows quant/espdl/reader.py's schema slots."""
    codes = {"int8": 3, "int16": 5}
    b = flatbuffers.Builder(1024)
    def string_vector(items):
        offs = [b.CreateString(x) for x in items]
        b.StartVector(4, len(offs), 4)
        for o in reversed(offs):
            b.PrependUOffsetTRelative(o)
        return b.EndVector()
    def table_vector(offs):
        b.StartVector(4, len(offs), 4)
        for o in reversed(offs):
            b.PrependUOffsetTRelative(o)
        return b.EndVector()
    def value_info(name):
        n = b.CreateString(name); b.StartObject(4); b.PrependUOffsetTRelativeSlot(0, n, 0); return b.EndObject()
    tensors = []
    for name, (dtype, dims, exp, ints) in test_outputs.items():
        n = b.CreateString(name)
        d = b.CreateNumpyVector(np.asarray(dims, np.int64))
        v = b.CreateNumpyVector(np.asarray(ints, np.int32))
        e = b.CreateNumpyVector(np.asarray([exp], np.int64))
        b.StartObject(14)
        b.PrependUOffsetTRelativeSlot(0, d, 0); b.PrependInt32Slot(1, codes[dtype], 0)
        b.PrependUOffsetTRelativeSlot(3, v, 0); b.PrependUOffsetTRelativeSlot(6, n, 0)
        b.PrependUOffsetTRelativeSlot(13, e, 0)
        tensors.append(b.EndObject())
    outs = list(test_outputs)
    node_out, node_in = string_vector(outs), string_vector(["image"])
    nname, op = b.CreateString("/head/Gemm"), b.CreateString("Gemm")
    b.StartObject(6); b.PrependUOffsetTRelativeSlot(0, node_in, 0); b.PrependUOffsetTRelativeSlot(1, node_out, 0)
    b.PrependUOffsetTRelativeSlot(2, nname, 0); b.PrependUOffsetTRelativeSlot(3, op, 0); node = b.EndObject()
    nodes = table_vector([node])
    ins = table_vector([value_info("image")])
    outv = table_vector([value_info(o) for o in outs])
    tv = table_vector(tensors)
    b.StartObject(10)
    b.PrependUOffsetTRelativeSlot(0, nodes, 0); b.PrependUOffsetTRelativeSlot(4, ins, 0)
    b.PrependUOffsetTRelativeSlot(5, outv, 0); b.PrependUOffsetTRelativeSlot(9, tv, 0)
    graph = b.EndObject()
    b.StartObject(9); b.PrependUOffsetTRelativeSlot(7, graph, 0); model = b.EndObject()
    b.Finish(model)
    payload = bytes(b.Output())
    return b"EDL2" + struct.pack("<III", 0, len(payload), 0) + payload


def make_models(root: Path, variant: str = VARIANT, embedded_delta: int = 0) -> Path:
    """A small variant folder in the layout of README.md, 'Producing the variants' (the real models are built later)."""
    folder = root / f"gesture_model_{variant}"
    folder.mkdir(parents=True)
    stem = folder / f"gesture_model_{variant}"
    info = ['format = 1', f'variant = "{variant}"']
    for key, (value, basis) in BUDGETS.items():
        info += [f"[budgets.{key}]", f"value = {value}", f"basis = {basis}", "headroom = 0.15",
                 'provenance = "estimated"']
    Path(f"{stem}.info").write_text("\n".join(info) + "\n")
    config = {"input": {"name": "image", "shape_nchw": [1, 1, 96, 96], "layout": "NHWC", "dtype": "int8",
                        "exponent": -7},
              "tolerance": {"int8_lsb": 0, "int16_lsb": 1, "same_exponent": True, "same_top1": True}}
    Path(f"{stem}.json").write_text(json.dumps(config))
    outputs = [{"vector": i, "name": f"pattern{i}",
                "tensors": {"logits": {"dtype": "int8", "shape": [1, CLASSES], "exponent": -4,
                                       "data": [(37 * i + 11 * j) % 255 - 127 for j in range(CLASSES)]}},
                "top1": 0} for i in range(VECTORS)]
    Path(f"{stem}.reference.json").write_text(json.dumps({"format": 1, "variant": variant, "outputs": outputs}))
    logits = outputs[0]["tensors"]["logits"]
    embedded = [v + embedded_delta for v in logits["data"]]
    Path(f"{stem}.espdl").write_bytes(make_espdl({"logits": ("int8", logits["shape"], -4, embedded)}))
    return root
