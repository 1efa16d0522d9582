"""The .espdl reader sees what esp-ppq wrote (cross-checked with esp-ppq's own FlatBuffers classes), and
every bad input is a one-line UserError naming the problem and the fix."""

import contextlib
import io
import subprocess
import sys
from argparse import Namespace

import numpy as np
import pytest

import opgen
from quant.espdl import reader as espdl
from quant.errors import UserError

NAMES = ["mixed_requant_s8_s16", "head_gap_gemm_s8"]
OPGEN_NAMES = NAMES


@pytest.fixture(scope="module")
def files(request, tmp_path_factory):
    return opgen.cached(NAMES, opgen.cache_root(request, tmp_path_factory))


@pytest.fixture(scope="module")
def ppq_helper():
    with contextlib.redirect_stdout(io.StringIO()):  # esp_ppq prints a banner on import
        from esp_ppq.parser.espdl import helper
        from esp_ppq.parser.espdl.FlatBuffers.Dl import Model
    return helper, Model


def _ppq_tensor(helper, t):
    buf = b"".join(t.RawData(i).BytesAsNumpy().tobytes() for i in range(t.RawDataLength()))
    dims = [int(d) for d in t.DimsAsNumpy()] if t.DimsLength() else []
    count = int(np.prod(dims)) if dims else 1
    data = np.frombuffer(buf, helper.tensor_dtype_to_np_dtype(t.DataType()))[:count]
    exps = [int(e) for e in t.ExponentsAsNumpy()] if t.ExponentsLength() else []
    return t.Name().decode(), dims, exps, data


@pytest.mark.parametrize("name", NAMES)
def test_reader_matches_esp_ppq_flatbuffers_classes(files, ppq_helper, name):
    helper, Model = ppq_helper
    raw = files[name].read_bytes()
    ours = espdl.load(files[name])
    g = Model.Model.GetRootAs(raw[16:], 0).Graph()

    assert [n.name for n in ours.nodes] == [g.Node(i).Name().decode() for i in range(g.NodeLength())]
    assert [n.op_type for n in ours.nodes] == [g.Node(i).OpType().decode() for i in range(g.NodeLength())]
    for i, node in enumerate(ours.nodes):
        theirs = g.Node(i)
        assert node.inputs == [theirs.Input(j).decode() for j in range(theirs.InputLength())]
        assert set(node.attributes) == {theirs.Attribute(j).Name().decode() for j in range(theirs.AttributeLength())}

    assert len(ours.initializers) == g.InitializerLength()
    for i in range(g.InitializerLength()):
        tname, dims, exps, data = _ppq_tensor(helper, g.Initializer(i))
        t = ours.initializers[tname]
        assert list(t.dims) == dims and list(t.exponents) == exps
        np.testing.assert_array_equal(t.data, data)

    for getter, count, ours_tests in ((g.TestInputsValue, g.TestInputsValueLength(), ours.test_inputs),
                                      (g.TestOutputsValue, g.TestOutputsValueLength(), ours.test_outputs)):
        assert count == len(ours_tests) > 0
        for i in range(count):
            tname, dims, exps, data = _ppq_tensor(helper, getter(i))
            np.testing.assert_array_equal(ours_tests[tname].data, data)
            assert ours_tests[tname].exponent == exps[0]

    value_exps = {g.ValueInfo(i).Name().decode(): int(g.ValueInfo(i).Exponents(0)) for i in range(g.ValueInfoLength())}
    assert {k: ours.values[k].exponent for k in value_exps} == value_exps


def test_header_attributes_and_layouts(files):
    m = espdl.load(files["mixed_requant_s8_s16"])
    size = files["mixed_requant_s8_s16"].stat().st_size
    assert (m.header.magic, m.header.encrypted, m.header.payload_bytes, m.header.file_bytes) == (
        b"EDL2", False, size - 16, size)
    conv = next(n for n in m.nodes if n.name == "/dw/Conv")
    assert conv.attributes["quant_type"] == "S16" and conv.attributes["group"] == 16
    assert conv.attributes["activation"] == "Relu" and conv.attributes["pads"] == [1, 1, 1, 1]
    assert [n.op_type for n in m.nodes].count("RequantizeLinear") == 2
    assert m.initializers["dw.weight"].layout == "(N/8)HWC8" and m.initializers["dw.weight"].dtype == "int16"
    assert m.initializers["dw.bias"].dtype == "int64" and m.initializers["c1.bias"].dtype == "int32"
    assert m.initializers["c1.weight"].layout == "(N/16)HWC16"
    lut = espdl.load(files["head_gap_gemm_s8"]).initializers["Clip_lut_0"]
    assert lut.dims == (256,) and lut.dtype == "int8"


def test_encrypted_file_needs_its_key(files, ppq_helper, tmp_path):
    helper, _ = ppq_helper
    raw = files["head_gap_gemm_s8"].read_bytes()
    enc = tmp_path / "enc.espdl"
    key = helper.save(raw[16:], str(enc), encrypt_data=True)  # esp-ppq's own AES export; returns "0x.., ..."
    assert enc.read_bytes()[4:8] == b"\x01\x00\x00\x00"
    with pytest.raises(UserError, match="--key"):
        espdl.load(enc)
    model = espdl.load(enc, key=key)
    assert model.header.encrypted
    np.testing.assert_array_equal(model.test_outputs["11"].data, espdl.load(files["head_gap_gemm_s8"]).test_outputs["11"].data)
    wrong = bytes(b ^ 0x5A for b in espdl.parse_key(key))
    with pytest.raises(UserError, match="wrong --key"):
        espdl.load(enc, key=wrong)


@pytest.mark.parametrize("content, message", [
    (None, "is not a file"),
    (b"EDL2\x00", "truncated"),
    (b"GIF89a" + bytes(40), "not an ESP-DL model file"),
    (b"PDL3" + bytes(40), "multi-model pack"),
])
def test_bad_files_are_one_line_user_errors(tmp_path, content, message):
    path = tmp_path / "m.espdl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message) as exc:
        espdl.load(path)
    assert "\n" not in str(exc.value)


def test_truncated_payload_is_reported(files, tmp_path):
    path = tmp_path / "cut.espdl"
    path.write_bytes(files["head_gap_gemm_s8"].read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated: the header announces"):
        espdl.load(path)


def test_inspect_prints_container_graph_initializers_exponents_tests(files, capsys):
    assert espdl.run(Namespace(file=str(files["mixed_requant_s8_s16"]), key=None, values=True)) == 0
    out = capsys.readouterr().out
    for text in ("EDL2  plain", "graph: 5 nodes", "RequantizeLinear", "layout (N/8)HWC8", "dw.bias  int64 [16]",
                 "value exponents: 6", "PPQ_Variable_0  int16 [1, 8, 8, 16]  exp [-13]", "test inputs: 1",
                 "test outputs: 1", "metadata: 0"):
        assert text in out


def test_cli_bad_file_exits_2_with_one_line(tmp_path):
    path = tmp_path / "x.espdl"
    path.write_bytes(b"not a model at all, just text")
    proc = subprocess.run([sys.executable, "-m", "quant", "inspect", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
