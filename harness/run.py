"""`harness run`: compile a model, build minrt for a target, run it there, check it.

This is the strategy that brings a model and a device to the "checked" state: each step is
a library call (compile, build, transport, reference, compare) so tests and the farm reuse it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from harness import REPO_ROOT
from harness.formats import tensorfile
from harness.formats.frames import MAX_ITERS
from harness.check.compare import DEFAULT_ATOL, DEFAULT_RTOL, OutputCheck, compare_output
from harness.errors import HarnessError
from harness.check.reference import Consensus
from harness.config.targets import Target
from harness.build.toolchain import DEFAULT_TOOLCHAIN

log = logging.getLogger(__name__)

RUN_TIMEOUT_S = 300.0


@dataclass
class RunResult:
    model: str
    target: str
    transport: str
    passed: bool = False
    outputs: list[dict[str, Any]] = field(default_factory=list)
    # Every host reference's standing ("agrees", "odd one out", "unavailable", "no majority"),
    # and a note when the device was not judged against all of them.
    references: list[dict[str, Any]] = field(default_factory=list)
    reference_note: str | None = None
    latency_us: dict[str, float] = field(default_factory=dict)
    # firmware targets: min/mean/max per inference in `count_unit` ("emulated instructions"
    # under QEMU -icount, "cycles" on a board), never converted to time
    latency_counts: dict[str, float] = field(default_factory=dict)
    count_unit: str | None = None
    #: the latency or counts come from an emulator (qemu-user wall time, QEMU -icount), not
    #: a device (harness.config.readiness.is_emulated)
    emulated: bool = False
    #: --input-shape: the shapes given to the model's dynamic inputs
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    #: --outputs: where the device's outputs were kept as .npy, by output name
    output_files: dict[str, str] = field(default_factory=dict)
    #: with --profile: each kernel's mean time per run (node, name, kernel, us, share)
    profile: list[dict[str, Any]] = field(default_factory=list)
    iters: int = 0
    arena_bytes: int | None = None
    #: the threads the runner ran the kernels' parallel loops on (None: not reported)
    threads: int | None = None
    # What the model costs on the device: the runner's arena by part (graph, activations,
    # workspace, weight_copies: bytes), peak_rss_kb (Linux runners) with peak_rss_of (whose
    # memory it is: harness.transport.peak_rss_of), and flash (harness.build.size).
    footprint: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    tvm_version: str | None = None
    toolchain: str | None = None
    commit: str | None = None
    error: str | None = None
    # The failure's class ("DeviceError", "BuildError"...): the farm retries a job on another
    # device only when the device itself failed.
    error_kind: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def git_commit(root: Path = REPO_ROOT) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def random_inputs(specs: Sequence[Mapping[str, Any]], seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs for each graph input: N(0,1) floats, small ints, random bools."""
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
        if dtype == np.bool_:
            value = rng.integers(0, 2, size=shape).astype(bool)
        elif np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            value = rng.integers(max(info.min, -100), min(info.max, 100), size=shape, endpoint=True).astype(dtype)
        else:
            value = rng.standard_normal(size=shape).astype(dtype)
        inputs[spec["name"]] = value
    return inputs


def load_inputs(specs: Sequence[Mapping[str, Any]], files: Mapping[str, Path]) -> dict[str, np.ndarray]:
    """Inputs from .npy files, checked against the model's input names, shapes and dtypes."""
    by_name = {s["name"]: s for s in specs}
    unknown = sorted(set(files) - set(by_name))
    if unknown:
        raise HarnessError(f"--input names {unknown} are not inputs of the model (inputs: {sorted(by_name)})")
    result: dict[str, np.ndarray] = {}
    for name, path in files.items():
        spec = by_name[name]
        try:
            value = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise HarnessError(f"--input {name}={path}: cannot read as .npy: {exc}") from None
        if list(value.shape) != list(spec["shape"]):
            raise HarnessError(f"--input {name}={path}: shape {list(value.shape)}, the model expects {list(spec['shape'])}")
        if str(value.dtype) != spec["dtype"]:
            raise HarnessError(f"--input {name}={path}: dtype {value.dtype}, the model expects {spec['dtype']}")
        result[name] = value
    return result


