"""The storage plan: which entries share storage, and graph.json written from the graph and its plan."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.formats.artifact import NOP
from harness.formats.dtypes import dtype_nbytes
from harness.compile.graph import Graph

log = logging.getLogger(__name__)

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


