"""Compile an ONNX model with apache-tvm into a minrt artifact (see harness.artifact).

The path: onnx (batch-norms after convs folded into their weights) -> Relax (TVM's ONNX
frontend, weights as constants) -> the pass sequence in
`lower_relax` (legalize + fuse) -> `main` is a straight line of `R.call_tir` calls over inputs
and constants -> walked into TVM's graph-executor graph.json with a storage plan, params.bin,
and kernels.o (the PrimFuncs compiled for the target as a system library).
Artifacts are cached by content hash, so a second compile of the same model is a lookup.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import tensorfile
from .artifact import GRAPH_JSON, KERNELS_OBJ, METADATA_JSON, PARAMS_BIN, Artifact
from .cache import cache_dir, cache_error, content_hash
from .errors import CompileError
from .signatures import SIGNATURES_C, write_signatures
from .targets import Target, load_target, tvm_target as tvm_target_of

log = logging.getLogger(__name__)

#: Bump when the artifact produced for the same inputs changes (invalidates the cache).
PIPELINE_VERSION = "9"  # 3: aligned params; 4-6: in-place outputs; 7: scheduled kernels; 8: kernel signatures; 9: kernels in the signature table
#: Symbols register as `__tvm_ffi_<func_name>` with no prefix.
SYSTEM_LIB_PREFIX = ""
ABI = "tvm-ffi"
NOP = "__nop"

_DTYPE_BITS = {"bool": 8}


def dtype_nbytes(dtype: str) -> int:
    """Bytes per element of a TVM dtype string ("float32", "int8", "bool"...)."""
    if dtype in _DTYPE_BITS:
        return _DTYPE_BITS[dtype] // 8
    match = re.fullmatch(r"(?:float|int|uint|bfloat)(\d+)", dtype)
    if not match:
        raise CompileError(f"dtype '{dtype}' is not supported by minrt")
    return (int(match.group(1)) + 7) // 8


# ---------------------------------------------------------------------------------------------
# ONNX -> Relax


def load_onnx(path: Path) -> tuple[Any, bytes]:
    """Read and check an ONNX file; errors name the file and what is wrong with it."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CompileError(f"{path}: cannot read model: {exc.strerror}") from None
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise CompileError(f"{path}: not an ONNX model (protobuf does not parse: {exc})") from None
    # Protobuf accepts many byte strings (even empty ones) as a message with no fields.
    if model.ir_version == 0 or not model.HasField("graph") or not model.graph.node:
        raise CompileError(
            f"{path}: not an ONNX model (no ir_version or no graph nodes in {len(data)} bytes)"
        )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CompileError(f"{path}: invalid ONNX model: {first}") from None
    return model, data


