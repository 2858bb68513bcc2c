"""The device farm: an inventory of devices and a run of models x targets across them.

The inventory (TOML) lists devices: each is a *resource* (name, target, how to reach it,
tags). `run_farm` is the scheduler: one thread per device picks a pending job whose target
has a free device, leases that device (harness.farm.lease), and runs the job in its own worker
process, so a job that crashes or is killed takes nothing else with it and its lease goes
with it. A job whose device failed (DeviceError, or a worker killed) is retried on another
device of the same target. Every attempt is recorded in the results store; JUnit XML and
JSON summaries are written at the end.

A job runner is a module-level function `runner(model: Path, device: Device, **options)
-> dict` (the RunResult JSON shape) that raises `DeviceFailure` when the device failed; it
is named by "module:function" so the worker process can import it. The default,
`run_model_on_device`, is `harness.run.run_on_target` on the device's target.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import importlib
import inspect
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from harness import REPO_ROOT
from harness.errors import DeviceError, HarnessError, exit_code_of_results
from harness.build.toolchain import DEFAULT_TOOLCHAIN
from harness.check.compare import mismatch_summary
from harness.formats.text import table
from harness.farm.inventory import Device, Inventory, device_target, inventory_of_targets, load_inventory
from harness.farm.health import STEPS, ProcessGroups, StepResult, check_device, run_step, step_main
from harness.farm.junit import write_junit
from harness.farm.lease import LabgridLeases, LeaseBackend, LeaseTimeout, LocalLeases
from harness.models.resolve import resolve_models
from harness.results.store import HEALTHY, QUARANTINED
from harness.transport import transport_kind
from harness.formats.text import json_text

log = logging.getLogger(__name__)

DEFAULT_RUNNER = "harness.farm.scheduler:run_model_on_device"
#: --keep: whose evidence files stay under <out>/jobs/ after the run
KEEP_CHOICES = ("failed", "all", "none")
#: Attempt.status of a job stopped because the farm was interrupted (Ctrl-C, SIGTERM).
INTERRUPTED = "interrupted"
#: Exit status of a worker whose device failed (EX_TEMPFAIL): the job may be retried elsewhere.
EXIT_DEVICE_FAILED = 75


def make_leases(inventory: Inventory, lock_dir: Path | None = None) -> LeaseBackend:
    if inventory.lease_backend == "labgrid":
        leases = LabgridLeases(inventory, coordinator=inventory.labgrid_coordinator or "")
        leases.setup_places()
        return leases
    return LocalLeases(inventory, lock_dir) if lock_dir else LocalLeases(inventory)


# -- job runners (run inside the worker process) -------------------------------------------


class DeviceFailure(DeviceError):
    """The device failed during a job; `result` keeps what was measured before it did."""

    def __init__(self, message: str, result: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.result = dict(result) if result else None


def run_model_on_device(model: Path, device: Device, *, iters: int = 10, seed: int = 0,
                        toolchain: str = DEFAULT_TOOLCHAIN, evidence_dir: Path | None = None,
                        input_shapes: Mapping[str, Sequence[int]] | None = None,
                        **checks: float) -> dict[str, Any]:
    """The default job: `harness.run.run_on_target` on the device (keeping the artifact, inputs
    and outputs in `evidence_dir`). `checks`: atol/rtol of the comparison; `input_shapes`
    fixes the model's dynamic inputs (--input-shape)."""
    from harness.run import run_on_target

    unknown = set(checks) - {"atol", "rtol"}
    if unknown:
        raise HarnessError(f"farm: unknown job option(s) {', '.join(sorted(unknown))}")
    result = run_on_target(model, device_target(device), toolchain=toolchain, iters=iters,
                           seed=seed, host=device.address, evidence_dir=evidence_dir,
                           input_shapes=input_shapes, **checks).to_dict()
    if result.get("error_kind") in _device_error_names():
        raise DeviceFailure(f"device {device.name}: {result['error']}", result)
    return result


