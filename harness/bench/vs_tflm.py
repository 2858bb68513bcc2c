"""`ci/bench_tflm`: minrt side by side with TFLite Micro (+ CMSIS-NN), LiteRT and
onnxruntime on MLPerf Tiny's models, measured the same way in one run (issue 23).

- cortex-m4-qemu / cortex-m7-qemu: a TFLM firmware per model (harness.build.tflm_image) and
  minrt's firmware for the same model boot on the same QEMU board with -icount shift=0 and
  report SysTick ticks around each inference: emulated instructions per inference, the same
  counter for both. Flash by part and RAM (arena used + static data) from the images.
- qemu-armv7: TFLM (reference kernels) and minrt-run as static ARMv7 Linux executables under
  qemu-user; instructions per inference counted exactly (QemuUserTransport.count_instructions)
  for n and n + 1 inferences, the difference being one inference (n = 0 for TFLM's image, 1
  for minrt-run, which refuses 0).
- x86_64: wall-clock latency of minrt, LiteRT (XNNPACK, 1 thread), onnxruntime (1 thread; where
  an ONNX form of the model exists) and TFLM's host interpreter (PyPI tflite-micro), min over
  interleaved rounds.

Every TFLM output is checked against TFLM's host interpreter on the same sample. minrt's side is
whatever minrt runs today: where it cannot compile or run a model the table says so, with the
reason, and the same command gives the full table once it can.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.bench.baselines import time_calls
from harness.bench.instructions import count_minrt, count_per_inference
from harness.errors import HarnessError
# MLPerf Tiny's models by harness name (the names `harness run --model` takes), where they lie
# (MINRT_MLPERF_TINY_DIR) and which are int8: the one table, in harness.models.mlperf_tiny
from harness.models.mlperf_tiny import ENV_DIR as MLPERF_DIR_ENV
from harness.models.mlperf_tiny import INT8_MODELS, MLPERF_TINY, mlperf_tiny_dir

log = logging.getLogger(__name__)

FIRMWARE_TARGETS = {"cortex-m4-qemu": "cortex-m4", "cortex-m7-qemu": "cortex-m7"}
LINUX_TARGETS = {"qemu-armv7": "armv7-linux"}
ALL_TARGETS = (*FIRMWARE_TARGETS, *LINUX_TARGETS, "x86_64")
UNIT = "emulated instructions"
BOOT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class BenchModel:
    name: str
    tflite: Path
    sample: Path  # the first sample input (.npy, in the model's input dtype)


def resolve_models(names: Sequence[str] | None) -> list[BenchModel]:
    """MLPerf Tiny names (default: the four int8 models) or .tflite paths (sample: <stem>.input0.npy)."""
    models = []
    for name in names or INT8_MODELS:
        path = Path(name)
        if name in MLPERF_TINY:
            path = mlperf_tiny_dir() / f"{MLPERF_TINY[name]}.tflite"
        elif path.suffix != ".tflite" or not path.is_file():
            raise HarnessError(f"model '{name}' is neither an MLPerf Tiny name ({', '.join(MLPERF_TINY)}) "
                               "nor a .tflite file")
        sample = path.with_name(f"{path.stem}.input0.npy")
        for p in (path, sample):
            if not p.is_file():
                raise HarnessError(f"model '{name}': {p} is missing (set {MLPERF_DIR_ENV} to the directory "
                                   "holding MLPerf Tiny's .tflite files and their sample inputs)")
        models.append(BenchModel(name if name in MLPERF_TINY else path.stem, path, sample))
    return models


# ---- results -----------------------------------------------------------------------------------

@dataclass
class Side:
    """One runtime's figures for one model on one target; `note` says why a figure is missing."""

    instructions: int | None = None  # per inference (device targets)
    #: by part, with "total" and "no_weights": the image without the weights (and, for TFLM, without
    #: the benchmark's sample input, which minrt's firmware receives over the UART instead)
    flash: dict[str, int] = field(default_factory=dict)
    ram: dict[str, int] = field(default_factory=dict)  # "arena", "static", "total"
    output_check: str | None = None  # agreement with TFLM's host interpreter
    note: str | None = None


