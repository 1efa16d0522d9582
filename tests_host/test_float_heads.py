"""A classifier ending in Softmax (float32 in ESP-DL): the reference refuses it with a one-line UserError."""

import pytest
import torch
from torch import nn

from quant.errors import UserError
from quant.variants import reference


def test_softmax_head_is_a_clean_user_error():
    from esp_ppq import QuantizationSettingFactory
    from esp_ppq.api import espdl_quantize_torch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.Softmax(dim=1)).eval()
    calib = [torch.randn(1, 3, 2, 2) for _ in range(8)]
    graph = espdl_quantize_torch(
        model=model, espdl_export_file="/dev/null", calib_dataloader=calib, calib_steps=8, input_shape=[1, 3, 2, 2],
        target="esp32s3", num_of_bits=8, collate_fn=lambda b: b.to("cpu"),
        setting=QuantizationSettingFactory.espdl_setting(), device="cpu", error_report=False, skip_export=True,
        export_test_values=False, verbose=0)
    out = next(iter(graph.outputs))
    with pytest.raises(UserError) as err:
        reference.tensor_exponent(graph, out)
    msg = str(err.value)
    assert "\n" not in msg and "Softmax" in msg and "float32" in msg and "rebuild" in msg
    # the logits before it are quantized: their exponent is read as before
    logits = graph.variables[out].source_op.inputs[0].name
    exp, bits = reference.tensor_exponent(graph, logits)
    assert bits == 8 and -16 < exp < 8
