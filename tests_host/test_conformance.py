"""Conformance of the host interpreter with ESP-DL 3.3.9, operator by operator: single-operator models exported
by esp-ppq (tests_host/opgen.py, cases `conf_*`, int8 and int16, several shapes each) must reproduce their
embedded test values under ESP-DL's test() rule, as `quant verify` checks them.

The full set is opt-in (`pytest --conformance` or `-m conformance`, about 100 models, a few minutes the first
time; models are cached in pytest's cache folder); SAMPLE runs in the default suite."""

import numpy as np
import pytest

import opgen
from quant.espdl.interpreter import Interpreter, _elemwise_d0
from quant.tensor import Tensor
from quant.espdl.reader import load
from quant.espdl.verify import verify_model

CONFORMANCE = sorted(name for name, case in opgen.CASES.items() if "conformance" in case.marks)
SAMPLE = ("conf_div_bcast_row_s8", "conf_softmax_c_s16", "conf_reduce_l2_hw_s8", "conf_pad_reflect_s16")


@pytest.fixture(scope="module")
def root(request, tmp_path_factory):
    return opgen.cache_root(request, tmp_path_factory)


def _check(root, name):
    model = load(opgen.cached([name], root)[name])
    checks, notes = verify_model(model)
    assert checks, f"{name}: the model embeds no test outputs"
    for c in checks:
        assert c.ok, f"{name} ({', '.join(sorted({n.op_type for n in model.nodes}))}): {c}"
    return model


@pytest.mark.parametrize("name", SAMPLE)
def test_sample_of_the_conformance_suite(root, name):
    _check(root, name)


@pytest.mark.conformance
@pytest.mark.parametrize("name", [n for n in CONFORMANCE if n not in SAMPLE])
def test_conformance(root, name):
    _check(root, name)


def test_the_suite_covers_int8_and_int16_of_every_conformance_operator():
    by_op = {}
    for name in CONFORMANCE:
        base = name.rsplit("_s", 1)[0]
        by_op.setdefault(base, set()).add(opgen.CASES[name].bits)
    assert len(by_op) >= 40
    assert all(bits == ({8} if base.startswith("conf_resize") else {8, 16}) for base, bits in by_op.items())
    assert set(SAMPLE) <= set(CONFORMANCE)


@pytest.mark.parametrize("s0, s1, expected", [
    ((2, 3, 4), (2, 3, 4), (24, 24)),       # same shape: one run, n_n
    ((1, 33, 3, 4), (1, 1, 3, 4), (12, 12)),  # row broadcast: inner runs of 12 on both sides
    ((1, 7, 5, 1), (1, 7, 5, 6), (1, 6)),     # input0 one per row: 1_n
    ((2, 48), (1,), (96, 1)),                 # scalar divisor: n_1
    ((1, 1, 1, 1), (1, 3, 5, 7), (1, 105)),   # scalar dividend
])
def test_elementwise_shape_merge_follows_dl_base_elemwise(s0, s1, expected):
    assert _elemwise_d0(s0, s1, np.broadcast_shapes(s0, s1)) == expected


def test_div_by_zero_follows_dl_base_div(root):
    """dl_base_div.cpp c_impl_div_n_n: 0 / y -> 0, x / 0 -> max or min by the sign of x (the int8 LUT for a scalar dividend
    maps a zero divisor to 127 if the dividend is positive, else -128, also for 0 / 0: not exercised here)."""
    model = load(opgen.cached(["conf_div_same_s8"], root)["conf_div_same_s8"])
    interp = Interpreter(model)
    a, b = model.nodes[0].inputs  # dividend, divisor (the graph may list its inputs in another order)
    exps = {vi.name: vi.exponent for vi in model.inputs}
    shape = tuple(model.inputs[0].shape)
    xs, ys = np.zeros(shape, np.int8), np.ones(shape, np.int8)
    xs.reshape(-1)[:3], ys.reshape(-1)[:3] = [5, -5, 0], [0, 0, 0]
    run = interp.run_named({a: Tensor(xs, exps[a], "int8"), b: Tensor(ys, exps[b], "int8")})
    assert list(run.tensors[model.outputs[0].name].data.reshape(-1)[:3]) == [127, -128, 0]
    assert not np.any(run.tensors[model.outputs[0].name].data.reshape(-1)[3:])  # 0 / 1 == 0