def graph_inputs(model: Any) -> list[Any]:
    """The graph's real inputs (ONNX may list initializers as inputs too)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _check_static_shapes(model: Any, path: Path) -> None:
    for value in graph_inputs(model):
        dims = value.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                what = dim.dim_param or "unknown"
                raise CompileError(
                    f"{path}: input '{value.name}' has a non-static dimension {axis} ({what}); "
                    "minrt needs every input shape fixed"
                )


def fold_batchnorm(model: Any) -> tuple[Any, int]:
    """Fold each inference-mode BatchNormalization that directly follows a Conv with constant
    weights into that Conv's weights and bias (a copy of the model is changed, not `model`).

    TVM has no such pass: without it the BN becomes a per-element subtract/divide/multiply/add
    in the conv kernel. With it the BN costs nothing at run time.
    """
    import onnx
    from onnx import numpy_helper

    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    consts = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    producer = {out: node for node in graph.node for out in node.output}
    count = 0
    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1 or len(bn.input) != 5:
            continue
        if any(a.name == "training_mode" and a.i for a in bn.attribute):
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or len(conv.output) != 1:
            continue
        if readers.get(conv.output[0], 0) != 1 or conv.output[0] in outputs:
            continue
        if not all(name in consts for name in list(conv.input[1:]) + list(bn.input[1:])):
            continue
        weight = numpy_helper.to_array(consts[conv.input[1]]).astype(np.float64)
        bias = (numpy_helper.to_array(consts[conv.input[2]]).astype(np.float64)
                if len(conv.input) > 2 and conv.input[2] else np.zeros(weight.shape[0]))
        scale, shift, mean, var = (numpy_helper.to_array(consts[n]).astype(np.float64) for n in bn.input[1:])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        factor = scale / np.sqrt(var + eps)
        dtype = numpy_helper.to_array(consts[conv.input[1]]).dtype
        new_w = (weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))).astype(dtype)
        new_b = ((bias - mean) * factor + shift).astype(dtype)
        w_name, b_name = f"{bn.output[0]}.folded_weight", f"{bn.output[0]}.folded_bias"
        graph.initializer.extend([numpy_helper.from_array(new_w, w_name), numpy_helper.from_array(new_b, b_name)])
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        conv.output[0] = bn.output[0]
        graph.node.remove(bn)
        count += 1
    return folded, count


def import_onnx(model: Any, path: Path) -> tuple[Any, int]:
    """ONNX -> Relax IRModule with weights as constants, and how many batch-norms were folded
    into convolutions on the way."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    _check_static_shapes(model, path)
    model, folded = fold_batchnorm(model)
    if folded:
        log.info("%s: folded %d batch-norm(s) into convolutions", path.name, folded)
    try:
        return from_onnx(model, keep_params_in_input=False), folded
    except tvm.error.OpNotImplemented as exc:
        message = str(exc)
        ops = sorted({n.op_type for n in model.graph.node if re.search(rf"\b{re.escape(n.op_type)}\b", message.split(":", 1)[-1])})
        nodes = [f"{n.op_type} (node '{n.name or n.output[0]}')" for n in model.graph.node if n.op_type in ops]
        raise CompileError(
            f"{path}: TVM's ONNX frontend cannot import operator(s) {', '.join(ops) or message}: "
            + "; ".join(nodes)
        ) from None
    except Exception as exc:  # the frontend raises many kinds; name it and keep the first line
        _reraise_interrupt(exc)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CompileError(f"{path}: TVM's ONNX frontend failed: {type(exc).__name__}: {first}") from None


def lower_relax(mod: Any, tvm_target: Any) -> Any:
    """Legalize and fuse: `main` becomes a linear sequence of call_tir over inputs and constants."""
    import tvm
    from tvm import relax

    passes = tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ])
    with tvm_target:
        return passes(mod)


def relax_module(onnx_path: Path, tvm_target_dict: dict[str, Any]) -> Any:
    """The lowered Relax module for a model file (shared with harness.relax_ref)."""
    import tvm

    model, _ = load_onnx(Path(onnx_path))
    mod, _ = import_onnx(model, Path(onnx_path))
    return lower_relax(mod, tvm.target.Target(dict(tvm_target_dict)))


# ---------------------------------------------------------------------------------------------
# Relax main -> graph


@dataclass
class GraphNode:
    op: str  # "null" (input or param) or "tvm_op"
    name: str
    inputs: list[tuple[int, int]] = field(default_factory=list)  # (nid, output index)
    func_name: str = ""
    outputs: list[tuple[tuple[int, ...], str]] = field(default_factory=list)  # (shape, dtype)
    # (input position, output index): the kernel may write that output over that input
    inplace: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Graph:
    nodes: list[GraphNode]
    heads: list[tuple[int, int]]
    input_nids: list[int]
    params: dict[str, np.ndarray]  # by node name, in node order
    kernels: dict[str, Any]  # func_name -> PrimFunc, for the non-nop nodes

    def row_ptr(self) -> list[int]:
        ptr = [0]
        for node in self.nodes:
            ptr.append(ptr[-1] + len(node.outputs))
        return ptr


