"""Bad input and interruptions end in one line on stderr and the documented exit code
(0 matched, 1 mismatch, 2 bad input, 3 infrastructure, 130 interrupted), never a traceback.
Each case is caused for real: real target files, real read-only and full file systems, a
real SIGINT to a real `harness compile`, a real TVM frontend on an operator it cannot lower."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

HARNESS = [sys.executable, "-m", "harness.cli"]

X86_TARGET = """\
name = "{name}"
arch = "x86_64"
[tvm]
{tvm}
[cc]
[toolchain]
image = "x86_64"
[transport]
kind = "local"
"""


def harness(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The last stderr line is the error; no traceback anywhere; the exit code is `code`."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    last = proc.stderr.strip().splitlines()[-1]
    assert "error" in last, proc.stderr
    for needle in needles:
        assert needle in last, (needle, last)
    return last


def target_file(tmp_path: Path, name: str, tvm: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(X86_TARGET.format(name=name, tvm=tvm))
    return path


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Path:
    from harness.models.examples import write_examples

    return write_examples(tmp_path_factory.mktemp("models"))["mlp"]


def test_mtriple_of_the_wrong_type_names_the_key(tmp_path, mlp):
    path = target_file(tmp_path, "badtriple", 'kind = "llvm"\nmtriple = 7')
    proc = harness("compile", str(mlp), "--target", str(path))
    assert_one_line_error(proc, 2, str(path), "tvm.mtriple", "must be a string")


def test_unknown_tvm_kind_names_the_key(tmp_path, mlp):
    path = target_file(tmp_path, "badkind", 'kind = "nosuchkind"\nmtriple = "x86_64-linux-gnu"')
    proc = harness("compile", str(mlp), "--target", str(path))
    assert_one_line_error(proc, 2, "tvm.kind", "nosuchkind")


def test_unknown_mcpu_is_refused_before_compiling(tmp_path, mlp):
    # TVM accepts any mcpu and LLVM only warns, compiling for a generic cpu with exit 0.
    path = target_file(tmp_path, "badcpu", 'kind = "llvm"\nmtriple = "x86_64-linux-gnu"\nmcpu = "cortex-z9"')
    cache = tmp_path / "cache"
    proc = harness("compile", str(mlp), "--target", str(path), env={"MINRT_CACHE": str(cache)})
    assert_one_line_error(proc, 2, "tvm.mcpu", "cortex-z9")
    assert not (cache / "artifacts").exists()


def test_unknown_mattr_feature_is_refused_before_compiling(tmp_path, mlp):
    # LLVM prints "'+avx9' is not a recognized feature" once per kernel and compiles without it.
    path = target_file(tmp_path, "badattr", 'kind = "llvm"\nmtriple = "x86_64-linux-gnu"\nmcpu = "haswell"\n'
                                             'mattr = ["+avx2", "+avx9"]')
    cache = tmp_path / "cache"
    proc = harness("compile", str(mlp), "--target", str(path), env={"MINRT_CACHE": str(cache)})
    last = assert_one_line_error(proc, 2, "tvm.mattr", "'+avx9'")
    assert "'+avx2'" not in last  # a feature LLVM knows is not named
    assert not (cache / "artifacts").exists()


def test_unknown_mtriple_architecture_is_refused(tmp_path, mlp):
    path = target_file(tmp_path, "badarch", 'kind = "llvm"\nmtriple = "vax-dec-ultrix"')
    proc = harness("compile", str(mlp), "--target", str(path))
    assert_one_line_error(proc, 2, "tvm.mtriple", "vax")


def test_minrt_cache_pointing_at_a_file(tmp_path, mlp):
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_text("")
    proc = harness("compile", str(mlp), "--target", "x86_64", env={"MINRT_CACHE": str(not_a_dir)})
    assert_one_line_error(proc, 2, str(not_a_dir), "not a directory")


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_read_only_cache_directory(tmp_path, mlp):
    # a read-only mount, since root writes through any mode bits
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        proc = harness("compile", str(mlp), "--target", "x86_64", env={"MINRT_CACHE": str(ro)})
    assert_one_line_error(proc, 2, str(ro), "Read-only file system", "MINRT_CACHE")


def test_full_cache_directory(tmp_path, mlp):
    # Full for real: LLVM would end the process mid-write ("LLVM ERROR: IO failure"), so the
    # harness refuses a cache with too little space before starting.
    with tmpfs(tmp_path / "full", "size=256k") as full:
        with open(full / "filler", "wb") as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        proc = harness("compile", str(mlp), "--target", "x86_64", env={"MINRT_CACHE": str(full)})
    assert_one_line_error(proc, 2, str(full), "disk is full")


@pytest.mark.parametrize("iters", ["0", "-1"])
def test_iters_below_one_is_refused_before_any_work(tmp_path, mlp, iters):
    cache = tmp_path / "cache"
    proc = harness("run", "--model", str(mlp), "--target", "x86_64", "--toolchain", "host",
                   "--iters", iters, env={"MINRT_CACHE": str(cache)})
    assert_one_line_error(proc, 2, "--iters", "at least 1")
    assert not cache.exists()  # nothing compiled, nothing built


def test_unsupported_operator_is_named(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])
    values = helper.make_tensor_value_info("values", TensorProto.FLOAT, [3])
    indices = helper.make_tensor_value_info("indices", TensorProto.INT64, [3])
    k = numpy_helper.from_array(np.array([3], dtype=np.int64), "k")
    graph = helper.make_graph([helper.make_node("TopK", ["x", "k"], ["values", "indices"], name="top")],
                              "topk", [x], [values, indices], [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "topk.onnx"
    onnx.save(model, path)
    proc = harness("compile", str(path), "--target", "x86_64", env={"MINRT_CACHE": str(tmp_path / "cache")})
    last = assert_one_line_error(proc, 2, "unsupported operator", "TopK")
    assert "is a Call" not in last


def long_chain_model(path: Path, links: int) -> Path:
    """Add+Relu repeated: legalize and fuse take seconds, long enough to be interrupted."""
    nodes, inits, x = [], [], "x"
    for i in range(links):
        inits.append(numpy_helper.from_array(np.full((1, 8, 8, 8), 0.01 * i, np.float32), f"w{i}"))
        nodes += [helper.make_node("Add", [x, f"w{i}"], [f"a{i}"]), helper.make_node("Relu", [f"a{i}"], [f"r{i}"])]
        x = f"r{i}"
    shape = [1, 8, 8, 8]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_ctrl_c_during_legalize_and_fuse_is_interrupted_130(tmp_path):
    model = long_chain_model(tmp_path / "chain.onnx", 1500)
    proc = subprocess.Popen([*HARNESS, "compile", str(model), "--target", "x86_64"],
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MINRT_CACHE": str(tmp_path / "cache")})
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "legalize and fuse" in line:
            time.sleep(0.3)  # inside the passes now (they take seconds on this model)
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    code = proc.wait(timeout=120)
    stderr = "".join(seen) + rest
    assert "Traceback" not in stderr, stderr
    assert "failed" not in rest, stderr  # not reported as a TVM failure
    assert code == 130, stderr
    assert stderr.strip().splitlines()[-1] == "harness: interrupted"
    artifacts = tmp_path / "cache" / "artifacts"
    assert not artifacts.exists() or not [p for p in artifacts.iterdir() if not p.name.startswith(".")]


def test_ssh_port_out_of_range_and_unreachable_device(tmp_path, mlp):
    common = ["run", "--model", str(mlp), "--target", "rpi", "--toolchain", "host", "--iters", "1"]
    # 99999 used to be truncated to 16 bits (34463) and connected there
    proc = harness(*common, "--host", "root@127.0.0.1:99999")
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: --host 'root@127.0.0.1:99999': port '99999' is not a TCP port (1-65535)" in proc.stdout
    # nothing listens on port 1 of the loopback: infrastructure, exit 3
    proc = harness(*common, "--host", "root@127.0.0.1:1")
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "cannot connect over SSH" in proc.stdout


def test_output_mismatch_exits_1(mlp_with_wrong_weights):
    # the device runs a weight shifted by 1.0: a real mismatch at the default tolerances
    proc = harness("run", "--model", str(mlp_with_wrong_weights), "--target", "x86_64", "--toolchain", "host",
                   "--iters", "1", "--json")
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (result,) = json.loads(proc.stdout)
    assert not result["passed"] and not result["error"]
    assert all(c["max_abs_err"] > 0.01 and not c["passed"] for c in result["outputs"]), result["outputs"]


def test_a_model_that_does_not_compile_keeps_the_others_json(tmp_path, mlp):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07 this is no protobuf of a model")
    proc = harness("run", "--model", str(mlp), "--model", str(bad), "--target", "x86_64",
                   "--toolchain", "host", "--iters", "1", "--json")
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2, proc.stdout + proc.stderr  # the worst: bad input
    first, second = json.loads(proc.stdout)
    assert first["model"] == mlp.stem and first["passed"] and first["latency_us"]
    assert second["model"] == "broken" and not second["passed"]
    assert second["error_kind"] == "CompileError" and "broken.onnx" in second["error"]


def test_run_help_documents_the_exit_codes():
    out = harness("run", "--help").stdout
    for line in ("0    every output", "1    an output did not match", "2    bad input",
                 "3    infrastructure", "130  interrupted"):
        assert line in out, out


@pytest.mark.parametrize("action", ["status", "down"])
@pytest.mark.parametrize("name, instance, needle", [
    ("../../x", "0", "unknown board '../../x'"),
    ("qemu-virt-armv7", "../../y", "board instance name '../../y'"),
    ("qemu-virt-armv7", "..", "board instance name '..'"),
])
def test_board_names_that_would_leave_the_cache_are_refused(tmp_path, action, name, instance, needle):
    """`harness board ... --name/--instance` become a path under the cache: anything that is not
    a known board or a plain instance name is bad input (exit 2), and nothing is written
    anywhere, inside the cache or beside it."""
    root = tmp_path / "root"
    cache = root / "a" / "b" / "cache"
    cache.mkdir(parents=True)
    proc = harness("board", action, "--name", name, "--instance", instance, env={"MINRT_CACHE": str(cache)})
    assert_one_line_error(proc, 2, needle)
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.name.startswith(".probe"))
    assert written == ["a", "a/b", "a/b/cache"], written


def _one_input_model(path: Path, dims: list, nodes: bool = True) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])] if nodes else [], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("dims, nodes, needle", [
    ([1, 4], False, "the ONNX graph has no nodes: there is nothing to compile"),
    ([1, 0], True, "input 'x' has dimension 1 of size 0 in shape [1,0]: an empty tensor"),
    ([1, 1 << 31], True, "input 'x' has dimension 1 of size 2147483648, more than minrt's largest (2,147,483,647)"),
])
def test_models_minrt_cannot_run_are_named_for_what_they_are(tmp_path, dims, nodes, needle):
    """An empty graph is a valid ONNX model (not 'not an ONNX model'), a 0 dimension is static
    but empty (not 'non-static'), a 2^31 dimension is too large (not an internal error)."""
    model = _one_input_model(tmp_path / "m.onnx", dims, nodes)
    proc = harness("compile", str(model), "--target", "x86_64", env={"MINRT_CACHE": str(tmp_path / "cache")})
    assert_one_line_error(proc, 2, needle)


@pytest.mark.parametrize("content, needle", [
    (b'name = "t"\n\xff\xfe = 1\n', "not UTF-8 text (byte 11 is 0xff)"),
    (b"a = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested too deeply"),
])
def test_a_target_or_inventory_that_is_no_toml_is_bad_input(tmp_path, mlp, content, needle):
    """Invalid UTF-8 and 100,000-deep nesting were internal errors (exit 3)."""
    bad = tmp_path / "t.toml"
    bad.write_bytes(content)
    proc = harness("compile", str(mlp), "--target", str(bad))
    assert_one_line_error(proc, 2, str(bad), needle)
    proc = harness("farm", "run", "--inventory", str(bad), "--model", str(mlp), "--out", str(tmp_path / "farm"))
    assert_one_line_error(proc, 2, str(bad), needle)


def test_an_inventory_device_that_is_not_a_table_is_bad_input(tmp_path, mlp):
    inventory = tmp_path / "inv.toml"
    inventory.write_text("devices = [1, 2]\n")
    proc = harness("farm", "run", "--inventory", str(inventory), "--model", str(mlp), "--out", str(tmp_path / "farm"))
    assert_one_line_error(proc, 2, f"{inventory}: devices[0]: must be a [[devices]] table, got int 1")


@pytest.mark.parametrize("option, value, needle", [
    ("--seed", "-1", "argument --seed: must be 0 to 4294967295, got -1"),
    ("--iters", "3000000000", "argument --iters: must be at most 2,147,483,647, got 3,000,000,000"),
])
def test_counts_out_of_range_are_refused_by_the_parser(mlp, option, value, needle):
    proc = harness("run", "--model", str(mlp), "--target", "x86_64", "--toolchain", "host", option, value)
    assert "Traceback" not in proc.stderr and proc.returncode == 2, proc.stderr
    assert needle in proc.stderr


def test_iters_has_one_limit_in_the_cli_the_library_and_the_devices(mlp):
    """frames.MAX_ITERS is the one rule: the parser's --iters, run_on_target (the pytest
    plugin's path) and the devices (minrt-run -n, RUN frames) all stop at it."""
    from harness.config.targets import load_target
    from harness.errors import EXIT_BAD_INPUT, HarnessError
    from harness.formats.frames import MAX_ITERS
    from harness.run import run_on_target

    proc = harness("run", "--model", str(mlp), "--target", "x86_64", "--toolchain", "host", "--iters", str(MAX_ITERS + 1))
    assert proc.returncode == 2 and f"must be at most {MAX_ITERS:,}" in proc.stderr, proc.stderr
    with pytest.raises(HarnessError, match=f"must be 1 to {MAX_ITERS:,}") as raised:
        run_on_target(mlp, load_target("x86_64"), toolchain="host", iters=MAX_ITERS + 1)
    assert raised.value.exit_code == EXIT_BAD_INPUT


