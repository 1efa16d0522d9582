"""The variants are data: three specs, one pipeline that never names a variant."""

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant.variants import specs as variants
from quant import folder
from quant.errors import UserError
from quant.variants.quantize import relu6_to_relu

QUANT = Path(variants.__file__).parent


def test_three_variants_are_specs_named_by_their_keys():
    assert list(variants.VARIANTS) == ["int8", "mixed", "balanced"]
    for name, spec in variants.VARIANTS.items():
        assert isinstance(spec, variants.VariantSpec) and spec.name == name
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.bits = 16


def test_specs_carry_the_issue_settings():
    v = variants.VARIANTS
    assert {n: s.floor_drop_points for n, s in v.items()} == {"int8": 1.0, "mixed": 0.3, "balanced": 0.5}
    assert v["balanced"].relu6 == "to_relu"
    assert (v["balanced"].equalization.iterations, v["balanced"].equalization.value_threshold,
            v["balanced"].equalization.opt_level) == (4, 0.4, 2)
    assert v["mixed"].sensitivity is not None and v["int8"].sensitivity is None
    for spec in v.values():
        assert "kl" not in spec.calibration.candidates  # measured to wreck ReLU6 models
        assert len(spec.calibration.candidates) >= 2  # chosen by measurement, not by default


def test_pipeline_never_branches_on_a_variant_name():
    for module in ("quantize.py", "build.py", "sensitivity.py", "reference.py", "info.py"):
        source = (QUANT / module).read_text()
        assert not re.search(r"""["'](int8|mixed|balanced)["']""", source), module


def test_a_loosened_tolerance_needs_a_reason():
    with pytest.raises(ValueError, match="reason"):
        variants.VariantSpec(name="x", summary="x", tolerance=variants.Tolerance(int8_lsb=1))
    ok = variants.VariantSpec(name="x", summary="x", tolerance=variants.Tolerance(int8_lsb=1, reason="measured drift"))
    assert ok.to_dict()["tolerance"]["reason"] == "measured drift"


def _leaves(obj, path=()):
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from _leaves(getattr(obj, f.name), (*path, f.name))
    else:
        yield path, obj


def _replace(obj, path, value):
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    return dataclasses.replace(obj, **{path[0]: _replace(getattr(obj, path[0]), path[1:], value)})


def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return "to_relu" if value == "keep" else value + "x"
    if isinstance(value, tuple):
        return value[:-1] or ("minmax",)
    return None


@pytest.mark.parametrize("name", list(variants.VARIANTS))
def test_spec_digest_changes_with_any_field(name):
    base = variants.VARIANTS[name]
    assert base.digest() == variants.VARIANTS[name].digest()
    changed = 0
    for path, value in _leaves(base):
        new = _other(value)
        if new is None or path[-1] == "reason":  # None fields; a reason needs a loosened tolerance
            continue
        if path == ("bits",):
            new = 16
        try:
            other = _replace(base, path, new)
        except ValueError:  # e.g. a loosened tolerance without a reason: not a valid spec
            continue
        assert other.digest() != base.digest(), path
        changed += 1
    assert changed >= 7  # int8: every leaf but its None tables (which mixed and balanced vary)


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(UserError, match="int8, mixed, balanced"):
        variants.get("int4")


def test_relu6_swap_rewrites_only_clip_0_6():
    init = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("lo", 0.0), ("hi", 6.0), ("hi1", 1.0))]
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["a"], name="relu6"),
             helper.make_node("Clip", ["a", "lo", "hi1"], ["y"], name="clip01")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert relu6_to_relu(model) == 1
    assert [(n.name, n.op_type, list(n.input)) for n in model.graph.node] == [
        ("relu6", "Relu", ["x"]), ("clip01", "Clip", ["a", "lo", "hi1"])]
    onnx.checker.check_model(model)


def test_mixed_takes_the_smallest_promotion_that_meets_its_target_within_the_latency_cap():
    from quant.variants.quantize import choose_promotion

    pts = [{"int16_op_count": n, "noise_signal": e, "latency_us": us} for n, e, us in
           [(0, 5e-3, 100), (3, 3e-3, 120), (7, 1.5e-3, 140), (12, 1e-3, 200)]]
    assert choose_promotion(pts, 2e-3, None)[0]["int16_op_count"] == 7
    assert choose_promotion(pts, 2e-3, 150)[0]["int16_op_count"] == 7
    chosen, why = choose_promotion(pts, 1e-3, 150)  # the target needs 200 us: none meets it within the cap
    assert chosen["int16_op_count"] == 7 and why.startswith("no promotion meets the target")
    assert choose_promotion(pts, 1e-4, 110)[0]["int16_op_count"] == 0


def test_the_committed_mixed_variant_records_its_search_points():
    meta = json.loads(folder.variant_file("mixed", ".json").read_text())
    s = meta["sensitivity"]
    assert [p["int16_op_count"] for p in s["pareto"]] == sorted(p["int16_op_count"] for p in s["pareto"])
    assert s["pareto"][0]["int16_op_count"] == 0
    assert s["chosen_int16_op_count"] == len(meta["int16_layers"])
    cap = s["latency_cap_us"]
    chosen = next(p for p in s["pareto"] if p["int16_op_count"] == s["chosen_int16_op_count"])
    assert cap is None or chosen["latency_us"] <= cap


