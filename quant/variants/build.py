"""`quant build`: produce models/gesture_model_<variant>/ for each variant spec.

Order of work: validate every input (nothing is written before that), decide per variant whether
its folder is up to date (hash of all inputs, no esp_ppq import), then for each stale variant:
quantize (quant.variants.quantize) -> reference outputs (quant.variants.reference) -> .info (quant.variants.info) -> .json,
all into a staging folder next to the target; verify; gate on the spec's quality floor; and only
then swap the staging folder in. A failure or Ctrl-C leaves the last good folder untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from quant import paths
from quant.errors import UserError

PACKAGES = {"esp_ppq": "esp-ppq", "torch": "torch", "onnx": "onnx", "numpy": "numpy", "onnxruntime": "onnxruntime"}
PLATFORM = {
    "target": "esp32s3",
    "weights": "per-tensor power-of-two",
    "activations": "per-tensor power-of-two",
    "rounding": "half-up",
    "bias": "20-bit in int8 layers (stored int32), 40-bit in int16 layers (stored int64)",
    "note": "per-channel exists only on ESP32-P4",
    "int16_platform": "ESPDL_S3_H_PRE_INT16 (S3 int16 bits, simulated in float64: bit-exact with the chip)",
    "graph_edits": "GlobalAveragePool -> ReduceMean over H, W (kept so the variants stay as built; no value "
                   "changes: ESP-DL 3.3.9 (CONFIG_ACCURATE_INFER) divides both in float, as the simulator does)",
}
SUFFIXES = (".espdl", ".info", ".json", ".reference.json", ".graph.txt")
INPUT_SHAPE = [1, 1, 96, 96]


def add_arguments(p) -> None:
    p.add_argument("--variant", action="append", metavar="NAME",
                   help="variant to build (repeatable; default: all of int8, mixed, balanced)")
    p.add_argument("--onnx", type=Path, default=paths.FLOAT_ONNX, metavar="PATH",
                   help="float model: input 1x1x96x96 float32 in [0,1] (default: models/gesture_float.onnx)")
    p.add_argument("--data", type=Path, metavar="DIR",
                   help="your images, one sub-folder per class (default: the synthetic gesture set)")
    p.add_argument("--calib", type=int, metavar="N", help="calibration images (default 256; with --data: min(256, n/2))")
    p.add_argument("--out", type=Path, default=paths.MODELS, metavar="DIR", help="where variant folders go (default models/)")
    p.add_argument("--vectors", type=Path, default=paths.MODELS, metavar="DIR",
                   help="folder with test_vectors.bin/.json (default models/)")
    p.add_argument("--check", action="store_true",
                   help="build nothing: say which variants are stale (exit 1 if any)")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha_file(path: Path) -> str:
    return _sha(Path(path).read_bytes())


def _dump(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


# ----------------------------------------------------------------------------- validation


def check_onnx(path: Path) -> tuple[str, tuple[str, ...], int]:
    """-> (input name, output names, number of classes); UserError on anything unusable."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX model {path} does not exist; pass --onnx PATH to a float .onnx model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        raise UserError(f"{path} is not an ONNX model (it could not be parsed); pass --onnx PATH to a .onnx file") from None
    g = model.graph
    if not g.node or not g.output:
        raise UserError(f"{path} is not an ONNX model with a graph; pass --onnx PATH to a .onnx file")
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1:
        raise UserError(f"{path} has {len(inputs)} inputs; quant needs one input of 1x1x96x96 float32")
    t = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "unknown"
    if isinstance(dims[0] if dims else None, str):
        dims[0] = 1  # a dynamic batch dimension is accepted; the pipeline fixes it to 1
    if dims != INPUT_SHAPE or t.elem_type != onnx.TensorProto.FLOAT:
        shown = "x".join(str(d) for d in dims) or "scalar"
        raise UserError(
            f"{path.name}: input '{inputs[0].name}' is {shown} {dtype}; quant needs 1x1x96x96 float32 "
            f"(one grayscale channel, 96x96, batch 1): re-export the model with that input shape"
        )
    out = g.output[0].type.tensor_type
    classes = int(out.shape.dim[-1].dim_value) if out.shape.dim else 0
    return inputs[0].name, tuple(o.name for o in g.output), classes


def check_out(out: Path) -> Path:
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".write-probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise UserError(f"output folder {out} cannot be written ({exc.strerror}); pass --out DIR to a writable folder") from None
    return out