def _tensor_sinfo(sinfo: Any, where: str) -> tuple[tuple[int, ...], str]:
    from tvm import relax

    if not isinstance(sinfo, relax.TensorType) or sinfo.shape is None or not hasattr(sinfo.shape, "values"):
        raise CompileError(f"{where}: expected a tensor of known shape, got {sinfo}")
    shape = []
    for dim in sinfo.shape.values:
        if not isinstance(getattr(dim, "value", None), int):
            raise CompileError(f"{where}: dimension '{dim}' is not static")
        shape.append(int(dim.value))
    return tuple(shape), str(sinfo.dtype)


def _is_reshape(prim: Any, in_sinfo: tuple, out_sinfo: list) -> bool:
    """True when the kernel only copies its one input to its one output in row-major order
    (reshape, flatten, squeeze, expand_dims): TVM's own RewriteDataflowReshape criterion."""
    from tvm import relax

    if len(out_sinfo) != 1 or in_sinfo[1] != out_sinfo[0][1]:
        return False
    if int(np.prod(in_sinfo[0], dtype=np.int64)) != int(np.prod(out_sinfo[0][0], dtype=np.int64)):
        return False
    return bool(relax.analysis.has_reshape_pattern(prim))


def _reraise_interrupt(exc: BaseException) -> None:
    """A Ctrl-C inside a TVM pass reaches Python as the pass's RuntimeError, with the
    KeyboardInterrupt as its cause or context: report it as the interrupt it is."""
    seen = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        seen = seen.__cause__ or seen.__context__


def _unsupported_call(expr: Any, op_types: Sequence[str]) -> str:
    """Name the operator behind a Relax call that is not a kernel call (TopK, CumSum...)."""
    op = getattr(expr, "op", None)
    name = getattr(op, "name", None) or getattr(op, "global_symbol", None) or getattr(op, "name_hint", None)
    if name is None:
        return f"a {type(expr).__name__}"
    short = str(name).rsplit(".", 1)[-1].replace("_", "").lower()
    onnx_ops = sorted({t for t in op_types if t.lower() == short})
    source = f"ONNX operator {', '.join(onnx_ops)}, " if onnx_ops else ""
    return f"{source}Relax op '{name}', which TVM does not lower to a kernel"


def _stage_buffers(stmt: Any, reads: set[str], writes: set[str], in_block: bool = False) -> bool:
    """Names of the buffers the blocks under `stmt` read and write (their declared regions);
    False at any statement this does not know how to read (then nothing is concluded)."""
    from tvm import s_tir, tirx

    if isinstance(stmt, s_tir.SBlockRealize):
        stmt = stmt.block
    if isinstance(stmt, s_tir.SBlock):
        if stmt.match_buffers:
            return False
        reads.update(r.source.name for r in stmt.reads)
        writes.update(w.source.name for w in stmt.writes)
        return (_stage_buffers(stmt.body, reads, writes, True)
                and (stmt.init is None or _stage_buffers(stmt.init, reads, writes, True)))
    if isinstance(stmt, tirx.stmt.For):
        return _stage_buffers(stmt.body, reads, writes, in_block)
    if isinstance(stmt, tirx.stmt.SeqStmt):
        return all(_stage_buffers(s, reads, writes, in_block) for s in stmt.seq)
    if isinstance(stmt, tirx.stmt.AllocBuffer):  # a scratch buffer: counts as written here
        writes.add(stmt.buffer.name)
        return True
    return in_block and isinstance(stmt, (tirx.stmt.BufferStore, tirx.stmt.Evaluate))