@pytest.mark.parametrize("kind", ["garbage", "truncated", "directory"])
def test_a_results_path_that_is_no_store_is_bad_input_before_any_work(tmp_path, mlp, kind):
    from harness.results.store import ResultStore

    store = tmp_path / "store.sqlite"
    if kind == "garbage":
        store.write_bytes(b"this is not a database\n" * 100)
    elif kind == "truncated":
        ResultStore(store).record({"model": "m", "target": "x86_64", "passed": True}, batch="b")
        store.write_bytes(store.read_bytes()[:700])
        for side in ("-wal", "-shm"):
            Path(f"{store}{side}").unlink(missing_ok=True)
    else:
        store.mkdir()
    cache = tmp_path / "cache"
    for args in (["run", "--model", str(mlp), "--target", "x86_64", "--toolchain", "host", "--results", str(store)],
                 ["results", "list", "--results", str(store)],
                 ["dashboard", "--results", str(store), "--out", str(tmp_path / "site")]):
        proc = harness(*args, env={"MINRT_CACHE": str(cache)})
        assert_one_line_error(proc, 2, f"results store {store}")
    assert not (cache / "artifacts").exists()  # the run stopped before compiling


@pytest.mark.parametrize("device, health, needle", [
    ('name = "h"\ntarget = "x86_64"\n', "[health]\ntimeout = nan\n", "key 'health.timeout' must be a number of seconds > 0, got nan"),
    ('name = "h"\ntarget = "x86_64"\noptions = { bogus = 1 }\n', "",
     "device 'h': unknown key 'options.bogus' for transport 'local'"),
    ('name = "h"\ntarget = "rpi"\noptions = { port = "22" }\n', "", "device 'h': key 'options.port' must be an integer, got str"),
    ('name = "h"\ntarget = "x86_64"\ntransport = "telnet"\n', "", "device 'h': transport 'telnet' is not supported"),
    ('name = "' + "d" * 300 + '"\ntarget = "x86_64"\n', "", "devices[0]: key 'name' is 300 characters, more than 64"),
    ('name = "h"\ntarget = "/nonexistent/x.toml"\n', "", "device 'h': unknown target '/nonexistent/x.toml'"),
    ('name = "h"\ntarget = "rpi"\naddress = "pi@127.0.0.1:1;touch x"\n', "",
     "device 'h': key 'address': 'pi@127.0.0.1:1;touch x': port '1;touch x' is not a TCP port"),
])
def test_inventory_mistakes_are_bad_input_not_device_failures(tmp_path, mlp, device, health, needle):
    """Each of these ran into the farm, failed the device's health checks (a traceback from a
    worker thread for some) and could quarantine the device's name; they are read errors now."""
    inventory = tmp_path / "inv.toml"
    inventory.write_text(health + "[[devices]]\n" + device)
    cache = tmp_path / "cache"
    proc = harness("farm", "run", "--inventory", str(inventory), "--model", str(mlp), "--out", str(tmp_path / "farm"),
                   env={"MINRT_CACHE": str(cache)})
    assert_one_line_error(proc, 2, str(inventory), needle)
    assert not (cache / "results.sqlite").exists()  # no job, no health record, no quarantine


