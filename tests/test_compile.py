"""harness.compile: ONNX -> graph.json + params.bin + kernels.o + metadata.json, for real with
apache-tvm, on every example model and both no-board targets."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.formats import tensorfile
from harness.formats.artifact import METADATA_KEYS, Artifact
from harness.formats.artifact import NOP
from harness.compile.model import compile_model
from harness.formats.dtypes import dtype_nbytes
from harness.errors import CompileError
from harness.models.examples import EXAMPLES, write_examples
from harness.config.targets import load_target

TARGETS = ["x86_64", "qemu-armv7"]
MODELS = list(EXAMPLES)
ELF_MACHINE = {"x86_64": 0x3E, "qemu-armv7": 0x28}


# ---------------------------------------------------------------------------------------------
# Example models


def test_examples_are_deterministic_valid_and_small(tmp_path, example_models):
    again = write_examples(tmp_path)
    assert set(again) == set(example_models) == {"mlp", "cnn", "dscnn", "residual", "concat", "batchnorm", "multi_io"}
    for name, path in example_models.items():
        assert again[name].read_bytes() == path.read_bytes(), name
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        weights = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
        assert 0 < weights <= 64 * 1024, (name, weights)
        assert all(numpy_helper.to_array(t).dtype in (np.float32, np.int64) for t in model.graph.initializer)


def op_types(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(path).graph.node}


def test_examples_cover_the_operators_of_the_issue(example_models):
    assert {"Conv", "Relu", "MaxPool", "AveragePool", "Gemm", "Softmax", "Flatten"} <= op_types(example_models["cnn"])
    assert {"Gemm", "Reshape", "Softmax"} <= op_types(example_models["mlp"])
    assert {"Add"} <= op_types(example_models["residual"])
    assert {"Concat"} <= op_types(example_models["concat"])
    assert {"BatchNormalization", "Conv"} <= op_types(example_models["batchnorm"])
    dscnn = onnx.load(example_models["dscnn"])
    groups = {a.i for n in dscnn.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"}
    assert max(groups) > 1, "no depthwise convolution"
    assert {"BatchNormalization", "GlobalAveragePool"} <= op_types(example_models["dscnn"])
    multi = onnx.load(example_models["multi_io"])
    assert len(multi.graph.input) == 2 and len(multi.graph.output) == 2


# ---------------------------------------------------------------------------------------------
# Artifacts of every example for every target


@pytest.fixture(scope="module", params=[(m, t) for t in TARGETS for m in MODELS], ids=lambda p: f"{p[0]}-{p[1]}")
def compiled(request, compiled_models):
    model, target = request.param
    return model, target, compiled_models.get(model, target)


def check_graph_schema(graph: dict) -> None:
    """The TVM graph-executor JSON schema, field by field."""
    assert set(graph) == {"nodes", "arg_nodes", "node_row_ptr", "heads", "attrs"}
    nodes, row_ptr = graph["nodes"], graph["node_row_ptr"]
    assert len(row_ptr) == len(nodes) + 1 and row_ptr[0] == 0
    for nid, node in enumerate(nodes):
        assert node["op"] in ("null", "tvm_op")
        assert isinstance(node["name"], str) and node["name"]
        for src in node["inputs"]:
            assert len(src) == 3 and src[2] == 0
            assert 0 <= src[0] < nid, "inputs must come from earlier nodes"
            assert 0 <= src[1] < row_ptr[src[0] + 1] - row_ptr[src[0]]
        if node["op"] == "null":
            assert node["inputs"] == [] and "attrs" not in node
            assert row_ptr[nid + 1] - row_ptr[nid] == 1
        else:
            attrs = node["attrs"]
            assert set(attrs) == {"func_name", "num_inputs", "num_outputs", "flatten_data"}
            assert all(isinstance(v, str) for v in attrs.values())
            assert int(attrs["num_inputs"]) == len(node["inputs"])
            assert int(attrs["num_outputs"]) == row_ptr[nid + 1] - row_ptr[nid]
            assert attrs["flatten_data"] == "0"
    assert graph["arg_nodes"] == [i for i, n in enumerate(nodes) if n["op"] == "null"]
    n_entries = row_ptr[-1]
    attrs = graph["attrs"]
    assert set(attrs) == {"dltype", "storage_id", "shape"}
    assert attrs["dltype"][0] == "list_str" and len(attrs["dltype"][1]) == n_entries
    assert attrs["storage_id"][0] == "list_int" and len(attrs["storage_id"][1]) == n_entries
    assert attrs["shape"][0] == "list_shape" and len(attrs["shape"][1]) == n_entries
    assert all(isinstance(s, int) and s >= 0 for s in attrs["storage_id"][1])
    assert all(all(isinstance(d, int) and d >= 0 for d in shape) for shape in attrs["shape"][1])
    for head in graph["heads"]:
        assert len(head) == 3 and head[2] == 0 and 0 <= head[0] < len(nodes)


def storage_conflicts(graph: dict, inplace: list | tuple = ()) -> list[str]:
    """Simulate the run and list every pair of entries that share a storage while both hold
    live data. Inputs and params are live for the whole run, outputs from their node to the
    end; a `__nop` output is the same data as its input, so it extends that data's life.
    `inplace` ([nid, input position, output index], the artifact's metadata) lets that
    output share with that input's data when the data dies at that node and nowhere else."""
    nodes, row_ptr = graph["nodes"], graph["node_row_ptr"]
    sids = graph["attrs"]["storage_id"][1]
    n_nodes = len(nodes)
    data_of = list(range(row_ptr[-1]))  # entry -> the entry whose bytes it holds
    born: dict[int, int] = {}
    dies: dict[int, int] = {}
    for nid, node in enumerate(nodes):
        outs = range(row_ptr[nid], row_ptr[nid + 1])
        if node["op"] == "tvm_op" and node["attrs"]["func_name"] == NOP:
            src = node["inputs"][0]
            data_of[row_ptr[nid]] = data_of[row_ptr[src[0]] + src[1]]
            continue
        for e in outs:
            born[e] = -1 if node["op"] == "null" else nid
            dies[e] = n_nodes if node["op"] == "null" else nid
    for nid, node in enumerate(nodes):
        for src, idx, _ in node["inputs"]:
            d = data_of[row_ptr[src] + idx]
            dies[d] = max(dies[d], nid)
    for nid, idx, _ in graph["heads"]:
        dies[data_of[row_ptr[nid] + idx]] = n_nodes
    allowed = set()
    for nid, pos, out in inplace:
        src, idx, _ = nodes[nid]["inputs"][pos]
        a, b = data_of[row_ptr[src] + idx], row_ptr[nid] + out
        if dies[a] == nid == born[b]:
            allowed.add((min(a, b), max(a, b)))
    problems = []
    roots = sorted(born)
    for i, a in enumerate(roots):
        for b in roots[i + 1:]:
            if (sids[a] == sids[b] and born[a] <= dies[b] and born[b] <= dies[a]
                    and (a, b) not in allowed):
                problems.append(f"entries {a} [{born[a]},{dies[a]}] and {b} [{born[b]},{dies[b]}] share storage {sids[a]}")
    for e, d in enumerate(data_of):
        if d != e and sids[e] != sids[d]:
            problems.append(f"alias entry {e} is not in the storage of entry {d}")
    return problems


def test_artifact_files_and_metadata(compiled, example_models):
    model, target_name, artifact = compiled
    again = Artifact.open(artifact.dir)
    assert again.metadata == artifact.metadata
    meta = artifact.metadata
    assert set(METADATA_KEYS) <= set(meta)
    onnx_model = onnx.load(example_models[model])
    assert meta["model"] == model and meta["target"] == target_name
    assert meta["tvm_target"] == load_target(target_name).tvm_target
    assert meta["abi"] == "tvm-ffi" and meta["system_lib_prefix"] == ""
    assert meta["tvm_version"].startswith("0.27")
    assert len(meta["model_sha256"]) == 64
    assert [i["name"] for i in meta["inputs"]] == [i.name for i in onnx_model.graph.input]
    assert [o["name"] for o in meta["outputs"]] == [o.name for o in onnx_model.graph.output]
    for spec, value in zip(meta["outputs"], onnx_model.graph.output):
        assert spec["shape"] == [d.dim_value for d in value.type.tensor_type.shape.dim]
        assert spec["dtype"] == "float32"
    assert isinstance(meta["workspace_bytes"], int) and meta["workspace_bytes"] >= 0


def test_graph_json_schema_and_consistency(compiled):
    _, _, artifact = compiled
    graph = json.loads(artifact.graph_json.read_text())
    check_graph_schema(graph)
    meta = artifact.metadata
    nodes, row_ptr = graph["nodes"], graph["node_row_ptr"]
    func_names = {n["attrs"]["func_name"] for n in nodes if n["op"] == "tvm_op"}
    assert func_names - {NOP} == set(meta["kernels"])
    input_names = [i["name"] for i in meta["inputs"]]
    assert [n["name"] for n in nodes if n["op"] == "null"][: len(input_names)] == input_names
    shapes, dtypes = graph["attrs"]["shape"][1], graph["attrs"]["dltype"][1]
    for spec, (nid, idx, _) in zip(meta["outputs"], graph["heads"]):
        assert shapes[row_ptr[nid] + idx] == spec["shape"]
        assert dtypes[row_ptr[nid] + idx] == spec["dtype"]
    # Params: exactly the null nodes that are not inputs, with matching shapes and dtypes.
    params = artifact.params()
    param_nodes = {n["name"]: i for i, n in enumerate(nodes) if n["op"] == "null" and n["name"] not in input_names}
    assert list(params) == list(param_nodes)
    for name, nid in param_nodes.items():
        assert list(params[name].shape) == shapes[row_ptr[nid]]
        assert params[name].dtype.name == dtypes[row_ptr[nid]]
    # A __nop aliases its input: same dtype, same element count, same storage.
    for nid, node in enumerate(nodes):
        if node["op"] == "tvm_op" and node["attrs"]["func_name"] == NOP:
            src, idx, _ = node["inputs"][0]
            out, inp = row_ptr[nid], row_ptr[src] + idx
            assert dtypes[out] == dtypes[inp]
            assert np.prod(shapes[out]) == np.prod(shapes[inp])
            assert graph["attrs"]["storage_id"][1][out] == graph["attrs"]["storage_id"][1][inp]


def test_params_bin_is_the_aligned_container_of_what_tvm_would_write(compiled):
    import tvm

    _, _, artifact = compiled
    blob = artifact.params_bin.read_bytes()
    params = artifact.params()  # shaped by the graph: the container holds name, dtype, size
    assert blob[:8] == b"minrtprm"
    assert params and all(at % 64 == 0 for at in tensorfile.data_offsets(blob).values())
    oracle = tvm.runtime.save_param_dict({k: tvm.runtime.tensor(v) for k, v in params.items()})
    assert tensorfile.dumps(params) == bytes(oracle)
    assert tensorfile.dumps(params, aligned=True) == blob


def test_storage_plan_never_shares_live_data(compiled):
    _, _, artifact = compiled
    graph = json.loads(artifact.graph_json.read_text())
    assert storage_conflicts(graph, artifact.metadata.get("inplace", [])) == []


def nm_symbols(target_name: str, obj: Path) -> dict[str, str]:
    tool = load_target(target_name).cc.tool("nm")
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (ci/setup installs binutils for every target)")
    out = subprocess.run([tool, str(obj)], check=True, capture_output=True, text=True).stdout
    symbols = {}
    for line in out.splitlines():
        parts = line.split()
        symbols[parts[-1]] = parts[-2]
    return symbols


def test_kernels_object_is_for_the_target_and_exports_every_kernel(compiled):
    _, target_name, artifact = compiled
    data = artifact.kernels_obj.read_bytes()
    assert data[:4] == b"\x7fELF"
    assert data[16] == 1, "expected a relocatable object (ET_REL)"
    assert int.from_bytes(data[18:20], "little") == ELF_MACHINE[target_name]
    symbols = nm_symbols(target_name, artifact.kernels_obj)
    for kernel in artifact.metadata["kernels"]:
        assert symbols.get(f"__tvm_ffi_{kernel}") == "T", kernel
    # System-lib registration instead of TVM runtime symbols; asserts compiled out.
    assert symbols.get("TVMFFIEnvModRegisterSystemLibSymbol") == "U"
    assert not any(s.startswith("__tvm_ffi_") and k == "U" for s, k in symbols.items())
    assert "TVMFFIErrorSetRaisedFromCStrParts" not in symbols
    # workspace_bytes is non-zero exactly when a kernel calls TVMBackendAllocWorkspace.
    assert ("TVMBackendAllocWorkspace" in symbols) == (artifact.metadata["workspace_bytes"] > 0)


# ---------------------------------------------------------------------------------------------
# Specific properties


def test_storage_is_reused_and_sized_by_dtype(compiled_models):
    artifact = compiled_models.get("dscnn", "x86_64")
    graph = json.loads(artifact.graph_json.read_text())
    nodes, row_ptr = graph["nodes"], graph["node_row_ptr"]
    sids = graph["attrs"]["storage_id"][1]
    op_entries = [row_ptr[n] for n, node in enumerate(nodes)
                  if node["op"] == "tvm_op" and node["attrs"]["func_name"] != NOP]
    op_storages = {sids[e] for e in op_entries}
    assert len(op_storages) < len(op_entries) / 2, "a chain of 13 kernels should need few buffers"
    # The planned intermediate bytes are what the graph says, entry by entry.
    sizes: dict[int, int] = {}
    for e, sid in enumerate(sids):
        n = int(np.prod(graph["attrs"]["shape"][1][e])) * dtype_nbytes(graph["attrs"]["dltype"][1][e])
        sizes[sid] = max(sizes.get(sid, 0), n)
    storage = artifact.metadata["storage"]
    assert sum(sizes.values()) == sum(storage[k] for k in ("input_bytes", "param_bytes", "output_bytes", "intermediate_bytes"))


def test_mixed_dtypes_are_planned_by_bytes(tmp_path):
    """float32 -> int8 -> max pool -> float32: storages are sized in bytes, so the 1 KiB int8
    buffer is reused for the 1 KiB float32 output once the int8 data is dead."""
    from onnx.reference import ReferenceEvaluator

    from harness.check.relax_vm import run_graph

    nodes = [
        helper.make_node("Mul", ["x", "gain"], ["scaled"]),
        helper.make_node("Clip", ["scaled", "lo", "hi"], ["clipped"]),
        helper.make_node("Cast", ["clipped"], ["q"], to=TensorProto.INT8),
        helper.make_node("MaxPool", ["q"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Cast", ["pooled"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Softmax", ["f"], ["y"], axis=-1),
    ]
    consts = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("gain", 10), ("lo", -100), ("hi", 100))]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], initializer=consts)
    path = tmp_path / "mixed.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    artifact = compile_model(path, "x86_64", cache=tmp_path)
    g = json.loads(artifact.graph_json.read_text())
    dtypes, sids = g["attrs"]["dltype"][1], g["attrs"]["storage_id"][1]
    int8_entries = [e for e, d in enumerate(dtypes) if d == "int8"]
    assert int8_entries, dtypes
    out = g["node_row_ptr"][g["heads"][0][0]]
    # the output (1 KiB) takes a dead buffer: the 1 KiB int8 one (planned by bytes), or its own
    # input's when the softmax kernel writes in place
    inplace_outputs = {g["node_row_ptr"][nid] + out for nid, _, out in artifact.metadata["inplace"]}
    assert any(sids[e] == sids[out] for e in int8_entries) or out in inplace_outputs, (sids, inplace_outputs)
    assert storage_conflicts(g, artifact.metadata["inplace"]) == []
    inputs = {"x": np.random.default_rng(3).standard_normal((1, 4, 16, 16)).astype(np.float32)}
    (want,) = ReferenceEvaluator(model).run(None, inputs)
    (got,) = run_graph(artifact, path, inputs)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("model,count", [("batchnorm", 1), ("dscnn", 5), ("cnn", 0)])
