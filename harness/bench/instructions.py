"""`harness bench --count-instructions`: minrt's instructions per inference on a qemu-user
target (qemu-armv7), counted exactly (QemuUserTransport.count_instructions) rather than timed.
No load on the host changes the count, so it measures what a schedule change buys on ARMv7
where wall time under an emulator cannot. ci/bench_tflm counts TFLM and minrt the same way."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config.targets import Target
from harness.errors import HarnessError

log = logging.getLogger(__name__)


def count_per_inference(transport: Any, program: Path, argv_for: Callable[[Path, int], list[str]], low: int,
                        timeout: float = 7200.0) -> tuple[int, str]:
    """Instructions of one inference, exactly: the whole process run for `low` + 1 inferences
    minus the same for `low` (TFLM's image takes 0; minrt-run needs at least 1). The count
    includes each runner's per-iteration work around the inference (TFLM's image copies the
    sample into the input tensor; minrt-run reads its clock)."""
    counts, stdout = [], ""
    for n in (low, low + 1):
        argv = argv_for(program, n)
        result, count = transport.count_instructions(argv, timeout)
        if result.returncode != 0:
            raise HarnessError(f"{program.name} exited {result.returncode}: {(result.stderr or result.stdout)[-300:]}")
        counts.append(count)
        stdout = result.stdout  # the run with low + 1 inferences: its outputs are checked
    return counts[1] - counts[0], stdout


def count_minrt(target: Target, artifact: Any, runner: Path, inputs_blob: bytes) -> int:
    """minrt-run's instructions for one inference of the artifact on the qemu-user target."""
    from harness.transport.local import QemuUserTransport

    with QemuUserTransport(cpu=str(target.transport.options.get("cpu", "cortex-a7"))) as qemu:
        inputs = Path(qemu.workdir) / "inputs.bin"
        inputs.write_bytes(inputs_blob)
        workspace = str(int(artifact.metadata.get("workspace_bytes", 0)))

        def argv(exe: Path, n: int) -> list[str]:
            return [str(exe), str(artifact.graph_json), str(artifact.params_bin), str(inputs),
                    str(inputs.with_name("outputs.bin")), "-n", str(n), "-w", workspace]

        count, _ = count_per_inference(qemu, runner, argv, 1)
    return count


@dataclass
class ModelCount:
    model: str
    target: str
    instructions: int | None = None
    kernels: int = 0
    seconds: float = 0.0
    error: str | None = None


def count_models(models: Sequence[Path], target: Target, *, toolchain: str = "host", seed: int = 0,
                 input_shapes: Any = None) -> list[ModelCount]:
    """Compile each model for the target (its current default or tuned schedules), build
    minrt-run, and count one inference on seeded random inputs; a model that fails is
    recorded with its error and the others still run."""
    from harness.build.runner import build_runner
    from harness.build.toolchain import get_toolchain
    from harness.compile.model import compile_model
    from harness.formats import tensorfile
    from harness.run import random_inputs

    if target.transport.kind != "qemu-user":
        raise HarnessError(f"--count-instructions needs a qemu-user target (qemu-armv7), not {target.name} "
                           f"(transport {target.transport.kind})")
    out = []
    for model in models:
        started = time.monotonic()
        row = ModelCount(model=model.stem, target=target.name)
        try:
            artifact = compile_model(model, target, input_shapes=input_shapes)
            row.kernels = len(artifact.metadata.get("kernels", []))
            runner = build_runner(target, artifact, get_toolchain(toolchain, target))
            inputs = random_inputs(artifact.inputs, seed)
            blob = tensorfile.dumps({s["name"]: inputs[s["name"]] for s in artifact.inputs})
            log.info("count %s on %s: running under qemu-user with the instruction counter", model.stem, target.name)
            row.instructions = count_minrt(target, artifact, Path(runner), blob)
        except Exception as exc:  # noqa: BLE001 - one model's failure is recorded, the rest run
            row.error = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
            log.error("count %s: %s", model.stem, row.error)
        row.seconds = time.monotonic() - started
        if row.instructions is not None:
            log.info("count %s on %s: %s instructions per inference", model.stem, target.name, f"{row.instructions:,}")
        out.append(row)
    return out


def format_counts(rows: Sequence[ModelCount]) -> str:
    from harness.formats.text import table

    body = [[r.model, f"{r.instructions:,}", str(r.kernels), f"{r.seconds:.0f} s"] for r in rows if r.error is None]
    lines = [table(["model", "instructions/inference", "kernels", "took"], body, right=range(1, 4))] if body else []
    lines += [f"{r.model}: ERROR {r.error}" for r in rows if r.error]
    target = rows[0].target if rows else "?"
    lines.append(f"minrt-run on {target}, emulated instructions per inference, counted exactly under qemu-user "
                 "(the difference of runs of 2 and 1 inferences)")
    return "\n".join(lines)
