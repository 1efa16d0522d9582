"""The host interpreter computes what ESP-DL computes on an ESP32-S3: half-up rounding, saturation, ESP-DL's
packed filter layouts, and, on the committed variants, the simulator's reference on every fixed vector."""

import contextlib
import io
import json
from fractions import Fraction

import numpy as np
import pytest

from quant.board import judge as compare

from quant.espdl import reader as espdl
from quant.errors import UserError
from quant.espdl.interpreter import Interpreter, quantize_input, shift_round, unpack_filter
from quant.folder import VARIANTS, variant_file


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
    t = espdl.StoredTensor("w", dtype, tuple(packed.shape), (-7,), packed.reshape(-1).astype(dtype), layout)
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


def _run_variant(variant, simulator_arithmetic: bool):
    from quant.folder import load_vectors

    espdl_path, cfg_path, ref_path = _variant_or_skip(variant)
    model = espdl.load(espdl_path)
    cfg = json.loads(cfg_path.read_text())
    reference = json.loads(ref_path.read_text())
    interp = Interpreter(model, exact_average=simulator_arithmetic, wide_accumulators=simulator_arithmetic)
    outputs, notes, worst = {}, {}, 0
    for i, x in enumerate(load_vectors()[0]):
        res = interp.run_full(x[None])
        for n in res.notes:
            notes.setdefault(n.node, n.message)
        got = {o.name: res.tensors[o.name] for o in model.outputs}
        outputs[i] = got
        for name, t in reference["outputs"][i]["tensors"].items():
            worst = max(worst, int(np.abs(got[name].data.reshape(-1).astype(np.int64) - np.asarray(t["data"])).max()))
    verdict = compare.compare_outputs(variant, outputs, {}, reference, cfg)
    return verdict, cfg, model, notes, worst


def _int16_layers(model):
    return [n.name for n in model.nodes if n.attributes.get("quant_type") == "S16" and n.op_type in ("Conv", "Gemm")]


def _xfail_if_known(request, variant, verdict, cfg, model, chip_notes=None):
    """Mark the running test as an expected failure when the mismatch is one of the documented ESP-DL vs
    simulator differences (docs/espdl-tools.md, 'Known differences between ESP-DL and the PPQ simulator'); the reason lands in the test summary (not silent)."""
    if verdict.ok:
        return
    sim_verdict, _, _, _, sim_worst = _run_variant(variant, simulator_arithmetic=True)
    reasons = [f"{k}: {v}" for k, v in sorted((chip_notes or {}).items())] if sim_verdict.ok else []
    if not sim_verdict.ok and _int16_layers(model) and sim_worst <= 1:
        reasons.append(f"{len(_int16_layers(model))} int16 Conv/Gemm layers that esp-ppq simulates in float32 "
                       f"(ESPDL_S3_INT16; exact with ESPDL_S3_H_PRE_INT16): {sim_worst} LSB left with the "
                       f"simulator's arithmetic")
        reasons += [f"{k}: {v}" for k, v in sorted((chip_notes or {}).items())]
    if reasons:
        request.applymarker(pytest.mark.xfail(strict=True, reason="known ESP-DL vs simulator difference: "
                                              + "; ".join(reasons) + " -- " + verdict.message(cfg.get("tolerance")).splitlines()[0]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_interpreter_matches_the_simulator_reference_on_every_fixed_vector(request, variant):
    """Bit for bit except the known S3 differences: with exact average pools and unbounded accumulators the
    integer pipeline reproduces the simulator's reference under the variant's tolerance."""
    verdict, cfg, model, _, _ = _run_variant(variant, simulator_arithmetic=True)
    if not verdict.ok and _int16_layers(model):
        _xfail_if_known(request, variant, verdict, cfg, model)
    assert verdict.ok, verdict.message(cfg.get("tolerance"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_chip_arithmetic_matches_the_simulator_reference(request, variant):
    """What the chip computes (S3 average pooling and saturating accumulators included) against the reference;
    a mismatch explained by a documented difference is an expected failure naming it, any other fails."""
    verdict, cfg, model, notes, _ = _run_variant(variant, simulator_arithmetic=False)
    _xfail_if_known(request, variant, verdict, cfg, model, notes)
    assert verdict.ok, verdict.message(cfg.get("tolerance"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_interpreter_reproduces_the_variants_embedded_test_value(request, variant):
    """The embedded test value is what ESP-DL's model->test() checks on the chip."""
    from quant.espdl.verify import diagnose, verify_model

    espdl_path, _, _ = _variant_or_skip(variant)
    model = espdl.load(espdl_path)
    checks, notes = verify_model(model)
    if not all(c.ok for c in checks):
        explained, why = diagnose(model)
        if explained:
            request.applymarker(pytest.mark.xfail(strict=True, reason=why + ": " + "; ".join(
                sorted({f"{n.node}: {n.message}" for n in notes}))))
    assert all(c.ok for c in checks), checks