def inplace_pairs(prim: Any, n_inputs: int) -> list[tuple[int, int]]:
    """(input position, output index) pairs where the kernel may write the output into the
    input's memory: the kernel is a sequence of stages (the root block's loop nests, run one
    after the other) and every stage that reads the input comes before the first stage that
    touches the output, and nothing writes the input. E.g. a fused conv + residual add + relu
    reads the residual in its add stage and writes the output only in the relu stage after.
    Anything this cannot read (no root block, buffers it cannot name) gives no pairs."""
    from tvm import s_tir, tirx

    names = [p.name for p in prim.params]
    root = prim.body
    if not isinstance(root, s_tir.SBlockRealize) or len(set(names)) != len(names):
        return []
    if {b.name for b in root.block.alloc_buffers} & set(names) or root.block.match_buffers:
        return []
    body = root.block.body
    stages = list(body.seq) if isinstance(body, tirx.stmt.SeqStmt) else [body]
    touched: list[tuple[set[str], set[str]]] = []
    for stage in stages:
        reads: set[str] = set()
        writes: set[str] = set()
        if not _stage_buffers(stage, reads, writes):
            return []
        touched.append((reads, writes))
    pairs = []
    for out in range(len(names) - n_inputs):
        y = names[n_inputs + out]
        first_y = min((k for k, (r, w) in enumerate(touched) if y in r or y in w), default=None)
        for pos in range(n_inputs):
            x = names[pos]
            x_stages = [k for k, (r, w) in enumerate(touched) if x in r or x in w]
            if (first_y is not None and x_stages and max(x_stages) < first_y
                    and not any(x in w for _, w in touched)):
                pairs.append((pos, out))
    return pairs


def walk_main(mod: Any, input_names: list[str], where: str, op_types: Sequence[str] = ()) -> Graph:
    """Turn `main` (a linear call_tir sequence) into graph nodes, params and kernels.
    `op_types` (the ONNX model's operator types) only serve to name an unsupported one."""
    import tvm
    from tvm import relax
    from tvm.ir import expr as E

    call_tir = tvm.ir.Op.get("relax.call_tir")
    main = mod["main"]
    nodes: list[GraphNode] = []
    values: dict[Any, Any] = {}  # relax.Var -> (nid, index) or list of them (tuples)
    constants: list[tuple[Any, tuple[int, int]]] = []
    params: dict[str, np.ndarray] = {}
    kernels: dict[str, Any] = {}
    used_names: dict[str, int] = {}

    if len(main.params) != len(input_names):
        raise CompileError(f"{where}: main has {len(main.params)} inputs, the model {len(input_names)}")
    input_nids = []
    for var, name in zip(main.params, input_names):
        shape_dtype = _tensor_sinfo(var.ty, f"{where}: input '{name}'")
        values[var] = (len(nodes), 0)
        input_nids.append(len(nodes))
        nodes.append(GraphNode(op="null", name=name, outputs=[shape_dtype]))

    def constant(expr: Any) -> tuple[int, int]:
        for known, entry in constants:
            if known.same_as(expr):
                return entry
        name = f"p{len(params)}"
        array = expr.value.numpy()
        entry = (len(nodes), 0)
        nodes.append(GraphNode(op="null", name=name, outputs=[(tuple(array.shape), str(expr.value.dtype))]))
        params[name] = array
        constants.append((expr, entry))
        return entry

    def value_of(expr: Any, what: str) -> Any:
        if isinstance(expr, E.Constant):
            return constant(expr)
        if isinstance(expr, E.Var):
            if expr not in values:
                raise CompileError(f"{where}: {what} uses '{expr.name}' before it is bound")
            return values[expr]
        if isinstance(expr, E.Tuple):
            return [value_of(f, what) for f in expr.fields]
        if isinstance(expr, E.TupleGetItem):
            tup = value_of(expr.tuple_value, what)
            if not isinstance(tup, list):
                raise CompileError(f"{where}: {what} indexes a value that is not a tuple")
            return tup[expr.index]
        if isinstance(expr, E.Call):
            raise CompileError(f"{where}: unsupported operator: {_unsupported_call(expr, op_types)} "
                               f"({what}); minrt runs only kernel calls")
        raise CompileError(f"{where}: {what} is a {type(expr).__name__}; minrt runs only call_tir sequences")

    def entry_of(expr: Any, what: str) -> tuple[int, int]:
        value = value_of(expr, what)
        if isinstance(value, list):
            raise CompileError(f"{where}: {what} passes a tuple where a tensor is expected")
        return value

    body = main.body
    for block in body.blocks:
        for binding in block.bindings:
            var, expr = binding.var, binding.value
            what = f"binding '{var.name}'"
            if not (isinstance(expr, E.Call) and expr.op.same_as(call_tir)):
                values[var] = value_of(expr, what)
                continue
            if len(expr.args) > 2:
                raise CompileError(f"{where}: {what} passes symbolic shape arguments; minrt needs static shapes")
            gvar = expr.args[0]
            func_name = gvar.name_hint
            prim = mod[gvar]
            args = [entry_of(a, what) for a in expr.args[1].fields]
            out = expr.ty_args[0]
            if isinstance(out, relax.TupleType):
                outputs = [_tensor_sinfo(s, f"{where}: {what}") for s in out.fields]
            else:
                outputs = [_tensor_sinfo(out, f"{where}: {what}")]
            inplace: list[tuple[int, int]] = []
            if len(args) == 1 and _is_reshape(prim, nodes[args[0][0]].outputs[args[0][1]], outputs):
                func_name = NOP
            else:
                kernels[func_name] = prim
                inplace = inplace_pairs(prim, len(args))
            count = used_names.get(gvar.name_hint, 0)
            used_names[gvar.name_hint] = count + 1
            name = gvar.name_hint if count == 0 else f"{gvar.name_hint}_{count}"
            nid = len(nodes)
            nodes.append(GraphNode(op="tvm_op", name=name, inputs=args, func_name=func_name,
                                   outputs=outputs, inplace=inplace))
            entries = [(nid, i) for i in range(len(outputs))]
            values[var] = entries if isinstance(out, relax.TupleType) else entries[0]

    result = value_of(body.body, "the return value")
    heads = result if isinstance(result, list) else [result]
    if any(isinstance(h, list) for h in heads):
        raise CompileError(f"{where}: nested tuple outputs are not supported")
    return Graph(nodes=nodes, heads=heads, input_nids=input_nids, params=params, kernels=kernels)