def test_batchnorm_is_folded_into_the_convolution(compiled_models, model, count):
    meta = compiled_models.get(model, "qemu-armv7").metadata
    assert meta["folded_batchnorms"] == count
    # Unfolded, the BN shows up as subtract/divide/multiply in the conv kernel.
    assert not any("divide" in k or "subtract" in k for k in meta["kernels"]), meta["kernels"]
    if model == "batchnorm":
        assert meta["kernels"] == ["fused_conv2d_add_relu"]


def test_batchnorm_that_cannot_be_folded_still_compiles(tmp_path):
    """A BN on a graph input (no conv before it) is not folded into a conv: it is computed by a
    kernel (as one multiply-add, batchnorms_as_affine)."""
    from onnx.reference import ReferenceEvaluator

    from harness.check.relax_vm import run_graph

    c = 3
    consts = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in (
        ("scale", np.array([1.0, 2.0, 0.5])), ("shift", np.zeros(c)), ("mean", np.array([0.1, -0.2, 0.3])), ("var", np.ones(c)))]
    graph = helper.make_graph([helper.make_node("BatchNormalization", ["x", "scale", "shift", "mean", "var"], ["y"])],
                              "bn_only", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 4, 4])], initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "bn_only.onnx"
    onnx.save(model, path)
    artifact = compile_model(path, "x86_64", cache=tmp_path)
    assert artifact.metadata["folded_batchnorms"] == 0
    inputs = {"x": np.random.default_rng(0).standard_normal((1, c, 4, 4)).astype(np.float32)}
    np.testing.assert_allclose(run_graph(artifact, path, inputs)[0], ReferenceEvaluator(model).run(None, inputs)[0], atol=1e-6)


