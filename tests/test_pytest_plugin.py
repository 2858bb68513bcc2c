"""The harness pytest plugin, used the way a user's own suite uses it: from outside this tree."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

from harness.models.examples import write_examples


def _plugin_args() -> list[str]:
    registered = any(ep.value == "harness.pytest_plugin"
                     for ep in importlib.metadata.entry_points(group="pytest11"))
    return [] if registered else ["-p", "harness.pytest_plugin"]


def _pytest(args: list[str], cwd, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", *_plugin_args(), "-p", "no:cacheprovider", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_help_names_prefixed_options_only(tmp_path):
    proc = _pytest(["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "--minrt-target" in proc.stdout and "--minrt-toolchain" in proc.stdout
    assert "  --target" not in proc.stdout  # would collide with pytest-embedded's option
    markers = _pytest(["--markers"], tmp_path).stdout
    for name in ("board", "docker", "network", "slow"):
        assert f"@pytest.mark.{name}:" in markers


def test_a_users_suite_runs_an_example_on_x86_64_in_one_line(tmp_path):
    model = write_examples(tmp_path / "models", ["mlp"])["mlp"]
    (tmp_path / "test_on_device.py").write_text(
        "def test_mlp_matches(minrt_run, minrt_target):\n"
        "    assert minrt_target.name == 'x86_64'\n"
        f"    result = minrt_run({str(model)!r}, iters=2)\n"
        "    assert result.passed, result.error\n"
        "    assert result.latency_us['min'] > 0 and result.outputs\n"
        "def test_tolerance_zero_fails(minrt_run):\n"
        f"    assert not minrt_run({str(model)!r}, atol=0, rtol=0).passed\n")
    proc = _pytest(["-q", "--minrt-target", "x86_64", str(tmp_path / "test_on_device.py")], tmp_path)
    assert "2 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
