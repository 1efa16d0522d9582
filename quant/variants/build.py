"""`quant build`: produce models/gesture_model_<variant>/ for each variant spec.

Order of work: validate every input (nothing is written before that), decide per variant whether
its folder is up to date (hash of all inputs, no esp_ppq import), then for each stale variant:
quantize (quant.variants.quantize) -> reference outputs (quant.variants.reference) -> .info (quant.variants.info) -> .json,
all into a staging folder next to the target; verify; gate on the spec's quality floor; and only
then swap the staging folder in. A failure or Ctrl-C leaves the last good folder untouched.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from quant import folder as qf
from quant.errors import UserError
import quant
from quant.variants import info, reference, report, vectors
from quant.variants import specs as variants
from quant.variants.quantize import MIN_CALIB_STEPS, Inputs, Quantizer, progress

PACKAGES = {"esp_ppq": "esp-ppq", "torch": "torch", "onnx": "onnx", "numpy": "numpy", "onnxruntime": "onnxruntime"}
PLATFORM = {
    "target": "esp32s3",
    "weights": "per-tensor power-of-two",
    "activations": "per-tensor power-of-two",
    "rounding": "half-up",
    "bias": "20-bit in int8 layers (stored int32), 40-bit in int16 layers (stored int64)",
    "note": "per-channel exists only on ESP32-P4",
    "int16_platform": "ESPDL_S3_H_PRE_INT16 (S3 int16 bits, simulated in float64: bit-exact with the chip)",
    "graph_edits": "none (ESP-DL 3.3.9 compiles its average pool with CONFIG_ACCURATE_INFER: an exact float "
                   "division, as the simulator's)",
}
INPUT_SHAPE = [1, 1, 96, 96]


def add_arguments(p) -> None:
    p.add_argument("--variant", action="append", metavar="NAME",
                   help=f"variant to build (repeatable; default: all of {', '.join(qf.VARIANTS)})")
    p.add_argument("--onnx", type=Path, default=qf.FLOAT_ONNX, metavar="PATH",
                   help="float model: input 1x1x96x96 float32 in [0,1] (default: models/gesture_float.onnx)")
    p.add_argument("--data", type=Path, metavar="DIR",
                   help="your images, one sub-folder per class (default: the synthetic gesture set)")
    p.add_argument("--calib", type=int, metavar="N", help="calibration images (default 256; with --data: min(256, n/2))")
    p.add_argument("--models-dir", type=Path, default=qf.MODELS, metavar="DIR",
                   help="the models folder: variant folders and the fixed vectors test_vectors.bin/.json (default "
                        "models/); a folder without vectors gets them made from --data (`quant vectors`)")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="processes for variants that share no work (default 1; 2 builds balanced beside int8 + "
                        "mixed, faster only on idle cores; the files are the same for any N)")
    p.add_argument("--check", action="store_true",
                   help="build nothing: say which variants in the models folder are stale (exit 1 if any)")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha_file(path: Path) -> str:
    return _sha(Path(path).read_bytes())


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


def check_models_dir(models: Path) -> Path:
    """The models folder must be a folder we can write (or create); nothing is created here."""
    models = Path(models)
    if models.exists() and not models.is_dir():
        raise UserError(f"models folder {models} is a file; pass --models-dir DIR to a folder")
    probe = models
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"models folder {models} cannot be written ({probe} is not writable); "
                        f"pass --models-dir DIR to a writable folder")
    return models


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


    out = {k: metadata.version(v) for k, v in PACKAGES.items()}
    out["quant"] = quant.__version__
    return out


def _code_sha(path: Path) -> str:
    """sha256 of a module's syntax tree: code changes count, comments and layout do not."""
    import ast

    return _sha(ast.dump(ast.parse(Path(path).read_text())).encode())


def source_files(module: str = __name__, root: Path = qf.REPO) -> list[Path]:
    """The files of `module` and of every quant module it imports, at any depth (function-level imports
    included): the code whose change can change a variant folder."""
    import ast

    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        base = Path(root) / Path(*name.split("."))
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


def source_digest(root: Path = qf.REPO) -> str:
    """The code part of the build key: every module `source_files` finds under `root`."""
    files = source_files(__name__, root)
    return _sha(b"".join(str(f.relative_to(root)).encode() + b"\0" + _code_sha(f).encode() for f in files))


def build_key(args, spec, vectors_sha: str) -> str:
    doc = {
        "onnx": _sha_file(args.onnx),
        "data": _data_key(args),
        "vectors": vectors_sha,
        "spec": spec.digest(),
        "versions": versions(),
        "source": source_digest(),
    }
    return _sha(json.dumps(doc, sort_keys=True).encode())


