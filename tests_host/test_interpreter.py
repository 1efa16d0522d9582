"""The host interpreter computes what ESP-DL computes on an ESP32-S3: half-up rounding, saturation, ESP-DL's
packed filter layouts, and, on the committed variants, the simulator's reference on every fixed vector."""

import contextlib
import io
import json
from fractions import Fraction

import numpy as np
import pytest

from quant import compare, espdl
from quant.errors import UserError
from quant.interpreter import Interpreter, quantize_input, shift_round, unpack_filter
from quant.paths import VARIANTS, variant_file


def test_requantization_shift_rounds_half_up_like_esp_dl():
    acc = np.arange(-40, 41, dtype=np.int64)
    for shift in (1, 2, 3, 5):
        expected = [int((Fraction(int(a), 2**shift) + Fraction(1, 2)).__floor__()) for a in acc]
        assert shift_round(acc, shift).tolist() == expected
    assert shift_round(np.array([-3, 7]), 0).tolist() == [-3, 7]
    assert shift_round(np.array([-3, 7]), -2).tolist() == [-12, 28]


def test_input_quantization_rounds_half_up_and_saturates():
    x = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 1000.0, -1000.0], np.float32) / 128
    assert quantize_input(x, -7, "int8").tolist() == [1, 0, 2, -1, 3, -2, 127, -128]
    assert quantize_input(np.array([4.0, -4.0], np.float32), -13, "int16").tolist() == [32767, -32768]


@pytest.fixture(scope="module")
def esp_ppq_layout():
    with contextlib.redirect_stdout(io.StringIO()):
        import torch
        from esp_ppq.core import TargetPlatform
        from esp_ppq.parser.espdl.export_patterns import ResetParamLayoutPattern

    def pack(weight_nchw: np.ndarray, quant_type: str, group: int):
        tensor, layout = ResetParamLayoutPattern().reset_conv_filter_layout(
            torch.from_numpy(weight_nchw), quant_type, group, TargetPlatform.ESPDL_S3_INT8)
        return tensor.numpy(), layout

    return pack


@pytest.mark.parametrize("n, c, k, group, quant_type", [
    (16, 3, 3, 1, "S8"), (20, 5, 3, 1, "S8"), (7, 32, 1, 1, "S8"), (33, 8, 1, 1, "S8"),
    (24, 1, 3, 24, "S8"), (20, 1, 3, 20, "S8"), (8, 4, 3, 1, "S16"), (12, 4, 3, 1, "S16"), (20, 1, 3, 20, "S16"),
])
def test_filter_unpacking_undoes_esp_ppq_packing(esp_ppq_layout, n, c, k, group, quant_type):
    dtype = "int16" if quant_type == "S16" else "int8"
    w = np.random.default_rng(n * 100 + c).integers(-100, 100, size=(n, c, k, k)).astype(np.float32)
    packed, layout = esp_ppq_layout(w, quant_type, group)
    t = espdl.Tensor("w", dtype, tuple(packed.shape), (-7,), packed.reshape(-1).astype(dtype), layout)
    np.testing.assert_array_equal(unpack_filter(t, group, dtype), w.transpose(0, 2, 3, 1))


def _tiny_model(op_type: str) -> espdl.EspdlModel:
    vi = espdl.ValueInfo("x", "int8", (1, 4), (-7,))
    vo = espdl.ValueInfo("y", "int8", (1, 4), (-7,))
    return espdl.EspdlModel(
        path=None, header=espdl.Header(b"EDL2", False, 0, 16), sha256="", producer="", ir_version=8,
        nodes=[espdl.Node("n0", op_type, ["x"], ["y"], {"quant_type": "S8"})], initializers={},
        values={"x": vi, "y": vo}, inputs=[vi], outputs=[vo], test_inputs={}, test_outputs={}, metadata={})


def test_unsupported_operator_is_named():
    with pytest.raises(UserError, match="NonMaxSuppression not supported"):
        Interpreter(_tiny_model("NonMaxSuppression"))