def execute(transport: Any, runner: Path, artifact: Any, inputs_blob: bytes, iters: int,
            timeout: float = RUN_TIMEOUT_S, profile: bool = False,
            threads: int | None = None) -> tuple[bytes, dict[str, Any]]:
    """Put the runner on the device and run the model there: (outputs blob, timing).
    `threads`: for the kernels' parallel loops (None: the device's cores; see run_model)."""
    workspace = int(artifact.metadata.get("workspace_bytes", 0))
    remote_runner = f"{transport.workdir}/minrt-run"
    log.debug("deploying runner and model to %s", getattr(transport, "name", "device"))
    transport.put(runner, remote_runner)
    return transport.run_model(remote_runner, artifact.graph_json.read_bytes(),
                               artifact.params_bin.read_bytes(), inputs_blob, iters, workspace, timeout,
                               profile=profile, threads=threads)


def kernel_profile(timing: Mapping[str, Any], artifact: Any) -> list[dict[str, Any]]:
    """Each kernel's mean time per run, in node order, with its share of their sum and its
    PrimFunc (graph node name -> func_name)."""
    rows = timing.get("profile") or []
    total = sum(float(r["us"]) for r in rows) or 1.0
    funcs = {}
    try:
        funcs = {n["name"]: n.get("attrs", {}).get("func_name")
                 for n in json.loads(artifact.graph_json.read_text())["nodes"]}
    except (OSError, ValueError, KeyError):
        pass
    return [{"node": int(r["node"]), "name": str(r["name"]), "kernel": funcs.get(r["name"]),
             "us": float(r["us"]), "share": float(r["us"]) / total} for r in rows]


def footprint(timing: Mapping[str, Any], sizes: Mapping[str, int], artifact: Any,
              kind: str | None = None) -> dict[str, Any]:
    """A run's footprint: RAM as the runner measured it (its arena by part, its peak resident
    memory when the device reports it, and through transport `kind` whose that is) and flash
    (runtime, runner, kernels, weights)."""
    from harness.build.size import weights_bytes

    arena = timing.get("arena") or {}
    result: dict[str, Any] = {f"arena_{k}": int(v) for k, v in arena.items()}
    if timing.get("arena_bytes") is not None:
        result["arena_bytes"] = int(timing["arena_bytes"])
    if timing.get("peak_rss_kb") is not None:
        result["peak_rss_kb"] = int(timing["peak_rss_kb"])
        if kind is not None:
            from harness.transport import peak_rss_of

            result["peak_rss_of"] = peak_rss_of(kind)
    result["flash_weights"] = weights_bytes(artifact)
    for key in ("minrt_text", "runner_text", "kernels_text"):
        if key in sizes:
            result[f"flash_{key.removesuffix('_text')}"] = int(sizes[key])
    return result


def check_outputs(model: Path, inputs: Mapping[str, np.ndarray], got: Sequence[np.ndarray],
                  output_specs: Sequence[Mapping[str, Any]], atol: float, rtol: float,
                  ) -> tuple[list[Any], Consensus]:
    """Compare every device output with the host references that agree with each other (see
    harness.check.reference): TVM's Relax VM breaks a disagreement, a reference that cannot run the
    model is left out. Returns the checks and the references' standing."""
    from harness.check.quantized import check_quantized, judged_in_units
    from harness.check.reference import RELAX_VM, consensus, reference_names, try_reference

    if judged_in_units(model, output_specs):  # .tflite and quantized models: in quantized units
        return check_quantized(model, inputs, got, output_specs, atol, rtol)
    runs = [try_reference(name, model, inputs, expected_outputs=len(output_specs))
            for name in reference_names()]
    # The references are float implementations of their own (~1e-7 apart): they are held to each
    # other at the default tolerance at least, so a strict --atol 0 judges the device, not them.
    agreed = consensus(runs, max(atol, DEFAULT_ATOL), max(rtol, DEFAULT_RTOL),
                       tiebreak=lambda: try_reference(RELAX_VM, model, inputs, expected_outputs=len(output_specs)))
    if agreed.note:
        log.warning("%s: %s", model.name, agreed.note)
    checks: list[OutputCheck] = []
    for ref in agreed.judges:
        assert ref.outputs is not None
        if len(ref.outputs) != len(got):
            raise HarnessError(f"the device returned {len(got)} outputs, {ref.name} returned {len(ref.outputs)}")
        for spec, g, w in zip(output_specs, got, ref.outputs):
            checks.append(compare_output(spec["name"], ref.name, g, w, atol=atol, rtol=rtol))
    return checks, agreed