# ---------------------------------------------------------------------------------------------
# Storage planning


@dataclass
class StoragePlan:
    storage_id: list[int]  # per entry
    sizes: list[int]  # bytes per storage id (max over its entries)
    inplace: list[tuple[int, int, int]] = field(default_factory=list)  # (nid, input pos, output)


def plan_storage(graph: Graph) -> StoragePlan:
    """Give every entry a storage id, reusing a buffer once its last reader has run.

    Inputs, params and outputs keep their storage for the whole run; a `__nop` output shares
    its input's storage (and keeps it alive as long as the alias is read). A buffer freed by
    a node's inputs is reusable only from the next node on, so no kernel reads and writes the
    same memory, except in place: an output takes the storage of an input that dies at that
    node when the kernel allows it (GraphNode.inplace, see inplace_pairs), the input's data
    is read through no other argument and the output fits in that storage. Reuse is best-fit by byte size (a too-small free buffer
    grows when nothing fits).
    """
    row_ptr = graph.row_ptr()
    n_entries = row_ptr[-1]
    nbytes = [0] * n_entries
    root = list(range(n_entries))
    for nid, node in enumerate(graph.nodes):
        for i, (shape, dtype) in enumerate(node.outputs):
            nbytes[row_ptr[nid] + i] = int(np.prod(shape, dtype=np.int64)) * dtype_nbytes(dtype)
        if node.func_name == NOP:
            src = node.inputs[0]
            root[row_ptr[nid]] = root[row_ptr[src[0]] + src[1]]

    pinned = {root[row_ptr[nid] + i] for nid, n in enumerate(graph.nodes) if n.op == "null" for i in range(len(n.outputs))}
    pinned |= {root[row_ptr[nid] + i] for nid, i in graph.heads}
    last_use = {root[e]: 0 for e in range(n_entries)}
    for nid, node in enumerate(graph.nodes):
        for i in range(len(node.outputs)):
            r = root[row_ptr[nid] + i]
            last_use[r] = max(last_use[r], nid)  # an unread output dies where it is made
        for src_nid, idx in node.inputs:
            r = root[row_ptr[src_nid] + idx]
            last_use[r] = max(last_use[r], nid)

    storage_id = [-1] * n_entries
    sizes: list[int] = []
    free: list[int] = []
    dying: dict[int, list[int]] = {}  # nid -> roots whose last use is that node
    for r, nid in last_use.items():
        if r not in pinned:
            dying.setdefault(nid, []).append(r)

    def allocate(size: int) -> int:
        fits = [s for s in free if sizes[s] >= size]
        if fits:
            sid = min(fits, key=lambda s: (sizes[s], s))
        elif free:
            sid = max(free, key=lambda s: (sizes[s], -s))
            sizes[sid] = size
        else:
            sizes.append(size)
            return len(sizes) - 1
        free.remove(sid)
        return sid

    inplace: list[tuple[int, int, int]] = []
    for nid, node in enumerate(graph.nodes):
        taken: set[int] = set()  # roots whose storage an output of this node took over
        input_roots = [root[row_ptr[n] + i] for n, i in node.inputs]
        for i in range(len(node.outputs)):
            e = row_ptr[nid] + i
            if root[e] != e:
                storage_id[e] = storage_id[root[e]]
                continue
            if node.op == "null":
                sizes.append(nbytes[e])
                storage_id[e] = len(sizes) - 1
                continue
            for pos, out in node.inplace:
                r = input_roots[pos]
                if (out == i and r not in pinned and r not in taken and last_use[r] == nid
                        and input_roots.count(r) == 1 and nbytes[e] <= sizes[storage_id[r]]):
                    storage_id[e] = storage_id[r]
                    taken.add(r)
                    inplace.append((nid, pos, i))
                    break
            else:
                storage_id[e] = allocate(nbytes[e])
        for r in dying.get(nid, []):
            if r not in taken:
                free.append(storage_id[r])
    return StoragePlan(storage_id=storage_id, sizes=sizes, inplace=inplace)


