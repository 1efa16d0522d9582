"""Distillation fine-tunes an edited float graph towards the original model, deterministically, without labels."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant.errors import UserError
from quant.variants.distill import Distillation, distill


def _tiny(activation: str, op: str = "ReduceMean") -> bytes:
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (4, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b"),
             numpy_helper.from_array(rng.normal(0, 1, (4, 3)).astype(np.float32), "fc"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
             numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(0.5, np.float32), "hi")]
    act = (helper.make_node("Clip", ["c", "lo", "hi"], ["a"], name="clip") if activation == "clip"
           else helper.make_node("Relu", ["c"], ["a"], name="relu"))
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]), act,
             helper.make_node(op, ["a", "axes"], ["m"], name="mean", keepdims=1) if op == "ReduceMean"
             else helper.make_node(op, ["a"], ["m"], name="odd"),
             helper.make_node("Flatten", ["m"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc"], ["logits"], name="gemm")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


IMAGES = np.random.default_rng(2).random((32, 1, 8, 8), dtype=np.float32)
CFG = Distillation(epochs=3, images=32, batch=8, learning_rate=1e-2)


def test_the_student_moves_towards_the_teacher():
    new, record = distill(_tiny("relu"), _tiny("clip"), IMAGES, CFG)
    assert record["kd_loss_after"] < record["kd_loss_before"]
    weights = {t.name for t in onnx.load_from_string(new).graph.initializer}
    assert weights == {t.name for t in onnx.load_from_string(_tiny("relu")).graph.initializer}


def test_distillation_is_deterministic():
    assert distill(_tiny("relu"), _tiny("clip"), IMAGES, CFG)[0] == distill(_tiny("relu"), _tiny("clip"), IMAGES, CFG)[0]


def test_an_operator_it_cannot_run_is_a_clear_error():
    with pytest.raises(UserError, match="cannot run operator Erf"):
        distill(_tiny("relu", op="Erf"), _tiny("clip"), IMAGES, CFG)
