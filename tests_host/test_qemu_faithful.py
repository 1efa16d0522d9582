"""QEMU 9.2.2's ACCX sign bug (docs/qemu.md): the rule names the layers QEMU computes unlike the chip."""

from types import SimpleNamespace

import numpy as np

from quant.board.qemu import accx_channels, unfaithful_nodes
from quant.espdl.reader import load
from quant.folder import variant_file


def _model(*nodes, biases):
    inits = {name: SimpleNamespace(data=np.asarray(b, np.int32)) for name, b in biases.items()}
    return SimpleNamespace(nodes=list(nodes), initializers=inits)


def _node(name, op="Conv", bias="b", group=1, qt="S8"):
    return SimpleNamespace(name=name, op_type=op, inputs=["x", "w", bias] if bias else ["x", "w"],
                           attributes={"group": group, "quant_type": qt})


def test_the_rule_predicts_the_stem_channels_qemu_got_wrong():
    """Seen on QEMU (issue 10): the int8 stem diverged in exactly channels 2, 5 and 7 of 8."""
    model = load(variant_file("int8", ".espdl"))
    found = {u.node: u for u in unfaithful_nodes(model)}
    assert found["/stem/stem.0/Conv"].channels == (2, 5, 7)
    assert "/fc/Gemm" in found  # 8 classes: every channel on ACCX


def test_accx_channels_are_the_remainder_after_whole_simd_blocks():
    assert list(accx_channels(8, int16=False)) == list(range(8))
    assert list(accx_channels(33, int16=False)) == [32]
    assert list(accx_channels(32, int16=False)) == []
    assert list(accx_channels(24, int16=True)) == []


def test_only_a_negative_bias_on_an_accx_channel_is_unfaithful():
    model = _model(
        _node("neg_accx", bias="neg"),  # 8 channels, channel 3 negative
        _node("pos_accx", bias="pos"),  # all positive
        _node("neg_qacc", bias="neg16"),  # 17 channels: only channel 16 on ACCX, and it is positive
        _node("depthwise", bias="neg", group=8),
        _node("no_bias", bias=None),
        _node("int16", bias="neg", qt="S16"),  # 8 channels, int16: one SIMD block of 8, no ACCX
        _node("relu", op="Relu", bias=None),
        biases={"neg": [1, 2, 3, -4, 5, 6, 7, 8], "pos": [1] * 8, "neg16": [-1] * 16 + [5]},
    )
    assert [(u.node, u.channels) for u in unfaithful_nodes(model)] == [("neg_accx", (3,))]