def graph_json(graph: Graph, plan: StoragePlan) -> dict[str, Any]:
    """TVM's graph-executor JSON schema."""
    nodes = []
    for node in graph.nodes:
        item: dict[str, Any] = {"op": node.op, "name": node.name, "inputs": [[n, i, 0] for n, i in node.inputs]}
        if node.op == "tvm_op":
            item["attrs"] = {
                "func_name": node.func_name,
                "num_inputs": str(len(node.inputs)),
                "num_outputs": str(len(node.outputs)),
                "flatten_data": "0",
            }
        nodes.append(item)
    entries = [out for node in graph.nodes for out in node.outputs]
    return {
        "nodes": nodes,
        "arg_nodes": [nid for nid, node in enumerate(graph.nodes) if node.op == "null"],
        "node_row_ptr": graph.row_ptr(),
        "heads": [[n, i, 0] for n, i in graph.heads],
        "attrs": {
            "dltype": ["list_str", [dtype for _, dtype in entries]],
            "storage_id": ["list_int", plan.storage_id],
            "shape": ["list_shape", [list(shape) for shape, _ in entries]],
        },
    }


def storage_summary(graph: Graph, plan: StoragePlan) -> dict[str, int]:
    """Bytes of storage by role: a storage holding an input, a param or an output counts as
    that; the rest is intermediate (what a runtime arena must hold besides I/O and params)."""
    row_ptr = graph.row_ptr()
    role: dict[int, str] = {}
    for nid, node in enumerate(graph.nodes):
        if node.op == "null":
            kind = "input_bytes" if nid in graph.input_nids else "param_bytes"
            role[plan.storage_id[row_ptr[nid]]] = kind
    for nid, i in graph.heads:
        role.setdefault(plan.storage_id[row_ptr[nid] + i], "output_bytes")
    summary = {"input_bytes": 0, "param_bytes": 0, "output_bytes": 0, "intermediate_bytes": 0}
    for sid, size in enumerate(plan.sizes):
        summary[role.get(sid, "intermediate_bytes")] += size
    summary["storage_count"] = len(plan.sizes)
    return summary


# ---------------------------------------------------------------------------------------------
# Kernels