def test_the_committed_balanced_variant_was_distilled_and_equalized_measurably():
    eq = json.loads(folder.variant_file("balanced", ".json").read_text())["equalization"]
    d = eq["relu6"]["distillation"]
    assert d["float_noise_signal_after"] < d["float_noise_signal_before"]
    assert eq["noise_signal_with_equalization"] < eq["noise_signal_without_equalization"]


def test_every_float_written_is_at_the_stable_precision():
    # two CPUs that differ in the 7th significant digit (noise_signal 0.000668123 vs 0.000668124, seen between
    # runs) write the same bytes: every float in a .info or .json goes through quant.folder.stable
    from quant import folder

    a, b = 0.000668123, 0.000668124
    assert folder.stable(a) == folder.stable(b) == 0.0006681
    assert folder.dump_json({"x": [a, {"y": 0.9791666}]}) == folder.dump_json({"x": [b, {"y": 0.9791667}]})
    assert folder.toml_value(a) == folder.toml_value(b) == "0.0006681"
    quality = {"heldout_images": 1200, "float_top1": 0.9791666, "top1": 0.9775, "top1_drop_points": 0.1666,
               "floor_drop_points": 0.3, "output_noise_signal": a, "output_cosine": 0.99911901,
               "quantization_noise_signal": a, "worst_layers": [{"op": "/c", "noise_signal": a}]}
    model = {"espdl_bytes": 1, "parameter_bytes": 1, "macs": 1, "int16_macs": 0, "int16_ops": 0, "peak_activation_bytes": 1}
    budgets = {k: {"value": 2, "basis": 1, "headroom": 0.5, "provenance": "estimated", "method": "m"} for k in folder.BUDGETS}
    one = folder.render_info("v", quality, model, budgets, "s")
    other = folder.render_info("v", {**quality, "output_noise_signal": b, "quantization_noise_signal": b,
                                     "output_cosine": 0.99911902, "worst_layers": [{"op": "/c", "noise_signal": b}]},
                               model, budgets, "s")
    assert one == other and "output_noise_signal = 0.0006681" in one


def test_the_info_digest_covers_everything_before_the_budgets_and_nothing_after():
    from quant import folder

    model = {"espdl_bytes": 1, "parameter_bytes": 1, "macs": 1, "int16_macs": 0, "int16_ops": 0, "peak_activation_bytes": 1}
    quality = {"heldout_images": 1, "float_top1": 1.0, "top1": 1.0, "top1_drop_points": 0.0, "floor_drop_points": 1.0,
               "output_noise_signal": 0.1, "output_cosine": 0.9, "quantization_noise_signal": 0.1, "worst_layers": []}
    budgets = {k: {"value": 2, "basis": 1, "headroom": 0.5, "provenance": "estimated", "method": "m"} for k in folder.BUDGETS}
    text = folder.render_info("v", quality, model, budgets, "s")
    assert text.rstrip().splitlines()[-1].startswith("method")  # the budgets come last
    measured = folder.rewrite_budgets(text, {"latency_us": {"value": 9, "provenance": "measured"}})
    assert measured != text and folder.info_digest(measured) == folder.info_digest(text)
    assert folder.info_digest(text.replace("macs = 1 ", "macs = 2 ")) != folder.info_digest(text)
    with pytest.raises(ValueError, match="exactly the budgets"):
        folder.render_info("v", quality, model, {"latency_us": budgets["latency_us"]}, "s")


def test_the_variant_list_is_the_specs():
    from quant import folder

    assert folder.VARIANTS == tuple(variants.VARIANTS)


def test_a_code_change_in_any_module_the_build_uses_changes_the_build_key(tmp_path):
    # a copy of the package; touching the code (not a comment) of any module build imports, at any depth,
    # changes the key, so committed variants become stale
    import shutil

    from quant.variants import build

    shutil.copytree(QUANT.parent, tmp_path / "quant", ignore=shutil.ignore_patterns("__pycache__"))
    files = [f.relative_to(QUANT.parent.parent) for f in build.source_files()]
    names = {str(f) for f in files}
    for needed in ("quant/espdl/reader.py", "quant/folder.py", "quant/variants/quantize.py", "quant/variants/specs.py",
                   "quant/variants/reference.py", "quant/variants/info.py", "quant/errors.py"):
        assert needed in names, needed
    base = build.source_digest(tmp_path)
    assert base == build.source_digest(QUANT.parent.parent)
    for rel in files:
        path = tmp_path / rel
        original = path.read_text()
        path.write_text(original + "\n# a comment only\n")
        assert build.source_digest(tmp_path) == base, rel
        path.write_text(original + "\n_touched = 1\n")
        assert build.source_digest(tmp_path) != base, rel
        path.write_text(original)
