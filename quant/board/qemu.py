"""What Espressif's QEMU (esp-develop 9.2.2) computes differently from an ESP32-S3 running ESP-DL 3.3.9.

Found from the sources (docs/qemu.md has the evidence): ESP-DL's S3 int8 Conv/Gemm kernels compute the output
channels from floor(N/16)*16 up (all of them when N < 16) one channel at a time in the 40-bit ACCX
accumulator, starting from that channel's bias (`EE.LD.ACCX.IP`; esp-dl `dl/base/isa/tie728/dl_tie728_s8.S`
and `dl_tie728_s8_conv2d.S`, the "n remainder" loops). QEMU loads ACCX without sign extension
(`target/xtensa/translate_tie_esp32s3.c`, `HELPER(ld_accx_s3)`: `ACCX = data & 0xffffffffff`), so a
negative bias becomes a large positive one, the next `EE.VMULAS.S8.ACCX` saturates, and that channel's
outputs are garbage. Channels with a bias >= 0 and the 16-lane QACC path are unaffected; depthwise
convolutions keep every bias in QACC.

`unfaithful_nodes(model)` lists the nodes of a `.espdl` that QEMU cannot be trusted on: a QEMU run that
differs from the simulator at or after such a node is not evidence against the chip, and a QEMU pass is
not evidence for it there. The int16 rule (ACCX from floor(N/8)*8 up) is read from the int16 kernels, not
emulated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QEMU_VERSION = "Espressif QEMU esp-develop 9.2.2"
REASON = ("QEMU loads the S3's 40-bit ACCX accumulator without sign extension (EE.LD.ACCX.IP), so ESP-DL's "
          "per-channel 'n remainder' path starts a channel with a negative bias from a huge positive value")


@dataclass(frozen=True)
class Unfaithful:
    node: str
    op_type: str
    channels: tuple[int, ...]  # output channels QEMU computes wrongly (ACCX path, negative bias)
    width: int  # out channels

    def describe(self) -> str:
        return (f"{self.op_type} {self.node}: output channels {list(self.channels)} of {self.width} "
                f"(ACCX path, negative bias)")


def accx_channels(out_channels: int, int16: bool) -> range:
    """The output channels ESP-DL 3.3.9's S3 Conv/Gemm kernels compute one by one in ACCX."""
    lanes = 8 if int16 else 16
    return range(out_channels // lanes * lanes, out_channels)


def unfaithful_nodes(model) -> list[Unfaithful]:
    """The Conv (group 1) and Gemm nodes of an EspdlModel whose output QEMU 9.2.2 computes wrongly."""
    found = []
    for node in model.nodes:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        if node.op_type == "Conv" and int(node.attributes.get("group", 1)) != 1:
            continue  # depthwise / grouped: every bias in the QACC layout (reset_bias_layout)
        bias = model.initializers.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        if bias is None:
            continue  # ACCX starts from zero: a correct load
        values = np.asarray(bias.data).reshape(-1)
        int16 = node.attributes.get("quant_type") == "S16"
        bad = tuple(c for c in accx_channels(values.size, int16) if values[c] < 0)
        if bad:
            found.append(Unfaithful(node.name, node.op_type, bad, int(values.size)))
    return found