_WORKSPACE_CALL = re.compile(r"TVMBackendAllocWorkspace\(\s*[^,]+,\s*[^,]+,\s*(?:T\.uint64\()?(\d+)")
_WORKSPACE_ALIGN = 64


def kernel_target(target: Target) -> Any:
    """The TVM target kernels are scheduled and compiled for: the target's own, on one core
    (minrt runs TVMBackendParallelLaunch serially, so a parallel loop would only cost)."""
    import tvm

    return tvm.target.Target({**dict(target.tvm_target), "num-cores": 1})


def compile_kernels(kernels: dict[str, Any], tvm_target: Any, out_path: Path,
                    prefix: str = SYSTEM_LIB_PREFIX) -> int:
    """Compile the (scheduled) PrimFuncs into one object (a system library) and return the
    most workspace any one kernel allocates (the sum of its TVMBackendAllocWorkspace sizes,
    each rounded up to 64 bytes), read from the TIR after LowerTVMBuiltin."""
    import tvm

    # TVM's system_lib_prefix renames the library context and the names kernels register
    # under, not the `__tvm_ffi_<symbol>` functions: the prefix goes into each symbol too.
    funcs = {name: prim.with_attr("global_symbol", prefix + name) for name, prim in kernels.items()}
    kmod = tvm.IRModule(funcs).with_attr("system_lib_prefix", prefix)
    lowered: list[Any] = []

    @tvm.ir.instrument.pass_instrument
    class KeepLoweredTIR:
        def run_after_pass(self, mod: Any, info: Any) -> None:
            if info.name.endswith("LowerTVMBuiltin"):
                lowered.append(mod)

    with tvm.transform.PassContext(config={"tirx.disable_assert": True}, instruments=[KeepLoweredTIR()]):
        executable = tvm.compile(kmod, target=tvm_target)
    executable.mod.write_to_file(str(out_path))

    workspace = 0
    for mod in lowered:
        for gvar, func in mod.functions.items():
            text = func.script()
            calls = text.count("TVMBackendAllocWorkspace(")
            sizes = [int(m) for m in _WORKSPACE_CALL.findall(text)]
            if len(sizes) != calls:
                raise CompileError(f"kernel '{gvar.name_hint}' allocates a workspace of non-constant size")
            need = sum(-(-s // _WORKSPACE_ALIGN) * _WORKSPACE_ALIGN for s in sizes)
            workspace = max(workspace, need)
    return workspace


# ---------------------------------------------------------------------------------------------
# Schedules


def schedule_model_kernels(kernels: dict[str, Any], ktarget: Any, target: Target,
                           cache: Path | None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Every kernel gets a schedule: the best tuning record for its workload on this target
    when the tuning database has one that ran faster on the device than the default schedule
    (and MINRT_NO_TUNING is not set), else the default rules of harness.schedule. Returns the
    scheduled kernels and, per kernel, what was used."""
    from .schedule import schedule_kernel, simd_lanes
    from .tuning_db import TuningDatabase, tuning_disabled

    database = None if tuning_disabled() else TuningDatabase.for_target(target, cache)
    lanes = simd_lanes(ktarget)
    scheduled: dict[str, Any] = {}
    report: dict[str, dict[str, Any]] = {}
    for name, func in kernels.items():
        default, rule = schedule_kernel(func, lanes)
        tuned = database.best(func, ktarget) if database is not None else None
        default_us = database.default_latency(default) if tuned is not None else None
        if tuned is not None and (default_us is None or tuned.latency_us < default_us):
            scheduled[name] = tuned.func
            report[name] = {"source": "tuned", "rule": "meta_schedule", "latency_us": tuned.latency_us,
                            "default_us": default_us, "record": tuned.record_id, "database": str(database.path)}
            continue
        scheduled[name] = default
        report[name] = {"source": "default", "rule": rule.rule, "detail": rule.detail}
        if tuned is not None:  # measured on the device: no record beat the default schedule
            report[name].update(default_us=default_us, best_record_us=tuned.latency_us)
    return scheduled, report


# ---------------------------------------------------------------------------------------------
# The entry point


def _cache_key(model_name: str, onnx_bytes: bytes, target: Target, cache: Path | None, prefix: str = "") -> str:
    import tvm

    from .tuning_db import TuningDatabase, tuning_disabled

    # The tuning records for the target and the default schedule rules are part of the
    # input: new records or new rules, new artifact.
    tuning = "off" if tuning_disabled() else TuningDatabase.for_target(target, cache).digest()
    rules = (Path(__file__).parent / "schedule.py").read_bytes()
    return content_hash([model_name, onnx_bytes, target.name, target.tvm_target_key, tvm.__version__,
                         PIPELINE_VERSION, tuning, rules] + ([f"prefix={prefix}"] if prefix else []))


def compile_model(onnx_path: Path | str, target: Target | str, cache: Path | None = None,
                  system_lib_prefix: str = SYSTEM_LIB_PREFIX) -> Artifact:
    """Compile an ONNX model for a target into an artifact directory under
    `<cache>/artifacts/<hash>` (cache defaults to harness.cache.cache_dir()); reuse it if there.

    `system_lib_prefix` (a C identifier prefix, e.g. "kws_") goes before every kernel symbol,
    so the kernels of several models link into one firmware image without colliding."""
    if system_lib_prefix and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", system_lib_prefix):
        raise CompileError(f"system_lib_prefix {system_lib_prefix!r} is not a C identifier prefix")
    onnx_path = Path(onnx_path)
    if isinstance(target, str):
        target = load_target(target)
    model, data = load_onnx(onnx_path)
    model_name = onnx_path.stem
    key = _cache_key(model_name, data, target, cache, system_lib_prefix)
    root = (Path(cache) if cache is not None else cache_dir()) / "artifacts"
    out_dir = root / key
    if out_dir.is_dir():
        try:
            artifact = Artifact.open(out_dir)
            log.info("compile %s for %s: cached artifact %s", model_name, target.name, out_dir)
            return artifact
        except CompileError as exc:
            log.warning("recompiling: cached artifact is unusable (%s)", exc)
            shutil.rmtree(out_dir, ignore_errors=True)

    import tvm

    tvm_target = tvm_target_of(target)  # a bad [tvm] table fails here, before any import work
    started = time.monotonic()
    log.info("compile %s for %s: importing ONNX with TVM %s", model_name, target.name, tvm.__version__)
    mod, folded = import_onnx(model, onnx_path)
    log.info("compile %s: legalize and fuse", model_name)
    try:
        lowered = lower_relax(mod, tvm_target)
    except Exception as exc:
        _reraise_interrupt(exc)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CompileError(f"{onnx_path}: TVM's Relax passes failed: {type(exc).__name__}: {first}") from None

    inputs = [value.name for value in graph_inputs(model)]
    graph = walk_main(lowered, inputs, str(onnx_path), op_types=[n.op_type for n in model.graph.node])
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
    output_names = [value.name for value in model.graph.output]
    if len(output_names) != len(graph.heads):
        raise CompileError(f"{onnx_path}: the model has {len(output_names)} outputs but TVM produced {len(graph.heads)}")

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

        def spec(name: str, nid: int, index: int) -> dict[str, Any]:
            shape, dtype = graph.nodes[nid].outputs[index]
            return {"name": name, "shape": list(shape), "dtype": dtype}

        metadata = {
            "model": model_name,
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
            "inputs": [spec(name, nid, 0) for name, nid in zip(inputs, graph.input_nids)],
            "outputs": [spec(name, nid, i) for name, (nid, i) in zip(output_names, graph.heads)],
            "storage": storage_summary(graph, plan),
            "inplace": [list(t) for t in plan.inplace],
            "nops": sum(1 for n in graph.nodes if n.func_name == NOP),
            "folded_batchnorms": folded,
            "pipeline_version": PIPELINE_VERSION,
            "compile_seconds": round(time.monotonic() - started, 3),
        }
        (tmp / METADATA_JSON).write_text(json.dumps(metadata, indent=2) + "\n")
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