def _device_error_names() -> set[str]:
    """DeviceError and every subclass of it defined so far (e.g. a transport's timeout)."""
    names, todo = set(), [DeviceError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


def resolve_runner(spec: str) -> Callable[..., dict[str, Any]]:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise HarnessError(f"job runner '{spec}' must be 'module:function'")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise HarnessError(f"job runner '{spec}' cannot be imported: {exc}") from None


def runner_spec(runner: str | Callable[..., Any]) -> str:
    if isinstance(runner, str):
        return runner
    if "<locals>" in runner.__qualname__:
        raise HarnessError(f"job runner {runner.__qualname__} must be a module-level function")
    return f"{runner.__module__}:{runner.__qualname__}"


def _worker_main(args: argparse.Namespace) -> int:
    """`harness farm _job`: run one job, write {"status", "result", "error"}."""
    device = Device.from_dict(json.loads(args.device))
    options = json.loads(args.options)
    out = Path(args.out)
    started = time.time()
    status, result, error = "ok", None, None
    try:
        runner = resolve_runner(args.runner)
        if args.evidence and "evidence_dir" in inspect.signature(runner).parameters:
            options["evidence_dir"] = Path(args.evidence)
        result = runner(Path(args.model), device, **options)
    except DeviceFailure as exc:
        status, result, error = "device-failed", exc.result, str(exc)
    except DeviceError as exc:
        status, result, error = "device-failed", getattr(exc, "result", None), str(exc)
    except HarnessError as exc:
        status, error = "error", str(exc)
    except Exception as exc:  # a bug in a runner: keep the job's record, say where
        status, error = "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
    payload = {"status": status, "result": result, "error": error,
               "started": started, "ended": time.time(), "pid": os.getpid()}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    tmp.replace(out)
    return EXIT_DEVICE_FAILED if status == "device-failed" else 0


# -- the scheduler ------------------------------------------------------------------------


@dataclass
class Attempt:
    device: str
    status: str  # "ok", "device-failed", "error", "interrupted"
    error: str | None
    started: float
    ended: float
    pid: int | None
    run_id: int | None = None
    log: str | None = None  # the worker's log file
    evidence: dict[str, str] = field(default_factory=dict)  # kept files: artifact, inputs, console...


@dataclass
class Job:
    model: Path
    target: str
    attempts: list[Attempt] = field(default_factory=list)
    result: dict[str, Any] | None = None
    waiting_since: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return f"{self.model.stem} on {self.target}"

    @property
    def failed_devices(self) -> set[str]:
        return {a.device for a in self.attempts if a.status == "device-failed"}

    @property
    def passed(self) -> bool:
        return bool(self.result and self.result.get("passed") and not self.result.get("error"))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.stem, "target": self.target, "passed": self.passed,
                "device": self.attempts[-1].device if self.attempts else None,
                "attempts": [dataclasses.asdict(a) for a in self.attempts], "result": self.result}


@dataclass
class FarmReport:
    batch: str
    commit: str | None
    jobs: list[Job]
    junit_path: Path | None = None
    json_path: Path | None = None
    interrupted: bool = False

    @property
    def passed(self) -> bool:
        return all(j.passed for j in self.jobs)

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "commit": self.commit, "passed": self.passed,
                "interrupted": self.interrupted, "jobs": [j.to_dict() for j in self.jobs]}


def _failure_result(job: Job, error: str) -> dict[str, Any]:
    return {"model": job.model.stem, "target": job.target, "transport": None, "passed": False,
            "outputs": [], "latency_us": {}, "sizes": {}, "error": error}


