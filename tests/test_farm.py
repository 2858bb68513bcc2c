"""The device farm: inventory, leases (local and a real labgrid coordinator), parallel runs,
retries when a device dies, JUnit/JSON reports and the results store.

Stand-in devices: `standin_job` below is a job runner whose "device" is a real process (a
`sleep` the worker starts); killing that process is how a device dies mid-run here. The real
path (`harness.run.run_on_target` on the x86_64 and qemu-armv7 targets, real models) runs in
`test_farm_runs_example_models_on_real_targets`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness import REPO_ROOT
from harness.errors import HarnessError, TargetError
from harness.farm.scheduler import DeviceFailure, run_farm
from harness.farm.inventory import load_inventory, parse_inventory
from harness.farm.lease import LabgridLeases, LeaseTimeout, LocalLeases
from harness.results.store import ResultStore

THREE_DEVICES = """
[[devices]]
name = "host-a"
target = "x86_64"
[[devices]]
name = "host-b"
target = "x86_64"
[[devices]]
name = "armv7-a"
target = "qemu-armv7"
"""


# -- a stand-in job runner (imported by the farm's worker processes as tests.test_farm) -----


def standin_job(model: Path, device, *, seconds: float = 0.6, pid_dir: str | None = None,
                hold_on: str | None = None, meet: int = 0, **_: object) -> dict:
    """Run the stand-in device (a real `sleep` process) for one job; its death is a device failure.
    The first job on device `hold_on` (marked in pid_dir) runs until it is killed (600 s), for a
    test that kills it mid-run: a short one could end before the test looked, on a loaded host.
    With `meet` (and pid_dir), each device's first job waits until the first jobs of `meet`
    devices have started: they then ran side by side by construction, whatever the load (a
    farm that runs them one at a time fails the job after 600 s)."""
    if meet and pid_dir:
        (Path(pid_dir) / f"{device.name}.started").touch()
        deadline = time.monotonic() + 600
        while len(list(Path(pid_dir).glob("*.started"))) < meet:
            if time.monotonic() > deadline:
                raise HarnessError(f"device {device.name}: the first jobs of {meet} devices never ran together")
            time.sleep(0.02)
    if hold_on == device.name and pid_dir:
        first = Path(pid_dir) / f"{device.name}.held"
        if not first.exists():
            first.touch()
            seconds = 600
    proc = subprocess.Popen(["sleep", str(seconds)])
    if pid_dir:
        (Path(pid_dir) / f"{device.name}.{model.stem}.pid").write_text(str(proc.pid))
    code = proc.wait()
    partial = {"model": model.stem, "target": device.target, "transport": "local", "passed": False,
               "sizes": {"minrt_text": 4000}}
    if code != 0:
        raise DeviceFailure(f"device {device.name}: stand-in process ended with {code}", partial)
    return {**partial, "passed": True, "latency_us": {"min": 1.0, "mean": 2.0, "max": 3.0},
            "outputs": [{"name": "output0", "max_abs_err": 0.0, "passed": True}],
            "error": None}


def _models(tmp_path: Path, n: int) -> list[Path]:
    # The stand-in runner never opens them; the names are the models' identity.
    return [tmp_path / f"model{i}.onnx" for i in range(n)]


def _assert_one_job_per_device(jobs) -> None:
    by_device: dict[str, list[tuple[float, float]]] = {}
    for job in jobs:
        for a in job.attempts:
            by_device.setdefault(a.device, []).append((a.started, a.ended))
    for device, spans in by_device.items():
        spans.sort()
        for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
            assert s2 >= e1, f"device {device} ran two jobs at once: {s1}-{e1} and {s2}-{e2}"


def _max_parallel(jobs) -> int:
    events = sorted([(a.started, 1) for j in jobs for a in j.attempts] +
                    [(a.ended, -1) for j in jobs for a in j.attempts])
    now = best = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


# -- inventory ------------------------------------------------------------------------------


def test_example_inventory_parses(tmp_path) -> None:
    """The README's `harness farm run --inventory targets/farms/example.toml` runs as written:
    every device it lists is on this host (a real Pi at a documentation address would be
    quarantined and end every run in exit 3); the real Pi's block parses once uncommented."""
    example = REPO_ROOT / "targets" / "farms" / "example.toml"
    inv = load_inventory(example)
    assert set(inv.targets) == {"x86_64", "qemu-armv7", "rpi-qemu"}
    assert len(inv.for_target("x86_64")) == 2
    assert [d.address for d in inv.devices] == [None] * len(inv.devices)
    assert [d.name for d in inv.select(tags=["fast"]).devices] == ["host-1", "host-2", "armv7-user-1"]
    lines = example.read_text().splitlines()
    start = lines.index("# [[devices]]")
    uncommented = tmp_path / "with-pi.toml"
    uncommented.write_text("\n".join(lines[:start] + [line.removeprefix("# ") for line in lines[start:start + 5]]) + "\n")
    with_pi = load_inventory(uncommented)
    assert with_pi.by_name["pi-lab-1"].address == "pi@192.0.2.10" and with_pi.by_name["pi-lab-1"].target == "rpi"