def up_to_date(variant_dir: Path, stem: str, key: str) -> bool:
    """True if the folder's .json records `key` and every file still has the hash the build recorded."""
    try:
        meta = json.loads((variant_dir / f"{stem}.json").read_text())
        hashes = meta["hashes"]
        if hashes.get("build") != key:
            return False
        files = {"espdl": ".espdl", "reference": ".reference.json", "graph_txt": ".graph.txt"}
        return (all(_sha_file(variant_dir / f"{stem}{suffix}") == hashes[k] for k, suffix in files.items())
                and qf.info_digest(variant_dir / f"{stem}.info") == hashes["info"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def foreign(variant: str, models: Path, args) -> str | None:
    """Why the existing folder of `variant` was built from another model or data (None if it was not,
    or if there is no readable folder)."""
    try:
        h = qf.read_meta(variant, models)["hashes"]
    except (UserError, KeyError, TypeError):
        return None
    if h.get("onnx") not in (None, _sha_file(args.onnx)):
        return f"another model (onnx sha256 {h['onnx'][:12]}..., --onnx {args.onnx} is {_sha_file(args.onnx)[:12]}...)"
    if h.get("data") not in (None, _data_key(args)):
        return "other data (its data key differs from this --data/--calib)"
    return None


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

    if args.data is None:
        user, classes = None, tuple(data.CLASSES)
    else:
        user = data.load_image_folder(args.data)
        classes = user[2]
    if n_outputs and n_outputs != len(classes):
        raise UserError(f"the model has {n_outputs} outputs but the data has {len(classes)} classes "
                        f"({', '.join(classes)}); pass --data with one sub-folder per model class")
    calib_n = calib_count(args, user)
    if user is None:
        if calib_n < MIN_CALIB_STEPS:
            raise UserError(f"--calib {calib_n}: {calib_n} calibration images are too few; esp-ppq needs at least "
                            f"{MIN_CALIB_STEPS}: pass --calib {MIN_CALIB_STEPS} or more")
        return user, classes
    n = len(user[0])
    # one rule, one hint: MIN_CALIB_STEPS <= calib <= n - 1 (at least one held-out image)
    if n < MIN_CALIB_STEPS + 1:
        raise UserError(f"the data folder {args.data} has {n} images; quant needs at least {MIN_CALIB_STEPS + 1} "
                        f"({MIN_CALIB_STEPS} to calibrate, 1 held out): add images")
    if not MIN_CALIB_STEPS <= calib_n <= n - 1:
        what = "too few" if calib_n < MIN_CALIB_STEPS else "too many (none left held out)"
        raise UserError(f"--calib {calib_n}: {calib_n} calibration images are {what} for {n} images; esp-ppq needs at "
                        f"least {MIN_CALIB_STEPS}: pass --calib between {MIN_CALIB_STEPS} and {n - 1}")
    return user, classes


def calib_count(args, user) -> int:

    if args.calib is not None:
        return args.calib
    return 256 if user is None else min(256, max(len(user[0]) // 2, min(MIN_CALIB_STEPS, len(user[0]) - 1)))


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
    return out / f".{qf.STEM_PREFIX}{variant}.{tag}-{os.getpid()}"


def recover(out: Path, variant: str) -> None:
    """Undo a swap interrupted between its two renames; drop stale staging folders."""
    target = qf.variant_dir(variant, out)
    for p in sorted(out.glob(f".{qf.STEM_PREFIX}{variant}.*-*")):
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


@dataclass
class Context:
    """What every variant of one build shares: the inputs and their identities."""

    onnx: Path
    from_user_data: bool
    data: Data
    vectors_x: object
    vectors_meta: list
    vectors_sha: str
    input_name: str
    output_names: tuple
    data_key: str


@dataclass
class Measured:
    """One variant's records, computed and not yet written: the .info tables, the .json document and the
    two files copied from esp-ppq's export."""

    spec: object
    quality: dict
    model: dict
    budgets: dict
    worst_source: str
    reference_text: str
    meta: dict  # without the hashes of the written files (`serialise` adds them)
    espdl: bytes
    graph_txt: bytes
    build: dict | None = None  # the [build] record of the last good folder, kept while the .espdl is the same


def measure(quantizer, result, ctx: Context, key: str, measured_budgets: dict, kept_build: dict | None = None) -> Measured:
    """Everything a variant folder records, from a quantization result (nothing is written)."""

    spec, attempt = result.spec, result.attempt
    graph = attempt.graph
    espdl_bytes = attempt.espdl.read_bytes()
    espdl_sha = _sha(espdl_bytes)

    progress(f"  [{spec.name}] reference outputs on {len(ctx.vectors_meta)} fixed vectors")
    entries = reference.compute(graph, ctx.vectors_x, ctx.vectors_meta, list(ctx.output_names))
    reference.check_embedded(attempt.espdl, entries)
    reference_text = reference.document(spec.name, entries, ctx.vectors_sha, espdl_sha)

    progress(f"  [{spec.name}] accuracy on {len(ctx.data.heldout_y)} held-out images, worst layer groups")
    m = quantizer.heldout_metrics(spec, attempt)
    worst = quantizer.ranking(attempt, spec.analysis_images)[:5]
    int16 = set(attempt.int16_ops)
    macs = info.op_macs(attempt.onnx)
    n_nodes = sum(1 for _ in graph.operations)
    quality = qf.stable({
        **m,
        "top1_drop_points": (m["float_top1"] - m["top1"]) * 100,
        "floor_drop_points": spec.floor_drop_points,
        "worst_layers": [{"op": w["group"], "noise_signal": w["noise_signal"]} for w in worst],
    })
    peak = info.peak_activation_bytes(attempt.onnx, int16)
    params = info.espdl_parameter_bytes(attempt.espdl)
    model = {
        "espdl_bytes": len(espdl_bytes),
        "parameter_bytes": params,
        "macs": sum(macs.values()),
        "int16_macs": sum(v for k, v in macs.items() if k in int16),
        "int16_ops": len(int16),
        "peak_activation_bytes": peak,
    }
    budgets = info.budgets(attempt.espdl, peak, params, model["espdl_bytes"], n_nodes)
    budgets.update(measured_budgets)
    worst_source = (f"grouped sensitivity (compute op + its Clip/Relu; only that group quantized, graph output "
                    f"noise/signal vs the dequantized graph, first {spec.analysis_images} calibration images)")

    in_exp, in_bits = reference.tensor_exponent(graph, ctx.input_name)
    outputs = [{"name": n, **{k: v for k, v in entries[0]["tensors"][n].items() if k != "data"}}
               for n in ctx.output_names]
    meta = {
        "format": 1,
        "variant": spec.name,
        "spec": spec.to_dict(),
        "platform": PLATFORM,
        "calibration": result.calibration,
        "int16_layers": sorted(int16),
        "sensitivity": result.sensitivity,
        "equalization": result.equalization,
        "input": {"name": ctx.input_name, "shape_nchw": INPUT_SHAPE, "layout": "NHWC", "dtype": f"int{in_bits}",
                  "exponent": in_exp},
        "outputs": outputs,
        "classes": list(ctx.data.classes),
        "tolerance": spec.tolerance.to_dict(),
        "source": {"onnx": Path(ctx.onnx).name, "data": "user image folder" if ctx.from_user_data
                   else "synthetic gestures (quant.variants.data)", "calibration_images": int(len(ctx.data.calib_x))},
        "hashes": {
            "build": key,
            "onnx": _sha_file(ctx.onnx),
            "data": ctx.data_key,
            "calibration_data": _sha(ctx.data.calib_x.tobytes()),
            "heldout_data": _sha(ctx.data.heldout_x.tobytes() + ctx.data.heldout_y.tobytes()),
            "vectors": ctx.vectors_sha,
            "espdl": espdl_sha,
            "spec": spec.digest(),
        },
        "versions": versions(),
    }
    return Measured(spec, quality, model, budgets, worst_source, reference_text, meta, espdl_bytes,
                    attempt.graph_dump.read_bytes(), kept_build)


def serialise(m: Measured) -> dict[str, bytes]:
    """suffix -> file bytes of one variant folder (pure: the same records give the same bytes)."""
    info_text = qf.render_info(m.spec.name, m.quality, m.model, m.budgets, m.worst_source, m.build)
    meta = {**m.meta, "hashes": {**m.meta["hashes"], "info": qf.info_digest(info_text),
                                 "reference": _sha(m.reference_text.encode()), "graph_txt": _sha(m.graph_txt)}}
    return {".espdl": m.espdl, ".graph.txt": m.graph_txt, ".reference.json": m.reference_text.encode(),
            ".info": info_text.encode(), ".json": qf.dump_json(meta).encode()}


def write_variant(files: dict[str, bytes], variant_dir: Path, stem: str, key: str) -> None:
    """Write the files into `variant_dir` and check them as the readers will (UserError if unreadable)."""
    for suffix, data in files.items():
        (variant_dir / f"{stem}{suffix}").write_bytes(data)
    try:
        with open(variant_dir / f"{stem}.info", "rb") as fh:
            parsed = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"internal error: the written {stem}.info cannot be read back ({exc}); the last good "
                        f"folder was kept; please report this") from None
    if set(parsed.get("budgets", {})) != set(qf.BUDGETS):
        raise UserError(f"internal error: the written {stem}.info has budgets {sorted(parsed.get('budgets', {}))}, "
                        f"not {sorted(qf.BUDGETS)}; the last good folder was kept; please report this")
    if not up_to_date(variant_dir, stem, key):
        raise UserError(f"internal error: the written {stem} files do not match the hashes in its .json; the last "
                        f"good folder was kept; please report this")


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


def fixed_vectors(args, models: Path, user, *, make: bool):
    """(x, meta, sha, to_write) of the models folder's fixed vectors. A folder without them gets them made
    (from the user's images with --data, else the default gesture set) but only written later, by `run`;
    with make=False (--check) a missing pair is (None, None, None, False)."""

    bin_path, meta_path = qf.vectors_files(models)
    if bin_path.exists() or meta_path.exists() or qf.is_default(models):
        x, meta = qf.load_vectors(models)
        return x, meta, _sha_file(bin_path), False
    if not make:
        return None, None, None, False
    if user is None:
        x, meta = vectors.make_vectors()
    else:
        x, meta = vectors.make_user_vectors(user, vectors.DEFAULT_USER_IMAGES)
    return x, meta, _sha(x.astype("<f4").tobytes()), True


def run(args, specs=None) -> int:
    """`quant build`; `specs` (VariantSpecs) replaces the --variant names (tests build cheap specs)."""

    started = time.perf_counter()
    if specs is None:
        names = list(dict.fromkeys(args.variant or list(variants.VARIANTS)))
        specs = [variants.get(n) for n in names]
    names = [s.name for s in specs]
    if getattr(args, "jobs", None) is not None and args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: at least one process is needed; pass --jobs 1 or more")
    input_name, output_names, n_outputs = check_onnx(args.onnx)
    models = check_models_dir(args.models_dir)
    user, classes = check_data(args, n_outputs)  # before anything is written
    vectors_x, vectors_meta, vectors_sha, write_vectors = fixed_vectors(args, models, user, make=not args.check)

    if args.check:
        return check(args, models, specs, vectors_sha)
    created = not models.exists()
    try:
        models.mkdir(parents=True, exist_ok=True)
        return _build(args, models, specs, names, started, user, classes, input_name, output_names,
                      vectors_x, vectors_meta, vectors_sha, write_vectors)
    finally:
        if created and not any(qf.variant_dir(n, models).is_dir() for n in qf.VARIANTS + tuple(names)):
            shutil.rmtree(models, ignore_errors=True)  # a failed build leaves no (empty) folder behind


def check(args, models: Path, specs, vectors_sha) -> int:
    """`quant build --check`: which variants in `models` are stale; a folder of another model is an error."""
    print(f"checking {models.resolve()} against --onnx {args.onnx}"
          + (f" and --data {args.data}" if args.data else " and the synthetic gesture data"))
    for s in specs:
        why = foreign(s.name, models, args)
        if why:
            raise UserError(f"{qf.variant_dir(s.name, models)} was built from {why}; --check compares it with the "
                            f"model and data you pass: give the --onnx and --data it was built from")
    stale = []
    for s in specs:
        target = qf.variant_dir(s.name, models)
        if vectors_sha is None:
            print(f"{s.name}: stale ({models} has no fixed vectors); run `quant build --models-dir {models}` "
                  f"with the same --onnx/--data")
            stale.append(s)
        elif up_to_date(target, target.name, build_key(args, s, vectors_sha)):
            print(f"{s.name}: up to date ({target})")
        else:
            stale.append(s)
            state = "missing" if not target.exists() else "stale (its inputs, spec, tools or code changed)"
            print(f"{s.name}: {state} ({target}); run `quant build --models-dir {models}` with the same --onnx/--data")
    return 1 if stale else 0


def share_groups(specs) -> list[list]:
    """The specs in groups that share work (the prepared float graph and the calibration sweep: same ReLU6
    policy and distillation), in build order; groups share nothing and can be built in separate processes."""
    groups: dict[tuple, list] = {}
    for s in specs:
        groups.setdefault((s.relu6, s.distillation), []).append(s)
    return list(groups.values())


def build_jobs(args) -> int:
    """Processes for independent groups: --jobs, else 1. Not 2 by default: measured on the shared 2-core
    machine (load ~4), --jobs 2 took 58 s of CPU against 51 s (a second interpreter imports torch and esp-ppq and
    loads the data again) and more wall time (106 s against 77 s), and the two peaks add up in memory; it only
    pays off on otherwise idle cores."""
    jobs = getattr(args, "jobs", None)
    return jobs if jobs is not None else 1


@contextlib.contextmanager
def frozen_gc():
    """esp-ppq runs a full gc.collect() before every quantization and calibration pass (its empty_ppq_cache
    decorator): ~80 per build, each walking the ~230k objects torch, onnx and esp-ppq import (measured 5 s of a
    45 s int8 + mixed build). Those live for the whole build: a `gc.freeze()` inside this block leaves them out of
    every walk; on leaving they are collectable again (the interpreter's exit collects them, as before)."""
    try:
        yield
    finally:
        gc.unfreeze()


def build_batch(args, models, keys, user, classes, input_name, output_names, vectors_x, vectors_meta, vectors_sha,
                batch) -> list[str]:
    """Quantize, measure, write, gate and swap in each spec of `batch`, in order (one data load and one
    Quantizer: the specs share its memoised attempts and float outputs); returns the quality-gate failures."""
    failures = []
    progress(f"loading data and the float model ({Path(args.onnx).name})")
    data = load_data(args, user, classes)
    inputs = Inputs(Path(args.onnx), data.calib_x, data.heldout_x, data.heldout_y, data.classes, vectors_x,
                    vectors_meta, input_name, output_names)
    ctx = Context(Path(args.onnx), args.data is not None, data, vectors_x, vectors_meta, vectors_sha, input_name,
                  tuple(output_names), _data_key(args))
    with tempfile.TemporaryDirectory(prefix="quant-build-") as work, frozen_gc():
        quantizer = Quantizer(inputs, Path(work))
        gc.freeze()  # now that torch, onnx and esp-ppq are imported
        for spec in batch:
            t0 = time.perf_counter()
            progress(f"{spec.name}: {spec.summary}")
            target = qf.variant_dir(spec.name, models)
            staging = _staging(models, spec.name, "staging")
            try:
                staging.mkdir()
                result = quantizer.run(spec)
                espdl_sha = _sha(result.attempt.espdl.read_bytes())
                measured = measure(quantizer, result, ctx, keys[spec.name], qf.measured_budgets(spec.name, models, espdl_sha),
                                   qf.kept_build(spec.name, models, espdl_sha))
                write_variant(serialise(measured), staging, target.name, keys[spec.name])
                failure = gate(spec, measured.quality, result.sensitivity)
                if failure:
                    failures.append(failure)
                    print(f"{spec.name}: FAILED its quality gate; {target} left as it was", file=sys.stderr)
                    continue
                replace_dir(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            progress(f"{spec.name}: done in {time.perf_counter() - t0:.1f} s -> {target}")
    return failures


def _build(args, models, specs, names, started, user, classes, input_name, output_names, vectors_x, vectors_meta,
           vectors_sha, write_vectors) -> int:
    for name in names:
        recover(models, name)
    if write_vectors:
        for path in qf.write_vectors(models, vectors_x, vectors_meta):
            print(f"wrote {path} (the fixed vectors every variant in {models} is checked on)")
    keys = {s.name: build_key(args, s, vectors_sha) for s in specs}
    stale = []
    for s in specs:
        target = qf.variant_dir(s.name, models)
        if up_to_date(target, target.name, keys[s.name]):
            print(f"{s.name}: up to date ({target})")
        else:
            stale.append(s)

    failures = []
    if stale:
        batches = share_groups(stale)
        jobs = max(1, min(build_jobs(args), len(batches)))
        common = (args, models, keys, user, classes, input_name, output_names, vectors_x, vectors_meta, vectors_sha)
        if jobs == 1:
            failures += build_batch(*common, stale)  # one data load, one Quantizer
        else:
            # the groups share nothing: the others run in fresh interpreters (spawn: no forked torch state)
            # while this process builds the first; every process runs its torch on one thread, as alone
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            progress(f"building {' | '.join('+'.join(s.name for s in b) for b in batches)} in {jobs} processes")
            with ProcessPoolExecutor(jobs - 1, mp_context=multiprocessing.get_context("spawn")) as pool:
                others = [pool.submit(build_batch, *common, batch) for batch in batches[1:]]
                failures += build_batch(*common, batches[0])
                for future in others:
                    failures += future.result()

    print()
    print(report.table(models, names))
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    if failures:
        raise UserError(" | ".join(failures))
    return 0
