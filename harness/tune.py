"""`harness tune`: the kernels of one or several models tuned in one pass, within a wall-clock
budget, every candidate measured by minrt on the device.

Kernels of the same structure (in one model or across models) are one task, weighted by FLOPs
times uses; the budget is shared by weight among the kernels it can give at least
MIN_TASK_SECONDS, heaviest first, and each search stops when its share ends. A convolution's
candidates are the default rule's neighbours (other register tiles, the other weight packing:
harness.compile.schedule.conv_tile_variants), recorded as their schedules' traces; other kernels
get TVM's search (tvm.s_tir.meta_schedule: its design space, evolutionary search and cost
model). Building and timing are ours. A candidate kernel is compiled by TVM into an
object, linked with minrt-run by the target's toolchain into a one-kernel model (the kernel
alone as graph.json, seeded inputs and weights), put on the device through the target's
transport (local, qemu-user, SSH, serial) and timed there by minrt-run. So what is measured
is exactly what `harness run` will run: same runtime, same compiler, same device.

Records go to a JSON database per target in the cache
(`<cache>/tuning/<target>-<hash of its TVM target>/`), keyed by meta_schedule's structural
workload hash; `harness compile` looks each kernel up there (see
harness.compile.kernels.schedule_model_kernels). `MINRT_NO_TUNING=1` makes compile ignore it.
The database can be exported as one file and imported (merged) elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from harness.cache import cache_dir
from harness.errors import EXIT_SIGNAL_BASE, HarnessError
from harness.config.targets import Target
from harness.formats.text import duration, table

log = logging.getLogger(__name__)

from harness.compile.native_log import native_stderr_to_log
from harness.compile.kernels import default_schedule
from harness.compile.tuning_db import TuningDatabase, workload


# ---------------------------------------------------------------------------------------------
# The search: meta_schedule with a builder and a runner that go through minrt


class TuningError(HarnessError):
    """Tuning cannot go on (the device is gone, the time is up before anything ran)."""


class TimeUp(Exception):
    """A kernel's share of the time budget is spent: its search stops before the next batch
    (meta_schedule's loop has no deadline of its own; the records measured so far stay)."""


class Stopped(Exception):
    """SIGINT or SIGTERM arrived: the search stops at its next step (the records so far stay)."""


#: How long tuning may take to wind down after SIGINT/SIGTERM before the process exits at once.
STOP_GRACE_S = 20.0


class StopOnSignal:
    """SIGINT and SIGTERM during tuning, handled outside TVM.

    The CLI turns both into a KeyboardInterrupt raised wherever the main thread is. Inside
    meta_schedule that is in the middle of C++ (a Python schedule rule or callback called
    from it): the exception then crossed a noexcept frame and TVM aborted (a segfault, exit
    -11, no message), or waited in C++ for the next Python call. Here the signal only wakes
    a watcher thread (signal.set_wakeup_fd: the C-level handler writes the signal's number
    to a pipe at once, whatever the main thread is doing), which kills the candidate being
    built or run (compiler, minrt-run, qemu: this process's children) and sets a flag the
    builder, the runner and the task loop check, so the search ends the way a spent time
    budget ends it. While the main thread waits for a candidate on the device (the harness'
    own Python: SSH, serial), the signal interrupts that wait as on `harness run`. The signal
    is raised again once tuning is out of TVM, so the caller's handler (the CLI's:
    "interrupted", exit 128 + signal) sees it. Should the search not return within `grace`
    seconds, or a second signal come, the watcher says so and exits the process with that
    code: the records committed so far are already in the database files."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, database: Path, grace: float = STOP_GRACE_S) -> None:
        self.database, self.grace = database, grace
        self.signum: int | None = None
        self._interruptible = False
        self._previous: dict[int, Any] = {}
        self._pipe: tuple[int, int] | None = None
        self._wakeup_fd = -1

    def check(self) -> None:
        if self.signum is not None:
            raise Stopped(signal.Signals(self.signum).name)

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread receives signals (and may set handlers)
        self._pipe = os.pipe()
        os.set_blocking(self._pipe[1], False)
        self._wakeup_fd = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
        for sig in self.SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                self._previous[sig] = signal.signal(sig, self._noted)
        threading.Thread(target=self._watch, name="tune-stop", daemon=True).start()
        return self

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A stretch of the harness' own Python (no TVM frame above it but the runner's)
        that the signal may interrupt with KeyboardInterrupt, turned into Stopped here."""
        self.check()
        self._interruptible = True
        try:
            yield
        except KeyboardInterrupt:
            if self.signum is None:
                raise
            raise Stopped(signal.Signals(self.signum).name) from None
        finally:
            self._interruptible = False

    def _noted(self, signum: int, frame: Any) -> None:
        self.signum = signum  # the watcher has usually set it already
        if self._interruptible:
            raise KeyboardInterrupt

    def _signals_in(self, read_end: int, timeout: float | None) -> list[int] | None:
        """The SIGINT/SIGTERM numbers the wakeup pipe brought within `timeout` ([] when none
        came), None once the pipe is closed (tuning is over)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not select.select([read_end], [], [], left)[0]:
                return []
            data = os.read(read_end, 64)
            if not data:
                return None
            signums = [b for b in data if b in self._previous]
            if signums:
                return signums

    def _watch(self) -> None:
        read_end = self._pipe[0]
        try:
            first = self._signals_in(read_end, None)
            if first is None:
                return
            self.signum = first[0]
            name = signal.Signals(self.signum).name
            log.warning("tune: %s: stopping; the records measured so far stay in %s", name, self.database)
            _kill_candidates()
            more = self._signals_in(read_end, self.grace)
            if more is None:  # tuning wound down in time
                return
            why = f"a second {signal.Signals(more[0]).name}" if more else f"no stop within {self.grace:.0f} s of {name}"
            log.error("tune: %s; exiting now (records kept in %s)", why, self.database)
            os._exit(EXIT_SIGNAL_BASE + self.signum)
        finally:
            os.close(read_end)

    def __exit__(self, *exc: object) -> None:
        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._wakeup_fd)
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        os.close(self._pipe[1])  # ends the watcher
        if self.signum is not None:
            signal.raise_signal(self.signum)  # to the caller's handler, now that TVM is not running


def _kill_candidates() -> None:
    """SIGKILL this process's children in its own process group: the candidate being compiled
    or run (compiler, minrt-run, qemu-user). An emulated board started by this process runs in
    a session of its own and is meant to outlive it: it is left alone."""
    group = os.getpgrp()
    for task in Path("/proc/self/task").iterdir():
        try:
            pids = [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
        for pid in pids:
            with contextlib.suppress(OSError):
                if os.getpgid(pid) == group:
                    os.kill(pid, signal.SIGKILL)


@dataclass
class TaskResult:
    name: str
    trials: int  # measured in this session
    records: int  # in the database for this workload, after the session
    best_us: float | None
    default_us: float | None = None
    skipped: str | None = None
    uses: int = 1  # kernels of the models tuned that have this workload
    seconds: float = 0.0  # spent on this kernel in this session (default measurement and search)


@dataclass
class TuneReport:
    model: str  # the models tuned, comma-separated
    target: str
    database: Path
    tasks: list[TaskResult]
    seconds: float
    budget: float | None = None  # the time budget, seconds

    def table(self) -> str:
        """One row per kernel tuned or skipped for a reason of its own; the kernels left without
        time or trials are one line per reason."""
        light = [t for t in self.tasks if t.skipped in UNFUNDED]
        rows = [[t.name, t.uses, t.trials, t.records, duration(t.default_us), duration(t.best_us),
                 f"{t.seconds:.0f} s", _note(t)] for t in self.tasks if t not in light]
        budget = f" (budget {self.budget:.0f} s)" if self.budget else ""
        lines = [table(["kernel", "uses", "trials", "records", "default", "best", "time", "note"], rows,
                       right=(1, 2, 3, 4, 5, 6)),
                 *(f"{n} kernel(s) not searched: {why}" for why in UNFUNDED
                   if (n := sum(1 for t in light if t.skipped == why))),
                 (f"{sum(t.trials for t in self.tasks)} trials in {self.seconds:.0f} s{budget}; "
                  f"records in {self.database}")]
        return "\n".join(lines)


#: Why a kernel got no search for want of time or trials (TuneReport.table counts these, one
#: line per reason: with a budget on large models they are hundreds).
UNFUNDED = ("too light for the time budget", "no trials in the budget", "time budget")


def _note(task: TaskResult) -> str:
    """Why a kernel's row reads as it does: compile uses a record only when it beat the default
    schedule on the device (harness.compile.kernels), which the bare figures do not say."""
    if task.skipped:
        return task.skipped
    if task.best_us is not None and task.default_us is not None and task.best_us >= task.default_us:
        return "default schedule kept: no record beat it"
    return ""


def kernel_graph(name: str, func: Any, n_outputs: int) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """A graph.json that runs one kernel: every input argument is a graph input, the last
    `n_outputs` arguments are the graph's outputs. Returns (graph, input specs, output specs)."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    from harness.compile.graph import Graph, GraphNode
    from harness.compile.plan import graph_json, plan_storage

    infos = [(tuple(int(d) for d in a.shape), str(a.dtype)) for a in ArgInfo.from_prim_func(func)]
    n_in = len(infos) - n_outputs
    nodes = [GraphNode(op="null", name=f"arg{i}", outputs=[infos[i]]) for i in range(n_in)]
    nodes.append(GraphNode(op="tvm_op", name=name, inputs=[(i, 0) for i in range(n_in)], func_name=name,
                           outputs=infos[n_in:]))
    graph = Graph(nodes=nodes, heads=[(n_in, i) for i in range(n_outputs)], input_nids=list(range(n_in)),
                  params={}, kernels={name: func})
    specs_in = [{"name": f"arg{i}", "shape": list(infos[i][0]), "dtype": infos[i][1]} for i in range(n_in)]
    specs_out = [{"name": f"out{i}", "shape": list(s), "dtype": d} for i, (s, d) in enumerate(infos[n_in:])]
    return graph_json(graph, plan_storage(graph)), specs_in, specs_out


#: A candidate is cut when it runs this many times as long as the default schedule (all its
#: iterations), plus CUT_SLACK_S for starting the runner and loading the kernel.
SLOWER_THAN_DEFAULT_CUT = 20.0
CUT_SLACK_S = 2.0


class _Session:
    """What the builder and the runner of one tuning task share: the device, the toolchain,
    the kernel's name and arity, the deadline, and a scratch directory."""

    def __init__(self, target: Target, ktarget: Any, toolchain: Any, device: Any, work: Path,
                 deadline: float, iters: int, run_timeout: float, threads: int | None = None,
                 signals: StopOnSignal | None = None) -> None:
        self.target, self.ktarget, self.toolchain, self.device = target, ktarget, toolchain, device
        self.work, self.deadline, self.iters, self.run_timeout = work, deadline, iters, run_timeout
        self.threads = threads  # for the kernels' parallel loops (None: the device's cores)
        self.kernel_name = "kernel"
        self.n_outputs = 1
        self.counter = 0
        self.device_failures = 0
        self.trials = 0
        self.best_us: float | None = None
        self.default_us: float | None = None
        # Why the builder or the runner ended the search: meta_schedule passes their exceptions
        # on as a plain RuntimeError, so tune_models looks here for what it was.
        self.stop: Exception | None = None
        self.signals = signals

    def check_stop(self) -> None:
        """Raise Stopped (and remember it as why the search ended) once SIGINT/SIGTERM arrived."""
        if self.signals is not None and self.signals.signum is not None:
            self.stop = Stopped(signal.Signals(self.signals.signum).name)
            raise self.stop

    def _cc_command(self) -> list[str]:
        """The runner's compiler and flags (harness.build.runner.runner_command's, without files)."""
        from harness.build.runner import BUILD_FLAGS, RUNTIME_DIR, THREAD_FLAGS

        defines = ["-DMINRT_PROFILE"] + (["-DMINRT_RUN_SERIAL"] if (RUNTIME_DIR / "runner" / "serial.c").exists() else [])
        return [self.target.cc.tool("gcc"), *self.target.cc.cflags, *BUILD_FLAGS, *THREAD_FLAGS, *defines,
                f"-I{RUNTIME_DIR / 'include'}", f"-I{RUNTIME_DIR / 'runner'}", f"-I{RUNTIME_DIR / 'proto'}"]

    def _runtime_objects(self) -> list[Path]:
        """minrt and the runner compiled once per session; each candidate only links."""
        from harness.build.runner import runner_sources, runtime_sources

        if getattr(self, "_objects", None) is None:
            rt = (self.work / "runtime").resolve()
            rt.mkdir(parents=True, exist_ok=True)
            sources = runtime_sources() + runner_sources()
            self.toolchain.run([*self._cc_command(), "-c", *(str(p) for p in sources)], cwd=rt)
            self._objects = [rt / (p.stem + ".o") for p in sources]
        return self._objects

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def candidate_timeout(self) -> tuple[float, bool]:
        """How long one candidate may run, and whether that is a cut shorter than the device's
        run timeout: a candidate far slower than the default schedule cannot win (on a large
        kernel a bad one would take the whole run timeout), nor one past the time share."""
        limit, cut = self.run_timeout, False
        if self.default_us is not None:
            slow = CUT_SLACK_S + SLOWER_THAN_DEFAULT_CUT * self.default_us * 1e-6 * self.iters
            if slow < limit:
                limit, cut = slow, True
        if self.time_left() < limit:
            limit, cut = max(1.0, self.time_left()), True
        return limit, cut

    def build(self, mod: Any) -> Path:
        """Compile one candidate and link it with minrt-run; returns the candidate's directory."""
        import tvm

        from harness.formats.artifact import GRAPH_JSON, KERNELS_OBJ, METADATA_JSON, PARAMS_BIN, Artifact
        from harness.compile.kernels import compile_kernels
        from harness.formats.signatures import SIGNATURES_C, write_signatures

        self.check_stop()
        self.counter += 1
        out = self.work / f"c{self.counter:05d}"
        out.mkdir(parents=True, exist_ok=True)
        func = mod["main"]
        t0 = time.monotonic()
        workspace = compile_kernels({self.kernel_name: func}, self.ktarget, out / KERNELS_OBJ)
        write_signatures({self.kernel_name: func}, out / SIGNATURES_C)  # minrt checks every node
        graph, specs_in, specs_out = kernel_graph(self.kernel_name, func, self.n_outputs)
        (out / GRAPH_JSON).write_text(json.dumps(graph, separators=(",", ":")))
        from harness.formats import tensorfile

        tensorfile.save(out / PARAMS_BIN, {})
        metadata = {"model": self.kernel_name, "model_sha256": "", "target": self.target.name,
                    "tvm_target": self.target.tvm_target, "tvm_version": tvm.__version__, "abi": "tvm-ffi",
                    "system_lib_prefix": "", "kernels": [self.kernel_name], "workspace_bytes": workspace,
                    "inputs": specs_in, "outputs": specs_out}
        (out / METADATA_JSON).write_text(json.dumps(metadata))
        Artifact.open(out)  # the same checks a compiled model gets
        t1 = time.monotonic()
        self.toolchain.run([*self._cc_command(), *(str(o) for o in self._runtime_objects()),
                            str((out / KERNELS_OBJ).resolve()), str((out / SIGNATURES_C).resolve()),
                            *self.target.cc.ldflags, "-lm",
                            "-o", str((out / "minrt-run").resolve())], cwd=out)
        log.debug("candidate %d: TVM %.2f s, link %.2f s", self.counter, t1 - t0, time.monotonic() - t1)
        return out

    def run(self, directory: Path) -> float:
        """Time one candidate on the device: the fastest of `iters` runs, in seconds."""
        from harness.errors import DeviceError, RunnerError
        from harness.formats import tensorfile
        from harness.formats.artifact import Artifact
        from harness.run import execute, random_inputs

        self.check_stop()
        artifact = Artifact.open(directory)
        inputs = random_inputs(artifact.inputs, seed=0)
        blob = tensorfile.dumps({s["name"]: inputs[s["name"]] for s in artifact.inputs})
        timeout, cut = self.candidate_timeout()
        t0 = time.monotonic()
        try:
            with self.signals.interruptible() if self.signals is not None else contextlib.nullcontext():
                _, timing = execute(self.device, directory / "minrt-run", artifact, blob, self.iters,
                                    timeout=timeout, threads=self.threads)
        except DeviceError:
            if cut and time.monotonic() - t0 >= timeout:  # the candidate was cut, the device is fine
                raise RunnerError(f"candidate cut after {timeout:.1f} s (more than {SLOWER_THAN_DEFAULT_CUT:g}x "
                                  "the default schedule, or past this kernel's share of the time)") from None
            raise
        log.debug("candidate %s: ran in %.2f s", directory.name, time.monotonic() - t0)
        return float(timing["min_us"]) * 1e-6


def _make_builder(session: _Session) -> Any:
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.ir.utils import derived_object

    @derived_object
    class MinrtBuilder(PyBuilder):
        """Builds each candidate in this process with TVM, links it with minrt-run."""

        def build(self, build_inputs: list) -> list:
            if session.time_left() <= 0:  # ends this kernel's search (tune_models catches it)
                session.stop = TimeUp(session.kernel_name)
                raise session.stop
            results = []
            for item in build_inputs:
                session.check_stop()
                if session.time_left() <= 0:
                    results.append(BuilderResult(None, "tuning time budget exhausted"))
                    continue
                try:
                    results.append(BuilderResult(str(session.build(item.mod)), None))
                except Exception as exc:  # noqa: BLE001 - a candidate that does not build is a failed trial
                    first = (str(exc).strip().splitlines() or [""])[0]
                    results.append(BuilderResult(None, f"{type(exc).__name__}: {first[:300]}"))
            return results

    return MinrtBuilder()


def _make_runner(session: _Session, max_device_failures: int = 3) -> Any:
    from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult
    from tvm.ir.utils import derived_object

    from harness.errors import DeviceError, RunnerError

    @derived_object
    class DoneFuture(PyRunnerFuture):
        def __init__(self, result: Any) -> None:
            super().__init__()
            self._result = result

        def done(self) -> bool:
            return True

        def result(self) -> Any:
            return self._result

    @derived_object
    class MinrtRunner(PyRunner):
        """Times each candidate with minrt-run on the target's device (synchronously)."""

        def run(self, runner_inputs: list) -> list:
            futures = []
            for item in runner_inputs:
                if session.time_left() <= 0:
                    futures.append(DoneFuture(RunnerResult(None, "tuning time budget exhausted")))
                    continue
                try:
                    secs = session.run(Path(item.artifact_path))
                    session.device_failures = 0
                    session.trials += 1
                    us = secs * 1e6
                    if session.best_us is None or us < session.best_us:
                        session.best_us = us
                    futures.append(DoneFuture(RunnerResult([secs], None)))
                except RunnerError as exc:  # the candidate itself failed on the device
                    session.check_stop()
                    futures.append(DoneFuture(RunnerResult(None, str(exc)[:300])))
                except DeviceError as exc:
                    session.check_stop()  # a candidate killed on SIGTERM is no device failure
                    session.device_failures += 1
                    if session.device_failures >= max_device_failures:
                        session.stop = TuningError(f"the device failed {session.device_failures} times in a row; "
                                                   f"stopping: {exc}")
                        raise session.stop from None
                    futures.append(DoneFuture(RunnerResult(None, str(exc)[:300])))
                finally:
                    shutil.rmtree(item.artifact_path, ignore_errors=True)
            return futures

    return MinrtRunner()


def _make_progress(session: _Session, task_label: str, budget: int | None, started: float) -> Any:
    """One log line per measured batch of candidates: trials so far of the kernel's budget,
    the best so far against the default schedule, and the time left (the budget's deadline,
    else an estimate from the pace so far)."""
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.ir.utils import derived_object

    @derived_object
    class Progress(PyMeasureCallback):
        def apply(self, task_scheduler: Any, task_id: int, measure_candidates: Any,
                  builder_results: Any, runner_results: Any) -> None:
            failed = sum(1 for r in runner_results if r.error_msg)
            log.info("tune %s: %s", task_label, progress_line(session, budget, started, failed))

    return Progress()


def progress_line(session: "_Session", budget: int | None, started: float, failed: int = 0) -> str:
    """"12/32 trials, best 9.8 us (default 14.2 us), about 40 s left" (`budget`: this kernel's
    trials, None when only its share of the time budget bounds it)."""
    best = duration(session.best_us)
    default = f" (default {duration(session.default_us)})" if session.default_us is not None else ""
    left = session.time_left()
    if budget is None:
        return (f"{session.trials} trials, best {best}{default}, {duration(max(left, 0.0) * 1e6)} left of its "
                "share of the time budget" + (f"; {failed} candidate(s) of this batch failed" if failed else ""))
    if session.trials >= budget:
        left_text = "this kernel's budget done"
    elif left == float("inf"):
        done = max(session.trials, 1)
        left = (time.monotonic() - started) / done * max(budget - session.trials, 0)
        left_text = f"about {duration(left * 1e6)} left for this kernel"
    else:
        left_text = f"{duration(max(left, 0.0) * 1e6)} left of the time budget"
    return (f"{session.trials}/{budget} trials, best {best}{default}, {left_text}"
            + (f"; {failed} candidate(s) of this batch failed" if failed else ""))


def split_trials(total: int, weights: dict[str, float]) -> dict[str, int]:
    """`total` trials shared among kernels in proportion to their weights (FLOPs), exactly
    (largest remainders, heaviest first on ties); a kernel whose share rounds to 0 gets none."""
    if total <= 0 or not weights:
        return {name: 0 for name in weights}
    whole = sum(weights.values()) or 1.0
    exact = {name: total * w / whole for name, w in weights.items()}
    shares = {name: int(v) for name, v in exact.items()}
    order = sorted(weights, key=lambda n: (-(exact[n] - shares[n]), -weights[n]))
    for name in order[: total - sum(shares.values())]:
        shares[name] += 1
    return shares


@contextlib.contextmanager
def _quiet_steps() -> Iterator[None]:
    """Each candidate is built, deployed and run through the harness' own steps, which log
    at INFO for `harness run`; during a search only the progress lines are wanted (-v shows all)."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(n) for n in ("harness.run", "harness.transport", "harness.build", "harness.device")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _import_tensor_intrinsics() -> None:
    """Import tvm.s_tir.tensor_intrin (TuneContext does) quickly.

    It parses a few hundred TVMScript intrinsics at import, each calling inspect.stack(),
    which looks up source files for every frame of the import machinery: 25 s of CPU here.
    Those module-level functions need no frame context, so during this one import
    inspect.stack returns frames without it (5 s)."""
    import inspect
    import sys

    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return

    def frames_without_context(context: int = 1) -> list:
        out, frame = [], sys._getframe(1)
        while frame is not None:
            out.append(inspect.FrameInfo(frame, frame.f_code.co_filename, frame.f_lineno,
                                         frame.f_code.co_name, None, None))
            frame = frame.f_back
        return out

    original = inspect.stack
    inspect.stack = frames_without_context
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.stack = original


def _flops(func: Any) -> float:
    import tvm
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return max(1.0, float(estimate_tir_flops(tvm.IRModule({"main": func}))))
    except Exception:  # noqa: BLE001
        return 1.0


def model_kernels(model: Path, target: Target, input_shapes: Mapping[str, Sequence[int]] | None = None,
                  ) -> tuple[dict[str, Any], dict[str, int]]:
    """The kernels `harness compile` would build for this model (raw legalized PrimFuncs, the
    tuning inputs) and how many outputs each has."""
    import tvm

    from harness.compile.graph import walk_main
    from harness.compile.source import load_model, lowered_module

    source = load_model(model, input_shapes)
    lowered = lowered_module(source, tvm.target.Target(dict(target.tvm_target)))
    graph = walk_main(lowered, source.input_names, str(model), op_types=source.op_types)
    n_outputs = {n.func_name: len(n.outputs) for n in graph.nodes if n.op == "tvm_op"}
    return graph.kernels, n_outputs


#: Register tiles near the default rule's that a convolution's tuning measures.
TILE_VARIANTS = 8
#: A kernel is searched only when its share of the time budget is at least this long: the
#: default schedule's measurement and a batch or two of candidates (less measures next to nothing).
MIN_TASK_SECONDS = 30.0


@dataclass
class KernelTask:
    """One distinct kernel workload of the models tuned. Kernels with the same structure (the
    same fused ops on the same shapes, in one model or in several) are one task, searched
    once: the database is keyed by structure, so compile finds the records for each of them."""
    name: str  # the kernel's name ("model/kernel" when several models are tuned)
    func: Any  # the legalized PrimFunc (the tuning input)
    n_outputs: int
    flops: float
    uses: list[str]  # "model/kernel" of every kernel with this workload

    @property
    def weight(self) -> float:
        """What the task's kernels cost all the models together: FLOPs times uses."""
        return self.flops * len(self.uses)


def kernel_tasks(models: Mapping[str, tuple[Mapping[str, Any], Mapping[str, int]]]) -> list[KernelTask]:
    """The distinct kernel workloads of the models (model name -> (kernels, outputs per kernel)),
    heaviest first; kernels compile keeps as written (no schedule) are left out."""
    import tvm_ffi

    from harness.compile.kernels import written_as_is

    tasks: dict[int, KernelTask] = {}
    for model, (funcs, n_outputs) in models.items():
        for name, func in funcs.items():
            if written_as_is(func):
                continue
            key = tvm_ffi.structural_hash(workload(func))
            if key not in tasks:
                label = name if len(models) == 1 else f"{model}/{name}"
                tasks[key] = KernelTask(label, func, n_outputs.get(name, 1), _flops(func), [])
            tasks[key].uses.append(f"{model}/{name}")
    return sorted(tasks.values(), key=lambda t: (-t.weight, t.name))


def funded_tasks(weights: Sequence[float], budget: float, min_seconds: float = MIN_TASK_SECONDS) -> int:
    """How many tasks (weights heaviest first) a time budget pays for: the most, k, such that
    sharing the budget among the first k in proportion to weight still gives the k-th
    `min_seconds`. The rest are too light to be worth a search in this budget."""
    total, funded = 0.0, 0
    for w in weights:
        total += w
        if total <= 0 or budget * w / total < min_seconds:
            break
        funded += 1
    return funded


def time_share(left: float, weight: float, weights_left: float) -> float:
    """This task's share of the time left: in proportion to its weight among the tasks not yet
    tuned, so time a heavier task did not use goes to the ones after it."""
    if left <= 0 or weights_left <= 0:
        return 0.0
    return left * min(1.0, weight / weights_left)


def tune_model(model: Path, target: Target, **options: Any) -> TuneReport:
    """Tune one model's kernels (tune_models with one model)."""
    return tune_models([model], target, **options)


@native_stderr_to_log("tune")
def tune_models(
    models: Sequence[Path],
    target: Target,
    *,
    trials: int | None = 64,
    time_budget: float | None = None,
    toolchain: str = "host",
    transport: str | None = None,
    host: str | None = None,
    cache: Path | None = None,
    iters: int = 10,
    run_timeout: float = 30.0,
    trials_per_iter: int = 16,
    seed: int = 0,
    kernels: list[str] | None = None,
    population: int = 128,
    cost_model: str | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    threads: int | None = None,
    min_task_seconds: float = MIN_TASK_SECONDS,
) -> TuneReport:
    """Tune the kernels of several models for a target in one pass: a kernel workload that
    several kernels share (in one model or across models) is one task, weighted by its FLOPs
    times its uses, heaviest first.

    `trials`: the total for all tasks (never exceeded), shared by weight; a task whose share
    rounds to 0 is not tuned, and one that already has its share of records is skipped.
    None: no trial limit, only the time budget.
    `time_budget` (seconds): a wall-clock bound on the whole call, from loading the models on.
    Tasks get the time left in proportion to their weight (time a task leaves unused goes to
    the next), those whose share would be under `min_task_seconds` are not searched, and each
    search stops at its share's end; the records measured so far stay. compile uses a record
    only when it beat the default schedule measured in the same session.
    `threads`: for the candidates' parallel loops on the device (None: its cores).
    Resumable: the search of a task starts from its best records."""
    import tempfile

    from tvm.s_tir import meta_schedule as ms

    from harness.build.toolchain import get_toolchain
    from harness.compile.kernels import kernel_target
    from harness.device.open import open_transport

    started = time.monotonic()
    deadline = started + time_budget if time_budget else float("inf")
    if trials is None and not time_budget:
        raise HarnessError("tune: give a number of trials, a time budget, or both")
    if trials is not None and trials < 1:
        raise HarnessError(f"tune: --trials must be at least 1, got {trials}")
    if not models:
        raise HarnessError("tune: no model to tune")
    stems = [Path(m).stem for m in models]
    if len(set(stems)) != len(stems):
        raise HarnessError(f"tune: models with the same name: {stems}")
    loaded = {}
    for stem, model in zip(stems, models):
        loaded[stem] = model_kernels(Path(model), target, input_shapes)
        log.info("tune: %s has %d kernels (%s since the start)", stem, len(loaded[stem][0]),
                 duration((time.monotonic() - started) * 1e6))
    tasks = kernel_tasks(loaded)
    if kernels:
        known = {t.name for t in tasks} | {u.split("/", 1)[1] for t in tasks for u in t.uses}
        unknown = sorted(set(kernels) - known)
        if unknown:
            raise HarnessError(f"{', '.join(stems)}: no kernel(s) {unknown} (kernels: {sorted(known)})")
        tasks = [t for t in tasks if t.name in kernels or any(u.split("/", 1)[1] in kernels for u in t.uses)]
    ktarget = kernel_target(target)
    _import_tensor_intrinsics()
    db_files = TuningDatabase.for_target(target, cache)
    database = db_files.open()
    share = split_trials(trials, {t.name: t.weight for t in tasks}) if trials is not None else None
    funded = len(tasks)
    if time_budget:
        funded = funded_tasks([t.weight for t in tasks if share is None or share[t.name] > 0],
                              max(deadline - time.monotonic(), 0.0), min_task_seconds)
    candidates = [t for t in tasks if share is None or share[t.name] > 0]
    searched = candidates[:funded]  # at the start; time a kernel leaves unused funds more
    log.info("tune %s for %s: %d distinct kernels (%d shared), %s, %s; database %s", ", ".join(stems), target.name,
             len(tasks), sum(1 for t in tasks if len(t.uses) > 1),
             f"{trials} trials" if trials is not None else "no trial limit",
             f"{duration(time_budget * 1e6)} budget, {len(searched)} kernel(s) get a share at first" if time_budget
             else "no time budget", db_files.path)
    results: list[TaskResult] = []
    tc = get_toolchain(toolchain, target)
    # Scratch space under the cache: the Docker toolchain sees only the source tree and the cache.
    root = Path(cache) if cache is not None else cache_dir()
    scratch_root = root / "tuning" / "scratch"
    scratch_root.mkdir(parents=True, exist_ok=True)
    # meta_schedule's own log (task tables, per-iteration statistics), one file per kernel; -v
    # also shows it on the terminal, a failure names the file.
    search_logs = root / "logs" / "tune" / f"{target.name}-{'+'.join(stems)}"[:200]
    with StopOnSignal(db_files.path) as signals, tempfile.TemporaryDirectory(prefix="tune-", dir=scratch_root) as tmp, \
            open_transport(target, kind=transport, host=host) as device:
        for i, task in enumerate(tasks, start=1):
            signals.check()
            task_started = time.monotonic()
            label = f"[{i}/{len(tasks)}] {task.name}"
            mod = workload(task.func)
            have = _records(database, mod)
            cap = share[task.name] if share is not None else None

            def result(trials_run: int, default_us: float | None, skipped: str | None = None,
                       task: KernelTask = task, mod: Any = mod, task_started: float = task_started) -> TaskResult:
                return TaskResult(task.name, trials_run, _records(database, mod), _best_us(database, mod), default_us,
                                  skipped, uses=len(task.uses), seconds=time.monotonic() - task_started)

            if cap is not None and have >= cap > 0:
                log.info("tune %s: %d records already (share %d), skipped", label, have, cap)
                # Records from elsewhere (or an older session) still need this device's baseline.
                default_us = db_files.default_latency(default_schedule(task.func, ktarget, target)[0])
                if default_us is None and time.monotonic() < deadline:
                    session = _Session(target, ktarget, tc, device, Path(tmp) / f"t{i}", deadline, iters,
                                       run_timeout, threads, signals)
                    session.kernel_name, session.n_outputs = _kernel_symbol(i), task.n_outputs
                    default_us = _measure_default(session, task.func, db_files)
                results.append(result(0, default_us, "already tuned"))
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                results.append(result(0, None, "time budget"))
                continue
            if cap == 0:
                results.append(result(0, None, "no trials in the budget"))
                continue
            task_deadline = deadline
            if time_budget:
                # Shared among the kernels from this one on that the time left still funds.
                rest = candidates[candidates.index(task):]
                funded = funded_tasks([t.weight for t in rest], left, min_task_seconds)
                if funded == 0:
                    results.append(result(0, None, "too light for the time budget"))
                    continue
                task_deadline = time.monotonic() + time_share(left, task.weight, sum(t.weight for t in rest[:funded]))
            session = _Session(target, ktarget, tc, device, Path(tmp) / f"t{i}", task_deadline, iters, run_timeout,
                               threads, signals)
            session.kernel_name, session.n_outputs = _kernel_symbol(i), task.n_outputs
            with _quiet_steps():
                default_us = _measure_default(session, task.func, db_files)
            session.default_us = default_us
            with _quiet_steps():
                variants = measure_tile_variants(session, task.func, database, mod,
                                                 limit=min(TILE_VARIANTS, cap) if cap is not None else TILE_VARIANTS)
            if variants:
                # The rule's neighbours are what beats it in a budget; meta_schedule's search of
                # a convolution starts ~10x slower than the rule and rarely catches up in minutes,
                # so its time goes to the next kernels instead.
                if time.monotonic() < deadline:  # the default once more, after its rivals
                    with _quiet_steps():
                        default_us = _measure_default(session, task.func, db_files, before=default_us)
                results.append(result(session.trials, default_us))
                log.info("tune %s: %d register tiles near the rule's measured, best %s (default %s)", label,
                         variants, duration(results[-1].best_us), duration(default_us))
                continue
            budget = cap - have if cap is not None else None
            slice_text = f", {duration(session.time_left() * 1e6)} of the budget" if time_budget else ""
            log.info("tune %s: %s (%.3f MFLOP x %d use(s)%s), default schedule %s", label,
                     f"{budget} trials" if budget is not None else "trials until its time is up",
                     task.flops / 1e6, len(task.uses), slice_text, duration(default_us))
            context = ms.TuneContext(mod=mod, target=ktarget, space_generator="post-order-apply",
                                     search_strategy=ms.search_strategy.EvolutionarySearch(
                                         population_size=population, init_min_unmeasured=min(50, population),
                                         genetic_num_iters=2),
                                     task_name=task.name, rand_state=seed + i, num_threads=1,
                                     logger=_search_logger())
            max_trials = budget if budget is not None else 10**6
            search_log = search_logs / f"{task.name.replace('/', '.')}.log"
            try:
                with _quiet_steps(), _search_log(search_log):
                    ms.tune.tune_tasks(
                        tasks=[context], task_weights=[1.0], work_dir=str(Path(tmp) / f"log{i}"),
                        max_trials_global=max_trials, num_trials_per_iter=min(trials_per_iter, max_trials),
                        builder=_make_builder(session), runner=_make_runner(session), database=database,
                        cost_model=cost_model or default_cost_model(),
                        # the progress line after the batch's records are in the database
                        measure_callbacks=[*_default_callbacks(), _make_progress(session, label, budget, task_started)],
                        task_scheduler="round-robin")
            except Exception:
                signals.check()  # a signal ended the search: Stopped, whatever TVM made of it
                if isinstance(session.stop, TimeUp):
                    log.info("tune %s: its share of the time budget is spent", label)
                elif session.stop is not None:
                    raise session.stop from None
                else:
                    log.warning("tune %s: meta_schedule's log is %s", label, search_log)
                    raise
            results.append(result(session.trials, default_us))
            log.info("tune %s: done, %d trials in %s, best %s (default %s)", label, session.trials,
                     duration(results[-1].seconds * 1e6), duration(results[-1].best_us), duration(default_us))
    return TuneReport(model=", ".join(stems), target=target.name, database=db_files.path, tasks=results,
                      seconds=time.monotonic() - started, budget=time_budget)


def _kernel_symbol(index: int) -> str:
    """The name a candidate's one kernel is compiled under (a C symbol: task names may hold '/')."""
    return f"kernel{index}"


@contextlib.contextmanager
def _search_log(path: Path) -> Iterator[None]:
    """meta_schedule's task scheduler logs its task table and statistics after every batch
    (logger "tvm.s_tir.meta_schedule", which otherwise reaches the terminal through the root
    logger): they go to `path`, and to the terminal only with -v."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = log.isEnabledFor(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _search_logger() -> logging.Logger:
    """meta_schedule's own per-iteration chatter goes to debug level; the harness reports
    tasks, trials and the best latency itself."""
    search = logging.getLogger("harness.tune.search")
    if not log.isEnabledFor(logging.DEBUG):
        search.setLevel(logging.WARNING)
    return search


def default_cost_model() -> str:
    """meta_schedule's XGBoost model when xgboost is installed, else random ranking (the
    search then relies on mutating the measured best)."""
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return "random"
    return "xgb"


def _measure_default(session: _Session, func: Any, db_files: TuningDatabase, before: float | None = None) -> float:
    """Time the kernel with its default schedule on the device (the baseline tuning must beat).
    `before`: this session's earlier measurement; the faster of the two is kept, so a moment of
    load on a shared machine during the first does not let a record win by noise."""
    import tvm

    scheduled, _ = default_schedule(func, session.ktarget, session.target)
    directory = session.build(tvm.IRModule({"main": scheduled}))
    try:
        us = session.run(directory) * 1e6
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if before is not None:
        us = min(us, before)
    db_files.set_default_latency(scheduled, us)
    return us


def measure_tile_variants(session: _Session, func: Any, database: Any, mod: Any, limit: int = 8) -> int:
    """Measure the default rule's neighbours on the device (for a channels-last convolution:
    the next-best register tiles by the rule's model, the other weight packing) and record
    each as a tuning record (its schedule's trace), so compile uses the fastest when it beat
    the default. These start where the rule is good, which meta_schedule's search of a large
    kernel rarely reaches in minutes. Stops at the session's deadline; returns how many ran."""
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.database import TuningRecord

    from harness.compile.schedule import conv_tile_variants
    from harness.errors import RunnerError

    _, rule = default_schedule(func, session.ktarget, session.target)
    entry = database.commit_workload(mod)
    measured = 0
    for tile in conv_tile_variants(rule, limit):
        if session.time_left() <= 0:
            break
        try:
            scheduled, variant = default_schedule(func, session.ktarget, session.target, tile=tile)
            directory = session.build(tvm.IRModule({"main": scheduled}))
        except Exception as exc:  # noqa: BLE001 - a variant that does not schedule or build is skipped
            log.debug("tile %s: %s", tile, exc)
            continue
        try:
            secs = session.run(directory)
        except RunnerError as exc:  # the variant failed or was cut; the device is fine
            log.debug("tile %s: %s", tile, exc)
            continue
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        database.commit_tuning_record(TuningRecord(variant.trace, entry, [secs], session.ktarget,
                                                   ArgInfo.from_prim_func(func)))
        measured += 1
        session.trials += 1
        if session.best_us is None or secs * 1e6 < session.best_us:
            session.best_us = secs * 1e6
        log.debug("tile %s: %s", tile, duration(secs * 1e6))
    return measured


def _default_callbacks() -> list:
    from tvm.s_tir.meta_schedule.measure_callback import AddToDatabase, UpdateCostModel

    # No RemoveBuildArtifact: the runner deletes each candidate's directory itself.
    return [AddToDatabase(), UpdateCostModel()]


def _records(database: Any, mod: Any) -> int:
    """How many records the database holds for this workload."""
    return len(database.get_top_k(database.commit_workload(mod), 10**6)) if database.has_workload(mod) else 0


def _best_us(database: Any, mod: Any) -> float | None:
    if not database.has_workload(mod):
        return None
    top = database.get_top_k(database.commit_workload(mod), 1)
    if not top or not top[0].run_secs:
        return None
    return min(float(s) for s in top[0].run_secs) * 1e6