@pytest.mark.parametrize("text, message", [
    ("", "at least one"),
    ("[[devices]]\ntarget = 'x86_64'\n", "devices\\[0\\]: missing key 'name'"),
    ("[[devices]]\nname = 'a'\n", "device 'a': missing key 'target'"),
    ("[[devices]]\nname = 'a'\ntarget = 'z80'\n", "device 'a': key 'target' names unknown target 'z80'"),
    ("[[devices]]\nname = 'a'\ntarget = 'x86_64'\n[[devices]]\nname = 'a'\ntarget = 'x86_64'\n", "used twice"),
    ("[[devices]]\nname = 'a'\ntarget = 'x86_64'\ntags = 'x'\n", "key 'tags' must be a list"),
    ("[[devices]]\nname = 'a b'\ntarget = 'x86_64'\n", "may hold only"),
    ("[[devices]]\nname = 'a'\ntarget = 'x86_64'\ncolour = 1\n", "unknown key\\(s\\) colour"),
    ("[lease]\nbackend = 'labgrid'\n[[devices]]\nname = 'a'\ntarget = 'x86_64'\n", "lease.coordinator"),
    ("[[devices]\n", "not valid TOML"),
])
def test_bad_inventory_is_named(text: str, message: str) -> None:
    with pytest.raises(TargetError, match=message) as info:
        parse_inventory(text, Path("farm.toml"))
    assert str(info.value).startswith("farm.toml: ")


# -- local leases ---------------------------------------------------------------------------


def test_local_lease_is_exclusive_and_picks_a_free_device(tmp_path: Path) -> None:
    inv = parse_inventory(THREE_DEVICES)
    leases = LocalLeases(inv, tmp_path / "locks")
    first = leases.acquire("x86_64", timeout=0)
    second = leases.acquire("x86_64", timeout=0)
    assert {first.device, second.device} == {"host-a", "host-b"}
    with pytest.raises(LeaseTimeout, match="x86_64"):
        leases.acquire("x86_64", timeout=0.3)
    first.release()
    with leases.acquire("x86_64", timeout=0) as third:
        assert third.device == first.device
    with pytest.raises(HarnessError, match="neither a device nor a target"):
        leases.acquire("z80", timeout=0)
    with pytest.raises(LeaseTimeout, match="no device left"):
        leases.acquire("qemu-armv7", timeout=0, exclude={"armv7-a"})


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from harness.farm.inventory import parse_inventory
    from harness.farm.lease import LocalLeases
    inv = parse_inventory(sys.argv[1])
    lease = LocalLeases(inv, Path(sys.argv[2])).acquire(sys.argv[3], timeout=10)
    print(lease.device, flush=True)
    time.sleep(600)
