"""Kernels: each PrimFunc scheduled (tuning record or default rule) and compiled for the target into one object."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any


from harness.errors import CompileError
from harness.config.targets import Target

log = logging.getLogger(__name__)

#: Symbols register as `__tvm_ffi_<func_name>` with no prefix.
SYSTEM_LIB_PREFIX = ""
#: A PrimFunc attribute (its value says why): compile the kernel as it is written, without the
#: default rules, whose inlining would repeat a chain of small stages into every element.
AS_WRITTEN = "minrt.as_written"


# ---------------------------------------------------------------------------------------------
# Kernels

_WORKSPACE_CALL = re.compile(r"TVMBackendAllocWorkspace\(\s*[^,]+,\s*[^,]+,\s*(?:T\.uint64\()?(\d+)")
_WORKSPACE_ALIGN = 64


#: What the kernel target tells meta_schedule of a Linux device's cores: its parallel loops
#: are split into tasks at run time, by the runner's thread count, so this only guides the
#: search (firmware: 1, no parallel loops at all).
LINUX_NUM_CORES = 4


def parallel_kernels(target: Target) -> bool:
    """Whether the target's kernels get parallel loops: Linux targets, whose runner runs them
    on its threads (minrt-run -t); firmware runs one thread."""
    return not target.is_firmware


def kernel_target(target: Target) -> Any:
    """The TVM target kernels are scheduled and compiled for: the target's own, with its
    cores for meta_schedule (one on firmware, which has no threads)."""
    import tvm

    cores = LINUX_NUM_CORES if parallel_kernels(target) else 1
    return tvm.target.Target({**dict(target.tvm_target), "num-cores": cores})


def compile_kernels(kernels: dict[str, Any], tvm_target: Any, out_path: Path,
                    prefix: str = SYSTEM_LIB_PREFIX) -> int:
    """Compile the (scheduled) PrimFuncs into one object (a system library) and return the
    most workspace any one kernel allocates (the sum of its TVMBackendAllocWorkspace sizes,
    each rounded up to 64 bytes), read from the TIR after LowerTVMBuiltin."""
    import tvm

    # TVM's system_lib_prefix renames the library context and the names kernels register
    # under, not the `__tvm_ffi_<symbol>` functions: the prefix goes into each symbol too.
    funcs = {name: prim.with_attr("global_symbol", prefix + name) for name, prim in kernels.items()}
    kmod = tvm.IRModule(funcs).with_attr("system_lib_prefix", prefix)
    lowered: list[Any] = []

    @tvm.ir.instrument.pass_instrument
    class KeepLoweredTIR:
        def run_after_pass(self, mod: Any, info: Any) -> None:
            if info.name.endswith("LowerTVMBuiltin"):
                lowered.append(mod)

    with tvm.transform.PassContext(config={"tirx.disable_assert": True}, instruments=[KeepLoweredTIR()]):
        executable = tvm.compile(kmod, target=tvm_target)
    executable.mod.write_to_file(str(out_path))

    workspace = 0
    for mod in lowered:
        for gvar, func in mod.functions.items():
            text = func.script()
            calls = text.count("TVMBackendAllocWorkspace(")
            sizes = [int(m) for m in _WORKSPACE_CALL.findall(text)]
            if len(sizes) != calls:
                raise CompileError(f"kernel '{gvar.name_hint}' allocates a workspace of non-constant size")
            need = sum(-(-s // _WORKSPACE_ALIGN) * _WORKSPACE_ALIGN for s in sizes)
            workspace = max(workspace, need)
    return workspace


# ---------------------------------------------------------------------------------------------
# Schedules


def default_schedule(func: Any, ktarget: Any, target: Target, tile: Any = None) -> tuple[Any, Any]:
    """A kernel with the default rules of harness.compile.schedule for this target: what
    compile builds without a tuning record, and the baseline `harness tune` measures (the same
    scheduled text, so its measured latency is found again by compile). `tile`: another
    register tile for a channels-last convolution (schedule.ConvTile; what tune varies)."""
    from harness.compile.schedule import (
        has_dsp,
        int8_pairs_intrinsic,
        is_armv7_neon,
        pools_as_loops,
        schedule_kernel,
        simd_lanes,
    )

    return schedule_kernel(func, simd_lanes(ktarget), parallel_kernels(target), has_dsp(ktarget), tile=tile,
                           int8_simd=int8_pairs_intrinsic(ktarget), neon=is_armv7_neon(ktarget),
                           pools_as_loops=pools_as_loops(ktarget))


def written_as_is(func: Any) -> bool:
    """Whether a kernel keeps its TIR as written (no schedule, no tuning record), e.g. a chain
    of tiny stages."""
    return func.attrs is not None and AS_WRITTEN in func.attrs


def schedule_model_kernels(kernels: dict[str, Any], ktarget: Any, target: Target,
                           cache: Path | None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Every kernel gets a schedule: the best tuning record for its workload on this target
    when the tuning database has one that ran faster on the device than this default schedule
    (measured by `harness tune`; and MINRT_NO_TUNING is not set), else the default rules of harness.compile.schedule. Returns the
    scheduled kernels and, per kernel, what was used."""
    from harness.compile.tuning_db import TuningDatabase, tuning_disabled

    database = None if tuning_disabled() else TuningDatabase.for_target(target, cache)
    scheduled: dict[str, Any] = {}
    report: dict[str, dict[str, Any]] = {}
    for name, func in kernels.items():
        if written_as_is(func):
            scheduled[name] = func
            report[name] = {"source": "default", "rule": "as written", "detail": str(func.attrs[AS_WRITTEN])}
            continue
        default, rule = default_schedule(func, ktarget, target)
        tuned = database.best(func, ktarget) if database is not None else None
        default_us = database.default_latency(default) if tuned is not None else None
        if tuned is not None and default_us is not None and tuned.latency_us < default_us:
            scheduled[name] = tuned.func
            report[name] = {"source": "tuned", "rule": "meta_schedule", "latency_us": tuned.latency_us,
                            "default_us": default_us, "record": tuned.record_id, "database": str(database.path)}
            continue
        scheduled[name] = default
        report[name] = {"source": "default", "rule": rule.rule, "detail": rule.detail}
        if tuned is not None and default_us is None:
            # The default rules changed since the record was measured: the record beat the old
            # default, not necessarily this one. `harness tune` measures this default (in a second
            # for a kernel it finds tuned already), after which the faster of the two is used.
            log.info("kernel %s: tuning record %s is not used: the default schedule changed since it was "
                     "measured (run `harness tune` again to compare them)", name, tuned.record_id)
            report[name].update(stale_record=tuned.record_id, best_record_us=tuned.latency_us)
        elif tuned is not None:  # measured on the device: no record beat the default schedule
            report[name].update(default_us=default_us, best_record_us=tuned.latency_us)
    return scheduled, report