def test_relu_and_integer_input_path():
    out = Interpreter(_tiny_model("Relu")).run(np.array([[-5, 0, 3, 127]], np.int8))
    assert out["y"].data.tolist() == [[0, 0, 3, 127]] and out["y"].exponent == -7


# --------------------------------------------------------------------------- the committed variants
def _variant_or_skip(variant):
    paths = [variant_file(variant, s) for s in (".espdl", ".json", ".reference.json")]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"gesture_model_{variant} is not built yet (run `quant build`)")
    return paths


def _verdict(variant, exact_average: bool):
    from quant.vectors import load_vectors

    espdl_path, cfg_path, ref_path = _variant_or_skip(variant)
    model = espdl.load(espdl_path)
    cfg = json.loads(cfg_path.read_text())
    reference = json.loads(ref_path.read_text())
    x, _ = load_vectors()
    interp = Interpreter(model, exact_average=exact_average)
    outputs = {}
    for i in range(len(x)):
        got = interp.run(x[i : i + 1])
        outputs[i] = {name: compare.Tensor(q.dtype, tuple(q.data.shape), q.exponent, tuple(q.data.reshape(-1).tolist()))
                      for name, q in got.items()}
    return compare.compare_outputs(variant, outputs, {}, reference, cfg), cfg, model


@pytest.mark.parametrize("variant", VARIANTS)
def test_interpreter_matches_the_simulator_reference_on_every_fixed_vector(variant):
    """Everything but the ESP32-S3 average pool, bit for bit: with exact division the integer pipeline
    reproduces the simulator's reference under the variant's tolerance."""
    verdict, cfg, _ = _verdict(variant, exact_average=True)
    assert verdict.ok, verdict.message(cfg.get("tolerance"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_chip_arithmetic_matches_the_simulator_reference(request, variant):
    """What the chip computes (S3 fixed-point average pooling included) against the reference. A mismatch
    in a variant with an average pool is reported as an expected failure naming the cause (xfail, listed in
    the test summary: not silent); any other mismatch fails."""
    verdict, cfg, model = _verdict(variant, exact_average=False)
    inexact = [n.name for n in model.nodes if n.op_type in ("GlobalAveragePool", "AveragePool")]
    if not verdict.ok and inexact and _verdict(variant, exact_average=True)[0].ok:
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            f"ESP32-S3 averages with a fixed-point 1/n in {', '.join(inexact)} (docs/readme/espdl.md): "
            + verdict.message(cfg.get("tolerance")).splitlines()[0])))
    assert verdict.ok, verdict.message(cfg.get("tolerance"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_interpreter_reproduces_the_variants_embedded_test_value(variant):
    from quant.verify import verify_model

    espdl_path, _, _ = _variant_or_skip(variant)
    checks, _ = verify_model(espdl.load(espdl_path))
    assert all(c.ok for c in checks), checks


def test_int8_accumulators_saturate_at_the_s3_20_bit_lane_and_say_so():
    c, n = 64, 16  # 16 output channels: the aligned QACC path
    vi = espdl.ValueInfo("x", "int8", (1, c), (0,))
    vo = espdl.ValueInfo("y", "int8", (1, n), (13,))
    w = espdl.Tensor("w", "int8", (1, 1, c, n), (0,), np.full(c * n, 127, np.int8), "(N/16)HWC16")
    model = espdl.EspdlModel(
        path=None, header=espdl.Header(b"EDL2", False, 0, 16), sha256="", producer="", ir_version=8,
        nodes=[espdl.Node("fc", "Gemm", ["x", "w"], ["y"], {"quant_type": "S8", "activation": "Linear"})],
        initializers={"w": w}, values={"x": vi, "y": vo}, inputs=[vi], outputs=[vo], test_inputs={},
        test_outputs={}, metadata={})
    res = Interpreter(model).run_full(np.full((1, c), 74, np.int8))
    # 64 * 127 * 74 = 601472 > 2^19 - 1: the lane holds 524287, and 524287 / 2^13 rounds to 64 (not 73)
    assert res.tensors["y"].data.tolist() == [[64] * n]
    assert any("saturates" in note.message for note in res.notes)