""")


def test_local_lease_held_by_another_process_and_released_when_it_is_killed(tmp_path: Path) -> None:
    inv = parse_inventory(THREE_DEVICES)
    locks = tmp_path / "locks"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, THREE_DEVICES, str(locks), "armv7-a"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "armv7-a"
        leases = LocalLeases(inv, locks)
        with pytest.raises(LeaseTimeout):
            leases.acquire("armv7-a", timeout=0.5)
        holder.kill()  # SIGKILL: no cleanup code runs; the kernel drops the flock
        holder.wait(timeout=10)
        with leases.acquire("armv7-a", timeout=5) as lease:
            assert lease.device == "armv7-a"
    finally:
        holder.kill()
        holder.wait()


# -- the farm -------------------------------------------------------------------------------


def test_farm_runs_jobs_in_parallel_one_per_device(tmp_path: Path) -> None:
    inv = parse_inventory(THREE_DEVICES)
    store = ResultStore(tmp_path / "r.sqlite")
    models = _models(tmp_path, 4)
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    report = run_farm(inv, models, job_runner=standin_job, store=store, batch="b1", commit="c1",
                      out_dir=tmp_path / "out", leases=LocalLeases(inv, tmp_path / "locks"),
                      runner_options={"meet": 3, "pid_dir": str(meeting)})
    assert len(report.jobs) == 8 and report.passed, [j.result for j in report.jobs if not j.passed]
    _assert_one_job_per_device(report.jobs)
    # the jobs did run side by side: every device's first job waited for the other devices'
    # (0.6 s jobs alone could miss each other when a loaded host starts one worker late)
    assert _max_parallel(report.jobs) == 3
    assert {a.device for j in report.jobs if j.target == "qemu-armv7" for a in j.attempts} == {"armv7-a"}
    assert {a.device for j in report.jobs if j.target == "x86_64" for a in j.attempts} == {"host-a", "host-b"}
    rows = store.runs(batch="b1")
    assert len(rows) == 8 and all(r.passed and r.commit == "c1" for r in rows)
    assert {(r.model, r.target) for r in rows} == {(m.stem, t) for m in models for t in ("x86_64", "qemu-armv7")}
    # JUnit XML and JSON reports.
    assert report.junit_path == tmp_path / "out" / "b1" / "farm-results.xml"  # each batch its own directory
    suite = ET.parse(report.junit_path).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "8" and suite.get("failures") == "0"
    assert {(c.get("classname"), c.get("name")) for c in suite.iter("testcase")} == \
        {(f"farm.{t}", m.stem) for m in models for t in ("x86_64", "qemu-armv7")}
    data = json.loads((tmp_path / "out" / "b1" / "farm-results.json").read_text())
    assert data["passed"] is True and len(data["jobs"]) == 8


def test_two_batches_in_one_out_directory_keep_both_reports(tmp_path: Path) -> None:
    """`harness farm run --out farm-out` run twice (the README's command, as a user repeats
    it): the second batch's report, logs and evidence go beside the first's, whose files stay
    as they were; the same batch again is refused (exit 2) before any job runs. The old
    farm wrote OUT/farm-results.xml/.json for every batch, so the second batch replaced the
    first's report (and its worker logs)."""
    inv = parse_inventory(THREE_DEVICES)
    store = ResultStore(tmp_path / "r.sqlite")
    out = tmp_path / "farm-out"
    models = _models(tmp_path, 1)
    first = run_farm(inv, models, job_runner=standin_job, store=store, batch="b1", commit="c1", out_dir=out,
                     leases=LocalLeases(inv, tmp_path / "locks"))
    first_json = first.json_path.read_bytes()
    first_logs = sorted(p.relative_to(out) for p in (out / "b1" / "logs").iterdir())
    assert first_logs  # each attempt's worker log
    second = run_farm(inv, models, job_runner=standin_job, store=store, batch="b2", commit="c2", out_dir=out,
                      leases=LocalLeases(inv, tmp_path / "locks"))
    assert (first.json_path, second.json_path) == (out / "b1" / "farm-results.json", out / "b2" / "farm-results.json")
    assert first.json_path.read_bytes() == first_json
    assert sorted(p.relative_to(out) for p in (out / "b1" / "logs").iterdir()) == first_logs
    assert {json.loads(r.read_text())["batch"] for r in out.glob("*/farm-results.json")} == {"b1", "b2"}
    assert ET.parse(out / "b1" / "farm-results.xml").getroot().get("tests") == "2"
    assert [p.parent.name for p in store.farm_reports()] == ["b1", "b2"]  # the dashboard finds both
    with pytest.raises(HarnessError, match=r"already holds batch b1's report .*give another --batch or --out"):
        run_farm(inv, models, job_runner=standin_job, store=store, batch="b1", out_dir=out,
                 leases=LocalLeases(inv, tmp_path / "locks"))
    assert first.json_path.read_bytes() == first_json and len(store.runs(batch="b1")) == 2
    with pytest.raises(HarnessError, match="cannot name a directory"):
        run_farm(inv, models, job_runner=standin_job, store=store, batch="../b3", out_dir=out,
                 leases=LocalLeases(inv, tmp_path / "locks"))


