"""Single-operator models exported by esp-ppq for esp32s3 (int8 and int16): the host interpreter reproduces
their embedded test outputs under ESP-DL's own test() rule (int8 exact, int16 +-1 LSB, same exponent)."""

import pytest

import opgen
from quant.espdl.reader import load
from quant.espdl.verify import verify_model
from quant.tensor import Tensor

SMALL = [name for name, case in opgen.CASES.items() if not {"model", "conformance"} & set(case.marks)]
LAYERWISE = "chain_all_values_mixed"  # embeds every intermediate tensor
OPGEN_NAMES = SMALL  # generated in the background from the start of the run (conftest.py)
# ESP-DL 3.3.9 compiles CONFIG_ACCURATE_INFER 1 (esp-dl/dl/dl_define_private.hpp:42): average pools divide in
# float (dl_base_avg_pool2d.cpp avgpool2d_hwc), like the simulator. These two models have a 6x6 global average,
# where the fixed-point 2^e/n of an ESP-DL without ACCURATE_INFER (56/2048 for 36 cells) would differ.
AVERAGING = ("head_gap_gemm_s8", LAYERWISE)


@pytest.fixture(scope="module")
def models(request, tmp_path_factory):
    return opgen.cached(SMALL, opgen.cache_root(request, tmp_path_factory))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_interpreter_reproduces_embedded_test_outputs(models, name):
    checks, notes = verify_model(load(models[name]))
    assert checks, "the model embeds no test outputs"
    for c in checks:
        assert c.ok, f"{name}: {c}"


@pytest.mark.parametrize("name", AVERAGING)
def test_fixed_point_average_option_models_an_espdl_without_accurate_infer(models, name):
    model = load(models[name])
    assert all(c.ok and c.max_lsb == 0 for c in verify_model(model)[0])
    assert not all(c.ok for c in verify_model(model, fixed_point_average=True)[0]), \
        "the fixed-point 1/n branch now matches the embedded values: the option models nothing distinct"


def test_every_layer_of_the_layerwise_model_agrees_bit_exactly(models):
    model = load(models[LAYERWISE])
    chip, _ = verify_model(model)
    assert len(chip) >= 12 and chip[-1].name == model.outputs[0].name
    assert any(c.name == "/GlobalAveragePool_output_0" for c in chip)
    assert all(c.ok and c.max_lsb == 0 for c in chip)  # conv, clip, int16 dw, add, the 6x6 average: all exact
    assert {c.expected_dtype for c in chip} >= {"int8", "int16"}
    fixed, _ = verify_model(model, fixed_point_average=True)
    gap = next(c for c in fixed if not c.ok)
    assert gap.name == "/GlobalAveragePool_output_0"  # the first value the fixed-point branch changes
    assert gap.max_lsb <= 127 * (1 - 56 * 36 / 2048) + 1  # 56/2048 instead of 1/36: 1.6 % low, plus rounding


def test_cases_cover_int8_int16_and_the_variants_operators(models):
    ops, bits = set(), set()
    for name in SMALL:
        m = load(models[name])
        ops |= {n.op_type for n in m.nodes}
        bits |= {n.attributes.get("quant_type") for n in m.nodes}
    assert {"Conv", "Clip", "Add", "RequantizeLinear", "GlobalAveragePool", "Flatten", "Transpose", "Gemm"} <= ops
    assert {"S8", "S16"} <= bits


def test_verify_command_exits_0_when_all_agree_and_1_otherwise(models, capsys):
    from argparse import Namespace

    from quant.espdl import verify

    def args(files, fixed=False):
        return Namespace(files=files, key=None, fixed_point_average=fixed, wide_accumulators=False)

    good = [str(models[n]) for n in ("conv3x3_relu_s8", "add_residual_s16", "head_gap_gemm_s8")]
    assert verify.run(args(good)) == 0
    assert "3/3 models agree" in capsys.readouterr().out
    assert verify.run(args([str(models["head_gap_gemm_s8"])], fixed=True)) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL") and "worst |diff| 1 LSB (allowed 0)" in out and "ESP-DL without ACCURATE_INFER" in out
    assert "fixed-point 1/n" not in out and "average" not in out.split("diagnosis:")[-1]


@pytest.mark.parametrize("name", ["log_f32_s8", "sqrt_f32_s16"])
def test_float32_nodes_run_in_float_and_compare_nan_equal_nan(models, name):
    import numpy as np

    from quant.espdl.verify import compare

    model = load(models[name])
    assert {n.attributes.get("quant_type") for n in model.nodes} == {"F32"}
    (expected,) = model.test_outputs.values()
    assert expected.dtype == "float32" and np.isnan(expected.data).any() and not np.isnan(expected.data).all()
    checks, _ = verify_model(model)
    assert [c.ok for c in checks] == [True] and checks[0].max_abs <= 2e-5
    # the rule can fail: a number where ESP-DL has NaN, and a value off by more than 2e-5
    data = np.asarray(expected.data, np.float32).reshape(expected.dims).copy()
    nan_at = np.flatnonzero(np.isnan(data))[0]
    bad = data.copy().reshape(-1)
    bad[nan_at] = 0.0
    assert compare("y", Tensor(bad.reshape(data.shape), 0, "float32"), expected).mismatches == 1
    bad = data.copy().reshape(-1)
    num_at = np.flatnonzero(~np.isnan(bad))[0]
    bad[num_at] += 1e-4
    c = compare("y", Tensor(bad.reshape(data.shape), 0, "float32"), expected)
    assert c.mismatches == 1 and not c.ok and abs(c.max_abs - 1e-4) < 1e-5