def test_ssh_to_a_port_that_is_not_ssh_is_one_line(tmp_path, mlp):
    """A real server on loopback that answers like HTTP, not SSH: paramiko's transport thread
    logged two tracebacks before the one-line error; now only the line (exit 3: the device
    address is right in form, the device is not an SSH server)."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(600)  # the harness compiles and builds first: minutes on a loaded host

    def answer() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                with conn:
                    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nnot ssh\n")

    threading.Thread(target=answer, daemon=True).start()
    try:
        proc = harness("run", "--model", str(mlp), "--target", "rpi", "--toolchain", "host", "--iters", "1",
                       "--host", f"root@127.0.0.1:{server.getsockname()[1]}", timeout=300)
    finally:
        server.close()
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "SSH connect failed: Error reading SSH protocol banner" in proc.stdout
    assert "paramiko" not in proc.stderr


def test_nan_from_the_device_is_reported_the_right_way_round_in_strict_json(tmp_path, monkeypatch):
    """The device computes with a NaN weight (written into the compiled params.bin), the
    references with the model's own: minrt's outputs are NaN where the references have
    numbers. The report says so that way round, --json stays strict JSON (no bare NaN), and
    numpy prints no RuntimeWarning."""
    from harness.cache import SEAL, seal
    from harness.compile.model import compile_model
    from harness.formats import tensorfile
    from harness.models.examples import write_examples

    monkeypatch.setenv("MINRT_CACHE", str(tmp_path / "cache"))
    model = write_examples(tmp_path / "models", ["mlp"])["mlp"]
    artifact = compile_model(model, "x86_64")
    params = artifact.params()
    # the last weight feeds the output directly (an earlier one would pass a ReLU, which may
    # turn NaN into 0)
    name = [n for n, a in params.items() if a.dtype == np.float32][-1]
    params[name] = np.full_like(params[name], np.nan)
    tensorfile.save(artifact.params_bin, params, aligned=True)
    seal(artifact.dir, [p.name for p in artifact.dir.iterdir() if p.name != SEAL])
    proc = harness("run", "--model", str(model), "--target", "x86_64", "--toolchain", "host", "--iters", "1", "--json")
    assert "Traceback" not in proc.stderr and "RuntimeWarning" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stdout + proc.stderr

    def no_constants(text: str):
        raise AssertionError(f"bare {text} in --json output")

    (result,) = json.loads(proc.stdout, parse_constant=no_constants)
    checks = result["outputs"]
    assert checks and all(c["problem"] == "NaN where the reference has a number" for c in checks), [(c["problem"], c["got"], c["expected"]) for c in checks]
    assert all(c["max_abs_err"] == "inf" and c["got"] == "nan" and isinstance(c["expected"], float) for c in checks)
