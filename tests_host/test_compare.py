"""The board's outputs are held to the simulator under the variant's tolerance, and a mismatch
names the vector, the tensor, the element and the LSB difference."""

import pytest

from quant.board.judge import compare_outputs
from quant.board.protocol import Input
from quant.tensor import Tensor

TOL = {"int8_lsb": 0, "int16_lsb": 1, "same_exponent": True, "same_top1": True, "reason": None}
CFG = {"input": {"name": "image", "dtype": "int8", "exponent": -7}, "outputs": [{"name": "logits"}], "tolerance": TOL}
LOGITS = [[98, -17, 15, -53, -66, -7, 3], [-20, 40, 39, 0, 1, 2, 3], [5, 4, 3, 2, 1, 0, 60]]


def reference(dtype="int8", exponent=-4, rows=LOGITS):
    return {"format": 1, "variant": "int8", "outputs": [
        {"vector": i, "name": f"vec{i}", "top1": max(range(len(r)), key=r.__getitem__),
         "tensors": {"logits": {"dtype": dtype, "shape": [1, len(r)], "exponent": exponent, "data": list(r)}}}
        for i, r in enumerate(rows)]}


def board(dtype="int8", exponent=-4, rows=LOGITS):
    outputs = {i: {"logits": Tensor.of(dtype, (1, len(r)), exponent, r)} for i, r in enumerate(rows)}
    inputs = {i: Input(f"vec{i}", -7, "int8") for i in range(len(rows))}
    return outputs, inputs


def changed(rows, vec, element, delta):
    out = [list(r) for r in rows]
    out[vec][element] += delta
    return out


def test_identical_outputs_match():
    verdict = compare_outputs("int8", *board(), reference(), CFG)
    assert verdict.ok and verdict.vectors == 3 and verdict.tensors == 3
    assert "3 output tensors on 3 vectors match" in verdict.message(TOL)


def test_one_int8_element_off_by_one_fails_naming_vector_tensor_and_element():
    verdict = compare_outputs("int8", *board(rows=changed(LOGITS, 2, 4, +1)), reference(), CFG)
    assert not verdict.ok and verdict.bad_vectors == [2]
    text = verdict.message(TOL)
    assert "vector 2 'vec2', tensor 'logits'" in text
    assert "element 4 at NHWC (0, 4), +1 LSB" in text
    assert "[4] (0, 4): 2 vs 1 (+1 LSB)" in text
    assert "int8 bit-exact" in text


def test_int16_within_one_lsb_passes_and_two_lsb_fails():
    ref16 = reference(dtype="int16", rows=[[1000, -2000, 30]])
    assert compare_outputs("mixed", *board("int16", rows=[[1001, -2001, 30]]), ref16, CFG).ok
    verdict = compare_outputs("mixed", *board("int16", rows=[[1000, -2002, 30]]), ref16, CFG)
    assert not verdict.ok
    assert "element 1 at NHWC (0, 1), -2 LSB" in verdict.message(TOL)


def test_a_wrong_output_exponent_fails():
    verdict = compare_outputs("int8", *board(exponent=-3), reference(exponent=-4), CFG)
    assert not verdict.ok and verdict.bad_vectors == [0, 1, 2]
    assert "exponent -3 on the board, -4 in the simulator" in verdict.message(TOL)


def test_a_changed_top1_fails_even_within_a_loosened_lsb_tolerance():
    loose = dict(CFG, tolerance=dict(TOL, int8_lsb=2, reason="test"))
    verdict = compare_outputs("int8", *board(rows=changed(LOGITS, 1, 2, +2)), reference(), loose)
    assert not verdict.ok
    assert "vector 1 'vec1': top-1 class 2 on the board, 1 in the simulator" in verdict.message(loose["tolerance"])


def test_first_differences_are_listed_in_order_and_capped():
    rows = [[0] * 64]
    bad = [[v + 1 for v in rows[0]]]
    big = {"format": 1, "outputs": [{"vector": 0, "name": "z", "top1": 0, "tensors": {"x": {
        "dtype": "int8", "shape": [1, 4, 4, 4], "exponent": 0, "data": rows[0]}}}]}
    got = {0: {"x": Tensor.of("int8", (1, 4, 4, 4), 0, bad[0])}}
    text = compare_outputs("int8", got, {}, big, {"tolerance": TOL}).message(TOL)
    assert "64 of 64 elements differ" in text
    assert "[0] (0, 0, 0, 0): 1 vs 0 (+1 LSB)" in text and "[5] (0, 0, 1, 1)" not in text
    assert "... and 59 more" in text


def test_the_input_exponent_the_board_used_must_be_the_models():
    outputs, inputs = board()
    inputs[1] = Input("vec1", -6, "int8")
    verdict = compare_outputs("int8", outputs, inputs, reference(), CFG)
    assert verdict.bad_vectors == [1]
    assert "input quantized with exponent -6 on the board, the model's input exponent is -7" in verdict.message()


@pytest.mark.parametrize("mutate, words", [
    (lambda o: o.pop(2), "vector 2 'vec2': the board printed no output"),
    (lambda o: o[0].pop("logits"), "tensor 'logits': missing on the board"),
    (lambda o: o.__setitem__(0, {"logits": Tensor.of("int16", (1, 7), -4, LOGITS[0])}), "dtype int16 on the board"),
    (lambda o: o.__setitem__(0, {"logits": Tensor.of("int8", (7,), -4, LOGITS[0])}), "shape 7 on the board, 1x7"),
])
def test_missing_or_reshaped_outputs_fail(mutate, words):
    outputs, inputs = board()
    mutate(outputs)
    verdict = compare_outputs("int8", outputs, inputs, reference(), CFG)
    assert not verdict.ok and words in verdict.message()