def test_int16_resize_is_refused_because_esp_dl_3_3_9_does_not_compute_it(root, tmp_path):
    """dl_base_resize.cpp: resize<int16_t> has an empty body, so the chip leaves an int16 Resize output unwritten;
    the interpreter says so instead of inventing a result."""
    from quant.errors import UserError

    case = opgen.CASES["conf_resize_nearest_2x_s8"]
    model = load(opgen.generate(opgen.Case("resize16", case.make, case.shape, 16), tmp_path))
    with pytest.raises(UserError, match=r"Resize .*only in int8.*resize<int16_t>"):
        verify_model(model)


def _space_to_depth_loop(x, bs):
    """esp-dl/dl/module/include/dl_module_space_to_depth.hpp:23-48, element by element."""
    n, h, w, c = x.shape
    oc, ow = c * bs * bs, w // bs
    out = np.zeros(x.size, x.dtype)
    flat = iter(x.reshape(-1))
    for b in range(n):
        for i in range(h):
            for j in range(w):
                for k in range(c):
                    o = b * h * w * c + (i // bs) * ow * oc + (j // bs) * oc + k * bs * bs + (i % bs) * bs + (j % bs)
                    out[o] = next(flat)
    return out.reshape(n, h // bs, w // bs, oc)


def _depth_to_space_loop(x, bs, mode):
    """esp-dl/dl/module/include/dl_module_depth_to_space.hpp:24-71 (CRD and DCR), element by element."""
    n, h, w, c = x.shape
    oc = c // (bs * bs)
    out = np.zeros(x.size, x.dtype)
    flat = iter(x.reshape(-1))
    for b in range(n):
        for i in range(h):
            for j in range(w):
                for k in range(c):
                    if mode == "CRD":
                        o_c, o_h, o_w = k // (bs * bs), i * bs + (k % (bs * bs)) // bs, j * bs + k % bs
                    else:
                        o_c, o_h, o_w = k % bs, i * bs + k // (bs * bs), j * bs + (k % (bs * bs)) // bs
                    out[b * h * w * c + o_h * w * bs * oc + o_w * oc + o_c] = next(flat)
    return out.reshape(n, h * bs, w * bs, oc)


@pytest.mark.parametrize("op, bs, mode", [("SpaceToDepth", 2, None), ("SpaceToDepth", 3, None),
                                          ("DepthToSpace", 2, "CRD"), ("DepthToSpace", 2, "DCR")])
def test_space_depth_moves_follow_esp_dl_loops(op, bs, mode):
    """ESP-DL's SpaceToDepth is channel-major (c * bs^2 + dh * bs + dw), not ONNX's order: the generator's
    SpaceToDepth models agree only with this (8 of 8 after the fix, 0 before)."""
    from types import SimpleNamespace

    from quant.espdl.reader import ValueInfo

    rng = np.random.default_rng(0)
    # ESP-DL's DCR indexing stays in range only when C / bs^2 == bs
    shape = {"SpaceToDepth": (2, 6, 3 * bs, 5), "CRD": (1, 3, 4, 4 * bs * bs), "DCR": (1, 3, 4, bs ** 3)}[mode or op]
    x = rng.integers(-128, 128, shape).astype(np.int8)
    expected = _space_to_depth_loop(x, bs) if op == "SpaceToDepth" else _depth_to_space_loop(x, bs, mode)
    attrs = {"blocksize": bs, "quant_type": "S8"} | ({"mode": mode} if mode else {})
    node = SimpleNamespace(op_type=op, name="n", inputs=["x"], outputs=["y"], attributes=attrs)
    model = SimpleNamespace(values={"y": ValueInfo("y", "int8", list(expected.shape), [-3])}, initializers={},
                            nodes=[], inputs=[], outputs=[])
    interp = Interpreter.__new__(Interpreter)
    interp.model = model
    (out,) = getattr(interp, f"_op_{op}")(node, [Tensor(x, -3, "int8")], [])
    assert out.data.shape == expected.shape and np.array_equal(out.data, expected)
