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

import pytest

from harness import REPO_ROOT
from harness.results.store import ResultStore


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_on_farm_run_stops_every_job_and_records_it(tmp_path: Path, sig: int, code: int) -> None:
    """SIGINT (Ctrl-C) or SIGTERM (`kill`, a CI runner cancelling) to a real `harness farm run`
    while its two jobs run: exit 130/143, both workers and the device processes they started
    are gone before the farm exits (no orphan holds a device whose lease was released), and
    the store and farm-results.json say the jobs were interrupted. The old main exited 130 on
    SIGINT and left both workers running; SIGTERM killed the farm at once (status -15), its
    workers and their leases left behind and nothing recorded."""
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
    # Liveness, not speed: the farm and its two workers start Python first. A pid file is
    # read once it has its number (it exists, empty, a moment before it is written).
    deadline = time.monotonic() + 300
    device_pids: list[int] = []
    while len(device_pids) < 2 and time.monotonic() < deadline and farm.poll() is None:
        time.sleep(0.1)
        device_pids = [int(text) for text in (p.read_text() for p in pid_dir.glob("*.pid")) if text]
    assert len(device_pids) == 2, f"the two jobs never started (farm exit {farm.poll()})"
    farm.send_signal(sig)
    out, err = farm.communicate(timeout=180)  # liveness: it must end, not how fast
    assert farm.returncode == code, err
    assert "Traceback" not in err, err
    assert [p for p in device_pids if _alive(p)] == [], "a job's device process outlived the farm"
    report = json.loads((tmp_path / "out" / "b1" / "farm-results.json").read_text())
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


def _run_cli(*args: str, cache: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), MINRT_CACHE=str(cache))
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize("entry, message", [
    ('target = "rpi"\naddress = "pi@127.0.0.1:1;touch x"', "port '1;touch x' is not a TCP port"),
    ('target = "/nonexistent/x.toml"', "unknown target '/nonexistent/x.toml'"),
])
def test_a_configuration_error_is_bad_input_and_quarantines_nothing(tmp_path: Path, entry: str,
                                                                    message: str) -> None:
    """A bad inventory entry is refused (exit 2, one line) before any job or health check, and
    records nothing; a healthy x86_64 device of the same name in another inventory then runs
    its job. Today's main health-checked the bad entry 3 times, quarantined "h" by name and
    then skipped the other inventory's healthy "h" (exit 3)."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[health]\nquarantine_after = 1\ntimeout = 5\n[[devices]]\nname = "h"\n{entry}\n')
    good = tmp_path / "good.toml"
    good.write_text('[[devices]]\nname = "h"\ntarget = "x86_64"\n')
    store = tmp_path / "r.sqlite"
    common = ["--runner", "tests.test_farm:standin_job", "--results", str(store), str(model)]
    for _ in range(3):
        refused = _run_cli("farm", "run", "--inventory", str(bad), "--out", str(tmp_path / "o1"), *common,
                           cache=tmp_path / "cache")
        assert refused.returncode == 2, refused.stderr
        assert message in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    ok = _run_cli("farm", "run", "--inventory", str(good), "--out", str(tmp_path / "o2"), *common,
                  cache=tmp_path / "cache")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1/1 passed" in ok.stdout


def test_quarantine_is_keyed_by_what_the_device_is(tmp_path: Path) -> None:
    """A device quarantined in one inventory does not sideline another inventory's device of the
    same name that is a different device (other target or address); `farm clear NAME` still
    clears it by name."""
    from harness.farm.inventory import parse_inventory
    from harness.farm.lease import LocalLeases
    from harness.farm.scheduler import run_farm

    store = ResultStore(tmp_path / "r.sqlite")
    board = parse_inventory('[[devices]]\nname = "h"\ntarget = "rpi"\naddress = "pi@127.0.0.1:2222"\n')
    host = parse_inventory('[[devices]]\nname = "h"\ntarget = "x86_64"\n')
    store.set_device_health(board.devices[0].health_key, target="rpi", state="quarantined",
                            failures=3, reason="device failed 3 times")
    report = run_farm(host, [tmp_path / "m.onnx"], job_runner="tests.test_farm:standin_job",
                      store=store, commit="c", leases=LocalLeases(host, tmp_path / "locks"), check_health=False)
    assert report.passed, report.jobs[0].result
    # The board's own record still stands, and its name clears it.
    (row,) = [r for r in store.device_health("h") if r["state"] == "quarantined"]
    assert row["key"] == board.devices[0].health_key and row["device"] == "h"
    assert store.clear_device("h")
    assert all(r["state"] == "healthy" for r in store.device_health("h"))




@pytest.mark.parametrize("runner, message", [("nope", "must be 'module:function'"),
                                             ("no_such_module:f", "cannot be imported")])
def test_a_bad_job_runner_is_bad_input_before_any_job(tmp_path: Path, runner: str, message: str) -> None:
    """Was found by each worker: every job failed and the farm exited 3."""
    (tmp_path / "m.onnx").write_bytes(b"")
    proc = _run_cli("farm", "run", "--target", "x86_64", "--runner", runner, "--out", str(tmp_path / "out"),
                    "--results", str(tmp_path / "r.sqlite"), str(tmp_path / "m.onnx"), cache=tmp_path / "cache")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