class _Farm:
    def __init__(self, inventory: Inventory, jobs: list[Job], leases: LeaseBackend, runner: str,
                 options: Mapping[str, Any], store: Any, batch: str, commit: str | None,
                 lease_timeout: float, job_timeout: float,
                 on_start: Callable[[Job, str, int], None] | None, work_dir: Path,
                 evidence_dir: Path | None, keep: str, check_health: bool):
        self.inventory = inventory
        self.evidence_dir = evidence_dir
        self.keep = keep
        self.check_health = check_health
        self.failures: dict[str, int] = {}  # device -> consecutive device failures
        self.quarantined: set[str] = set()
        if store is not None:
            # Health is recorded per device *key* (name and what the device is): a device of the
            # same name in another inventory has its own record.
            keys = {d.health_key: d.name for d in inventory.devices}
            for row in store.device_health():
                name = keys.get(row["key"])
                if name is None:
                    continue
                self.failures[name] = int(row["failures"])
                if row["state"] == QUARANTINED:
                    self.quarantined.add(name)
                    log.warning("farm: device %s is quarantined since %s (%s); `harness farm clear %s` "
                                "returns it", name, row["since"], row["reason"], name)
        self.pending = list(jobs)
        self.leases = leases
        self.runner = runner
        self.options = dict(options)
        self.store = store
        self.batch = batch
        self.commit = commit
        self.lease_timeout = lease_timeout
        self.job_timeout = job_timeout
        self.on_start = on_start
        self.work_dir = work_dir
        self.lock = threading.Lock()
        self.running = 0
        self.seq = 0
        # Every worker process started; set `groups.stopping` and they are stopped (Ctrl-C).
        self.groups = ProcessGroups()
        # Threads still looping. Thread.join() cut short by KeyboardInterrupt may return early
        # when called again (CPython), so the stop waits on this instead.
        self.threads_left = 0
        self.all_done = threading.Event()

    @property
    def stopping(self) -> bool:
        return self.groups.stopping.is_set()

    def _next(self):
        """A pending job and a lease on a device for it, or None; fails jobs that waited too long."""
        with self.lock:
            if self.stopping:
                return None
            tried: set[tuple[str, frozenset[str]]] = set()
            for job in list(self.pending):
                excluded = job.failed_devices | self.quarantined
                key = (job.target, frozenset(excluded))
                if key in tried:
                    continue  # one lease try per target and pass: a try may be a network call
                tried.add(key)
                no_device_left = not [d for d in self.inventory.for_target(job.target) if d.name not in excluded]
                if no_device_left:
                    self.pending.remove(job)
                    self._give_up(job, self._no_device_reason(job))
                    continue
                try:
                    lease = self.leases.acquire(job.target, timeout=0, exclude=excluded)
                except LeaseTimeout as exc:
                    if time.monotonic() - job.waiting_since > self.lease_timeout:
                        self.pending.remove(job)
                        self._give_up(job, str(exc))
                    continue
                except HarnessError as exc:  # the lease service itself failed (e.g. coordinator gone)
                    self.pending.remove(job)
                    self._give_up(job, f"no device could be leased: {exc}")
                    continue
                self.pending.remove(job)
                self.running += 1
                self.seq += 1
                return job, lease, self.seq
            return None

    def _no_device_reason(self, job: Job) -> str:
        devices = self.inventory.for_target(job.target)
        quarantined = [d.name for d in devices if d.name in self.quarantined]
        failed = [d.name for d in devices if d.name in job.failed_devices and d.name not in self.quarantined]
        parts = ([f"quarantined: {', '.join(quarantined)}"] if quarantined else []) + \
                ([f"failed this job: {', '.join(failed)}"] if failed else [])
        return f"no healthy {job.target} device is left ({'; '.join(parts)})"

    # -- device health ---------------------------------------------------------------------

    def _step(self, step: str, device: Device, evidence_dir: Path | None = None) -> StepResult:
        if step == "check" and not device.health_check and transport_kind(
                device_target(device).transport.kind).on_host:
            return check_device(device)  # this host: nothing that can hang, no process to spend
        return run_step(step, device, self.inventory.health_timeout, evidence_dir, self.groups)

    def _healthy(self, device: Device) -> bool:
        """Check the device before it takes a job; power-cycle it once if the check fails."""
        if not self.check_health:
            return True
        check = self._step("check", device)
        if check.ok or self.stopping:  # a check cut short by Ctrl-C says nothing of the device
            return check.ok
        log.warning("farm: device %s failed its health check: %s", device.name, check.detail)
        cycled = self._step("power-cycle", device)
        log.info("farm: device %s: %s", device.name, cycled.detail)
        again = self._step("check", device) if cycled.ok else None
        if again is not None and again.ok:
            if self.store is not None:
                with self.lock:
                    failures = self.failures.get(device.name, 0)
                self.store.set_device_health(device.health_key, target=device.target, state=HEALTHY,
                                             failures=failures,
                                             reason=f"recovered: {cycled.detail} after a failed health "
                                                    f"check ({check.detail})")
            return True
        after = f"; checked again: {again.detail}" if again is not None else ""
        self._device_failed(device, f"health check: {check.detail}; {cycled.detail}{after}")
        return False

    def _recover(self, device: Device, why: str, evidence: str | None = None) -> None:
        """After a job failed for a device reason: power-cycle and check before it runs again."""
        if self.stopping:
            return
        failures = self._device_failed(device, why, evidence)
        if not self.check_health or device.name in self.quarantined:
            return
        cycled = self._step("power-cycle", device)
        log.info("farm: device %s after a failed job (%d in a row): %s", device.name, failures, cycled.detail)
        check = self._step("check", device)
        if not check.ok:
            self._device_failed(device, f"health check after the failed job: {check.detail}")

    def _device_failed(self, device: Device, why: str, evidence: str | None = None) -> int:
        with self.lock:
            failures = self.failures.get(device.name, 0) + 1
            self.failures[device.name] = failures
            quarantine = failures >= self.inventory.quarantine_after
            if quarantine and device.name not in self.quarantined:
                self.quarantined.add(device.name)
                log.error("farm: device %s QUARANTINED after %d consecutive device failures (last: %s)",
                          device.name, failures, why)
        if self.store is not None:
            self.store.set_device_health(device.health_key, target=device.target,
                                         state=QUARANTINED if quarantine else HEALTHY,
                                         failures=failures, reason=why, evidence=evidence)
        return failures

    def _device_ok(self, device: Device) -> None:
        with self.lock:
            was = self.failures.get(device.name, 0)
            self.failures[device.name] = 0
        if self.store is not None and was:
            self.store.set_device_health(device.health_key, target=device.target, state=HEALTHY, failures=0,
                                         reason=f"passed a job after {was} device failure(s)")

    def _give_up(self, job: Job, why: str) -> None:
        if job.result is None:
            job.result = _failure_result(job, why)
            self._record(job, job.result, device=None)
        log.error("farm: %s: %s", job.name, why)

    def _record(self, job: Job, result: dict[str, Any], device: str | None) -> int | None:
        if self.store is None:
            return None
        return self.store.record(result, device=device, commit=self.commit, batch=self.batch)

    def loop(self) -> None:
        try:
            self._loop()
        finally:
            with self.lock:
                self.threads_left -= 1
                if self.threads_left == 0:
                    self.all_done.set()

    def _loop(self) -> None:
        while True:
            picked = self._next()
            if picked is None:
                with self.lock:
                    if self.stopping or (not self.pending and self.running == 0):
                        return
                    idle = not self.pending
                if idle:
                    return  # nothing left to start; running jobs finish in their own threads
                time.sleep(getattr(self.leases, "poll_seconds", 0.5))
                continue
            job, lease, seq = picked
            device = self.inventory.by_name[lease.device]
            healthy = True
            try:
                with lease:
                    healthy = self._healthy(device)
                    if healthy:
                        attempt, result = self._run(job, lease.device, seq)
                        if attempt.status == "device-failed":
                            self._recover(device, attempt.error or "device failed", attempt.evidence.get("dir"))
                        elif attempt.status == "ok":
                            self._device_ok(device)
            except Exception as exc:  # the farm's own machinery failed: keep the job's record
                log.exception("farm: %s: could not run the job", job.name)
                now = time.time()
                attempt = Attempt(lease.device, "error", f"farm: {type(exc).__name__}: {exc}", now, now, None)
                result = _failure_result(job, attempt.error or "")
            finally:
                # The lease is released only here, after its worker process is gone.
                with self.lock:
                    self.running -= 1
                    if not healthy:  # not an attempt: the job waits for a healthy device
                        self.pending.insert(0, job)
            if not healthy:
                continue
            attempt.run_id = self._record(job, result, attempt.device)
            job.attempts.append(attempt)
            job.result = result
            if attempt.status == "device-failed" and not self.stopping:
                with self.lock:
                    left = [d for d in self.inventory.for_target(job.target) if d.name not in job.failed_devices]
                    if left:
                        log.warning("farm: %s: device %s failed (%s); retrying on another %s device",
                                    job.name, attempt.device, attempt.error, job.target)
                        job.waiting_since = time.monotonic()
                        self.pending.insert(0, job)
                    else:
                        log.error("farm: %s: device %s failed and no other %s device is left",
                                  job.name, attempt.device, job.target)

    def _keep_evidence(self, attempt: Attempt, device: Device, evidence_dir: Path | None, passed: bool) -> None:
        """A failed attempt keeps its files and what the device can still tell (console,
        dmesg); a passing one's bulky files go unless --keep all."""
        if evidence_dir is None:
            return
        if self.keep == "none" or (passed and self.keep != "all"):
            shutil.rmtree(evidence_dir, ignore_errors=True)
            return
        if not passed:
            collected = self._step("evidence", device, evidence_dir)
            if collected.ok:
                attempt.evidence.update(json.loads(collected.detail))
            else:
                log.warning("farm: device %s: could not collect evidence: %s", device.name, collected.detail)
        if evidence_dir.is_dir():
            attempt.evidence["dir"] = str(evidence_dir)

    def _run(self, job: Job, device_name: str, seq: int) -> tuple[Attempt, dict[str, Any]]:
        device = self.inventory.by_name[device_name]
        stem = f"{seq:03d}-{job.model.stem}-{job.target}-{device.name}"
        out = self.work_dir / f"{stem}.json"
        argv = [sys.executable, "-m", "harness.cli", "farm", "_job", "--runner", self.runner,
                "--model", str(job.model), "--device", json.dumps(device.to_dict()),
                "--options", json.dumps(self.options), "--out", str(out)]
        evidence_dir = self.evidence_dir / stem if self.evidence_dir is not None else None
        if evidence_dir is not None:
            argv += ["--evidence", str(evidence_dir)]
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            argv.append("-v")  # `farm run -v`: the job logs get the workers' debug lines too
        env = dict(os.environ)
        # The worker imports the job runner from wherever this process could (a test module too).
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in sys.path if p])
        log.info("farm: %s: starting on device %s", job.name, device.name)
        started = time.time()
        log_path = self.work_dir / f"{stem}.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            self.groups.add(proc)
            try:
                if self.on_start:
                    self.on_start(job, device.name, proc.pid)
                try:
                    code = proc.wait(timeout=self.job_timeout)
                except subprocess.TimeoutExpired:
                    code = None
            finally:
                # The worker's whole group goes (what the runner started too) before the lease does.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
                self.groups.remove(proc)
        ended = time.time()
        payload = json.loads(out.read_text()) if out.exists() else None
        if payload is None and self.stopping:
            why = f"farm interrupted: the job was stopped on device {device.name}"
            attempt = Attempt(device.name, INTERRUPTED, why, started, ended, proc.pid, log=str(log_path))
            return attempt, {**_failure_result(job, why), "error_kind": "Interrupted"}
        if payload is not None:
            status, error = payload["status"], payload["error"]
            result = payload["result"] or _failure_result(job, error or "no result")
            if error and not result.get("error"):
                result = {**result, "error": error, "passed": False}
            attempt = Attempt(device.name, status, error, payload["started"], payload["ended"], proc.pid)
        else:
            # The worker died without a word: killed, or out of memory. Its device is suspect.
            if code is None:
                why = f"device {device.name}: job did not finish within {self.job_timeout:g} s"
            elif code < 0:
                why = f"device {device.name}: job process killed by {signal.Signals(-code).name}"
            else:
                tail = log_path.read_text(errors="replace")[-1000:]
                why = f"device {device.name}: job process exited {code} without a result: {tail}"
            result = _failure_result(job, why)
            attempt = Attempt(device.name, "device-failed", why, started, ended, proc.pid)
        result.setdefault("model", job.model.stem)
        result.setdefault("target", job.target)
        attempt.log = str(log_path)
        self._keep_evidence(attempt, device, evidence_dir, passed=bool(result.get("passed") and not result.get("error")))
        if result.get("passed") and not result.get("error"):
            log.info("farm: %s on device %s: PASS", job.name, device.name)
        else:
            log.info("farm: %s on device %s: FAIL (%s); log: %s", job.name, device.name, attempt.status, log_path)
        return attempt, result