def run_on_target(
    model: Path,
    target: Target,
    *,
    transport: str | None = None,
    toolchain: str = DEFAULT_TOOLCHAIN,
    iters: int = 10,
    seed: int = 0,
    host: str | None = None,
    input_files: Mapping[str, Path] | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    timeout: float = RUN_TIMEOUT_S,
    trust_on_first_use: bool = False,
    device: Any = None,
    evidence_dir: Path | None = None,
    one_image: Mapping[str, Path] | None = None,
    profile: bool = False,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    outputs_dir: Path | None = None,
    threads: int | None = None,
) -> RunResult:
    """Compile, build, deploy, run and check one model on one target.

    Failures after the run has started are recorded in the result (`error`), with whatever
    was measured before them, so a farm or a dashboard loses nothing; failures of the user's
    own input (unknown target, unreadable model) raise. `device` is an already open transport
    to the target (the pytest plugin's session device); without it one is opened and closed.
    With `evidence_dir`, the run keeps there what reproduces it: the artifact (graph.json,
    params.bin, kernels.o, metadata.json), inputs.bin, outputs.bin and result.json.
    `one_image` (firmware targets): the models (name -> ONNX) one image holds, `model` among
    them; with the same `device`, every one of them runs on one boot. `threads`: the threads
    the kernels' parallel loops run on (None: the device's cores; firmware runs one).
    """
    from harness.build import size
    from harness.build.runner import build_runner
    from harness.compile.model import compile_model
    from harness.build.toolchain import get_toolchain
    from harness.config.readiness import is_emulated
    from harness.device.open import open_transport

    if not 1 <= iters <= MAX_ITERS:
        raise HarnessError(f"iters {iters:,}: must be 1 to {MAX_ITERS:,} (inferences per request on every device)")
    kind = transport or target.transport.kind
    result = RunResult(model=model.stem, target=target.name, transport=kind, commit=git_commit(),
                       emulated=is_emulated(target, kind),
                       input_shapes={k: list(v) for k, v in (input_shapes or {}).items()})
    started = time.monotonic()
    log.info("[%s on %s] compiling", model.name, target.name)
    artifact = compile_model(model, target, input_shapes=input_shapes)
    result.tvm_version = artifact.metadata.get("tvm_version")
    evidence = Evidence(Path(evidence_dir)) if evidence_dir is not None else None
    if evidence:
        evidence.keep_artifact(artifact.dir)
    try:
        tc = get_toolchain(toolchain, target)
        result.toolchain = tc.describe()
        if target.is_firmware:
            from harness.build.firmware import FirmwareModel, build_firmware, firmware_sizes, flat_footprint

            log.info("[%s on %s] building the firmware image with the %s toolchain", model.name, target.name, tc.name)
            if one_image:
                from harness.build.firmware import image_models

                if model.stem not in one_image:
                    raise HarnessError(f"model {model.stem} is not one of the image's ({', '.join(one_image)})")
                held = image_models(target, dict(one_image))
                fw = build_firmware(target, held, tc)
                artifact = next(m.artifact for m in held if m.name == model.stem)
            else:
                fw = build_firmware(target, [FirmwareModel(model.stem, artifact)], tc)
            runner = fw.elf
            result.sizes = firmware_sizes(fw, size.measure(target, tc))
            result.footprint = flat_footprint(fw)
        else:
            log.info("[%s on %s] building minrt-run with the %s toolchain", model.name, target.name, tc.name)
            runner = build_runner(target, artifact, tc)
            result.sizes = size.run_sizes(target, runner, artifact, tc)
        if not input_files:  # a model's own sample inputs (MLPerf Tiny's) beside it
            from harness.models.mlperf_tiny import sample_input_files

            input_files = sample_input_files(model, [s["name"] for s in artifact.inputs])
        inputs = (load_inputs(artifact.inputs, input_files) if input_files
                  else random_inputs(artifact.inputs, seed))
        missing = [s["name"] for s in artifact.inputs if s["name"] not in inputs]
        if missing:
            raise HarnessError(f"no value given for model input(s) {missing}")
        blob = tensorfile.dumps({s["name"]: inputs[s["name"]] for s in artifact.inputs})
        if evidence:
            evidence.write("inputs.bin", blob)
        if device is not None:
            log.info("[%s on %s] running on the device", model.name, target.name)
            out_blob, timing = execute(device, runner, artifact, blob, iters, timeout, profile, threads)
        else:
            with open_transport(target, kind=transport, host=host,
                                trust_on_first_use=trust_on_first_use) as opened:
                log.info("[%s on %s] running on the device", model.name, target.name)
                out_blob, timing = execute(opened, runner, artifact, blob, iters, timeout, profile, threads)
        if evidence:
            evidence.write("outputs.bin", out_blob)
        result.iters = int(timing.get("iters", iters))
        result.arena_bytes = timing.get("arena_bytes")
        result.threads = timing.get("threads")
        firmware_footprint = result.footprint  # set by the firmware build, else empty
        result.footprint = {**footprint(timing, result.sizes, artifact, kind), **firmware_footprint}
        result.profile = kernel_profile(timing, artifact)
        result.latency_us = {k: float(timing[f"{k}_us"]) for k in ("first", "min", "mean", "max") if f"{k}_us" in timing}
        result.latency_counts = dict(timing.get("counts", {}))
        result.count_unit = timing.get("count_unit")
        got = list(tensorfile.loads(out_blob, where="outputs.bin").values())
        if outputs_dir is not None:
            names = [s["name"] for s in artifact.outputs]
            kept = keep_outputs(dict(zip(names, got)), Path(outputs_dir) / model.stem)
            result.output_files = {name: str(path) for name, path in kept.items()}
        log.info("[%s on %s] comparing with the host reference", model.name, target.name)
        checks, agreed = check_outputs(model, inputs, got, artifact.outputs, atol, rtol)
        result.outputs = [c.to_dict() for c in checks]
        result.references = [s.to_dict() for s in agreed.statuses]
        result.reference_note = agreed.note
        result.passed = all(c.passed for c in checks)
    except HarnessError as exc:
        result.error = str(exc)
        result.error_kind = type(exc).__name__
        result.passed = False
        log.error("[%s on %s] %s", model.name, target.name, exc)
    log.info("[%s on %s] %s in %.1f s", model.name, target.name,
             "PASS" if result.passed else "FAIL", time.monotonic() - started)
    if evidence:
        evidence.write("result.json", result.to_json().encode())
    return result