def _descendants(pid: int) -> list[int]:
    """Every process below pid: each thread's children (a child started from a thread other
    than the main one is listed under that thread only)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        children: list[int] = []
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                children += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
        found += children
        todo += children
    return found


@pytest.mark.parametrize("what", ["device-process", "job-process"])
def test_device_killed_mid_run_loses_no_other_result(tmp_path: Path, what: str) -> None:
    """Kill a device's process in the middle of its first job: that job is retried on the other
    device of its target, and every other job's result is kept."""
    inv = parse_inventory(THREE_DEVICES)
    store = ResultStore(tmp_path / "r.sqlite")
    models = _models(tmp_path, 3)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    killed: list[tuple[str, str]] = []

    def kill_soon(job, device: str, worker_pid: int) -> None:
        if device != "host-a" or killed:
            return
        killed.append((job.model.stem, job.target))

        def kill() -> None:
            deadline = time.monotonic() + 600  # liveness: the worker process starts first
            while time.monotonic() < deadline:
                # Wait until the device process is running (it runs until killed), then kill
                # it (or the whole job).
                pid_file = pid_dir / f"host-a.{job.model.stem}.pid"
                if pid_file.exists() and pid_file.read_text():
                    if what == "device-process":
                        os.kill(int(pid_file.read_text()), signal.SIGKILL)
                    else:
                        os.killpg(worker_pid, signal.SIGKILL)
                    return
                time.sleep(0.02)

        threading.Thread(target=kill, daemon=True).start()

    report = run_farm(inv, models, job_runner=standin_job,
                      runner_options={"seconds": 1.5, "pid_dir": str(pid_dir), "hold_on": "host-a"},
                      store=store, batch="b1", commit="c1", out_dir=tmp_path / "out",
                      leases=LocalLeases(inv, tmp_path / "locks"), on_start=kill_soon)
    assert killed, "the device was never killed"
    assert report.passed, [(j.name, j.result) for j in report.jobs if not j.passed]
    victim = next(j for j in report.jobs if (j.model.stem, j.target) == killed[0])
    assert [a.device for a in victim.attempts] == ["host-a", "host-b"]
    assert victim.attempts[0].status == "device-failed"
    expected = "stand-in process ended with -9" if what == "device-process" else "killed by SIGKILL"
    assert expected in victim.attempts[0].error
    _assert_one_job_per_device(report.jobs)
    # Every job's final result is in the store, plus the failed attempt with its error.
    rows = store.runs(batch="b1")
    assert len(rows) == len(report.jobs) + 1
    latest = store.latest("b1")
    assert len(latest) == 6 and all(r.passed for r in latest.values())
    failed = [r for r in rows if not r.passed]
    assert len(failed) == 1 and failed[0].device == "host-a" and expected in failed[0].error
    if what == "device-process":
        assert failed[0].minrt_text == 4000  # what the job measured before the device died


def test_job_with_no_device_left_fails_with_its_reason(tmp_path: Path) -> None:
    inv = parse_inventory(THREE_DEVICES).select(targets=["qemu-armv7"])
    store = ResultStore(tmp_path / "r.sqlite")
    # The only ARMv7 device dies on every job: the job is recorded as failed, not lost.
    report = run_farm(inv, _models(tmp_path, 1), job_runner=standin_job,
                      runner_options={"seconds": "not-a-number"}, store=store, batch="b",
                      commit="c", leases=LocalLeases(inv, tmp_path / "locks"))
    (job,) = report.jobs
    assert not job.passed and [a.status for a in job.attempts] == ["device-failed"]
    assert "stand-in process ended with 1" in job.result["error"]
    (row,) = store.runs()
    assert not row.passed and "ended with 1" in row.error


