"""Shared helpers of the host tests: one fake variant-folder builder and one runner for `python -m quant`.

The fake folder is written through `quant.folder` (the real .info/.json writers), so a format change
reaches every test that uses it. Fixture modules that still have their own builders (target_fixtures.py,
vboard_fixtures.py) are to move here.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from quant import folder

CLASSES = 7
VECTORS = 4
# budget -> (value, basis): what the fake .info promises
FAKE_BUDGETS = {"latency_us": (14000, 12174), "internal_ram_bytes": (60000, 52000),
                "psram_bytes": (300000, 260000), "flash_bytes": (80000, 1028)}


def _logits(vec: int) -> list[int]:
    return [(37 * vec + 11 * j) % 255 - 127 for j in range(CLASSES)]


def make_fake_models(root: Path, variants=folder.VARIANTS) -> Path:
    """A models folder with a small fake folder per variant: an EDL2-headed .espdl, a .info written by
    quant.folder.render_info (estimated budgets, headroom 0.15, method "a guess"), a .json with the default
    tolerance and a .reference.json of VECTORS vectors of CLASSES int8 logits."""
    for v in variants:
        d = folder.variant_dir(v, root)
        d.mkdir(parents=True, exist_ok=True)
        espdl = b"EDL2" + bytes(range(256)) * 4
        folder.variant_file(v, ".espdl", root).write_bytes(espdl)
        quality = {"heldout_images": 10, "float_top1": 1.0, "top1": 1.0, "top1_drop_points": 0.0,
                   "floor_drop_points": 1.0, "output_noise_signal": 0.001, "output_cosine": 0.999,
                   "quantization_noise_signal": 0.001, "worst_layers": [{"op": "/conv", "noise_signal": 0.001}]}
        model = {"espdl_bytes": len(espdl), "parameter_bytes": 100, "macs": 1000, "int16_macs": 0, "int16_ops": 0,
                 "peak_activation_bytes": 1000}
        budgets = {k: {"value": value, "basis": basis, "headroom": 0.15, "provenance": "estimated", "method": "a guess"}
                   for k, (value, basis) in FAKE_BUDGETS.items()}
        folder.variant_file(v, ".info", root).write_text(folder.render_info(v, quality, model, budgets, "a fixture"))
        config = {"input": {"name": "image", "dtype": "int8", "exponent": -7}, "outputs": [{"name": "logits"}],
                  "tolerance": {"int8_lsb": 0, "int16_lsb": 1, "same_exponent": True, "same_top1": True, "reason": None},
                  "hashes": {"espdl": hashlib.sha256(espdl).hexdigest()}}
        folder.variant_file(v, ".json", root).write_text(folder.dump_json(config))
        outputs = [{"vector": i, "name": f"pattern{i}", "top1": max(range(CLASSES), key=_logits(i).__getitem__),
                    "tensors": {"logits": {"dtype": "int8", "shape": [1, CLASSES], "exponent": -4, "data": _logits(i)}}}
                   for i in range(VECTORS)]
        folder.variant_file(v, ".reference.json", root).write_text(json.dumps({"format": 1, "variant": v, "outputs": outputs}))
    return root


@pytest.fixture
def fake_models(tmp_path):
    return make_fake_models(tmp_path / "models")


def run_quant(*args: str, timeout: float = 120, env: dict | None = None, cwd: Path = folder.REPO):
    """`python -m quant ARGS` in a fresh interpreter: PYTHONHASHSEED=0 and this tree's quant first on the path."""
    full_env = dict(os.environ, PYTHONHASHSEED="0", **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join([str(folder.REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "quant", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def quant_cli():
    return run_quant


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--conformance", action="store_true",
                     help="also run the interpreter's full operator conformance suite (marker `conformance`)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `conformance` are deselected unless --conformance is given or -m names the marker."""
    if config.getoption("--conformance") or "conformance" in (config.getoption("-m") or ""):
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("conformance") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# ---------------------------------------------------------------------------------------------
# slow subprocess work, started when collection ends so that it runs beside the rest of the suite (the
# machines have 2 cores and most tests use one): the single-operator models the selected tests need
# (modules list them in OPGEN_NAMES) and whatever a module's `start_in_background(config)` starts

_JOBS = pytest.StashKey[dict]()


def start_job(config: pytest.Config, key: str, argv: list[str], env: dict | None = None) -> None:
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, cwd=folder.REPO, env=dict(os.environ, PYTHONHASHSEED="0", **(env or {})),
                            stdout=log, stderr=subprocess.STDOUT)
    config.stash.setdefault(_JOBS, {})[key] = (proc, log)


def job_result(config: pytest.Config, key: str, timeout: float = 900) -> tuple[int, str] | None:
    """(exit code, output) of the background job `key`, waiting for it; None if it was never started."""
    proc, log = config.stash.get(_JOBS, {}).pop(key, (None, None))
    if proc is None:
        return None
    rc = proc.wait(timeout)
    log.seek(0)
    return rc, log.read().decode(errors="replace")


def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    if hasattr(config, "workerinput") or not session.items:
        return
    modules = list(dict.fromkeys(item.module for item in session.items))
    names = list(dict.fromkeys(n for m in modules for n in getattr(m, "OPGEN_NAMES", ())))
    if names:  # (opgen imports torch: only when a selected test needs its models)
        import opgen

        root = opgen.pytest_cache_root(config)  # (None without pytest's cache: the fixtures use temporary folders)
        missing = [n for n in names if root is not None and not opgen.cached_path(n, root).is_file()]
        if missing:
            start_job(config, "opgen", [sys.executable, str(Path(__file__).with_name("opgen.py")), "--cache",
                                        str(root), *missing])
    for module in modules:
        start = getattr(module, "start_in_background", None)
        if start is not None:
            start(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    for proc, log in config.stash.get(_JOBS, {}).values():  # a job whose test did not run (-x, Ctrl-C)
        proc.kill()
        proc.wait()
        log.close()