def file_safe(name: str) -> str:
    """A tensor name as a file name: characters other than letters, digits, '.', '_' and '-'
    become '_' (`serving_default/x:0` -> `serving_default_x_0`); never empty, never hidden."""
    import re

    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return safe or "_"


def keep_outputs(outputs: Mapping[str, np.ndarray], directory: Path) -> dict[str, Path]:
    """Write each output as `directory/<file-safe name>.npy` (two names that become the same
    file get `-1`, `-2`... suffixes); returns name -> path."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"--outputs: cannot create {directory}: {exc.strerror}") from None
    kept: dict[str, Path] = {}
    used: set[str] = set()
    for name, value in outputs.items():
        stem = file_safe(name)
        candidate, n = stem, 0
        while candidate in used:
            n += 1
            candidate = f"{stem}-{n}"
        used.add(candidate)
        path = directory / f"{candidate}.npy"
        np.save(path, value, allow_pickle=False)
        kept[name] = path
    log.info("kept %d output(s) in %s", len(kept), directory)
    return kept


@dataclass
class Evidence:
    """A directory that keeps what reproduces one run (see run_on_target)."""

    dir: Path

    def write(self, name: str, data: bytes) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / name
        path.write_bytes(data)
        return path

    def keep_artifact(self, artifact_dir: Path) -> None:
        import shutil

        dest = self.dir / "artifact"
        dest.mkdir(parents=True, exist_ok=True)
        for item in Path(artifact_dir).iterdir():
            if item.is_file():
                shutil.copy2(item, dest / item.name)
