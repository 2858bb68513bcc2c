"""Farm operations on real devices: health checks before jobs, power cycles, quarantine, and
the evidence a failed job leaves (artifact, inputs, outputs, console, dmesg, JUnit excerpts).

The dead device is an SSH device whose address has nothing listening (a board that is off);
the frozen one is the emulated board stopped with SIGSTOP and power-cycled by a real command.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from harness.results.dashboard import render_dashboard
from harness.models.examples import write_examples
from harness.farm.scheduler import run_farm
from harness.farm.inventory import parse_inventory
from harness.farm.lease import LocalLeases
from harness.results.store import ResultStore

HARNESS = [sys.executable, "-m", "harness.cli"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: nothing listens there


def test_dead_device_is_quarantined_and_the_healthy_one_runs_every_job(tmp_path):
    port = _closed_port()
    inventory = parse_inventory(f"""
[health]
quarantine_after = 2
timeout = 60

[[devices]]
name = "armv7-healthy"
target = "qemu-armv7"

[[devices]]
name = "pi-dead"
target = "qemu-armv7"
transport = "ssh"
address = "root@127.0.0.1:{port}"
""")
    models = list(write_examples(tmp_path / "models", ["mlp", "multi_io", "residual"]).values())
    store = ResultStore(tmp_path / "results.sqlite")
    report = run_farm(inventory, models, job_runner="harness.farm.scheduler:run_model_on_device",
                      runner_options={"iters": 1, "toolchain": "host"}, store=store, batch="night-1",
                      out_dir=tmp_path / "out", leases=LocalLeases(inventory, tmp_path / "locks"))
    assert report.passed, [j.result.get("error") for j in report.jobs]
    assert {a.device for j in report.jobs for a in j.attempts} == {"armv7-healthy"}
    (dead,) = store.device_health("pi-dead")
    assert dead["state"] == "quarantined" and dead["failures"] == 2, dead
    assert "health check" in dead["reason"] and f"127.0.0.1:{port}" in dead["reason"], dead
    assert "pi-dead" in render_dashboard(store) and "quarantined" in render_dashboard(store)

    # The next run skips the quarantined device without touching it.
    again = run_farm(inventory, models[:1], job_runner="harness.farm.scheduler:run_model_on_device",
                     runner_options={"iters": 1, "toolchain": "host"}, store=store, batch="night-2",
                     out_dir=tmp_path / "out2", leases=LocalLeases(inventory, tmp_path / "locks"))
    assert again.passed
    assert store.device_health("pi-dead")[0]["updated"] == dead["updated"]

    listed = subprocess.run([*HARNESS, "farm", "health", "--results", str(store.path), "--json"],
                            capture_output=True, text=True, timeout=60)
    assert json.loads(listed.stdout)[0]["device"] == "pi-dead", listed.stdout
    cleared = subprocess.run([*HARNESS, "farm", "clear", "pi-dead", "--results", str(store.path)],
                             capture_output=True, text=True, timeout=60)
    assert cleared.returncode == 0 and "returned to service" in cleared.stdout, cleared.stderr
    assert store.device_health("pi-dead")[0]["state"] == "healthy"
    twice = subprocess.run([*HARNESS, "farm", "clear", "pi-dead", "--results", str(store.path)],
                           capture_output=True, text=True, timeout=60)
    assert twice.returncode == 1 and "not quarantined" in twice.stderr


def test_inventory_health_settings_are_checked():
    with pytest.raises(Exception, match="health.quarantine_after"):
        parse_inventory('[health]\nquarantine_after = 0\n[[devices]]\nname = "a"\ntarget = "x86_64"\n')
    with pytest.raises(Exception, match="health.retries"):
        parse_inventory('[health]\nretries = 2\n[[devices]]\nname = "a"\ntarget = "x86_64"\n')
    inv = parse_inventory('[[devices]]\nname = "a"\ntarget = "x86_64"\n'
                          'power_cycle = ["uhubctl", "-a", "cycle"]\nhealth_check = ["uptime"]\n')
    assert inv.devices[0].power_cycle == ("uhubctl", "-a", "cycle") and inv.quarantine_after == 3


@pytest.mark.board
@pytest.mark.slow
def test_frozen_board_is_power_cycled_and_a_failed_job_keeps_its_evidence(tmp_path):
    from harness.device.board import ensure_board, stop_board

    instance = "farm-health"
    inventory = parse_inventory(f"""
[health]
timeout = 120

