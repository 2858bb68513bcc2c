"""The farm under faults and bad input (issue 22): Ctrl-C, configuration errors that must not
quarantine a device, bad options. Through the real CLI, with real worker processes; the
stand-in job runner's "device" is a real `sleep` process (tests.test_farm.standin_job)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from harness import REPO_ROOT
from harness.results.store import ResultStore


def _harness(*args: str, cache: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), MINRT_CACHE=str(cache))
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_ctrl_c_on_farm_run_stops_every_job_and_records_it(tmp_path: Path) -> None:
    """SIGINT to a real `harness farm run` while its two jobs run: exit 130, both workers and
    the device processes they started are gone before the farm exits (no orphan holds a
    device whose lease was released), and the store and farm-results.json say the jobs were
    interrupted. Today's main exited 130 and left both workers running."""
    inv = tmp_path / "inv.toml"
    inv.write_text('[[devices]]\nname = "host-a"\ntarget = "x86_64"\n'
                   '[[devices]]\nname = "host-b"\ntarget = "x86_64"\n')
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    # The stand-in runner reads its options from the job options: give them through a runner
    # module that fixes them (the CLI passes only iters/toolchain).
    (tmp_path / "slow_runner.py").write_text(
        "from tests.test_farm import standin_job\n"
        f"def slow(model, device, **_):\n    return standin_job(model, device, seconds=300, pid_dir={str(pid_dir)!r})\n")
    for i in range(3):
        (tmp_path / f"m{i}.onnx").write_bytes(b"")  # the stand-in runner never opens them
    env_path = f"{tmp_path}{os.pathsep}{REPO_ROOT}"
    env = dict(os.environ, PYTHONPATH=env_path, MINRT_CACHE=str(tmp_path / "cache"))
    farm = subprocess.Popen([sys.executable, "-m", "harness.cli", "farm", "run", "--inventory", str(inv),
                             "--runner", "slow_runner:slow", "--no-health-check",
                             "--results", str(tmp_path / "r.sqlite"), "--out", str(tmp_path / "out"),
                             "--batch", "b1", str(tmp_path / "m0.onnx"), str(tmp_path / "m1.onnx"),
                             str(tmp_path / "m2.onnx")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(list(pid_dir.glob("*.pid"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    device_pids = [int(p.read_text()) for p in pid_dir.glob("*.pid") if p.read_text()]
    assert len(device_pids) == 2, "the two jobs never started"
    farm.send_signal(signal.SIGINT)
    out, err = farm.communicate(timeout=60)
    assert farm.returncode == 130, err
    assert "Traceback" not in err, err
    assert [p for p in device_pids if _alive(p)] == [], "a job's device process outlived the farm"
    report = json.loads((tmp_path / "out" / "farm-results.json").read_text())
    assert report["interrupted"] is True
    statuses = sorted(a["status"] for j in report["jobs"] for a in j["attempts"])
    assert statuses == ["interrupted", "interrupted"]
    assert all(not _alive(a["pid"]) for j in report["jobs"] for a in j["attempts"])
    never = [j for j in report["jobs"] if not j["attempts"]]
    assert len(never) == 1 and "before the job started" in never[0]["result"]["error"]
    rows = ResultStore(tmp_path / "r.sqlite").runs(batch="b1")
    assert len(rows) == 3 and all("interrupted" in r.error for r in rows)
    # No quarantine or failure count for a device whose job was stopped by the user.
    assert all(r["failures"] == 0 for r in ResultStore(tmp_path / "r.sqlite").device_health())
    # The leases are free again: a second farm gets both devices at once.
    assert "interrupted" in out
