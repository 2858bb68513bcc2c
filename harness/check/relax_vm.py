"""TVM's own execution of a model on the host, to check minrt against.

- `run_relax_vm`: the same Relax module that `harness.compile` walks (same import, same
  passes, same kernel codegen options), built whole by `tvm.compile` and run by TVM's Relax
  VM. Same kernels, so minrt on x86_64 should match it bit for bit.
- `run_graph`: executes an artifact's graph.json + params.bin in Python, with every entry a
  view into its planned storage buffer and the kernels from TVM: checks the graph walk and
  the storage plan without minrt.
- `relax_planned_bytes`: what Relax's StaticPlanBlockMemory allocates for the same model,
  the yardstick for minrt's arena size.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from harness.formats.artifact import Artifact
from harness.formats.artifact import NOP
from harness.formats.dtypes import dtype_nbytes
from harness.compile.native_log import native_stderr_to_log
from harness.compile.source import load_model, relax_module
from harness.errors import CompileError
from harness.config.targets import Target, load_target

log = logging.getLogger(__name__)

HOST_TARGET = "x86_64"
_ALIGN = 64


def _host_target(target: Target | str | None) -> Target:
    if target is None:
        target = HOST_TARGET
    return load_target(target) if isinstance(target, str) else target


def _ordered_inputs(model_path: Path, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    names = load_model(model_path, _shapes_of(inputs)).input_names
    missing = [n for n in names if n not in inputs]
    if missing:
        raise CompileError(f"{model_path}: no value given for input(s) {', '.join(missing)}")
    return [np.ascontiguousarray(inputs[n]) for n in names]


def _shapes_of(inputs: Mapping[str, np.ndarray]) -> dict[str, list[int]]:
    """The inputs' own shapes, which fix a model's dynamic dimensions (--input-shape)."""
    return {name: list(np.shape(value)) for name, value in inputs.items()}


def _kernel_context() -> Any:
    import tvm

    # The same codegen option as the artifact's kernels, so the arithmetic is the same.
    return tvm.transform.PassContext(config={"tirx.disable_assert": True})


@native_stderr_to_log("relax vm reference")
def run_relax_vm(model_path: Path | str, inputs: Mapping[str, np.ndarray],
                 target: Target | str | None = None) -> list[np.ndarray]:
    """Run the model through TVM's Relax VM on this host; outputs in graph order."""
    import tvm
    from tvm import relax

    model_path = Path(model_path)
    target = _host_target(target)
    tvm_target = tvm.target.Target(dict(target.tvm_target))
    mod = relax_module(model_path, target.tvm_target, _shapes_of(inputs))
    args = [tvm.runtime.tensor(x) for x in _ordered_inputs(model_path, inputs)]
    log.info("relax vm: building %s for %s", model_path.name, target.name)
    with _kernel_context():
        executable = tvm.compile(mod, target=tvm_target)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    result = vm["main"](*args)
    if isinstance(result, tvm.runtime.Tensor):
        return [result.numpy()]
    return [r.numpy() for r in result]


def relax_planned_bytes(model_path: Path | str, target: Target | str,
                        input_shapes: Mapping[str, Sequence[int]] | None = None) -> int:
    """Total bytes of the storages Relax's StaticPlanBlockMemory plans for the model's
    intermediates (model inputs, params and outputs are not planned by it). `input_shapes`
    (`--input-shape`) fixes a dynamic dimension, as for compile_model."""
    import tvm
    from tvm import relax

    model_path = Path(model_path)
    target = load_target(target) if isinstance(target, str) else target
    mod = relax_module(model_path, target.tvm_target, input_shapes)
    passes = tvm.transform.Sequential([
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        relax.transform.StaticPlanBlockMemory(),
    ])
    with tvm.target.Target(dict(target.tvm_target)):
        planned = passes(mod)
    text = planned["main"].script()
    sizes = [int(m) for m in re.findall(r"R\.memory\.alloc_storage\(R\.shape\(\[(\d+)\]\)", text)]
    if text.count("R.memory.alloc_storage(") != len(sizes):
        raise CompileError(f"{model_path}: Relax planned a storage of non-constant size")
    return sum(sizes)


def _aligned_buffer(nbytes: int) -> np.ndarray:
    raw = np.zeros(nbytes + _ALIGN, dtype=np.uint8)
    offset = (-raw.ctypes.data) % _ALIGN
    return raw[offset:offset + nbytes]


def run_graph(artifact: Artifact, model_path: Path | str,
              inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Execute the artifact's graph.json with its storage plan and params.bin on this host.

    Kernels come from compiling the model's PrimFuncs for the host, so the artifact must be
    for a host target. Every entry is a view of its storage buffer, exactly as minrt lays
    them out; a storage plan that lets a live entry be overwritten gives wrong outputs.
    """
    import tvm

    model_path = Path(model_path)
    target = load_target(artifact.metadata["target"])
    graph = json.loads(artifact.graph_json.read_text())
    params = artifact.params()
    # the artifact's input shapes are the ones it was compiled with (--input-shape included)
    mod = relax_module(model_path, target.tvm_target, {spec["name"]: spec["shape"] for spec in artifact.inputs})
    kernels = {name: mod[name].with_attr("global_symbol", name) for name in artifact.metadata["kernels"]}
    with _kernel_context():
        lib = tvm.compile(tvm.IRModule(kernels), target=tvm.target.Target(dict(target.tvm_target)))

    row_ptr = graph["node_row_ptr"]
    shapes = graph["attrs"]["shape"][1]
    dtypes = graph["attrs"]["dltype"][1]
    sids = graph["attrs"]["storage_id"][1]
    sizes: dict[int, int] = {}
    for eid, sid in enumerate(sids):
        sizes[sid] = max(sizes.get(sid, 0), int(np.prod(shapes[eid], dtype=np.int64)) * dtype_nbytes(dtypes[eid]))
    storage = {sid: _aligned_buffer(size) for sid, size in sizes.items()}

    def view(eid: int) -> np.ndarray:
        count = int(np.prod(shapes[eid], dtype=np.int64))
        dtype = np.dtype(dtypes[eid])
        return storage[sids[eid]][: count * dtype.itemsize].view(dtype).reshape(shapes[eid])

    given = dict(zip([spec["name"] for spec in artifact.inputs], _ordered_inputs(model_path, inputs)))
    for nid, node in enumerate(graph["nodes"]):
        if node["op"] == "null":
            source = params[node["name"]] if node["name"] in params else given[node["name"]]
            view(row_ptr[nid])[...] = source
    for nid, node in enumerate(graph["nodes"]):
        if node["op"] == "null" or node["attrs"]["func_name"] == NOP:
            continue
        args = [view(row_ptr[n] + i) for n, i, _ in node["inputs"]]
        args += [view(row_ptr[nid] + i) for i in range(int(node["attrs"]["num_outputs"]))]
        lib[node["attrs"]["func_name"]](*[tvm.runtime.from_dlpack(a) for a in args])
    return [view(row_ptr[n] + i).copy() for n, i, _ in graph["heads"]]
