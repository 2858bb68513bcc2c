"""A model's minrt tables laid out at build time, for firmware: C initializers in flash.

minrt_load parses graph.json into the arena: per node, entry and kernel argument a struct
(about 3.7 KB on MLPerf Tiny's anomaly detector, more than TFLite Micro's whole arena). A
firmware image knows its arena's address at link time, so these tables can be constants in
flash instead, with link-time addresses for every tensor's data: `fw_arena + offset` for an
input or a storage, the params blob + offset for a weight (used in place, as minrt_load uses
it). The arena then holds only the storages and the kernels' workspace, laid out as minrt_load
lays them out (each storage id as large as its largest entry, placed in storage-id order,
64-byte aligned from the arena's start, then the workspace).

The tables are minrt's own structs (runtime_c/src/internal.h), written with designated
initializers; minrt_run, minrt_input_index and minrt_set_input use them unchanged. What
minrt_load checks is still checked: the build's probe image loads every graph.json with
minrt_load (each node against its kernel's signature) before these tables are linked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import BuildError
from harness.formats import tensorfile
from harness.formats.artifact import NOP
from harness.formats.dtypes import minrt_dtype
from harness.formats.signatures import kernel_symbol

ALIGN = 64  # MINRT_ALIGN: every tensor a kernel sees, and each storage's start


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass
class Prebuilt:
    """One model's tables: the C that defines them and what its arena must hold."""

    c_source: str  # defines `const minrt fw_model<i>`; needs fw_arena and fw_params<i>
    arena_bytes: int  # storages and workspace
    keep_bytes: int  # the arena's first bytes holding its inputs and outputs (before the I/O tail)


def _c_bytes(raw: bytes) -> str:
    """A C string literal of exactly these bytes (octal escapes: no quoting to get wrong)."""
    return '"' + "".join(f"\\{b:03o}" for b in raw) + '"'


@dataclass
class Layout:
    """Where minrt_load puts a model's tensors, relative to the first storage (the arena's
    start when the tables are elsewhere)."""

    data: list[tuple[str, int]]  # per entry: ("arena", offset) or ("params", offset in params.bin)
    nbytes: list[int]  # per entry
    inputs: list[int]  # the graph inputs' entries, in node order (minrt's m->inputs)
    heads: list[int]  # the outputs' entries
    ws_at: int  # the kernels' workspace
    arena_bytes: int  # storages and workspace
    keep_bytes: int  # the end of the last input or output


def layout(graph: dict[str, Any], params: dict[str, int], workspace_bytes: int, where: str = "params.bin") -> Layout:
    """minrt_load's placement (runtime_c/src/load.c) of a graph whose params lie at these offsets
    of their blob (tensorfile.data_offsets)."""
    nodes, rows = graph["nodes"], graph["node_row_ptr"]
    dtypes, sids, shapes = (graph["attrs"][k][1] for k in ("dltype", "storage_id", "shape"))
    n_ent = rows[-1]
    nbytes = []
    for e in range(n_ent):
        n = minrt_dtype(dtypes[e], f"entry {e}").nbytes
        for d in shapes[e]:
            n *= int(d)
        nbytes.append(n)
    # per entry: ("arena", its storage id) until placed, or ("params", byte offset)
    at: list[tuple[str, int]] = [("arena", 0)] * n_ent
    inputs: list[int] = []
    size = [0] * n_ent  # per storage id: its largest entry (params and aliases use none)
    for nid, node in enumerate(nodes):
        e = rows[nid]
        if node["op"] == "null" and node["name"] in params:
            if params[node["name"]] % ALIGN:
                raise BuildError(f"{where}: param {node['name']!r} is not 64-byte aligned (write minrt's aligned container)")
            at[e] = ("params", params[node["name"]])
        elif node["op"] != "null" and node["attrs"]["func_name"] == NOP:
            src = node["inputs"][0]
            at[e] = at[rows[src[0]] + src[1]]
        else:
            if node["op"] == "null":
                inputs.append(e)
            for k in range(rows[nid], rows[nid + 1]):
                at[k] = ("arena", sids[k])
                size[sids[k]] = max(size[sids[k]], nbytes[k])
    offset, end = [], 0
    for s in size:
        offset.append(end)
        end += _align(s)
    data = [(kind, offset[v] if kind == "arena" else v) for kind, v in at]
    heads = [rows[n] + i for n, i, *_ in graph["heads"]]
    keep = max([data[e][1] + nbytes[e] for e in inputs + heads if data[e][0] == "arena"] or [0])
    return Layout(data=data, nbytes=nbytes, inputs=inputs, heads=heads, ws_at=end,
                  arena_bytes=end + _align(workspace_bytes), keep_bytes=keep)


