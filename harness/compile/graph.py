"""Relax `main` -> the graph: a walk of the straight line of `R.call_tir` calls into nodes, params and kernels, and which outputs may be written in place."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from harness.formats.artifact import NOP
from harness.errors import CompileError
from harness.formats.dtypes import minrt_dtype

log = logging.getLogger(__name__)

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


def check_dtypes(graph: Graph, where: str) -> None:
    """CompileError for a tensor whose dtype minrt does not load (it would refuse the graph)."""
    inputs = set(graph.input_nids)
    for nid, node in enumerate(graph.nodes):
        what = ("input" if nid in inputs else "weight") if node.op == "null" else f"output of kernel {node.func_name}"
        for _, dtype in node.outputs:
            minrt_dtype(dtype, f"{where}: {what} '{node.name}'")


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