def test_farm_runs_example_models_on_real_targets(tmp_path: Path) -> None:
    """Three stand-in devices (the host, and ARMv7 under qemu-user twice) run real models
    through the whole harness path in parallel. The qemu-arm process of one ARMv7 job (the
    emulated CPU: the device) is killed mid-run: that job is retried on the other ARMv7
    device, and every other result lands in the store."""
    from harness.results.dashboard import build_dashboard
    from harness.models.examples import write_examples

    models = write_examples(tmp_path / "models", ["mlp", "residual", "multi_io"])
    inv = parse_inventory("""
[[devices]]
name = "host-a"
target = "x86_64"
[[devices]]
name = "armv7-a"
target = "qemu-armv7"
[[devices]]
name = "armv7-b"
target = "qemu-armv7"
""")
    killed: list[tuple[str, str, int]] = []

    def kill_qemu(job, device: str, worker_pid: int) -> None:
        if device != "armv7-a" or killed:
            return
        killed.append((job.model.stem, job.target, 0))

        def kill() -> None:
            deadline = time.monotonic() + 600  # compile and build come first
            while time.monotonic() < deadline:
                for pid in _descendants(worker_pid):
                    try:
                        comm = Path(f"/proc/{pid}/comm").read_text().strip()
                    except OSError:
                        continue
                    if comm.startswith("qemu-arm"):
                        os.kill(pid, signal.SIGKILL)
                        killed[0] = (*killed[0][:2], pid)
                        return
                if not Path(f"/proc/{worker_pid}").exists():
                    return
                time.sleep(0.005)

        threading.Thread(target=kill, daemon=True).start()

    store = ResultStore(tmp_path / "r.sqlite")
    # Enough iterations that the device runs long enough to be caught running: mlp, the
    # smallest, takes ~23 us per inference under qemu-arm, so 100,000 take ~2 s (1,000 took
    # 23 ms, and a loaded CI host once let the whole run slip between two looks).
    report = run_farm(inv, list(models.values()), runner_options={"iters": 100_000}, store=store,
                      batch="real", out_dir=tmp_path / "out", leases=LocalLeases(inv, tmp_path / "locks"),
                      on_start=kill_qemu)
    errors = [(j.name, a.error) for j in report.jobs for a in j.attempts if a.error]
    assert killed and killed[0][2], f"the qemu-arm process of armv7-a was never seen running; errors: {errors}"
    assert report.passed, [(j.name, (j.result or {}).get("error")) for j in report.jobs if not j.passed]
    _assert_one_job_per_device(report.jobs)
    assert _max_parallel(report.jobs) >= 2
    victim = next(j for j in report.jobs if (j.model.stem, j.target) == killed[0][:2])
    assert [(a.device, a.status) for a in victim.attempts] == [("armv7-a", "device-failed"), ("armv7-b", "ok")]
    assert "-9" in victim.attempts[0].error

    rows = store.runs(batch="real")
    assert len(rows) == 7  # 6 jobs + the killed attempt
    (failed,) = [r for r in rows if not r.passed]
    assert failed.device == "armv7-a" and "-9" in failed.error
    assert failed.minrt_text and failed.runner_text  # measured before the device died
    latest = store.latest("real")
    assert len(latest) == 6
    for r in latest.values():
        assert r.passed and r.minrt_text and r.latency_mean_us is not None and r.outputs
        assert all(o["max_abs_err"] <= 1e-5 for o in r.outputs)
    # The dashboard shows the measured minrt size of each target.
    html = build_dashboard(store, tmp_path / "site").read_text()
    for target in ("x86_64", "qemu-armv7"):
        size = latest[("mlp", target)].minrt_text
        assert f"minrt: {size:,} B" in html


# -- labgrid --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def labgrid_client() -> Path:
    from harness.farm.lease import ensure_labgrid_venv

    try:
        return ensure_labgrid_venv(timeout=600)
    except HarnessError as exc:
        pytest.skip(f"labgrid could not be installed into the cache venv: {exc}")