def test_graph_walk_and_relax_plan_take_the_input_shape_of_a_dynamic_batch(tmp_path):
    """A model with a batch `N` compiled with --input-shape: run_graph runs the artifact at the
    shape it was compiled for and relax_planned_bytes plans it at the given shape (both used to
    reload the model without the shape and stop at its dynamic dimension)."""
    from onnx.reference import ReferenceEvaluator

    from harness.check.relax_vm import relax_planned_bytes, run_graph

    weight = numpy_helper.from_array(np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Softmax", ["r"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "batched", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "batched.onnx"
    onnx.save(model, path)
    with pytest.raises(CompileError, match="--input-shape"):
        relax_planned_bytes(path, "x86_64")
    artifact = compile_model(path, "x86_64", cache=tmp_path, input_shapes={"x": [3, 16]})
    inputs = {"x": np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)}
    (got,) = run_graph(artifact, path, inputs)
    np.testing.assert_allclose(got, ReferenceEvaluator(model).run(None, inputs)[0], atol=1e-6, rtol=0)
    # the intermediate h (3 x 8 float32) is planned; a larger batch plans more
    assert 0 < relax_planned_bytes(path, "x86_64", {"x": [3, 16]}) < relax_planned_bytes(path, "x86_64", {"x": [64, 16]})


