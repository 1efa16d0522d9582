"""The committed variant folders are consistent with each other, with the inputs and with their gates."""

import hashlib
import json
import os
import subprocess
import sys
import tomllib

import pytest

from quant import folder

from quant.variants import reference

from quant.variants import specs as variants
from quant.folder import info_digest

BUDGETS = {"latency_us", "internal_ram_bytes", "psram_bytes", "flash_bytes"}
pytestmark = pytest.mark.skipif(not all(folder.variant_file(v, ".json").is_file() for v in folder.VARIANTS),
                                reason="variant folders not built yet (quant build)")


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(v):
    with open(folder.variant_file(v, ".info"), "rb") as fh:
        info = tomllib.load(fh)
    return info, json.loads(folder.variant_file(v, ".json").read_text()), \
        json.loads(folder.variant_file(v, ".reference.json").read_text())


@pytest.mark.parametrize("v", folder.VARIANTS)
def test_hashes_in_json_match_the_files_and_the_inputs(v):
    _, meta, ref = load(v)
    h = meta["hashes"]
    assert h["espdl"] == sha(folder.variant_file(v, ".espdl")) == ref["espdl_sha256"]
    assert h["info"] == info_digest(folder.variant_file(v, ".info"))  # budgets excluded: update-budgets rewrites them
    assert h["reference"] == sha(folder.variant_file(v, ".reference.json"))
    assert h["graph_txt"] == sha(folder.variant_file(v, ".graph.txt"))
    assert h["onnx"] == sha(folder.FLOAT_ONNX)
    assert h["vectors"] == sha(folder.VECTORS_BIN) == ref["vectors_sha256"]
    assert h["spec"] == variants.VARIANTS[v].digest()
    assert meta["spec"] == json.loads(json.dumps(variants.VARIANTS[v].to_dict()))


@pytest.mark.parametrize("v", folder.VARIANTS)
def test_reference_vector_0_is_what_the_espdl_embeds(v):
    _, meta, ref = load(v)
    vectors = json.loads(folder.VECTORS_META.read_text())["vectors"]
    assert [o["name"] for o in ref["outputs"]] == [x["name"] for x in vectors]
    reference.check_embedded(folder.variant_file(v, ".espdl"), ref["outputs"])
    out = meta["outputs"][0]
    for entry in ref["outputs"]:
        t = entry["tensors"][out["name"]]
        assert (t["exponent"], t["dtype"], t["shape"]) == (out["exponent"], out["dtype"], out["shape"])
        assert entry["top1"] == max(range(len(t["data"])), key=t["data"].__getitem__)


@pytest.mark.parametrize("v", folder.VARIANTS)
def test_info_parses_and_every_budget_is_stated(v):
    info, meta, _ = load(v)
    assert set(info["budgets"]) == BUDGETS
    for b in info["budgets"].values():
        assert b["provenance"] in ("estimated", "measured") and b["method"]
        assert b["value"] >= b["basis"] > 0
    assert info["budgets"]["flash_bytes"]["basis"] == info["model"]["espdl_bytes"] == \
        folder.variant_file(v, ".espdl").stat().st_size
    assert len(info["quality"]["worst_layers"]) == 5
    assert meta["platform"]["weights"] == "per-tensor power-of-two" and meta["platform"]["rounding"] == "half-up"


@pytest.mark.parametrize("v", folder.VARIANTS)
def test_quality_gate_holds(v):
    info, meta, _ = load(v)
    q = info["quality"]
    assert q["heldout_images"] >= 1000
    assert q["top1_drop_points"] <= variants.VARIANTS[v].floor_drop_points == q["floor_drop_points"]
    assert meta["calibration"]["chosen"] == min(meta["calibration"]["candidates"], key=lambda c: c["noise_signal"])["algorithm"]


def test_mixed_beats_int8_with_its_top_group_in_16_bit():
    _, int8, _ = load("int8")
    info, mixed, _ = load("mixed")
    s = mixed["sensitivity"]
    assert s["ranking"][0]["group"] == s["steps"][0]["group"]
    assert set(s["ranking"][0]["ops"]) <= set(mixed["int16_layers"])
    assert s["noise_signal_after"] < s["noise_signal_before"]
    kept = [st for st in s["steps"] if st["accepted"]]
    # the chosen point is a prefix of the kept steps: exactly their promotions, and its error is the last one's
    prefix, count = [], 0
    for st in kept:
        if count >= s["chosen_int16_op_count"]:
            break
        prefix.append(st)
        count += len(st["promoted"])
    assert sorted(op for st in prefix for op in st["promoted"]) == sorted(mixed["int16_layers"])
    assert prefix[-1]["noise_signal_after"] == s["noise_signal_after"]
    assert s["noise_signal_before"] == pytest.approx(min(c["noise_signal"] for c in int8["calibration"]["candidates"]))
    assert info["model"]["int16_ops"] == len(mixed["int16_layers"]) <= variants.VARIANTS["mixed"].sensitivity.max_int16_ops \
        or len(s["steps"]) == 1
    assert int8["int16_layers"] == [] and int8["sensitivity"] is None


def test_balanced_swapped_relu6_and_equalized_pairs():
    _, meta, _ = load("balanced")
    e = meta["equalization"]
    r = e["relu6"]
    assert r["replaced_by_relu"] == r["relu6_nodes"] > 0  # every ReLU6, as the spec says
    assert e["pairs"] == len(e["pair_list"]) > 0
    assert e["settings"] == {"iterations": 4, "value_threshold": 0.4, "opt_level": 2}


def test_committed_variants_are_up_to_date_with_the_code_and_inputs():
    # a change to the quantization code, spec, tools or inputs without `quant build` fails here
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run([sys.executable, "-m", "quant", "build", "--check"], cwd=folder.REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("up to date") == len(variants.VARIANTS)
