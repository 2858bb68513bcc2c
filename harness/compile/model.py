"""Compile an ONNX or TFLite model with apache-tvm into a minrt artifact (see harness.formats.artifact).

The path: onnx (batch-norms after convs folded into their weights) or .tflite -> Relax (TVM's
ONNX or TFLite frontend, weights as constants; harness.compile.source) -> the pass sequence in
`lower_relax` (legalize + fuse) -> `main` is a straight line of `R.call_tir` calls over inputs
and constants -> walked into TVM's graph-executor graph.json with a storage plan, params.bin,
and kernels.o (the PrimFuncs compiled for the target as a system library).
Artifacts are cached by content hash, so a second compile of the same model is a lookup."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence


from harness.formats import tensorfile
from harness.formats.artifact import GRAPH_JSON, KERNELS_OBJ, METADATA_JSON, NOP, PARAMS_BIN, Artifact
from harness.cache import cache_dir, cache_error, content_hash, seal, seal_broken
from harness.errors import CompileError
from harness.formats.signatures import SIGNATURES_C, write_signatures
from harness.config.targets import Target, load_target, tvm_target as tvm_target_of
from harness.compile.source import load_model, lowered_module
from harness.compile.graph import check_dtypes, inplace_pairs, walk_main
from harness.compile.native_log import native_stderr_to_log
from harness.compile.tflite_import import TensorInfo
from harness.compile.plan import graph_json, plan_storage, storage_summary
from harness.compile.kernels import SYSTEM_LIB_PREFIX, compile_kernels, kernel_target, schedule_model_kernels

log = logging.getLogger(__name__)

#: Bump when the artifact produced for the same inputs changes (invalidates the cache).
PIPELINE_VERSION = "30"  # 3: aligned params; 4-6: in-place outputs; 7: scheduled kernels; 8: kernel signatures; 9: kernels in the signature table; 10: channels-last conv weights; 11: .tflite, int8 kernels; 12: compact per-channel requantization tables; 13: BNs on ConstantOfShape weights folded, grouped channels-last convs; 14: int8 kernels with the input zero point in the bias, SMLAD on Cortex-M4/M7; 15: int32 requantization shifts; 16: SVDF, integer QUANTIZE with int16/int32, int8 -> int16 softmax; 17: params.bin container version 2 (a directory of name, dtype, size; no per-tensor headers); 18: int8 requantization rounded in int32 where exact; 19: per-channel requantization shifts as an int8 array; 20: AVX2 int8 convs across output channels (vpmaddwd on broadcast input pairs); 21: ARMv7 NEON: vfma, short reductions unrolled, channel-vector epilogues, concatenations by rows; 22: x86_64 pools keep their window loops, concatenations their loops; 24: dense float convs with large weights or chunked 1x1s take blocked (O/lanes, KH, KW, I, lanes) weights laid out at compile time, input channels reduced in chunks; 25: batch-norms not after a conv as one multiply-add with the per-channel Mul/Add after them (after a conv, those join its weights), x86_64 elementwise kernels with per-channel operands vectorized along rows; 26: parallel loops weighted by elements moved, on vectorized elementwise kernels too, fused to 16+ iterations; 27: grouped convs with groups of output channels not whole vectors padded to whole vectors (zero weights), cropped by the epilogue; 28: an LRN as one kernel (squares once per row, window sum tiled, beta 0.75 as square roots); 29: x86_64 dense convs with taps whose rows only divide into small register tiles compute a few columns more, blocked (27 -> 30), global poolings by image rows, an output copy of a concatenation inlined into it; 30: x86_64 convs with taps whose rule tile takes 2 pixels or fewer take one vector across a whole row of up to 14 pixels
ABI = "tvm-ffi"


# ---------------------------------------------------------------------------------------------
# The entry point


def _cache_key(model_name: str, onnx_bytes: bytes, target: Target, cache: Path | None, prefix: str = "",
               input_shapes: Mapping[str, Sequence[int]] | None = None) -> str:
    import tvm

    from harness.compile.tuning_db import TuningDatabase, tuning_disabled

    # The tuning records for the target and the default schedule rules are part of the
    # input: new records or new rules, new artifact.
    tuning = "off" if tuning_disabled() else TuningDatabase.for_target(target, cache).digest()
    # the default schedule rules, the integer kernels' definitions and the importers (which
    # choose layouts and fold constants) are inputs too
    rules = b"".join((Path(__file__).parent / name).read_bytes()
                     for name in ("schedule.py", "int8.py", "onnx_import.py", "tflite_import.py"))
    return content_hash([model_name, onnx_bytes, target.name, target.tvm_target_key, tvm.__version__,
                         PIPELINE_VERSION, tuning, rules] + ([f"prefix={prefix}"] if prefix else [])
                        + ([f"input_shapes={json.dumps({k: list(v) for k, v in input_shapes.items()}, sort_keys=True)}"]
                           if input_shapes else []))


def compile_model(model_path: Path | str, target: Target | str, cache: Path | None = None,
                  system_lib_prefix: str = SYSTEM_LIB_PREFIX,
                  input_shapes: Mapping[str, Sequence[int]] | None = None) -> Artifact:
    """Compile an ONNX or TFLite model for a target into an artifact directory under
    `<cache>/artifacts/<hash>` (cache defaults to harness.cache.cache_dir()); reuse it if there.

    `system_lib_prefix` (a C identifier prefix, e.g. "kws_") goes before every kernel symbol,
    so the kernels of several models link into one firmware image without colliding.
    `input_shapes` (input name -> shape, `--input-shape`) fixes dynamic input dimensions; it is
    part of the cache key."""
    if system_lib_prefix and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", system_lib_prefix):
        raise CompileError(f"system_lib_prefix {system_lib_prefix!r} is not a C identifier prefix")
    model_path = Path(model_path)
    if isinstance(target, str):
        target = load_target(target)
    with native_stderr_to_log(f"compile {model_path.name} for {target.name}"):
        return _compile_model(model_path, target, cache, system_lib_prefix, input_shapes)


def _compile_model(model_path: Path, target: Target, cache: Path | None, system_lib_prefix: str,
                   input_shapes: Mapping[str, Sequence[int]] | None) -> Artifact:
    source = load_model(model_path, input_shapes)
    data = source.data
    model_name = model_path.stem
    key = _cache_key(model_name, data, target, cache, system_lib_prefix, input_shapes)
    root = (Path(cache) if cache is not None else cache_dir()) / "artifacts"
    out_dir = root / key
    if out_dir.is_dir():
        try:
            broken = seal_broken(out_dir)
            if broken:
                raise CompileError(broken)
            artifact = Artifact.open(out_dir)
            log.info("compile %s for %s: cached artifact %s", model_name, target.name, out_dir)
            return artifact
        except CompileError as exc:
            log.warning("recompiling: cached artifact %s is unusable (%s)", out_dir, exc)
            shutil.rmtree(out_dir, ignore_errors=True)

    import tvm

    tvm_target = tvm_target_of(target)  # a bad [tvm] table fails here, before any import work
    started = time.monotonic()
    log.info("compile %s for %s: importing %s with TVM %s", model_name, target.name,
             {"onnx": "ONNX", "tflite": "TFLite"}[source.kind], tvm.__version__)
    lowered = lowered_module(source, tvm_target)  # logs "legalize and fuse" when the import is done
    inputs = source.input_names
    graph = walk_main(lowered, inputs, str(model_path), op_types=source.op_types)
    check_dtypes(graph, str(model_path))  # before the kernels: minrt would refuse the graph at load
    schedule_started = time.monotonic()
    ktarget = kernel_target(target)
    kernels, schedules = schedule_model_kernels(graph.kernels, ktarget, target, cache)
    schedule_seconds = time.monotonic() - schedule_started
    # In place is decided on the kernels as scheduled: a schedule that computes the output tile
    # by tile while it still reads the input (an epilogue fused per tile) must not alias them.
    for node in graph.nodes:
        if node.op == "tvm_op" and node.func_name in kernels:
            node.inplace = inplace_pairs(kernels[node.func_name], len(node.inputs))
    plan = plan_storage(graph)
    output_names = [value.name for value in source.outputs]
    if len(output_names) != len(graph.heads):
        raise CompileError(f"{model_path}: the model has {len(output_names)} outputs but TVM produced {len(graph.heads)}")

    tmp = root / f".{key}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise cache_error(exc, f"cache directory {root}") from None
    try:
        log.info("compile %s: %d kernels for %s", model_name, len(graph.kernels), target.tvm_target.get("mtriple", "host"))
        workspace = compile_kernels(kernels, ktarget, tmp / KERNELS_OBJ, system_lib_prefix)
        write_signatures(kernels, tmp / SIGNATURES_C, prefix=system_lib_prefix)  # minrt's kernel table
        (tmp / GRAPH_JSON).write_text(json.dumps(graph_json(graph, plan), separators=(",", ":")))
        tensorfile.save(tmp / PARAMS_BIN, graph.params, aligned=True)

        def spec(info: TensorInfo, nid: int, index: int) -> dict[str, Any]:
            shape, dtype = graph.nodes[nid].outputs[index]
            item: dict[str, Any] = {"name": info.name, "shape": list(shape), "dtype": dtype}
            if info.quantization() is not None:  # scale and zero point of a quantized tensor
                item["quantization"] = info.quantization()
            return item

        metadata = {
            "model": model_name,
            "format": source.kind,
            "model_sha256": hashlib.sha256(data).hexdigest(),
            "target": target.name,
            "tvm_target": target.tvm_target,
            "tvm_version": tvm.__version__,
            "abi": ABI,
            "system_lib_prefix": system_lib_prefix,
            "kernels": sorted(graph.kernels),
            "workspace_bytes": workspace,
            "schedules": schedules,
            "tuned_kernels": sorted(k for k, v in schedules.items() if v["source"] == "tuned"),
            "schedule_seconds": round(schedule_seconds, 3),
            "inputs": [spec(info, nid, 0) for info, nid in zip(source.inputs, graph.input_nids)],
            "outputs": [spec(info, nid, i) for info, (nid, i) in zip(source.outputs, graph.heads)],
            "storage": storage_summary(graph, plan),
            "inplace": [list(t) for t in plan.inplace],
            "nops": sum(1 for n in graph.nodes if n.func_name == NOP),
            "folded_batchnorms": source.notes.get("folded_batchnorms", 0),
            "affine_batchnorms": source.notes.get("affine_batchnorms", 0),
            "input_shapes": {k: list(v) for k, v in (input_shapes or {}).items()},
            "pipeline_version": PIPELINE_VERSION,
            "compile_seconds": round(time.monotonic() - started, 3),
        }
        (tmp / METADATA_JSON).write_text(json.dumps(metadata, indent=2) + "\n")
        seal(tmp, [p.name for p in tmp.iterdir()])
        try:
            tmp.rename(out_dir)
        except OSError:  # another process finished the same artifact first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:  # a full or read-only cache: say so, not where in the writing it broke
        shutil.rmtree(tmp, ignore_errors=True)
        raise cache_error(exc, f"cache directory {root}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("compile %s for %s: done in %.1f s -> %s", model_name, target.name, time.monotonic() - started, out_dir)
    return Artifact.open(out_dir)