@pytest.fixture()
def coordinator(labgrid_client: Path, tmp_path: Path):
    """A real labgrid coordinator on a free loopback port, in its own directory."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path / "coordinator"
    workdir.mkdir()
    log = open(workdir / "log", "wb")
    proc = subprocess.Popen([str(labgrid_client.parent / "labgrid-coordinator"), "-l", f"127.0.0.1:{port}"],
                            cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    env = dict(os.environ, LG_COORDINATOR=address)
    deadline = time.monotonic() + 60
    while True:
        if subprocess.run([str(labgrid_client), "places"], env=env, capture_output=True).returncode == 0:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the coordinator did not start: {(workdir / 'log').read_text()[-2000:]}")
        time.sleep(0.3)
    yield address
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


LABGRID_HOLDER = textwrap.dedent("""
    import sys, time
    from harness.farm.inventory import parse_inventory
    from harness.farm.lease import LabgridLeases
    inv = parse_inventory(sys.argv[1])
    leases = LabgridLeases(inv, coordinator=sys.argv[2], client=sys.argv[3])
    lease = leases.acquire(sys.argv[4], timeout=30)
    print(lease.device, flush=True)
    time.sleep(600)
""")


def test_labgrid_leases_are_places_on_a_real_coordinator(coordinator: str, labgrid_client: Path) -> None:
    inv = parse_inventory(THREE_DEVICES)
    leases = LabgridLeases(inv, coordinator=coordinator, client=labgrid_client, poll_seconds=0.5)
    leases.setup_places()
    leases.setup_places()  # idempotent
    assert {"minrt-host-a", "minrt-host-b", "minrt-armv7-a"} <= set(leases.places())

    holder = subprocess.Popen([sys.executable, "-c", LABGRID_HOLDER, THREE_DEVICES, coordinator,
                               str(labgrid_client), "armv7-a"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "armv7-a"
        assert leases.holder("armv7-a") == f"{socket.gethostname()}/minrt-{holder.pid}"
        with pytest.raises(LeaseTimeout):
            leases.acquire("armv7-a", timeout=1)
        # The holder dies without releasing: the place is reclaimed because its pid is gone.
        holder.kill()
        holder.wait(timeout=10)
        with leases.acquire("armv7-a", timeout=10) as lease:
            assert lease.device == "armv7-a"
            assert leases.holder("armv7-a") == f"{socket.gethostname()}/minrt-{os.getpid()}"
        assert leases.holder("armv7-a") is None
    finally:
        holder.kill()
        holder.wait()


def test_labgrid_reservation_picks_a_free_place_and_reclaims_a_dead_holder(coordinator: str,
                                                                         labgrid_client: Path) -> None:
    inv = parse_inventory(THREE_DEVICES)
    leases = LabgridLeases(inv, coordinator=coordinator, client=labgrid_client, poll_seconds=0.5)
    leases.setup_places()
    holder = subprocess.Popen([sys.executable, "-c", LABGRID_HOLDER, THREE_DEVICES, coordinator,
                               str(labgrid_client), "x86_64"], stdout=subprocess.PIPE, text=True)
    try:
        held = holder.stdout.readline().strip()
        assert held in ("host-a", "host-b")
        assert len(leases.reservations()) == 1  # the holder's, in state "acquired"
        # The coordinator allocates the other x86_64 place to our reservation.
        first = leases.acquire("x86_64", timeout=10)
        assert first.device == ({"host-a", "host-b"} - {held}).pop()
        with pytest.raises(LeaseTimeout):
            leases.acquire("x86_64", timeout=1)
        holder.kill()
        holder.wait(timeout=10)
        # The dead holder's place and reservation are reclaimed; no reservation leaks.
        second = leases.acquire("x86_64", timeout=10)
        assert second.device == held
        first.release()
        second.release()
        assert leases.reservations() == []
        assert leases.holder("host-a") is None and leases.holder("host-b") is None
    finally:
        holder.kill()
        holder.wait()


def test_farm_with_labgrid_leases(coordinator: str, labgrid_client: Path, tmp_path: Path) -> None:
    inv = parse_inventory(THREE_DEVICES)
    leases = LabgridLeases(inv, coordinator=coordinator, client=labgrid_client, poll_seconds=0.5)
    leases.setup_places()
    store = ResultStore(tmp_path / "r.sqlite")
    report = run_farm(inv, _models(tmp_path, 3), job_runner=standin_job, store=store, batch="lg",
                      commit="c", leases=leases)
    assert report.passed and len(report.jobs) == 6
    _assert_one_job_per_device(report.jobs)
    assert len(store.runs(batch="lg")) == 6
    assert all(leases.holder(d.name) is None for d in inv.devices)  # all released
    assert leases.reservations() == []


def test_farm_with_an_unreachable_coordinator_records_clear_failures(labgrid_client: Path, tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inv = parse_inventory(THREE_DEVICES).select(targets=["qemu-armv7"])
    leases = LabgridLeases(inv, coordinator=f"127.0.0.1:{port}", client=labgrid_client)
    store = ResultStore(tmp_path / "r.sqlite")
    report = run_farm(inv, _models(tmp_path, 2), job_runner=standin_job, store=store, batch="x",
                      commit="c", leases=leases)
    assert not report.passed
    for job in report.jobs:
        assert job.attempts == []
        assert "no device could be leased" in job.result["error"]
        assert "Could not connect to coordinator" in job.result["error"]
    assert len(store.runs(batch="x")) == 2


def test_labgrid_place_locks_the_resource_a_real_exporter_offers(coordinator: str, labgrid_client: Path,
                                                                 tmp_path: Path) -> None:
    """A place that matches an exported resource (the board's SSH service, as a lab would
    describe it): acquiring the lease also locks that resource on the coordinator."""
    config = tmp_path / "exporter.yaml"
    config.write_text("armv7-a:\n  NetworkService:\n    address: 127.0.0.1\n    port: 2222\n    username: root\n")
    exporter = subprocess.Popen([str(labgrid_client.parent / "labgrid-exporter"), "-c", coordinator,
                                 "-n", "farmhost", "--hostname", "127.0.0.1", str(config)],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        inv = parse_inventory(THREE_DEVICES.replace(
            'name = "armv7-a"\ntarget = "qemu-armv7"',
            'name = "armv7-a"\ntarget = "qemu-armv7"\nlabgrid_matches = ["farmhost/armv7-a/NetworkService"]'))
        leases = LabgridLeases(inv, coordinator=coordinator, client=labgrid_client, poll_seconds=0.5)
        env = dict(os.environ, LG_COORDINATOR=coordinator)
        deadline = time.monotonic() + 60
        while "farmhost/armv7-a/NetworkService" not in subprocess.run(
                [str(labgrid_client), "resources"], env=env, capture_output=True, text=True).stdout:
            assert exporter.poll() is None and time.monotonic() < deadline, "the exporter did not register"
            time.sleep(0.3)
        leases.setup_places()
        with leases.acquire("qemu-armv7", timeout=10) as lease:
            assert lease.device == "armv7-a"
            show = subprocess.run([str(labgrid_client), "-p", "minrt-armv7-a", "show"], env=env,
                                  capture_output=True, text=True).stdout
            assert "farmhost/armv7-a/NetworkService" in show.split("acquired resources:")[1]
        assert leases.holder("armv7-a") is None
    finally:
        exporter.terminate()
        try:
            exporter.wait(timeout=10)
        except subprocess.TimeoutExpired:
            exporter.kill()
            exporter.wait()


def test_two_farms_cannot_share_an_out_directory(tmp_path, example_models):
    """A farm holds its --out directory for its whole run (the same lock `harness farm run`
    takes, held here by this process): a second farm given the same directory stops at once,
    naming the holder, instead of overwriting the first one's results and job logs. Once it
    is free, a farm runs there."""
    from harness.farm.scheduler import _own_out_dir

    out = tmp_path / "farm-out"
    env = {**os.environ, "MINRT_CACHE": str(tmp_path / "cache")}
    argv = [sys.executable, "-m", "harness.cli", "farm", "run", "--target", "x86_64", "--toolchain", "host",
            "--model", str(example_models["mlp"]), "--iters", "1", "--out", str(out),
            "--results", str(tmp_path / "r.sqlite")]
    with _own_out_dir(out):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"--out {out} is in use by another farm (pid {os.getpid()})" in proc.stderr
        assert list(out.glob("*/farm-results.json")) == [] and list(out.glob("*/logs")) == []
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (report,) = out.glob("*/farm-results.json")  # OUT/<batch>/
    assert json.loads(report.read_text())["jobs"] and f"{report.with_suffix('.xml')}" in proc.stdout