@dataclass
class Row:
    model: str
    target: str
    tflm: Side = field(default_factory=Side)
    minrt: Side = field(default_factory=Side)

    def ratio(self, what: str) -> float | None:
        a, b = _figure(self.minrt, what), _figure(self.tflm, what)
        return a / b if a and b else None


def _figure(side: Side, what: str) -> int | None:
    if what == "instructions":
        return side.instructions
    if what == "flash_no_weights":
        return side.flash.get("no_weights")
    if what == "ram":
        return side.ram.get("total")
    raise KeyError(what)


@dataclass
class Latency:
    """x86_64 wall clock per inference (us, min over rounds); `notes` say why one is missing."""

    model: str
    us: dict[str, float] = field(default_factory=dict)  # runtime -> min us
    notes: dict[str, str] = field(default_factory=dict)
    rounds: int = 0
    iters: int = 0


@dataclass
class VersusReport:
    sources: dict[str, str]
    rows: list[Row] = field(default_factory=list)
    latency: list[Latency] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def geomean(self, target: str, what: str) -> tuple[float, int] | None:
        ratios = [r.ratio(what) for r in self.rows if r.target == target]
        ratios = [x for x in ratios if x]
        return (math.exp(sum(map(math.log, ratios)) / len(ratios)), len(ratios)) if ratios else None

    def table(self) -> str:
        return format_report(self)

    def store_rows(self) -> list[dict[str, Any]]:
        """Rows for harness.results.versus.record_versus."""
        out: list[dict[str, Any]] = []
        for row in self.rows:
            for runtime, side in (("tflm", row.tflm), ("minrt", row.minrt)):
                sources = self.sources if runtime == "tflm" else None
                for metric, unit in (("instructions", UNIT), ("flash_no_weights", "bytes"), ("ram", "bytes")):
                    value = _figure(side, metric)
                    if value is None and not side.note:
                        continue
                    out.append({"target": row.target, "model": row.model, "runtime": runtime, "metric": metric,
                                "value": value, "unit": unit, "note": None if value is not None else side.note,
                                "sources": sources})
        for lat in self.latency:
            for runtime in ("minrt", "litert", "onnxruntime", "tflm"):
                value = lat.us.get(runtime)
                note = lat.notes.get(runtime)
                if value is None and not note:
                    continue
                out.append({"target": "x86_64", "model": lat.model, "runtime": runtime, "metric": "latency_min_us",
                            "value": value, "unit": "us", "note": None if value is not None else note,
                            "sources": self.sources if runtime == "tflm" else None})
        return out


def _n(v: int | float | None, fmt: str = ",") -> str:
    return "-" if v is None else format(v, fmt)


def _parts_table(title: str, sides: Sequence[tuple[Row, Side]], parts: Sequence[tuple[str, str, int]],
                 arena: str) -> list[str]:
    """One runtime's flash by part (key, header, width) and its RAM, a line per row that has
    them (none at all: no lines)."""
    sides = [(row, side) for row, side in sides if side.flash]
    if not sides:
        return []
    lines = ["", f"{title:<33} " + " ".join(f"{head:>{width}}" for _, head, width in parts)
             + f"   {arena:>10} {'static':>7}"]
    for row, side in sides:
        lines.append(f"{row.model + ' ' + row.target:<33} "
                     + " ".join(f"{_n(side.flash.get(key)):>{width}}" for key, _, width in parts)
                     + f"   {_n(side.ram.get('arena')):>10} {_n(side.ram.get('static')):>7}")
    return lines


