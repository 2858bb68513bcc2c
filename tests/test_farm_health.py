"""Farm operations on real devices: health checks before jobs, power cycles, quarantine, and
the evidence a failed job leaves (artifact, inputs, outputs, console, dmesg, JUnit excerpts).

The dead device is an SSH device whose address has nothing listening (a board that is off);
the frozen one is the emulated board stopped with SIGSTOP and power-cycled by a real command.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from urllib.parse import unquote

import pytest

from harness.results.dashboard import build_dashboard, render_dashboard
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
        kept = tmp_path / "out-failed" / "b2" / "jobs"
        (job_dir,) = list(kept.iterdir())
        for name in ("inputs.bin", "outputs.bin", "result.json", "artifact/graph.json",
                     "artifact/params.bin", "console.txt", "dmesg.txt"):
            assert (job_dir / name).is_file(), (name, sorted(p.name for p in job_dir.rglob("*")))
        assert evidence["dir"] == str(job_dir) and evidence["console"].endswith("console.txt")
        case = ET.parse(tmp_path / "out-failed" / "b2" / "farm-results.xml").getroot().find("testcase")
        assert str(job_dir) in case.find("system-out").text
        err = case.find("system-err").text
        console = (job_dir / "console.txt").read_text()
        assert "built-in shell (ash)" in console  # the board's own console, to its last lines
        assert "--- board-1: console" in err and "built-in shell (ash)" in err
        assert "dmesg" in err
        # A passing job's files are pruned by default.
        assert not (tmp_path / "out" / "b1" / "jobs").exists() or not any((tmp_path / "out" / "b1" / "jobs").iterdir())
        # The dashboard's FAIL links to the run's page, which links to the board's console.
        site = build_dashboard(store, tmp_path / "site", farm_out=[tmp_path / "out-failed"]).parent
        (run,) = [r for r in store.runs(batch="b2") if not r.passed]
        assert f'data-run="{run.id}"><a href="runs/{run.id}.html"' in (site / "index.html").read_text()
        page = (site / "runs" / f"{run.id}.html").read_text()
        links = dict(re.findall(r'<li>([a-zA-Z ]+): <a href="([^"]+)">', page))
        assert {"job directory", "console log", "dmesg", "job log", "JUnit report"} <= set(links), links
        assert (site / "runs" / unquote(links["console log"])).resolve() == job_dir / "console.txt"
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


@pytest.mark.docker
def test_firmware_and_host_devices_run_jobs_with_default_health_checks(tmp_path):
    """`harness farm run --target cortex-m4-qemu --target x86_64`: the firmware device used to be
    quarantined before its first job (its default health check ran `true` in a shell the
    firmware does not have: 0 of 1 jobs). Its check is now a boot of its machine (each job
    boots its own image); the host's opens its transport. Both devices run their job."""
    import shutil

    if shutil.which("qemu-system-arm") is None:
        pytest.skip("qemu-system-arm is not installed (ci/setup installs it)")
    results = tmp_path / "results.sqlite"
    proc = subprocess.run([*HARNESS, "farm", "run", "--target", "cortex-m4-qemu", "--target", "x86_64",
                           "--model", "mlp", "--model", "multi_io", "--iters", "1", "--toolchain", "host",
                           "--results", str(results), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "health check" not in proc.stderr and "QUARANTINED" not in proc.stderr, proc.stderr[-3000:]
    assert "farm: 4/4 passed" in proc.stdout, proc.stdout
    store = ResultStore(results)
    ran = {(r.model, r.device) for r in store.runs() if r.passed}
    assert ran == {(m, d) for m in ("mlp", "multi_io") for d in ("cortex-m4-qemu", "x86_64")}, ran
    assert all(r["state"] == "healthy" for r in store.device_health())


def test_firmware_health_check_pings_the_front_end_or_boots_the_machine(tmp_path, example_models):
    """The check step of a firmware device (`harness farm _device check`): without an image, a
    boot of the emulated machine; a machine QEMU cannot build fails it with QEMU's reason. With
    an image put, a framed HELLO answered by the front end; a real board's (firmware-serial) is
    that HELLO on its line. A shell health_check on a firmware device is refused in the
    inventory, naming the device and the key."""
    import shutil

    from harness.build.firmware import build_firmware, image_models
    from harness.build.toolchain import get_toolchain
    from harness.config.targets import load_target
    from harness.errors import TargetError
    from harness.farm.health import check_device
    from harness.farm.inventory import Device
    from harness.transport.firmware import QemuFirmware, _listening

    if shutil.which("qemu-system-arm") is None:
        pytest.skip("qemu-system-arm is not installed (ci/setup installs it)")
    ok = check_device(Device(name="m4", target="cortex-m4-qemu"))
    assert ok.ok and "QEMU started mps2-an386" in ok.detail, ok
    bad = check_device(Device(name="m4", target="cortex-m4-qemu", options={"machine": "no-such-board"}))
    assert not bad.ok and "QEMU did not start" in bad.detail and "machine" in bad.detail, bad

    target = load_target("cortex-m4-qemu")
    image = build_firmware(target, image_models(target, {"mlp": example_models["mlp"]}),
                           get_toolchain("host", target))
    board = QemuFirmware(target.transport.options["machine"])
    try:
        board.put(image.elf)
        answer = board.health()
        assert answer.startswith("front end answered HELLO: ") and "protocol" in answer, answer
        board.shutdown()  # QEMU gone: the check boots the image again and pings it
        assert board.health().startswith("front end answered HELLO: ")
    finally:
        board.close()

    # A real board (firmware-serial: stm32f4-disco at a serial URL) is pinged on its line as it
    # is, never flashed: here the line is a QEMU board running the image, started by hand.
    uart = tmp_path / "uart"
    qemu = subprocess.Popen(["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor", "none",
                             "-nodefaults", "-chardev", f"socket,id=uart,path={uart},server=on,wait=off",
                             "-serial", "chardev:uart", "-kernel", str(image.elf)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # the socket file appears at bind(), a moment before QEMU listens: wait for both
        # (liveness on a loaded host, not speed; a fixed 0.3 s after the file did not always do)
        deadline = time.monotonic() + 120
        while not (uart.exists() and _listening(str(uart))):
            assert qemu.poll() is None and time.monotonic() < deadline, f"QEMU did not listen on {uart}"
            time.sleep(0.02)
        board_ok = check_device(Device(name="disco", target="stm32f4-disco", address=f"unix://{uart}"))
        assert board_ok.ok and board_ok.detail.startswith("healthy: front end answered HELLO"), board_ok
    finally:
        qemu.kill()
        qemu.wait()
    silent = check_device(Device(name="disco", target="stm32f4-disco", address=f"unix://{uart}"))
    assert not silent.ok and "cannot open the console" in silent.detail, silent

    with pytest.raises(TargetError, match=r"device 'm4': key 'health_check' runs a command in a shell"):
        parse_inventory('[[devices]]\nname = "m4"\ntarget = "cortex-m4-qemu"\nhealth_check = ["true"]\n')