def _data_key(args) -> str:
    """Cheap identity of the data (no image decoding): file list + bytes for --data, else the generator."""
    if args.data is None:
        return f"synthetic:{args.calib}"
    h = hashlib.sha256()
    root = Path(args.data)
    if root.is_dir():
        for p in sorted(root.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return f"folder:{h.hexdigest()}:{args.calib}"


def versions() -> dict:
    from importlib import metadata

    import quant

    out = {k: metadata.version(v) for k, v in PACKAGES.items()}
    out["quant"] = quant.__version__
    return out


def _code_sha(path: Path) -> str:
    """sha256 of a module's syntax tree: code changes count, comments and layout do not."""
    import ast

    return _sha(ast.dump(ast.parse(Path(path).read_text())).encode())


def source_files(module: str = __name__) -> list[Path]:
    """The files of `module` and of every quant module it imports, at any depth (function-level imports
    included): the code whose change can change a variant folder."""
    import ast

    root = paths.REPO
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        base = root / Path(*name.split("."))
        path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if name in seen or not path.is_file():
            continue
        seen[name] = path
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "quant":
                todo.append(node.module)
                todo.extend(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                todo.extend(a.name for a in node.names if a.name.split(".")[0] == "quant")
    return sorted(seen.values())


def build_key(args, spec) -> str:
    doc = {
        "onnx": _sha_file(args.onnx),
        "data": _data_key(args),
        "vectors": _sha_file(Path(args.vectors) / paths.VECTORS_BIN.name),
        "spec": spec.digest(),
        "versions": versions(),
        "source": _sha(b"".join(_code_sha(f).encode() for f in source_files())),
    }
    return _sha(json.dumps(doc, sort_keys=True).encode())


def info_digest(path: Path) -> str:
    """sha256 of a .info up to its first [budgets.*] table: `quant update-budgets` rewrites the budgets
    in place, which must neither look like damage nor trigger a rebuild."""
    text = Path(path).read_text()
    cut = text.find("\n[budgets.")
    return _sha((text if cut < 0 else text[: cut + 1]).encode())


def kept_budgets(target: Path, stem: str, espdl_sha: str) -> dict:
    """Measured budgets of the current folder, if its .espdl is byte-identical to the new one."""
    import tomllib

    try:
        old = json.loads((target / f"{stem}.json").read_text())
        if old["hashes"]["espdl"] != espdl_sha:
            return {}
        with open(target / f"{stem}.info", "rb") as fh:
            budgets = tomllib.load(fh)["budgets"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {k: b for k, b in budgets.items() if isinstance(b, dict) and b.get("provenance") == "measured"}


def up_to_date(folder: Path, stem: str, key: str) -> bool:
    try:
        meta = json.loads((folder / f"{stem}.json").read_text())
        hashes = meta["hashes"]
        if hashes.get("build") != key:
            return False
        files = {"espdl": ".espdl", "reference": ".reference.json", "graph_txt": ".graph.txt"}
        return (all(_sha_file(folder / f"{stem}{suffix}") == hashes[k] for k, suffix in files.items())
                and info_digest(folder / f"{stem}.info") == hashes["info"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


# ----------------------------------------------------------------------------- data


@dataclass
class Data:
    calib_x: object
    heldout_x: object
    heldout_y: object
    classes: tuple


def check_data(args, n_outputs: int):
    """Validate the data folder (or the synthetic set) against the model -> (user images or None, classes)."""
    from quant.variants import data
    from quant.variants.quantize import MIN_CALIB_STEPS

    if args.data is None:
        user, classes = None, tuple(data.CLASSES)
    else:
        user = data.load_image_folder(args.data)
        classes = user[2]
    if n_outputs and n_outputs != len(classes):
        raise UserError(f"the model has {n_outputs} outputs but the data has {len(classes)} classes "
                        f"({', '.join(classes)}); pass --data with one sub-folder per model class")
    calib_n = calib_count(args, user)
    if calib_n < MIN_CALIB_STEPS:
        where = "" if user is None else f" (the data folder has {len(user[0])} images; add images or pass --calib)"
        raise UserError(f"{calib_n} calibration images are too few; esp-ppq needs at least {MIN_CALIB_STEPS}{where}")
    return user, classes


def calib_count(args, user) -> int:
    if args.calib is not None:
        return args.calib
    return 256 if user is None else min(256, len(user[0]) // 2)


def load_data(args, user, classes) -> Data:
    from quant.variants import data

    if user is None:
        cx, _ = data.calibration(calib_count(args, user))
        hx, hy = data.heldout()
    else:
        x, y, _ = user
        cx, hx, hy = data.split(x, y, calib_count(args, user))
    return Data(cx, hx, hy, classes)


# ----------------------------------------------------------------------------- one variant


def _staging(out: Path, variant: str, tag: str) -> Path:
    return out / f".gesture_model_{variant}.{tag}-{os.getpid()}"


def recover(out: Path, variant: str) -> None:
    """Undo a swap interrupted between its two renames; drop stale staging folders."""
    target = paths.variant_dir(variant, out)
    for p in sorted(out.glob(f".gesture_model_{variant}.*-*")):
        if p.name.split(".")[-1].startswith("old-") and not target.exists():
            os.replace(p, target)
        else:
            shutil.rmtree(p, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where unavailable."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_dir(staging: Path, target: Path) -> None:
    """Swap staging in for target. Atomic where the OS can exchange two names; otherwise two renames,
    with the old folder kept until the new one is in place (`recover` finishes an interrupted swap)."""
    if target.exists() and _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the old folder
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def write_variant(session, result, folder: Path, stem: str, *, args, data, key: str, vectors_sha: str,
                  input_name: str, output_names) -> dict:
    """All five files of one variant into `folder`; returns the quality dict (for the gate)."""
    import tomllib

    from quant.variants import info

    from quant.variants import reference
    from quant.variants.quantize import copy_outputs, progress
    from quant.variants.sensitivity import ANALYSIS_IMAGES

    spec, attempt = result.spec, result.attempt
    graph = attempt.graph
    copy_outputs(result, folder, stem)
    espdl = folder / f"{stem}.espdl"

    progress(f"  [{spec.name}] reference outputs on {len(session.inputs.vectors_meta)} fixed vectors")
    entries = reference.compute(graph, session.inputs.vectors_x, session.inputs.vectors_meta, list(output_names))
    reference.check_embedded(espdl, entries)
    espdl_sha = _sha_file(espdl)
    (folder / f"{stem}.reference.json").write_text(reference.document(spec.name, entries, vectors_sha, espdl_sha))

    progress(f"  [{spec.name}] accuracy on {len(data.heldout_y)} held-out images, worst layer groups")
    m = session.heldout_metrics(spec, attempt)
    worst = session.ranking(attempt)[:5]
    int16 = set(attempt.int16_ops)
    macs = info.op_macs(attempt.onnx)
    n_nodes = sum(1 for _ in graph.operations)
    quality = {
        **m,
        "top1_drop_points": round((m["float_top1"] - m["top1"]) * 100, 4),
        "floor_drop_points": spec.floor_drop_points,
        "worst_layers": [{"op": w["group"], "noise_signal": float(f"{w['noise_signal']:.6g}")} for w in worst],
    }
    peak = info.peak_activation_bytes(attempt.onnx, int16)
    params = info.espdl_parameter_bytes(espdl)
    model = {
        "espdl_bytes": espdl.stat().st_size,
        "parameter_bytes": params,
        "macs": sum(macs.values()),
        "int16_macs": sum(v for k, v in macs.items() if k in int16),
        "int16_ops": len(int16),
        "peak_activation_bytes": peak,
    }
    budgets = info.budgets(macs, int16, peak, params, model["espdl_bytes"], n_nodes)
    budgets.update(kept_budgets(paths.variant_dir(spec.name, args.out), stem, espdl_sha))
    worst_source = (f"grouped sensitivity (compute op + its Clip/Relu; only that group quantized, graph output "
                    f"noise/signal vs the dequantized graph, first {ANALYSIS_IMAGES} calibration images)")
    (folder / f"{stem}.info").write_text(info.render(spec.name, quality, model, budgets, worst_source))

    in_exp, in_bits = reference.tensor_exponent(graph, input_name)
    outputs = [{"name": n, **{k: v for k, v in entries[0]["tensors"][n].items() if k != "data"}} for n in output_names]
    meta = {
        "format": 1,
        "variant": spec.name,
        "spec": spec.to_dict(),
        "platform": PLATFORM,
        "calibration": result.calibration,
        "int16_layers": sorted(int16),
        "sensitivity": result.sensitivity,
        "equalization": result.equalization,
        "input": {"name": input_name, "shape_nchw": INPUT_SHAPE, "layout": "NHWC", "dtype": f"int{in_bits}",
                  "exponent": in_exp},
        "outputs": outputs,
        "classes": list(data.classes),
        "tolerance": {"int8_lsb": spec.tolerance.int8_lsb, "int16_lsb": spec.tolerance.int16_lsb,
                      "same_exponent": spec.tolerance.same_exponent, "same_top1": spec.tolerance.same_top1,
                      "reason": spec.tolerance.reason},
        "source": {"onnx": Path(args.onnx).name, "data": "synthetic gestures (quant.variants.data)" if args.data is None
                   else "user image folder", "calibration_images": int(len(data.calib_x))},
        "hashes": {
            "build": key,
            "onnx": _sha_file(args.onnx),
            "calibration_data": _sha(data.calib_x.tobytes()),
            "heldout_data": _sha(data.heldout_x.tobytes() + data.heldout_y.tobytes()),
            "vectors": vectors_sha,
            "espdl": espdl_sha,
            "info": info_digest(folder / f"{stem}.info"),
            "reference": _sha_file(folder / f"{stem}.reference.json"),
            "graph_txt": _sha_file(folder / f"{stem}.graph.txt"),
            "spec": spec.digest(),
        },
        "versions": versions(),
    }
    (folder / f"{stem}.json").write_text(_dump(meta))

    # verify what was written before anyone may swap it in
    with open(folder / f"{stem}.info", "rb") as fh:
        parsed = tomllib.load(fh)
    assert set(parsed["budgets"]) == {"latency_us", "internal_ram_bytes", "psram_bytes", "flash_bytes"}
    assert up_to_date(folder, stem, key)
    return quality


def gate(spec, quality: dict, sensitivity: dict | None) -> str | None:
    """The spec's quality floor; returns a one-line failure message or None."""
    worst = quality["worst_layers"][0] if quality["worst_layers"] else {"op": "?", "noise_signal": float("nan")}
    where = f"worst layer group {worst['op']} (noise/signal {worst['noise_signal']:.3g})"
    if quality["top1_drop_points"] > spec.floor_drop_points:
        return (f"variant {spec.name}: top-1 drop {quality['top1_drop_points']:.2f} points exceeds its floor of "
                f"{spec.floor_drop_points} points (float {quality['float_top1']:.4f}, {spec.name} {quality['top1']:.4f}); "
                f"{where}; the last good folder was kept")
    if sensitivity is not None:
        before, after = sensitivity["noise_signal_before"], sensitivity["noise_signal_after"]
        need = before * (1 - spec.sensitivity.min_improvement)
        if not after <= need:
            return (f"variant {spec.name}: 16-bit promotion only brought the output noise/signal from {before:.3g} to "
                    f"{after:.3g} (needs <= {need:.3g}); {where}; raise max_int16_ops in quant/variants/specs.py")
    return None


# ----------------------------------------------------------------------------- command


def run(args) -> int:
    from quant.variants import specs as variants
    from quant.variants.vectors import load_vectors

    started = time.perf_counter()
    names = list(dict.fromkeys(args.variant or list(variants.VARIANTS)))
    specs = [variants.get(n) for n in names]
    input_name, output_names, n_outputs = check_onnx(args.onnx)
    out = check_out(args.out)
    user, classes = check_data(args, n_outputs)  # before anything is written
    vectors_x, vectors_meta = load_vectors(args.vectors)
    vectors_sha = _sha_file(Path(args.vectors) / paths.VECTORS_BIN.name)

    for name in names:
        recover(out, name)
    keys = {s.name: build_key(args, s) for s in specs}
    stale = []
    for s in specs:
        folder = paths.variant_dir(s.name, out)
        if up_to_date(folder, folder.name, keys[s.name]):
            print(f"{s.name}: up to date ({folder})")
        else:
            stale.append(s)
    if args.check:
        for s in stale:
            print(f"{s.name}: stale (its inputs, spec, tools or code changed); run `quant build`")
        return 1 if stale else 0

    failures = []
    if stale:
        from quant.variants.quantize import Inputs, Session, progress

        progress(f"loading data and the float model ({Path(args.onnx).name})")
        data = load_data(args, user, classes)
        inputs = Inputs(Path(args.onnx), data.calib_x, data.heldout_x, data.heldout_y, data.classes, vectors_x,
                        vectors_meta, input_name, output_names)
        with tempfile.TemporaryDirectory(prefix="quant-build-") as work:
            session = Session(inputs, Path(work))
            for spec in stale:
                t0 = time.perf_counter()
                progress(f"{spec.name}: {spec.summary}")
                target = paths.variant_dir(spec.name, out)
                staging = _staging(out, spec.name, "staging")
                try:
                    staging.mkdir()
                    result = session.run(spec)
                    quality = write_variant(session, result, staging, target.name, args=args, data=data,
                                            key=keys[spec.name], vectors_sha=vectors_sha, input_name=input_name,
                                            output_names=output_names)
                    failure = gate(spec, quality, result.sensitivity)
                    if failure:
                        failures.append(failure)
                        print(f"{spec.name}: FAILED its quality gate; {target} left as it was", file=sys.stderr)
                        continue
                    replace_dir(staging, target)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
                progress(f"{spec.name}: done in {time.perf_counter() - t0:.1f} s -> {target}")

    from quant.variants import report

    print()
    print(report.table(out, names))
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    if failures:
        raise UserError(" | ".join(failures))
    return 0