def run_farm(
    inventory: Inventory,
    models: Sequence[Path],
    targets: Sequence[str] | None = None,
    *,
    job_runner: str | Callable[..., dict[str, Any]] = DEFAULT_RUNNER,
    runner_options: Mapping[str, Any] | None = None,
    leases: LeaseBackend | None = None,
    store: Any = None,
    batch: str | None = None,
    commit: str | None = None,
    out_dir: Path | None = None,
    lease_timeout: float = 3600.0,
    job_timeout: float = 1800.0,
    on_start: Callable[[Job, str, int], None] | None = None,
    keep: str = "failed",
    check_health: bool = True,
) -> FarmReport:
    """Run every model on every target (default: the inventory's targets) across the devices.

    One job per device at a time (leases), as many jobs at once as there are devices. Each
    attempt goes to `store` (a ResultStore) under `batch`; `out_dir/<batch>/` gets
    `farm-results.xml` (JUnit) and `farm-results.json`, each attempt's worker log under
    `logs/`, and under `jobs/` each failed attempt's evidence (its
    artifact, inputs, outputs, the device's console and dmesg); `keep` says whose files stay:
    "failed" (default), "all" or "none". Before a device takes a job its health is checked
    (`check_health`); a device failing `inventory.quarantine_after` times in a row is
    quarantined (recorded in `store`) until `harness farm clear`. `on_start(job, device, pid)`
    is told each worker's pid.
    """
    if keep not in KEEP_CHOICES:
        raise HarnessError(f"farm: keep must be one of {', '.join(KEEP_CHOICES)}, got '{keep}'")
    targets = list(targets) if targets else inventory.targets
    for t in targets:
        if not inventory.for_target(t):
            raise HarnessError(f"farm: no device of target '{t}' in the inventory "
                               f"({inventory.path or 'built from targets'})")
    if not models:
        raise HarnessError("farm: no models to run")
    resolve_runner(runner_spec(job_runner))  # a bad --runner is bad input, found before any job
    leases = leases or make_leases(inventory)
    if commit is None:
        from harness.run import git_commit

        commit = git_commit()
    batch = batch or time.strftime("farm-%Y%m%dT%H%M%SZ", time.gmtime())
    batch_dir = None
    with contextlib.ExitStack() as stack:
        if out_dir is not None:
            # absolute: the report's evidence paths are read later from another directory (the dashboard)
            out_dir = Path(out_dir).resolve()
            stack.enter_context(_own_out_dir(out_dir))
            batch_dir = _batch_dir(out_dir, batch)
        return _run_jobs(inventory, models, targets, job_runner, runner_options, leases, store, batch, commit,
                         batch_dir, lease_timeout, job_timeout, on_start, keep, check_health)