def format_report(report: VersusReport) -> str:
    short = ", ".join(f"{k} {v[:12]}" for k, v in report.sources.items())
    lines = [f"TFLite Micro side by side (sources: {short})", "",
             "instr/inf: emulated instructions per inference (QEMU -icount on Cortex-M, exact count under "
             "qemu-user on ARMv7); flash-w: image without weights (nor TFLM's sample input); "
             "RAM (stack on neither side): TFLM arena_used_bytes() (its tensors, input and output included) "
             "+ .data + .bss (the static interpreter, op resolver, board code); minrt its static arena (planned "
             "storage with inputs kept for the run, outputs, workspace, the I/O tail; on Cortex-M its graph tables "
             "are in flash) + .data + .bss (front end with the running model's struct, board code)", "",
             f"{'model':<17} {'target':<15} {'TFLM instr/inf':>15} {'minrt instr/inf':>15} {'ratio':>6}  "
             f"{'TFLM flash-w':>12} {'minrt flash-w':>13} {'ratio':>6}  {'TFLM RAM':>9} {'minrt RAM':>9} {'ratio':>6}  "
             "TFLM vs host"]
    notes = []
    for r in report.rows:
        ratios = [r.ratio(w) for w in ("instructions", "flash_no_weights", "ram")]
        lines.append(
            f"{r.model:<17} {r.target:<15} {_n(r.tflm.instructions):>15} {_n(r.minrt.instructions):>15} "
            f"{_n(ratios[0], '.2f'):>6}  {_n(r.tflm.flash.get('no_weights')):>12} {_n(r.minrt.flash.get('no_weights')):>13} "
            f"{_n(ratios[1], '.2f'):>6}  {_n(r.tflm.ram.get('total')):>9} {_n(r.minrt.ram.get('total')):>9} "
            f"{_n(ratios[2], '.2f'):>6}  {r.tflm.output_check or '-'}")
        for who, side in (("TFLM", r.tflm), ("minrt", r.minrt)):
            if side.note:
                notes.append(f"  {r.model} on {r.target}: {who}: {side.note}")
    targets = sorted({r.target for r in report.rows}, key=lambda t: ALL_TARGETS.index(t) if t in ALL_TARGETS else 99)
    for t in targets:
        g = report.geomean(t, "instructions")
        if g:
            lines.append(f"geomean minrt/TFLM instructions on {t}: {g[0]:.2f} over {g[1]} model(s)")
    if notes:
        lines += ["", "notes:", *notes]
    tflm_parts = [("framework", "framework", 9), ("kernels", "kernels", 8), ("weights", "weights", 8),
                  ("graph", "graph", 7), ("rest", "rest", 7), ("sample_input", "sample", 7), ("total", "total", 9)]
    minrt_parts = [("minrt", "runtime", 9), ("front_end", "front end", 9), ("kernels", "kernels", 8),
                   ("libc", "libc", 7), ("weights", "weights", 8), ("graph", "graph", 7), ("total", "total", 9)]
    lines += _parts_table("TFLM flash by part", [(r, r.tflm) for r in report.rows], tflm_parts, "arena used")
    lines += _parts_table("minrt flash by part", [(r, r.minrt) for r in report.rows], minrt_parts, "arena")
    if report.latency:
        lines += ["", f"x86_64 latency, min us per inference ({report.latency[0].rounds} interleaved rounds "
                      f"of {report.latency[0].iters})",
                  f"{'model':<17} {'minrt':>9} {'LiteRT':>9} {'onnxruntime':>11} {'TFLM host':>9}  "
                  f"{'minrt/LiteRT':>12} {'minrt/TFLM':>10}"]
        lat_notes = []
        for lat in report.latency:
            us = lat.us
            lines.append(
                f"{lat.model:<17} {_n(us.get('minrt'), ',.1f'):>9} {_n(us.get('litert'), ',.1f'):>9} "
                f"{_n(us.get('onnxruntime'), ',.1f'):>11} {_n(us.get('tflm'), ',.1f'):>9}  "
                f"{_n(us['minrt'] / us['litert'] if us.get('minrt') and us.get('litert') else None, '.2f'):>12} "
                f"{_n(us['minrt'] / us['tflm'] if us.get('minrt') and us.get('tflm') else None, '.2f'):>10}")
            lat_notes += [f"  {lat.model}: {k}: {v}" for k, v in lat.notes.items()]
        if lat_notes:
            lines += ["notes:", *lat_notes]
    return "\n".join(lines)


# ---- parsing what the images print ---------------------------------------------------------------

_RESULT = re.compile(r"tflm-result ((?:\w+=\S*\s*)+)")


