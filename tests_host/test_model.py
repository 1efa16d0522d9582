"""The committed float model and the network definition."""

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from quant.variants import data
from quant.variants.model import build_model, convert_relu6_to_relu, count_params
from quant.folder import FLOAT_META, FLOAT_ONNX
from quant.variants.train import evaluate_onnx

META = json.loads(FLOAT_META.read_text())


def _dims(value_info):
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_committed_onnx_has_the_stable_input_and_output():
    graph = onnx.load(str(FLOAT_ONNX)).graph
    assert [i.name for i in graph.input] == ["image"] and _dims(graph.input[0]) == [1, 1, 96, 96]
    assert [o.name for o in graph.output] == ["logits"] and _dims(graph.output[0]) == [1, len(data.CLASSES)]


def test_committed_onnx_is_mobilenetv2_style_with_residual_adds_and_relu6():
    ops = [n.op_type for n in onnx.load(str(FLOAT_ONNX)).graph.node]
    assert ops.count("Add") >= 3 and ops.count("Clip") >= 10
    assert "GlobalAveragePool" in ops and ops[-1] == "Gemm"
    assert "BatchNormalization" not in ops  # folded by the export


def test_metadata_describes_the_committed_onnx():
    assert META["onnx_sha256"] == hashlib.sha256(FLOAT_ONNX.read_bytes()).hexdigest()
    assert META["classes"] == list(data.CLASSES)
    assert META["input"]["name"] == "image" and META["output"]["name"] == "logits"
    assert META["heldout"]["images"] >= 1000 and META["heldout"]["seed"] == data.HELDOUT_SEED
    assert META["heldout"]["top1"] >= 0.97


def test_onnxruntime_reproduces_the_recorded_heldout_accuracy():
    x, y = data.heldout(META["heldout"]["images"])
    assert evaluate_onnx(FLOAT_ONNX, x, y) == pytest.approx(META["heldout"]["top1"], abs=1e-6)


def test_the_network_is_small_and_relu6_can_be_swapped_for_relu():
    torch.manual_seed(0)
    model = build_model(len(data.CLASSES))
    assert 20_000 <= count_params(model) <= 60_000
    x = torch.rand(2, 1, 96, 96)
    model.eval()
    before = model(x)
    convert_relu6_to_relu(model)
    assert not any(isinstance(m, nn.ReLU6) for m in model.modules())
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 16
    assert before.shape == model(x).shape == (2, len(data.CLASSES))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out", "model.txt"], "must end in .onnx"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--out", "/proc/no_such_dir/m.onnx"], "cannot create"),
    ],
)
def test_train_refuses_bad_arguments_before_training(argv, message):
    import argparse

    from quant.variants import train
    from quant.errors import UserError

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    with pytest.raises(UserError, match=message):
        train.run(parser.parse_args(argv))