[[devices]]
name = "board-1"
target = "rpi-qemu"
options = {{ board_instance = "{instance}" }}
power_cycle = {json.dumps([sys.executable, "-m", "harness.cli", "board", "restart", "--instance", instance])}
""")
    models = list(write_examples(tmp_path / "models", ["mlp"]).values())
    store = ResultStore(tmp_path / "results.sqlite")
    board = ensure_board(instance=instance, boot_timeout=300)
    frozen_pid = board.pid
    os.kill(frozen_pid, signal.SIGSTOP)
    try:
        report = run_farm(inventory, models, job_runner="harness.farm.scheduler:run_model_on_device",
                          runner_options={"iters": 1, "toolchain": "host"}, store=store, batch="b1",
                          out_dir=tmp_path / "out", leases=LocalLeases(inventory, tmp_path / "locks"))
        assert report.passed, report.jobs[0].result
        rebooted = ensure_board(instance=instance)
        assert rebooted.pid != frozen_pid  # the power-cycle command really restarted it
        (health,) = store.device_health("board-1")
        assert health["state"] == "healthy" and "recovered: emulated board" not in health["reason"], health
        assert "recovered: power-cycled with" in health["reason"], health

        # A job that fails (tolerance 0: a mismatch, not a device failure) keeps its evidence.
        failed = run_farm(inventory, models, job_runner="harness.farm.scheduler:run_model_on_device",
                          runner_options={"iters": 1, "toolchain": "host", "atol": 0.0, "rtol": 0.0},
                          store=store, batch="b2", out_dir=tmp_path / "out-failed",
                          leases=LocalLeases(inventory, tmp_path / "locks"))
        assert not failed.passed
        evidence = failed.jobs[0].attempts[-1].evidence
        kept = tmp_path / "out-failed" / "jobs"
        (job_dir,) = list(kept.iterdir())
        for name in ("inputs.bin", "outputs.bin", "result.json", "artifact/graph.json",
                     "artifact/params.bin", "console.txt", "dmesg.txt"):
            assert (job_dir / name).is_file(), (name, sorted(p.name for p in job_dir.rglob("*")))
        assert evidence["dir"] == str(job_dir) and evidence["console"].endswith("console.txt")
        case = ET.parse(tmp_path / "out-failed" / "farm-results.xml").getroot().find("testcase")
        assert str(job_dir) in case.find("system-out").text
        err = case.find("system-err").text
        console = (job_dir / "console.txt").read_text()
        assert "built-in shell (ash)" in console  # the board's own console, to its last lines
        assert "--- board-1: console" in err and "built-in shell (ash)" in err
        assert "dmesg" in err
        # A passing job's files are pruned by default.
        assert not (tmp_path / "out" / "jobs").exists() or not any((tmp_path / "out" / "jobs").iterdir())
    finally:
        try:
            os.kill(frozen_pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        stop_board(instance=instance)


def test_a_one_off_run_lands_in_the_nightly_store(tmp_path):
    store_path = tmp_path / "nightly.sqlite"
    proc = subprocess.run([*HARNESS, "run", "--target", "x86_64", "--toolchain", "host", "--model", "mlp",
                           "--iters", "1", "--results", str(store_path), "--batch", "pi-check"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = ResultStore(store_path).runs(batch="pi-check")
    assert row.model == "mlp" and row.target == "x86_64" and row.passed
    assert row.toolchain and row.toolchain.startswith("host ") and row.minrt_text


def test_a_toolchain_change_is_not_reported_as_code_growth(tmp_path):
    from harness.results.dashboard import find_regressions

    store = ResultStore(tmp_path / "r.sqlite")
    base = {"model": "mlp", "target": "qemu-armv7", "passed": True, "error": None}
    store.record({**base, "sizes": {"minrt_text": 5000}, "toolchain": "docker gcc 12.2"}, batch="n1")
    store.record({**base, "sizes": {"minrt_text": 5400}, "toolchain": "docker gcc 13.1"}, batch="n2")
    kinds = {r.kind: r for r in find_regressions(store)}
    assert "size-growth" not in kinds and not kinds["toolchain-changed"].fatal
    assert "gcc 12.2 -> docker gcc 13.1" in kinds["toolchain-changed"].message
    store.record({**base, "sizes": {"minrt_text": 5600}, "toolchain": "docker gcc 13.1"}, batch="n3")
    kinds = {r.kind: r for r in find_regressions(store)}
    assert kinds["size-growth"].fatal and "toolchain-changed" not in kinds
