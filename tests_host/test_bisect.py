"""`quant diff` names the first layer where two runs diverge: a fault injected into one layer's weights or
into one intermediate tensor is localized to that layer, from in-memory tensors and from a board transcript."""

import copy
from argparse import Namespace

import numpy as np
import pytest

import opgen
from quant.espdl import bisect
from quant.espdl import reader as espdl
from quant.board import protocol
from quant.errors import UserError
from quant.espdl.interpreter import Interpreter
from quant.tensor import Tensor

NAME = "mixed_requant_s8_s16"  # Conv s8 -> RequantizeLinear -> depthwise Conv+Relu s16 -> RequantizeLinear -> Conv s8
OPGEN_NAMES = [NAME, "chain_all_values_mixed"]


@pytest.fixture(scope="module")
def model_path(request, tmp_path_factory):
    return opgen.cached([NAME], opgen.cache_root(request, tmp_path_factory))[NAME]


@pytest.fixture(scope="module")
def model(model_path):
    return espdl.load(model_path)


def _test_input(model):
    t = model.test_inputs[model.inputs[0].name]
    return t.tensor()


def _run(model):
    return Interpreter(model).run_full(_test_input(model)).tensors


def _with_broken_weight(model, name):
    broken = copy.deepcopy(model)
    w = broken.initializers[name]
    data = w.data.astype(np.int64)
    data[::5] = np.clip(data[::5] + 9, *{"int8": (-128, 127), "int16": (-32768, 32767)}[w.dtype])
    w.data = data.astype(w.dtype)
    return broken


def test_a_fault_in_one_layers_weights_is_found_at_that_layer(model):
    good, bad = _run(model), _run(_with_broken_weight(model, "dw.weight"))
    div = bisect.first_divergence(model, good, bad)
    assert div is not None and div.stat.node == "/dw/Conv" and div.stat.op_type == "Conv"
    assert div.agreed_before == 3  # input, first conv, requantize
    assert div.stat.mismatches > 0 and div.stat.max_lsb > 1
    report = bisect.format_report(model, good, bad, label_a="interpreter", label_b="faulty")
    assert "FIRST DIVERGENCE at #3 (values beyond tolerance): Conv /dw/Conv" in report
    print(report)


def test_a_fault_in_one_intermediate_tensor_is_found_there(model):
    good = _run(model)
    bad = dict(good)
    t = good["PPQ_Variable_3"]  # the 16 -> 8 bit RequantizeLinear output
    data = t.data.copy()
    data.reshape(-1)[17] = np.int8(data.reshape(-1)[17] + (1 if data.reshape(-1)[17] < 127 else -1))
    bad["PPQ_Variable_3"] = Tensor(data, t.exponent, t.dtype)
    div = bisect.first_divergence(model, good, bad)
    assert (div.stat.value, div.stat.op_type, div.stat.mismatches, div.stat.max_lsb) == (
        "PPQ_Variable_3", "RequantizeLinear", 1, 1)


def test_int16_layers_tolerate_one_lsb_and_exponents_must_match(model):
    good = _run(model)
    t = good["/relu/Relu_output_0"]
    assert t.dtype == "int16"
    one_off = dict(good, **{"/relu/Relu_output_0": Tensor((t.data.astype(np.int32) + 1).clip(-32768, 32767).astype("int16"),
                                                          t.exponent, t.dtype)})
    assert bisect.first_divergence(model, good, one_off) is None
    two_off = dict(good, **{"/relu/Relu_output_0": Tensor((t.data.astype(np.int32) + 2).clip(-32768, 32767).astype("int16"),
                                                          t.exponent, t.dtype)})
    assert bisect.first_divergence(model, good, two_off).stat.node == "/dw/Conv"
    shifted = dict(good, **{"/relu/Relu_output_0": Tensor(t.data, t.exponent + 1, t.dtype)})
    div = bisect.first_divergence(model, good, shifted)
    assert div.stat.problem == "exponent"
    assert bisect.first_divergence(model, good, shifted, {"same_exponent": False}).stat.problem is None


def _transcript(tensors: dict, path):
    lines = []
    em = protocol.Emitter(write=lines.append)
    em.line("BOOT", fw="1.0.0", variant="int8", target="esp32s3", idf="v5.3.1", espdl="3.3.9", cpu_mhz=240,
            psram_bytes=0, cores=1, runs=1, vectors=1, board="virtual")
    n = 0
    for name, q in tensors.items():
        em.tensor(0, name, q.dtype, q.data.shape, q.exponent, q.data)
        n += 1
    em.end_line(vectors=0, tensors=n, ok=True)
    path.write_text("".join(lines))


def test_diff_command_reads_a_board_dump_transcript(model, model_path, tmp_path, capsys):
    bad = Interpreter(_with_broken_weight(model, "c2.weight")).run_full(_test_input(model)).tensors
    dump = tmp_path / "board.log"
    _transcript(bad, dump)
    rc = bisect.run(Namespace(model=str(model_path), a="interpreter", b=str(dump), vector=-1, tolerance=None, key=None))
    out = capsys.readouterr().out
    assert rc == 1
    assert "FIRST DIVERGENCE at #5 (values beyond tolerance): Conv /c2/Conv" in out
    rc = bisect.run(Namespace(model=str(model_path), a="interpreter", b="interpreter", vector=-1, tolerance=None, key=None))
    assert rc == 0 and "no divergence" in capsys.readouterr().out


def test_sources_without_common_tensors_are_a_user_error(model):
    with pytest.raises(UserError, match="share no tensor"):
        bisect.first_divergence(model, _run(model), {"something_else": None})


def test_diff_against_the_simulator_tensors_embedded_per_layer(request, tmp_path_factory, capsys):
    path = opgen.cached(["chain_all_values_mixed"], opgen.cache_root(request, tmp_path_factory))["chain_all_values_mixed"]
    args = dict(model=str(path), vector=-1, tolerance=None, key=None)
    assert bisect.run(Namespace(a="interpreter", b="embedded", **args)) == 0  # ESP-DL 3.3.9: ACCURATE_INFER
    assert "no divergence" in capsys.readouterr().out
    assert bisect.run(Namespace(a="interpreter-fixed-average", b="embedded", **args)) == 1
    out = capsys.readouterr().out
    assert "FIRST DIVERGENCE at #13 (values beyond tolerance): GlobalAveragePool /GlobalAveragePool" in out
    assert "11 earlier tensors agree" in out
    assert bisect.run(Namespace(a="interpreter-exact", b="embedded", **args)) == 0
