"""The CLI commands that are thin wrappers: size, targets, build (host toolchain)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from harness import REPO_ROOT
from harness.build.size import BUDGETS

HARNESS = [sys.executable, "-m", "harness.cli"]


def harness(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_size_json_reports_objects_budget_and_baseline(tmp_path):
    baseline = tmp_path / "baseline.json"
    saved = harness("size", "--target", "qemu-armv7", "--toolchain", "host", "--json",
                    "--baseline", str(baseline), "--save-baseline")
    assert saved.returncode == 0, saved.stderr
    report = json.loads(saved.stdout)
    assert report["arch"] == "armv7" and report["budget"] == BUDGETS["armv7"]
    assert report["total"]["text"] == sum(o["text"] for o in report["objects"]) <= BUDGETS["armv7"]
    assert {o["name"] for o in report["objects"]} == {p.stem + ".o" for p in Path("runtime_c/src").glob("*.c")}
    # a grown baseline entry shows up as a negative difference
    stored = json.loads(baseline.read_text())
    stored["armv7"]["objects"][0]["text"] += 100
    stored["armv7"]["total"]["text"] += 100
    baseline.write_text(json.dumps(stored))
    again = json.loads(harness("size", "--target", "qemu-armv7", "--toolchain", "host", "--json",
                               "--baseline", str(baseline)).stdout)
    assert again["baseline_diff"]["total"]["text"] == -100


def test_size_baseline_is_the_source_trees(tmp_path):
    """The default baseline is runtime_c/size-baseline.json of the source tree the harness
    uses ($MINRT_SOURCE), not of the directory the harness was imported from."""
    source = tmp_path / "src"
    for d in ("runtime_c", "targets"):
        shutil.copytree(REPO_ROOT / d, source / d)
    measured = json.loads(harness("size", "--target", "x86_64", "--toolchain", "host", "--json",
                                  env={"MINRT_SOURCE": str(source)}).stdout)
    total = measured["total"]
    baseline = {"x86_64": {"objects": [], "total": {**total, "text": total["text"] - 123}}}
    (source / "runtime_c" / "size-baseline.json").write_text(json.dumps(baseline))
    again = json.loads(harness("size", "--target", "x86_64", "--toolchain", "host", "--json",
                               env={"MINRT_SOURCE": str(source)}).stdout)
    assert again["baseline_diff"]["total"]["text"] == 123


def test_size_with_a_model_sizes_runner_and_kernels():
    proc = harness("size", "--target", "x86_64", "--toolchain", "host", "--model", "mlp")
    assert proc.returncode == 0, proc.stderr
    assert f"text budget {BUDGETS['x86_64']}: within" in proc.stdout
    line = next(l for l in proc.stdout.splitlines() if l.startswith("model mlp:"))
    assert all(part in line for part in ("flash ", "runner ", "kernels ", "weights ", "RAM arena ",
                                         "activations ", "weight copies 0")), line


def test_targets_lists_every_target_with_its_readiness():
    proc = harness("targets")
    assert proc.returncode == 0, proc.stderr
    for name in ("x86_64", "qemu-armv7", "rpi", "rpi-qemu"):
        assert any(l.startswith(name + " ") for l in proc.stdout.splitlines()), proc.stdout
    assert "(default)" in next(l for l in proc.stdout.splitlines() if l.startswith("rpi-qemu"))
    assert "needs --host user@ADDRESS" in proc.stdout  # rpi has no address until the user gives one


def test_build_with_host_toolchain_says_so(tmp_path):
    proc = harness("build", "mlp", "--target", "x86_64", "--toolchain", "host", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "host's compilers" in proc.stderr
    runner = tmp_path / "mlp" / "minrt-run"
    assert runner.exists() and runner.stat().st_mode & 0o111


def test_rpi_without_host_is_a_clear_error():
    proc = harness("run", "--target", "rpi", "--model", "mlp", "--toolchain", "host")
    assert proc.returncode == 2, proc.stdout + proc.stderr  # bad input
    assert "Traceback" not in proc.stderr
    assert "  error: this target needs a device address: pass --host user@ADDRESS\n" in proc.stdout, proc.stdout