def parse_report(text: str) -> dict[str, Any]:
    """The `tflm-result key=value ...` line tflm_bench.cc prints: ints, and `outputs` as a list
    of bytes per output. A `tflm-error stage status` line, or none at all, raises."""
    err = re.search(r"tflm-error (\S+) (-?\d+)", text)
    if err:
        raise HarnessError(f"the TFLM image failed at {err.group(1)} (status {err.group(2)})")
    m = _RESULT.search(text)
    if not m:
        raise HarnessError(f"the TFLM image printed no tflm-result line (output: {text[-300:]!r})")
    fields: dict[str, Any] = {}
    for item in m.group(1).split():
        key, _, value = item.partition("=")
        if key == "outputs":
            try:
                fields[key] = [bytes.fromhex(h) for h in value.split(",")] if value else []
            except ValueError:
                raise HarnessError(f"the TFLM image printed malformed outputs: {value[:80]!r}") from None
        elif re.fullmatch(r"\d+", value):
            fields[key] = int(value)
        else:
            raise HarnessError(f"the TFLM image printed {key}={value[:40]!r}, not a number")
    for key in ("iters", "tick_hz", "min_ticks", "mean_ticks", "max_ticks", "arena_used", "outputs"):
        if key not in fields:
            raise HarnessError(f"the TFLM image's result line has no {key}")
    return fields


def compare_outputs(got: Sequence[bytes], want: Sequence[np.ndarray]) -> str:
    """Short agreement text: 'exact', or how many values differ and by how much."""
    if len(got) != len(want):
        return f"{len(got)} outputs, the host interpreter gives {len(want)}"
    parts = []
    for g, w in zip(got, want):
        w = np.asarray(w)
        if len(g) != w.nbytes:
            return f"output of {len(g)} bytes, the host interpreter's has {w.nbytes}"
        a = np.frombuffer(g, dtype=w.dtype).reshape(w.shape)
        if np.array_equal(a, w):
            parts.append("exact")
            continue
        diff = np.abs(a.astype(np.float64) - w.astype(np.float64))
        parts.append(f"{int(np.count_nonzero(diff))}/{diff.size} differ, max {float(diff.max()):.3g}")
    return "; ".join(parts)


def host_tflm_outputs(model: Path, sample: np.ndarray) -> list[np.ndarray]:
    """TFLM's own interpreter on this host (PyPI tflite-micro, reference kernels)."""
    from tflite_micro.python.tflite_micro import runtime

    from harness.build.tflm_image import read_model

    interp = runtime.Interpreter.from_file(str(model))
    interp.set_input(sample, 0)
    interp.invoke()
    return [np.array(interp.get_output(k)) for k in range(len(read_model(model).outputs))]


# ---- measuring --------------------------------------------------------------------------------

def _tflm_firmware(lib: Any, target: Any, model: BenchModel, out_root: Path, iters: int) -> Side:
    from harness.build.tflm_image import build_image
    from harness.transport.firmware import boot_and_read, ticks_to_counts

    side = Side()
    sample = np.load(model.sample)
    image = build_image(lib, model.tflite, sample, out_root, target=target, iters=iters)
    machine = str(target.transport.options.get("machine", "mps2-an386"))
    text = boot_and_read(machine, image.elf, b"tflm-done", BOOT_TIMEOUT_S, icount_shift=0)
    rep = parse_report(text)
    counts = ticks_to_counts(dict(rep), icount_shift=0)["counts"]
    side.instructions = int(counts["min"])
    fp = image.footprint
    side.flash = {k[6:]: v for k, v in fp.items() if k.startswith("flash_")}
    side.flash["no_weights"] = side.flash["total"] - side.flash["weights"] - side.flash["sample_input"]
    side.ram = {"arena": rep["arena_used"], "static": fp["ram_static"], "total": rep["arena_used"] + fp["ram_static"]}
    side.output_check = compare_outputs(rep["outputs"], host_tflm_outputs(model.tflite, sample))
    log.info("TFLM %s on %s: %s instructions/inference, flash %s B (%s without weights), RAM %s B; vs host: %s",
             model.name, target.name, f"{side.instructions:,}", f"{side.flash['total']:,}",
             f"{side.flash['no_weights']:,}", f"{side.ram['total']:,}", side.output_check)
    return side