def prebuild(index: int, graph_path: Path, params_path: Path, workspace_bytes: int, prefix: str = "") -> Prebuilt:
    """Lay model `index` of an image out; its C names end in `index`."""
    graph: dict[str, Any] = json.loads(Path(graph_path).read_text())
    params = tensorfile.data_offsets(Path(params_path).read_bytes(), where=str(params_path))
    lay = layout(graph, params, workspace_bytes, str(params_path))
    nodes, rows = graph["nodes"], graph["node_row_ptr"]
    dtypes, shapes = (graph["attrs"][k][1] for k in ("dltype", "shape"))
    n_ent, nbytes, inputs, heads = rows[-1], lay.nbytes, lay.inputs, lay.heads
    ws_at, arena = lay.ws_at, lay.arena_bytes

    def data(e: int) -> str:
        kind, v = lay.data[e]
        return f"fw_arena + {v}" if kind == "arena" else f"(void *)(fw_params{index} + {v})"

    i = index
    dims: list[int] = []
    dims_at: dict[tuple[int, ...], int] = {}
    ent_c = []
    for e in range(n_ent):
        shape = tuple(int(d) for d in shapes[e])
        if shape not in dims_at:
            dims_at[shape] = len(dims)
            dims.extend(shape)
        dt = minrt_dtype(dtypes[e])
        ent_c.append(f"  {{.t = {{.data = {data(e)}, .device = {{1, 0}}, .ndim = {len(shape)}, "
                     f".dtype = {{{dt.code}, {dt.bits}, 1}}, .shape = (int64_t *)(fw_dims{i} + {dims_at[shape]})}}, "
                     f".nbytes = {nbytes[e]}u}},")
    args_c, nodes_c, kernels = [], [], set()
    n_args = 0
    for nid, node in enumerate(nodes):
        if node["op"] == "null" and rows[nid] in inputs:
            name = json.dumps(node["name"])[1:-1].encode()  # the JSON form minrt_input_index compares
            nodes_c.append(f"  {{.name = {_c_bytes(name)}, .name_len = {len(name)}u, .row = {rows[nid]}u, .nout = 1}},")
            continue
        if node["op"] == "null" or node["attrs"]["func_name"] == NOP:
            continue
        ents = [rows[n] + k for n, k, *_ in node["inputs"]] + list(range(rows[nid], rows[nid + 1]))
        args_c += [f"  {{.type_index = 7, .value = {{.v_ptr = (void *)&fw_ent{i}[{e}].t}}}}," for e in ents]
        fn = kernel_symbol(node["attrs"]["func_name"], prefix)
        kernels.add(fn)
        nodes_c.append(f'  {{.name = "", .fn = {fn}, .args = (TVMFFIAny *)(fw_args{i} + {n_args}), '
                       f".nargs = {len(ents)}, .op = 1}},")
        n_args += len(ents)

    def pointers(entries: list[int]) -> str:
        return ", ".join(f"(DLTensor *)&fw_ent{i}[{e}].t" for e in entries) or "0"

    lines = [f"/* model {i}: {graph_path} */"]
    lines += [f"extern int {fn}(void *, const TVMFFIAny *, int32_t, TVMFFIAny *);" for fn in sorted(kernels)]
    lines += [f"static const int64_t fw_dims{i}[] = {{{', '.join(f'{d}LL' for d in dims) or '0'}}};",
              f"static const minrt_entry fw_ent{i}[] = {{", *ent_c, "};",
              f"static const TVMFFIAny fw_args{i}[] = {{", *(args_c or ["  {0}"]), "};",
              f"static const minrt_node fw_nodes{i}[] = {{", *(nodes_c or ["  {0}"]), "};",
              f"static DLTensor *const fw_inputs{i}[] = {{{pointers(inputs)}}};",
              f"static DLTensor *const fw_outputs{i}[] = {{{pointers(heads)}}};",
              (f"static const minrt fw_model{i} = {{.n_inputs = {len(inputs)}u, .n_outputs = {len(heads)}u, "
               f".inputs = (DLTensor **)fw_inputs{i}, .outputs = (DLTensor **)fw_outputs{i}, "
               f".arena_use = {{0, {ws_at}u, {arena - ws_at}u, 0}}, .nodes = (minrt_node *)fw_nodes{i}, "
               f".ent = (minrt_entry *)fw_ent{i}, .n_nodes = {len(nodes_c)}u, .n_ent = {n_ent}u, "
               f".ws = fw_arena + {ws_at}, .ws_top = fw_arena + {ws_at}, .ws_end = fw_arena + {arena}}};"), ""]
    return Prebuilt(c_source="\n".join(lines), arena_bytes=arena, keep_bytes=lay.keep_bytes)