def test_sum_of_three_is_a_chain_of_adds_and_matches(tmp_path):
    """ONNX Sum (3 inputs) is imported as Adds (no stack + reduction kernel) and computes the
    same values as the ONNX reference."""
    from onnx.reference import ReferenceEvaluator

    from harness.check.relax_vm import run_graph

    shape = [1, 4, 6, 6]
    graph = helper.make_graph([helper.make_node("Sum", ["a", "b", "c"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
                              "sum3", [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "abc"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "sum3.onnx"
    onnx.save(model, path)
    artifact = compile_model(path, "x86_64", cache=tmp_path)
    assert not any("stack" in k or "sum" in k for k in artifact.metadata["kernels"]), artifact.metadata["kernels"]
    rng = np.random.default_rng(1)
    inputs = {n: rng.standard_normal(shape).astype(np.float32) for n in "abc"}
    np.testing.assert_allclose(run_graph(artifact, path, inputs)[0], ReferenceEvaluator(model).run(None, inputs)[0],
                               atol=1e-6)


def test_liveness_checker_catches_a_bad_plan(compiled_models):
    """The checker above is not vacuous: forcing two live intermediates together is caught."""
    graph = json.loads(compiled_models.get("cnn", "x86_64").graph_json.read_text())
    nodes, row_ptr = graph["nodes"], graph["node_row_ptr"]
    ops = [n for n, node in enumerate(nodes) if node["op"] == "tvm_op" and node["attrs"]["func_name"] != NOP]
    first, second = ops[0], ops[1]  # the second kernel reads the first one's output
    assert nodes[second]["inputs"][0][0] == first
    sids = graph["attrs"]["storage_id"][1]
    sids[row_ptr[second]] = sids[row_ptr[first]]
    assert storage_conflicts(graph)


@pytest.mark.parametrize("model,expect", [("mlp", "reshape"), ("cnn", "reshape"), ("dscnn", "reshape")])
def test_reshape_and_flatten_become_nops(compiled_models, model, expect):
    artifact = compiled_models.get(model, "qemu-armv7")
    graph = json.loads(artifact.graph_json.read_text())
    nops = [n for n in graph["nodes"] if n["op"] == "tvm_op" and n["attrs"]["func_name"] == NOP]
    assert len(nops) == 1 and nops[0]["name"].startswith(expect)
    assert not any(k.startswith("reshape") for k in artifact.metadata["kernels"])


def test_model_that_is_only_a_reshape_has_no_kernels(tmp_path):
    """The output is a __nop alias of the input: same storage, no kernel, empty kernels.o."""
    from harness.check.relax_vm import run_graph

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "reshape_only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        initializer=[numpy_helper.from_array(np.array([2, 8], np.int64), "shape")],
    )
    path = tmp_path / "reshape_only.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    artifact = compile_model(path, "x86_64", cache=tmp_path)
    g = json.loads(artifact.graph_json.read_text())
    check_graph_schema(g)
    assert [n["attrs"]["func_name"] for n in g["nodes"] if n["op"] == "tvm_op"] == [NOP]
    assert g["attrs"]["storage_id"][1] == [0, 0] and g["attrs"]["shape"][1] == [[4, 4], [2, 8]]
    assert artifact.metadata["kernels"] == [] and artifact.kernels_obj.read_bytes()[:4] == b"\x7fELF"
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(run_graph(artifact, path, {"x": x})[0], x.reshape(2, 8))


def test_workspace_is_recorded_and_no_larger_than_what_it_pads(compiled_models):
    # Unscheduled, cnn's first conv padded its 16x16 image into a whole 18x18 workspace and
    # kept its 8 KiB output as another. The default schedules compute padding inside the
    # consuming loop and the epilogue per tile, so no example needs a workspace larger than
    # its largest activation (and small ones need none: TVM keeps <= 1 KiB on the stack).
    for model in MODELS:
        meta = compiled_models.get(model, "qemu-armv7").metadata
        largest = max(int(np.prod(s["shape"])) * 4 for s in meta["inputs"] + meta["outputs"])
        largest = max(largest, meta["storage"]["intermediate_bytes"])
        assert meta["workspace_bytes"] % 64 == 0
        assert meta["workspace_bytes"] <= largest, (model, meta["workspace_bytes"], largest)
        assert meta["schedules"] and all(v["source"] in ("default", "tuned") for v in meta["schedules"].values())
    assert compiled_models.get("cnn", "qemu-armv7").metadata["workspace_bytes"] < 8 * 16 * 16 * 4


def run_minrt_on_host(artifact: Artifact, inputs: dict[str, np.ndarray], work: Path) -> list[np.ndarray]:
    from harness.build.runner import build_runner
    from harness.build.toolchain import HostToolchain

    runner = build_runner(load_target("x86_64"), artifact, HostToolchain())
    tensorfile.save(work / "inputs.bin", inputs)
    argv = [str(runner), str(artifact.graph_json), str(artifact.params_bin), str(work / "inputs.bin"),
            str(work / "outputs.bin"), "-n", "1", "-w", str(artifact.workspace_bytes)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    outputs = tensorfile.load(work / "outputs.bin")
    assert list(outputs) == [f"output{i}" for i in range(len(artifact.outputs))]
    return list(outputs.values())


@pytest.mark.parametrize("model", MODELS)
def test_graph_runs_exactly_like_relax_vm(compiled_models, example_models, model, tmp_path):
    """The artifact gives TVM's Relax VM outputs on this host, and onnx's within 1e-5, two ways:
    (1) graph.json + storage plan + params.bin executed in Python with TVM's kernels on views of
    the planned buffers: exactly (same kernels); (2) minrt-run built with kernels.o: within
    float rounding (the default schedules may sum a convolution's products in another order,
    e.g. the channels-last tile walks kh, kw, then input channels)."""
    from onnx.reference import ReferenceEvaluator

    from harness.check.relax_vm import run_graph, run_relax_vm

    artifact = compiled_models.get(model, "x86_64")
    rng = np.random.default_rng(42)
    inputs = {s["name"]: rng.standard_normal(s["shape"]).astype(np.float32) for s in artifact.inputs}
    expected = ReferenceEvaluator(onnx.load(example_models[model])).run(None, inputs)
    vm = run_relax_vm(example_models[model], inputs)
    in_python = run_graph(artifact, example_models[model], inputs)
    on_minrt = run_minrt_on_host(artifact, inputs, tmp_path)
    assert len(in_python) == len(on_minrt) == len(vm) == len(expected)
    for p, m, v, e in zip(in_python, on_minrt, vm, expected):
        np.testing.assert_array_equal(p, v)
        np.testing.assert_allclose(m, v, atol=1e-6, rtol=1e-5)
        np.testing.assert_allclose(v, e, atol=1e-5, rtol=0)


def test_plan_is_no_bigger_than_relax_static_plan(compiled_models, example_models):
    from harness.check.relax_vm import relax_planned_bytes

    for model in ("cnn", "dscnn", "mlp"):
        meta = compiled_models.get(model, "x86_64").metadata
        # outputs included on both sides: an output may hold intermediates before it (in place
        # or reused), and Relax leaves outputs out of its plan
        ours = meta["storage"]["intermediate_bytes"] + meta["storage"]["output_bytes"]
        outputs = sum(int(np.prod(o["shape"], dtype=np.int64)) * dtype_nbytes(o["dtype"]) for o in meta["outputs"])
        relax = relax_planned_bytes(example_models[model], "x86_64") + outputs
        assert 0 < ours <= relax, (model, ours, relax)


# ---------------------------------------------------------------------------------------------
# Cache


def test_second_compile_is_a_cache_hit(tmp_path, example_models, caplog):
    caplog.set_level(logging.INFO, logger="harness.compile")
    first = compile_model(example_models["multi_io"], "x86_64", cache=tmp_path)
    assert first.dir.parent == tmp_path / "artifacts"
    assert any("importing ONNX" in r.getMessage() for r in caplog.records)
    stamps = {p.name: p.stat().st_mtime_ns for p in first.dir.iterdir()}
    caplog.clear()
    second = compile_model(example_models["multi_io"], load_target("x86_64"), cache=tmp_path)
    assert second.dir == first.dir
    assert {p.name: p.stat().st_mtime_ns for p in second.dir.iterdir()} == stamps
    messages = [r.getMessage() for r in caplog.records]
    assert any("cached artifact" in m for m in messages)
    assert not any("importing ONNX" in m for m in messages)
    # Another target is another artifact; a damaged cache entry is rebuilt, not trusted.
    other = compile_model(example_models["multi_io"], "qemu-armv7", cache=tmp_path)
    assert other.dir != first.dir
    first.kernels_obj.unlink()
    rebuilt = compile_model(example_models["multi_io"], "x86_64", cache=tmp_path)
    assert rebuilt.kernels_obj.is_file()


def test_artifact_open_names_missing_files(tmp_path):
    (tmp_path / "graph.json").write_text("{}")
    with pytest.raises(CompileError, match=r"missing params\.bin, kernels\.o, metadata\.json"):
        Artifact.open(tmp_path)


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("content,problem", [
    (b"this is a text file, not a model\n", "not an ONNX model"),
    (b"", "not an ONNX model"),
    (bytes(range(256)) * 4, "not an ONNX model"),
])
def test_a_file_that_is_not_onnx_is_a_clear_error(tmp_path, content, problem):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(CompileError, match=problem) as info:
        compile_model(path, "x86_64", cache=tmp_path)
    assert str(path) in str(info.value)


def test_truncated_onnx_is_a_clear_error(tmp_path, example_models):
    path = tmp_path / "cut.onnx"
    path.write_bytes(example_models["cnn"].read_bytes()[:1000])
    with pytest.raises(CompileError, match=rf"{path}: (not an ONNX model|invalid ONNX model)"):
        compile_model(path, "x86_64", cache=tmp_path)


def test_unknown_example_names_are_refused_before_anything_is_written(tmp_path):
    from harness.models.qdq import write_qdq_examples

    with pytest.raises(KeyError, match="unknown example model 'nope' .known: mlp, cnn, "):
        write_examples(tmp_path, ["mlp", "nope"])
    with pytest.raises(KeyError, match="unknown QDQ example 'nope' .known: cnn-qdq, "):
        write_qdq_examples(tmp_path, ["cnn-qdq", "nope"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["nope.onnx", "nope.tflite"])
def test_missing_file_is_a_clear_error(tmp_path, name):
    with pytest.raises(CompileError, match=rf"{re.escape(name)}: cannot read model"):
        compile_model(tmp_path / name, "x86_64", cache=tmp_path)


def test_unsupported_operator_is_named(tmp_path):
    # Det is a standard ONNX operator (onnx's reference evaluator runs it) that TVM cannot import.
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Det", ["r"], ["y"], name="determinant")],
        "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    path = tmp_path / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(CompileError) as info:
        compile_model(path, "x86_64", cache=tmp_path)
    message = str(info.value)
    assert "cannot import operator(s) Det" in message and "node 'determinant'" in message
    assert "Relu" not in message
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").iterdir())


def test_symbolic_input_shape_is_named(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(CompileError, match=r"input 'x' has a non-static dimension 0 \(batch\)"):
        compile_model(path, "x86_64", cache=tmp_path)


def _doubling_model(path: Path, elem_type: int) -> Path:
    """y = x + x on 4 elements of one ONNX element type."""
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "double",
                              [helper.make_tensor_value_info("x", elem_type, [4])],
                              [helper.make_tensor_value_info("y", elem_type, [4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_dtype_minrt_does_not_load_is_refused_at_compile(tmp_path):
    """bfloat16 used to compile, and minrt refused the graph at load (bad dtype)."""
    path = _doubling_model(tmp_path / "bf16.onnx", TensorProto.BFLOAT16)
    with pytest.raises(CompileError, match=r"bf16\.onnx: input 'x': dtype 'bfloat16' is not one minrt loads"):
        compile_model(path, "x86_64", cache=tmp_path)
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").iterdir())


def test_uint64_runs_end_to_end(tmp_path, monkeypatch):
    """minrt loads uint64, and so does every file on the way (the inputs and outputs files
    used to refuse it after compile and build); values above 2**53 come back exact."""
    from harness.run import run_on_target

    monkeypatch.setenv("MINRT_CACHE", str(tmp_path / "cache"))
    path = _doubling_model(tmp_path / "u64.onnx", TensorProto.UINT64)
    x = np.array([2**60 + 1, 2**53 + 1, 3, 0], dtype=np.uint64)
    np.save(tmp_path / "x.npy", x)
    result = run_on_target(path, load_target("x86_64"), toolchain="host", iters=1,
                           input_files={"x": tmp_path / "x.npy"})
    assert result.passed, result.error
    assert {o["dtype"] for o in result.outputs} == {"uint64"} and all(o["max_abs_err"] == 0 for o in result.outputs)


def test_a_damaged_cached_artifact_and_runner_are_rebuilt(example_models, tmp_path, caplog):
    """A cache entry whose file was truncated (a full disk, a crash) or edited is noticed by its
    checksums on the next use and rebuilt, instead of failing every later run until someone
    deletes the cache by hand."""
    from harness.build.runner import build_runner
    from harness.build.toolchain import HostToolchain
    from harness.cache import SEAL, seal_broken

    cache = tmp_path / "cache"
    target = load_target("x86_64")
    artifact = compile_model(example_models["mlp"], target, cache=cache)
    assert seal_broken(artifact.dir) is None and (artifact.dir / SEAL).is_file()
    good_params = artifact.params_bin.read_bytes()
    artifact.params_bin.write_bytes(good_params[: len(good_params) // 2])  # truncated
    assert seal_broken(artifact.dir) == "params.bin does not match its checksum"
    with caplog.at_level(logging.WARNING):
        again = compile_model(example_models["mlp"], target, cache=cache)
    assert again.dir == artifact.dir and again.params_bin.read_bytes() == good_params
    assert "params.bin does not match its checksum" in caplog.text

    runner = build_runner(target, again, HostToolchain())
    good_runner = runner.read_bytes()
    runner.write_bytes(good_runner[:100])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rebuilt = build_runner(target, again, HostToolchain())
    assert rebuilt == runner and rebuilt.read_bytes() == good_runner
    assert "minrt-run does not match its checksum" in caplog.text
    (runner.parent / SEAL).unlink()  # an entry from before seals: rebuilt too
    assert seal_broken(runner.parent) == f"no readable {SEAL}"
    assert build_runner(target, again, HostToolchain()).read_bytes() == good_runner