def _minrt_cannot(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"minrt cannot run this model yet: {first[:300]}"


def _minrt_firmware(target: Any, model: BenchModel, toolchain: str, iters: int) -> Side:
    from harness.compile.model import compile_model
    from harness.run import run_on_target

    side = Side()
    try:
        artifact = compile_model(model.tflite, target)
    except Exception as exc:  # noqa: BLE001 - any refusal is the answer "cannot run yet"
        side.note = _minrt_cannot(exc)
        return side
    result = run_on_target(model.tflite, target, toolchain=toolchain, iters=iters,
                           input_files={artifact.inputs[0]["name"]: model.sample})
    if result.error or not result.latency_counts:
        side.note = _minrt_cannot(HarnessError(result.error or "no instruction count"))
        return side
    fp = result.footprint
    side.instructions = int(result.latency_counts["min"])
    side.flash = {"total": int(fp["flash_total"]), "weights": int(fp.get("flash_weights", 0)),
                  "graph": int(fp.get("flash_graphs", 0))}
    for part in ("minrt", "front_end", "kernels", "libc"):
        side.flash[part] = int(fp.get(f"flash_{part}", 0))
    side.flash["no_weights"] = side.flash["total"] - side.flash["weights"]
    static = sum(int(fp.get(k, 0)) for k in ("ram_io_buffers", "ram_data", "ram_bss"))
    side.ram = {"arena": int(fp["arena_bytes"]), "static": static, "total": int(fp["arena_bytes"]) + static}
    side.output_check = "pass" if result.passed else "FAIL vs references"
    return side


def _tflm_linux(lib: Any, target: Any, model: BenchModel, out_root: Path) -> Side:
    from harness.build.tflm_image import build_image
    from harness.transport.local import QemuUserTransport

    side = Side()
    sample = np.load(model.sample)
    image = build_image(lib, model.tflite, sample, out_root, target=None)
    with QemuUserTransport(cpu=str(target.transport.options.get("cpu", "cortex-a7"))) as qemu:
        side.instructions, stdout = count_per_inference(qemu, image.elf, lambda exe, n: [str(exe), str(n)], 0)
    rep = parse_report(stdout)
    side.ram = {"arena": rep["arena_used"]}
    side.output_check = compare_outputs(rep["outputs"], host_tflm_outputs(model.tflite, sample))
    log.info("TFLM %s on %s: %s instructions/inference (qemu-user, exact count); vs host: %s",
             model.name, target.name, f"{side.instructions:,}", side.output_check)
    return side


def _minrt_linux(target: Any, model: BenchModel, toolchain: str) -> Side:
    from harness.build.runner import build_runner
    from harness.build.toolchain import get_toolchain
    from harness.compile.model import compile_model
    from harness.formats import tensorfile

    side = Side()
    try:
        artifact = compile_model(model.tflite, target)
        runner = build_runner(target, artifact, get_toolchain(toolchain, target))
    except Exception as exc:  # noqa: BLE001 - any refusal is the answer "cannot run yet"
        side.note = _minrt_cannot(exc)
        return side
    blob = tensorfile.dumps({artifact.inputs[0]["name"]: np.load(model.sample)})
    side.instructions = count_minrt(target, artifact, Path(runner), blob)
    return side


# ---- x86_64 latency -----------------------------------------------------------------------------

def x86_latency(model: BenchModel, rounds: int, iters: int, toolchain: str) -> Latency:
    """minrt, LiteRT, onnxruntime and TFLM's host interpreter on this host, interleaved."""
    from harness.bench.baselines import LITERT, ONNXRUNTIME, litert_baseline, onnxruntime_baseline

    lat = Latency(model.name, rounds=rounds, iters=iters)
    sample = np.load(model.sample)
    calls: dict[str, Any] = {}
    try:
        calls[LITERT] = litert_baseline(model.tflite, [sample]).invoke
    except Exception as exc:  # noqa: BLE001 - recorded as the reason
        lat.notes[LITERT] = f"LiteRT cannot run it: {exc}"
    try:
        from tflite_micro.python.tflite_micro import runtime

        micro = runtime.Interpreter.from_file(str(model.tflite))

        def tflm() -> None:
            micro.set_input(sample, 0)
            micro.invoke()

        calls["tflm"] = tflm
    except Exception as exc:  # noqa: BLE001
        lat.notes["tflm"] = f"TFLM's host interpreter cannot run it: {exc}"
    onnx = model.tflite.with_suffix(".onnx")
    if onnx.is_file():
        calls[ONNXRUNTIME] = onnxruntime_baseline(onnx, [sample]).invoke
    else:
        lat.notes[ONNXRUNTIME] = (f"no ONNX form of this model ({onnx.name} absent: MLPerf Tiny publishes "
                                  ".tflite, and no converter is installed here)")
    minrt_device = None
    try:
        from harness.build.runner import build_runner
        from harness.build.toolchain import get_toolchain
        from harness.compile.model import compile_model
        from harness.config.targets import load_target
        from harness.device.open import open_transport
        from harness.formats import tensorfile
        from harness.run import execute

        target = load_target("x86_64")
        artifact = compile_model(model.tflite, target)
        runner = build_runner(target, artifact, get_toolchain(toolchain, target))
        blob = tensorfile.dumps({artifact.inputs[0]["name"]: sample})
        minrt_device = open_transport(target)
        device = minrt_device.__enter__()

        def minrt() -> float:
            _, timing = execute(device, runner, artifact, blob, iters)
            return float(timing["min_us"])

        calls["minrt"] = minrt
    except Exception as exc:  # noqa: BLE001
        lat.notes["minrt"] = _minrt_cannot(exc)
    try:
        for name, call in calls.items():  # warm-up: first calls allocate
            if name != "minrt":
                call()
        best: dict[str, list[float]] = {k: [] for k in calls}
        for r in range(rounds):
            for name, call in calls.items():
                best[name].append(call() if name == "minrt" else time_calls(call, iters)[0])
            log.info("x86_64 %s round %d/%d: %s", model.name, r + 1, rounds,
                     ", ".join(f"{k} {v[-1]:.1f} us" for k, v in best.items()))
        lat.us = {k: min(v) for k, v in best.items() if v}
    finally:
        if minrt_device is not None:
            minrt_device.__exit__(None, None, None)
    return lat


# ---- the benchmark ------------------------------------------------------------------------------

def bench_against_tflm(sources: Any, models: Sequence[BenchModel], targets: Sequence[str], *,
                       toolchain: str = "host", iters: int = 3, rounds: int = 5, latency_iters: int = 20) -> VersusReport:
    """Build TFLM for each target, run every model with TFLM and minrt, and report."""
    from harness.build.tflm import build_library, build_root
    from harness.build.tflm_image import read_model
    from harness.config.targets import load_target

    unknown = [t for t in targets if t not in ALL_TARGETS]
    if unknown:
        raise HarnessError(f"no TFLM comparison for target(s) {', '.join(unknown)} (known: {', '.join(ALL_TARGETS)})")
    report = VersusReport(sources=dict(sources.commits))
    ops = sorted({op for m in models for op in read_model(m.tflite).ops})
    out_root = build_root(sources) / "images"
    for name in targets:
        if name == "x86_64":
            for m in models:
                log.info("x86_64 latency: %s", m.name)
                report.latency.append(x86_latency(m, rounds, latency_iters, toolchain))
            continue
        target = load_target(name)
        kind = FIRMWARE_TARGETS.get(name) or LINUX_TARGETS[name]
        lib = build_library(sources, kind, ops)
        for m in models:
            row = Row(m.name, name)
            log.info("%s on %s: TFLM", m.name, name)
            try:
                row.tflm = (_tflm_firmware(lib, target, m, out_root, iters) if name in FIRMWARE_TARGETS
                            else _tflm_linux(lib, target, m, out_root))
            except HarnessError as exc:
                row.tflm = Side(note=f"TFLM failed: {str(exc).splitlines()[0][:300]}")
                log.error("%s on %s: %s", m.name, name, row.tflm.note)
            log.info("%s on %s: minrt", m.name, name)
            row.minrt = (_minrt_firmware(target, m, toolchain, iters) if name in FIRMWARE_TARGETS
                         else _minrt_linux(target, m, toolchain))
            if row.minrt.note:
                log.info("%s on %s: %s", m.name, name, row.minrt.note)
            report.rows.append(row)
    return report