def _batch_dir(out_dir: Path, batch: str) -> Path:
    """The directory of one batch's report, logs and evidence under --out: a farm run again with
    the same --out (the default farm-out) keeps every earlier batch's files beside the new
    ones. A batch whose report is already there is refused rather than overwritten."""
    if batch in ("", ".", "..") or "/" in batch or "\0" in batch:
        raise HarnessError(f"farm: batch name '{batch}' cannot name a directory under --out {out_dir}")
    batch_dir = out_dir / batch
    if (batch_dir / "farm-results.json").exists():
        raise HarnessError(f"farm: --out {out_dir} already holds batch {batch}'s report ({batch_dir}); "
                           "give another --batch or --out")
    return batch_dir


def _tolerances_given(args: argparse.Namespace) -> dict[str, float]:
    """--atol/--rtol as `harness run` takes them, passed to the job runner only when given, so a
    custom --runner that compares otherwise is not handed options it does not know."""
    from harness.check.compare import DEFAULT_ATOL, DEFAULT_RTOL

    given = {"atol": args.atol, "rtol": args.rtol}
    return {k: v for k, v in given.items() if v != {"atol": DEFAULT_ATOL, "rtol": DEFAULT_RTOL}[k]}


@contextlib.contextmanager
def _own_out_dir(out_dir: Path) -> Iterator[None]:
    """Hold `out_dir` for one farm: a second farm given the same directory stops at once with
    the first one's pid, instead of both overwriting each other's results and job logs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = out_dir / ".farm.lock"
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise HarnessError(f"farm: --out {out_dir} is in use by another farm (pid {holder}); "
                               "give each farm its own --out directory") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_jobs(inventory: Inventory, models: Sequence[Path | str], targets: list[str], job_runner: str | Callable[..., dict[str, Any]],
              runner_options: Mapping[str, Any] | None, leases: LeaseBackend, store: Any, batch: str, commit: str,
              out_dir: Path | None, lease_timeout: float, job_timeout: float,
              on_start: Callable[[Job, str, int], None] | None, keep: str, check_health: bool) -> FarmReport:
    jobs = [Job(Path(m), t) for m in models for t in targets]
    devices = [d for d in inventory.devices if d.target in targets]
    log.info("farm: %d job(s) (%d model(s) x %d target(s)) on %d device(s), batch %s",
             len(jobs), len(models), len(targets), len(devices), batch)
    with tempfile.TemporaryDirectory(prefix="minrt-farm-") as tmp:
        # Each attempt's worker log is kept in out_dir/logs/ (in a temporary dir without out_dir).
        work_dir = Path(out_dir) / "logs" if out_dir is not None else Path(tmp)
        work_dir.mkdir(parents=True, exist_ok=True)
        evidence_dir = Path(out_dir) / "jobs" if out_dir is not None else None
        farm = _Farm(inventory, jobs, leases, runner_spec(job_runner), runner_options or {}, store,
                     batch, commit, lease_timeout, job_timeout, on_start, work_dir,
                     evidence_dir, keep, check_health)
        threads = [threading.Thread(target=farm.loop, name=f"farm-{i}", daemon=True)
                   for i in range(len(devices))]
        # A thread leaves once nothing is pending; a retry is queued by the thread that ran
        # the failed attempt, which then goes on looping, so no retry is left behind.
        interrupted = False
        farm.threads_left = len(threads)
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        except KeyboardInterrupt:
            interrupted = True
            _stop_farm(farm, threads)
    for job in jobs:
        if job.result is None and interrupted:
            job.result = {**_failure_result(job, "farm interrupted before the job started"),
                          "error_kind": "Interrupted"}
            farm._record(job, job.result, device=None)
        elif job.result is None:  # only if a scheduler thread died: say so rather than lose the job
            job.result = _failure_result(job, "farm: the job was never run")
    report = FarmReport(batch=batch, commit=commit, jobs=jobs, interrupted=interrupted)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        report.json_path = out_dir / "farm-results.json"
        report.json_path.write_text(json_text(report.to_dict(), indent=2))
        report.junit_path = out_dir / "farm-results.xml"
        write_junit(report, report.junit_path)
        if store is not None:
            store.record_farm_report(batch, report.json_path)
    passed = sum(j.passed for j in jobs)
    log.info("farm: %d/%d job(s) passed", passed, len(jobs))
    if interrupted:
        raise FarmInterrupted(report)
    return report


class FarmInterrupted(KeyboardInterrupt):
    """The farm was interrupted; every worker it started is stopped and `report` says what
    each job did (stopped ones have status "interrupted")."""

    def __init__(self, report: FarmReport):
        super().__init__("farm interrupted")
        self.report = report


def _stop_farm(farm: _Farm, threads: Sequence[threading.Thread]) -> None:
    """Stop every worker (SIGTERM, then SIGKILL), then let each scheduler thread record its
    attempt and release its lease. A second Ctrl-C meanwhile is ignored: it would leave
    workers running on devices whose leases are then gone; so is a SIGTERM."""
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        log.warning("farm: interrupted; stopping the running jobs")
        stopped = farm.groups.stop_all()
        with farm.lock:  # threads the interrupt kept from starting will never count down
            farm.threads_left -= sum(1 for t in threads if t.ident is None)
            if farm.threads_left <= 0:
                farm.all_done.set()
        farm.all_done.wait()
        log.warning("farm: stopped %d worker process(es); every lease released", len(stopped))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- command line -------------------------------------------------------------------------


def configure_parser(p: argparse.ArgumentParser, options: Any) -> None:
    """`harness farm run ...`; `p` is the `farm` sub-command's parser, `options` the CLI's
    shared option definitions (harness.cli_options: models, targets, toolchain, input shapes,
    exit codes), so the farm names things as every other command does."""
    sub = p.add_subparsers(dest="farm_command", required=True, metavar="COMMAND")
    r = options.command_parser(sub, "run", "run models x targets in parallel across the farm's devices",
                               one="an output did not match",
                               zero="every job passed",
                               note="the worst code of all jobs wins; 3 also when no healthy device was left")
    options.add_models(r)
    r.add_argument("--inventory", help="farm inventory TOML (default: one device per --target)")
    options.add_target(r, repeatable=True)
    r.add_argument("--tag", action="append", help="only devices with this tag (repeatable)")
    r.add_argument("--results", help="results store (default: <cache>/results.sqlite)")
    r.add_argument("--out", default="farm-out",
                   help="directory for the farm's reports: each batch's farm-results.xml/.json, logs and evidence "
                        "go to OUT/BATCH/ (default farm-out)")
    r.add_argument("--batch", help="batch name in the store (default: farm-<UTC time>)")
    options.add_iters(r)
    options.add_toolchain(r)
    options.add_input_shapes(r)
    options.add_tolerances(r)
    r.add_argument("--runner", default=DEFAULT_RUNNER,
                   help=f"job runner 'module:function' (default {DEFAULT_RUNNER})")
    r.add_argument("--lease-timeout", type=options.positive_float, default=3600.0,
                   help="seconds to wait for a free device before a job gives up (default 3600)")
    r.add_argument("--job-timeout", type=options.positive_float, default=1800.0,
                   help="seconds one job may take on a device before it is stopped (default 1800)")
    r.add_argument("--keep", choices=KEEP_CHOICES, default="failed",
                   help="whose evidence (artifact, inputs, outputs, console, dmesg) stays under OUT/BATCH/jobs "
                        "(default: failed jobs')")
    r.add_argument("--no-health-check", action="store_true",
                   help="give devices jobs without checking them first (no recovery, no quarantine)")
    r.set_defaults(func=command)
    j = sub.add_parser("_job", help=argparse.SUPPRESS)
    for name in ("--runner", "--model", "--device", "--options", "--out"):
        j.add_argument(name, required=True)
    j.add_argument("--evidence", help="directory for the job's evidence files")
    j.set_defaults(func=_worker_main)
    d = sub.add_parser("_device", help=argparse.SUPPRESS)
    d.add_argument("step", choices=STEPS)
    d.add_argument("--device", required=True)
    d.add_argument("--timeout", type=float, required=True)
    d.add_argument("--evidence")
    d.set_defaults(func=step_main)
    c = options.command_parser(sub, "clear", "return quarantined device(s) to service", one="a device was not quarantined")
    c.add_argument("device", nargs="+", help="device name(s) from the inventory")
    c.add_argument("--results", help="results store (default: <cache>/results.sqlite)")
    c.set_defaults(func=clear_command)
    h = options.command_parser(sub, "health", "each device's recorded health (quarantined ones first)")
    h.add_argument("--results", help="results store (default: <cache>/results.sqlite)")
    h.add_argument("--json", action="store_true", help="print the health records as JSON")
    h.set_defaults(func=health_command)


def clear_command(args: argparse.Namespace) -> int:
    from harness.results.store import ResultStore, default_store_path

    store = ResultStore(args.results or default_store_path())
    status = 0
    for name in args.device:
        if store.clear_device(name):
            print(f"farm: device {name} returned to service")
        else:
            known = {r["device"]: r["state"] for r in store.device_health()}
            print(f"farm: device {name} is not quarantined ({known.get(name, 'no record')})", file=sys.stderr)
            status = 1
    return status


def health_command(args: argparse.Namespace) -> int:
    from harness.results.store import ResultStore, default_store_path

    rows = ResultStore(args.results or default_store_path()).device_health()
    rows.sort(key=lambda r: (r["state"] != QUARANTINED, r["device"]))
    if args.json:
        print(json_text(rows, indent=2))
        return 0
    if rows:
        print(table(["device", "state", "failures", "since", "reason"],
                    [[r["device"], r["state"], r["failures"], r["since"], r["reason"] or ""] for r in rows], right=(2,)))
    if not rows:
        print("farm: no device health recorded yet")
    return 0


def command(args: argparse.Namespace) -> int:
    from harness.results.store import ResultStore, default_store_path

    if args.inventory:
        inventory = load_inventory(args.inventory)
    elif args.target:
        inventory = inventory_of_targets(args.target)
    else:
        raise HarnessError("farm run: give --inventory FILE or at least one --target")
    inventory = inventory.select(args.target, args.tag)
    store = ResultStore(args.results or default_store_path())
    try:
        report = run_farm(inventory, resolve_models(args.model), args.target, job_runner=args.runner,
                          runner_options={"iters": args.iters, "toolchain": args.toolchain,
                                          **({"input_shapes": args.input_shapes} if args.input_shapes else {}),
                                          **_tolerances_given(args)},
                          store=store, batch=args.batch, out_dir=Path(args.out),
                          lease_timeout=args.lease_timeout, job_timeout=args.job_timeout,
                          keep=args.keep, check_health=not args.no_health_check)
    except FarmInterrupted as stopped:
        _print_report(stopped.report, store)
        raise
    _print_report(report, store)
    return exit_code_of_results([job.result or {} for job in report.jobs])


def _print_report(report: FarmReport, store: Any) -> None:
    rows = []
    for job in report.jobs:
        tries = " -> ".join(f"{a.device}:{a.status}" for a in job.attempts) or "not run"
        err = (job.result or {}).get("error") or mismatch_summary((job.result or {}).get("outputs") or [])
        rows.append(["PASS" if job.passed else "FAIL", job.model.stem, job.target, tries,
                     err.splitlines()[0][:120] if err else ""])
    if rows:
        print(table(["result", "model", "target", "attempts (device:status)", "error"], rows))
    print(f"farm: {sum(j.passed for j in report.jobs)}/{len(report.jobs)} passed; batch {report.batch}; "
          f"results in {store.path}, {report.junit_path}, {report.json_path}")
