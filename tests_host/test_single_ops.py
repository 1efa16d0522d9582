"""Single-operator models exported by esp-ppq for esp32s3 (int8 and int16): the host interpreter reproduces
their embedded test outputs under ESP-DL's own test() rule (int8 exact, int16 +-1 LSB, same exponent)."""

import pytest

import opgen
from quant.espdl.reader import load
from quant.espdl.verify import verify_model

SMALL = [name for name, case in opgen.CASES.items() if "model" not in case.marks]
LAYERWISE = "chain_all_values_mixed"  # embeds every intermediate tensor
# ESP32-S3 averages a 6x6 window with the fixed-point reciprocal 56/2048 instead of 1/36 (esp-dl
# dl_base_pool2d.hpp get_pool_args, dl_tie728_s8_avg_pool2d.S); esp-ppq's simulator divides exactly.
DIVERGES_ON_CHIP = {"head_gap_gemm_s8", LAYERWISE}


@pytest.fixture(scope="module")
def models(request, tmp_path_factory):
    return opgen.cached(SMALL, opgen.cache_root(request, tmp_path_factory))


@pytest.mark.parametrize("name", sorted(set(SMALL) - DIVERGES_ON_CHIP))
def test_interpreter_reproduces_embedded_test_outputs(models, name):
    checks, notes = verify_model(load(models[name]))
    assert checks, "the model embeds no test outputs"
    for c in checks:
        assert c.ok, f"{name}: {c}"


@pytest.mark.parametrize("name", sorted(DIVERGES_ON_CHIP))
def test_s3_average_pool_diverges_from_simulator_and_exact_division_agrees(models, name):
    model = load(models[name])
    chip, _ = verify_model(model)
    simulator, _ = verify_model(model, exact_average=True)
    assert not all(c.ok for c in chip), "the S3 fixed-point average now matches the simulator: update the docs"
    assert all(c.ok for c in simulator)


def test_every_layer_agrees_with_the_simulator_up_to_the_global_average_pool(models):
    model = load(models[LAYERWISE])
    chip, _ = verify_model(model)
    assert len(chip) >= 12 and chip[-1].name == model.outputs[0].name
    first_bad = next(i for i, c in enumerate(chip) if not c.ok)
    gap = chip[first_bad]
    assert gap.name == "/GlobalAveragePool_output_0"
    # 6x6 window: the chip scales by 56/2048 instead of 1/36, i.e. 1.6 % low, plus one rounding step
    assert gap.max_lsb <= 127 * (1 - 56 * 36 / 2048) + 1
    assert all(c.ok and c.max_lsb == 0 for c in chip[:first_bad])  # conv, clip, int16 dw, add: all exact
    assert {c.expected_dtype for c in chip[:first_bad]} == {"int8", "int16"}
    assert all(c.ok for c in verify_model(model, exact_average=True)[0])


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

    good = [str(models[n]) for n in ("conv3x3_relu_s8", "add_residual_s16")]
    assert verify.run(Namespace(files=good, key=None, exact_average=False, wide_accumulators=False)) == 0
    assert "2/2 models agree" in capsys.readouterr().out
    assert verify.run(Namespace(files=[str(models["head_gap_gemm_s8"])], key=None, exact_average=False, wide_accumulators=False)) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL") and "worst |diff| 1 LSB (allowed 0)" in out and "diagnosis: with the simulator's arithmetic for ESP32-S3's fixed-point 1/n" in out
    assert verify.run(Namespace(files=[str(models["head_gap_gemm_s8"])], key=None, exact_average=True, wide_accumulators=False)) == 0
